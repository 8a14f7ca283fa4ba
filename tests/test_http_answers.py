"""http_answers.read_answer: an answer from a server that is not trusted is read up to its
limit, within its deadline, uncompressed, or not at all. Before it, the client's GETs read
a body without end into memory, and a trickled one never timed out."""

from __future__ import annotations

import datetime
import gzip
import ipaddress
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from backupvault.errors import InvalidInput
from backupvault.http_answers import AnswerRefused, read_answer, untrusted_client

CHUNK = 64 * 1024


class Endless:
    """A streamed body that counts the chunks the client pulled from it."""

    def __init__(self, chunks: int = 4096) -> None:  # 256 MiB stands in for "never ends"
        self.chunks = chunks
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        while self.sent < self.chunks:
            self.sent += 1
            yield b"\x54" * CHUNK


def client(answer: httpx.Response) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(lambda request: answer))


def test_an_answer_within_its_limit_is_read_whole() -> None:
    answer = httpx.Response(200, content=b"x" * 1000, headers={"Retry-After": "3"})
    got = read_answer(client(answer), "GET", "https://s.test/", limit=1000, what="the answer")
    assert (got.status_code, got.content, got.headers["retry-after"]) == (200, b"x" * 1000, "3")
    got.raise_for_status()  # it keeps its request


def test_an_endless_answer_is_refused_past_its_limit() -> None:
    body = Endless()
    with pytest.raises(AnswerRefused, match="the answer is larger than 100000 bytes"):
        read_answer(
            client(httpx.Response(200, content=body)),
            "GET",
            "https://s.test/",
            limit=100_000,
            what="the answer",
        )
    assert body.sent <= 2  # chunks read: one past the limit at most


def test_a_body_still_arriving_after_the_deadline_is_a_timeout() -> None:
    """A body trickled in (each read within httpx's timeout) ends at the deadline, as a
    ReadTimeout: what every caller already handles as a server that does not answer."""
    body = Endless()
    with pytest.raises(httpx.ReadTimeout, match="did not arrive within 0 s"):
        read_answer(
            client(httpx.Response(200, content=body)),
            "GET",
            "https://s.test/",
            limit=1 << 30,
            what="the answer",
            deadline=0,
        )
    assert body.sent == 1


def test_a_compressed_answer_is_refused_unread() -> None:
    """A few KiB of gzip expand to many MiB in one read: the body is asked for and read
    uncompressed only."""
    bomb = gzip.compress(bytes(64 << 20))
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["accept-encoding"])
        return httpx.Response(200, content=bomb, headers={"Content-Encoding": "gzip"})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    with pytest.raises(AnswerRefused, match="came compressed"):
        read_answer(http, "GET", "https://s.test/", limit=1 << 20, what="the answer")
    assert seen == ["identity"]


class Trickler:
    """A server that takes one request and answers its head a byte at a time, each byte
    well within any read timeout, for `seconds` (then it hangs up): `continues` sends
    `100 Continue` heads one after another instead, which never reach a final answer."""

    def __init__(self, *, continues: bool = False, seconds: float = 3.0) -> None:
        self.continues = continues
        self.seconds = seconds
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        peer, _ = self.listener.accept()
        with peer:
            request = b""
            while b"\r\n\r\n" not in request:
                request += peer.recv(4096)
            if self.continues:
                head = b"HTTP/1.1 100 Continue\r\n\r\n" * 10_000
            else:
                head = b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 90_000
            end = time.monotonic() + self.seconds
            for byte in head:
                if time.monotonic() > end:
                    break
                try:
                    peer.sendall(bytes([byte]))
                except OSError:
                    break  # the client gave up
                time.sleep(0.01)

    def close(self) -> None:
        self.thread.join(10)
        self.listener.close()


@pytest.mark.parametrize("continues", [False, True], ids=["trickled head", "endless 100s"])
def test_an_answer_whose_head_is_trickled_ends_at_the_deadline(continues: bool) -> None:
    """Review r31: the deadline counted from the headers, and httpx times out each read,
    not the head: a server trickling its head (or sending `100 Continue` without end)
    held the client for as long as it liked."""
    server = Trickler(continues=continues)
    started = time.monotonic()
    try:
        with untrusted_client(1.0) as http, pytest.raises(httpx.ReadTimeout):
            read_answer(http, "GET", server.url, limit=1000, what="the answer", deadline=0.5)
        assert time.monotonic() - started < 1.5  # the server trickles on for 3 s
    finally:
        server.close()


def test_the_deadline_ends_with_its_answer() -> None:
    """An untrusted client reused after a timed-out answer (or used outside read_answer)
    is not held to that answer's deadline."""

    def serve(listener: socket.socket) -> None:
        for _ in range(2):
            peer, _ = listener.accept()
            with peer:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += peer.recv(4096)
                time.sleep(0.3)
                peer.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    listener = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    thread = threading.Thread(target=serve, args=(listener,), daemon=True)
    thread.start()
    try:
        with untrusted_client(5.0) as http:
            with pytest.raises(httpx.ReadTimeout):
                read_answer(http, "GET", url, limit=10, what="the answer", deadline=0.1)
            assert http.get(url).content == b"ok"
    finally:
        thread.join(10)
        listener.close()


def test_an_untrusted_client_keeps_the_deadline_through_a_proxy_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTPS_PROXY gives httpx a second transport: the proxy's head is bounded too."""
    server = Trickler()
    monkeypatch.setenv("HTTP_PROXY", server.url)
    started = time.monotonic()
    try:
        with untrusted_client(1.0) as http, pytest.raises(httpx.ReadTimeout):
            read_answer(
                http, "GET", "http://relay.test/", limit=1000, what="the answer", deadline=0.5
            )
        assert time.monotonic() - started < 1.5
    finally:
        server.close()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_an_untrusted_client_speaks_tls_and_keeps_the_deadline_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline wraps the connection under TLS too (the relay and witnesses are
    HTTPS): a whole answer is read, and a head trickled through TLS ends at the deadline."""
    cert_file, key_file = _self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert_file, key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    url = f"https://127.0.0.1:{listener.getsockname()[1]}/"

    def serve() -> None:
        for trickle in (False, True):
            peer, _ = listener.accept()
            with tls.wrap_socket(peer, server_side=True) as conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                if not trickle:
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    )
                    continue
                try:
                    for byte in b"HTTP/1.1 200 OK\r\nX: " + b"a" * 300:
                        conn.sendall(bytes([byte]))
                        time.sleep(0.01)
                except OSError:
                    pass  # the client gave up

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with untrusted_client(5.0) as http:
            got = read_answer(http, "GET", url, limit=10, what="the answer")
            assert (got.status_code, got.content) == (200, b"ok")
            started = time.monotonic()
            with pytest.raises(httpx.ReadTimeout):
                read_answer(http, "GET", url, limit=10, what="the answer", deadline=0.5)
            assert time.monotonic() - started < 1.5
    finally:
        thread.join(10)
        listener.close()


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("ALL_PROXY", "socks5h://user:secret@127.0.0.1:9050", "needs the socksio package"),
        ("https_proxy", "socks4://user:secret@127.0.0.1:1080", "its scheme is none of"),
        ("SSL_CERT_FILE", "/nonexistent/secret/ca.pem", "cannot be read"),
    ],
)
def test_what_the_environment_sets_that_httpx_cannot_use_is_named_not_a_bug(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, said: str
) -> None:
    """Every vault command run with ALL_PROXY=socks5h://… (Tor, an SSH tunnel: socksio is
    not installed), a socks4:// proxy or an SSL_CERT_FILE that is not there ended in
    "unexpected ImportError (ValueError, FileNotFoundError) … this is a bug in
    backupvault". It is the environment's setting, named by its variable (its value may
    hold a password), and nothing is sent without it."""
    # As where socksio is not installed, whether it is here or not (None in sys.modules
    # makes its import fail).
    monkeypatch.setitem(sys.modules, "socksio", None)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv(variable, value)
    with pytest.raises(InvalidInput) as refused:
        untrusted_client(5.0)
    assert f"({variable})" in refused.value.message and said in refused.value.message
    assert "secret" not in str(refused.value)
    untrusted_client(5.0, trust_env=False).close()  # a client that ignores it is unaffected
