"""etcd as the reference for the fleet's replication: a 5-member etcd 3.4 cluster on
loopback (Debian's `etcd-server`, default durability: every write is fsynced by a majority
before it is acknowledged), driven like the fleet: Python clients over httpx, through
etcd's gRPC-gateway JSON API (`POST /v3/kv/put`), each client on its own key and member.

`make bench` installs the package (`apt-get install etcd-server`); without the binary this
module says so and how to get it, rather than reporting figures without a reference.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

MEMBERS = 5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class EtcdMissing(RuntimeError):
    pass


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time used so far by these processes (from /proc)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class EtcdCluster:
    root: Path
    urls: list[str]
    processes: list[subprocess.Popen[bytes]]

    @classmethod
    def start(cls, root: Path, members: int = MEMBERS) -> EtcdCluster:
        binary = shutil.which("etcd")
        if binary is None:
            raise EtcdMissing(
                "etcd is not installed: run `apt-get install etcd-server` (make bench does)"
            )
        ports = _free_ports(2 * members)
        client_ports, peer_ports = ports[:members], ports[members:]
        cluster = ",".join(f"m{i}=http://127.0.0.1:{peer_ports[i]}" for i in range(members))
        processes = []
        for i in range(members):
            log = (root / f"etcd-m{i}.log").open("wb")
            processes.append(
                subprocess.Popen(
                    [
                        binary,
                        "--name",
                        f"m{i}",
                        "--data-dir",
                        str(root / f"m{i}"),
                        "--listen-client-urls",
                        f"http://127.0.0.1:{client_ports[i]}",
                        "--advertise-client-urls",
                        f"http://127.0.0.1:{client_ports[i]}",
                        "--listen-peer-urls",
                        f"http://127.0.0.1:{peer_ports[i]}",
                        "--initial-advertise-peer-urls",
                        f"http://127.0.0.1:{peer_ports[i]}",
                        "--initial-cluster",
                        cluster,
                        "--initial-cluster-state",
                        "new",
                        "--initial-cluster-token",
                        "backupvault-bench",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )
            log.close()
        etcd = cls(root, [f"http://127.0.0.1:{p}" for p in client_ports], processes)
        etcd.wait_ready()
        return etcd

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as http:
            for url in self.urls:
                while True:
                    try:
                        if http.get(f"{url}/health").json().get("health") == "true":
                            break
                    except (httpx.HTTPError, ValueError):
                        pass
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"etcd member {url} not healthy; see {self.root}")
                    time.sleep(0.2)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _put(http: httpx.Client, url: str, key: bytes, value: bytes) -> None:
    body = {"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode()}
    answer = http.post(f"{url}/v3/kv/put", json=body)
    answer.raise_for_status()


class TimingTransport(httpx.BaseTransport):
    """Times each request from the first byte sent to the last byte received."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.seconds: list[tuple[str, float]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        started = time.perf_counter()
        response = self.inner.handle_request(request)
        response.read()
        self.seconds.append((request.url.path.rsplit("/", 1)[1], time.perf_counter() - started))
        return response

    def close(self) -> None:
        self.inner.close()


def leader_url(urls: list[str]) -> str:
    """The client URL of the member that leads now, as its own status says."""
    with httpx.Client(timeout=10.0) as http:
        for url in urls:
            status = http.post(f"{url}/v3/maintenance/status", json={}).json()
            if status["header"]["member_id"] == status["leader"]:
                return url
    raise RuntimeError("no etcd member says that it leads")


def put_latencies(etcd: EtcdCluster, puts: int) -> list[float]:
    """One client, one key, sequential puts to the leader: seconds per put, timed in the
    client's transport as the fleet's fan-outs are (bench/vault_e2e.py), so the client's
    own work before a request (here JSON and base64, there sealing and proofs) counts on
    neither side. At the leader, as each of our fan-outs reaches the fleet's leader
    directly: a follower forwards each put to the leader (about 6 % of a put here)."""
    url = leader_url(etcd.urls)
    transport = TimingTransport(httpx.HTTPTransport())
    with httpx.Client(transport=transport, timeout=10.0) as http:
        for i in range(10 + puts):
            if i == 10:  # after warming up the connection
                transport.seconds.clear()
            _put(http, url, b"bench-latency", i.to_bytes(8, "big"))
    return [seconds for _, seconds in transport.seconds]


@dataclass(frozen=True)
class Throughput:
    per_second: float
    operations: int
    cpu_per_operation: float  # seconds, all etcd members added up


def put_rate(etcd: EtcdCluster, clients: int, seconds: float) -> Throughput:
    """`clients` threads, each putting its own key through its own member, for `seconds`."""
    counts = [0] * clients
    start = threading.Barrier(clients + 1)
    stop = threading.Event()

    def run(index: int) -> None:
        url = etcd.urls[index % len(etcd.urls)]
        key = f"bench-put-{index}".encode()
        with httpx.Client(timeout=10.0) as http:
            _put(http, url, key, b"warm")
            start.wait()
            while not stop.is_set():
                _put(http, url, key, os.urandom(100))
                if not stop.is_set():
                    counts[index] += 1

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(run, i) for i in range(clients)]
        start.wait()
        cpu_before = cpu_seconds(etcd.pids)
        time.sleep(seconds)
        stop.set()
        cpu = cpu_seconds(etcd.pids) - cpu_before
        for future in futures:
            future.result()
    total = sum(counts)
    return Throughput(total / seconds, total, cpu / max(1, total))


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000
