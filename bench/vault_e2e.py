"""The vault end to end: a local 5-node fleet (node processes with SoftHSM2 tokens and SQLite
stores, WAL + full sync) behind the relay, on loopback, brought up in a temporary folder.

- Recovery latency, server side: the two HTTP round trips of one recovery (recover-start
  and recover-finish: relay, node, a majority commit each, OPRF/3DH, sealing), timed inside
  the client's HTTP transport, so the client's Argon2id and OPAQUE math are not counted.
  Reference: the same two requests answered by the firmware in this process (open the
  sealed request, decide, evaluate, seal the answer) with no network and no replication.
- Guess throughput: 16 client threads, each on its own entry (distinct CAS registers, as
  real users are), sending wrong-password recover-starts only; every answer with a KE2 is a
  committed `attempts_used += 1`; a `fleet_unavailable` answer is counted apart (refused).
  An entry near its limit is reset by one correct recovery, whose requests are not counted.
- Bytes per stored entry: the key and encrypted row of each entry in a node's store (read
  with sqlite3 read-only), and the growth of store.sqlite + WAL per registered entry.
- Across sites: a second fleet whose node-to-node streams pass through the chaos proxies
  (backupvault.chaos.proxy) holding every chunk RTT/2 each way (a delay line, RTT = 40 ms),
  the relay's links undelayed. Its recovery p50 is set against the issue's target
  2 × (RTT + 10 ms) + client↔relay time, where client↔relay time is two requests through
  the same relay to a node that the node answers without a commit (a recover-finish whose
  ticket does not open; p50 each): the path of a recovery's two requests, the sealing
  included, without the fleet's commits.

The relay's per-account rate limits are raised for this deployment: they would otherwise
be what is measured. The client threads share the machine's cores with the 6 servers.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.chaos.proxy import Mode
from backupvault.chaos.soak import ProxiedFleet
from backupvault.client.config import ClientConfig
from backupvault.client.errors import FleetUnavailable, VaultError
from backupvault.client.vault import VaultClient
from backupvault.crypto import ksf, opaque
from backupvault.crypto.seal import NodePrivateKey
from backupvault.deploy.local import AUDIENCE, ISSUER, LocalDeployment
from backupvault.hsm.ceremony import make_fleet_secrets
from backupvault.hsm.firmware import NodeKey, Reply, VaultFirmware
from backupvault.hsm.state import EntryState
from backupvault.node.config import write_toml
from backupvault.protocol import (
    NODE_HEADER,
    ErrorResponse,
    Op,
    RecoverFinishRequest,
    RecoverFinishResponse,
    RecoverStartRequest,
    RecoverStartResponse,
    SealedCopies,
    pad_response,
)
from backupvault.tokens import TokenVerifier, fleet_audience, load_operator_private_key, mint_token
from bench.etcd_reference import (
    EtcdCluster,
    Throughput,
    cpu_seconds,
    median_ms,
    put_latencies,
    put_rate,
)

NODES = 5
CLIENTS = 16
PASSWORD = "benchmark password"
FAST_KSF = ksf.Argon2idParams(
    memory_kib=256, iterations=1, parallelism=1, salt=ksf.ZERO_SALT, output_len=64
)
RECOVERY_OPS = ("recover-start", "recover-finish")
#: The most a fleet allows (its measured limit): a reset every GUESS_LIMIT - 1 guesses.
GUESS_LIMIT = 10
#: The round trip between nodes in the cross-site mode, and the per-commit allowance.
RTT = 0.040
COMMIT_ALLOWANCE = 0.010


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


def _recovery_times(transport: TimingTransport) -> list[float]:
    """Per recovery: the recover-start and recover-finish times added."""
    times = [s for op, s in transport.seconds if op in RECOVERY_OPS]
    return [times[i] + times[i + 1] for i in range(0, len(times) - 1, 2)]


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Fleet:
    """A local fleet; with `rtt`, its node-to-node streams cross delaying proxies."""

    def __init__(self, root: Path, rtt: float = 0.0) -> None:
        self.root = root
        self.rtt = rtt
        self.proxied = ProxiedFleet(root, NODES, lambda _: None) if rtt else None
        self.deployment = LocalDeployment(root) if self.proxied is None else self.proxied.deployment
        self.config: ClientConfig | None = None

    def down(self) -> None:
        if self.proxied is not None:
            self.proxied.stop()
        else:
            self.deployment.down()

    def up(self, before_start: Callable[[], None] | None = None, timeout: float = 90) -> None:
        if self.proxied is not None:
            self.proxied.provision()  # the relay's limits are raised there too
            self.proxied.start(timeout)
            pool = self.proxied.pool
            between_nodes = [link for (source, _), link in pool.links.items() if source != "relay"]
            pool.set_mode(between_nodes, Mode.DELAY, self.rtt / 2)
            self.config = ClientConfig.load(self.root / "client.toml")
            return
        self.deployment.provision(NODES)
        relay = tomllib.loads((self.root / "relay.toml").read_text())
        relay["relay"].update(burst=1_000_000, rate_per_minute=1e9)
        write_toml(self.root / "relay.toml", relay)
        if before_start is not None:
            before_start()
        self.deployment.up(NODES, timeout=timeout)
        self.config = ClientConfig.load(self.root / "client.toml")

    def client(
        self, account: str, entry: str, transport: httpx.BaseTransport | None = None
    ) -> VaultClient:
        config = self.config
        assert config is not None
        operator = load_operator_private_key(self.root / "operator.key")
        token = mint_token(operator, account, issuer=ISSUER, audience=AUDIENCE, ttl_seconds=3600)
        assert config.fleet_id is not None
        fleet_token = mint_token(
            operator,
            account,
            issuer=ISSUER,
            audience=fleet_audience(config.fleet_id),
            ttl_seconds=3600,
        )
        return VaultClient(
            config.relay_url,
            token,
            account,
            config.fleet_id,
            config.node_public_keys,
            config.opaque_server_public_key,
            entry=entry,
            ksf_params=FAST_KSF,
            http=httpx.Client(transport=transport or httpx.HTTPTransport(), timeout=30.0),
            fleet_token=fleet_token,
        )

    def evaluations(self) -> int:
        return sum(int(m["evaluations"]) for m in self.deployment.metrics().values())


# ---- (a) recovery latency -------------------------------------------------------------


def _e2e_latency(fleet: Fleet, recoveries: int) -> list[float]:
    transport = TimingTransport(httpx.HTTPTransport())
    client = fleet.client("bench-latency", "latency", transport)
    root_key = os.urandom(32)
    client.register(PASSWORD, root_key)
    for _ in range(5):  # warm up connections and caches
        client.recover(PASSWORD)
    transport.seconds.clear()
    for _ in range(recoveries):
        assert client.recover(PASSWORD).root_key == root_key
    return _recovery_times(transport)


def _uncommitted_latency(fleet: Fleet, requests: int) -> list[float]:
    """Seconds per request that crosses client → relay → one node → back and is answered
    without a commit: a recover-finish whose ticket does not open (the node opens the
    sealed request and seals its refusal, as for any request)."""
    transport = TimingTransport(httpx.HTTPTransport())
    client = fleet.client("bench-latency", "latency", transport)
    request = RecoverFinishRequest(client.account, client.entry, b"\0" * 64, b"\0" * 64)
    for i in range(5 + requests):
        if i == 5:
            transport.seconds.clear()
        try:
            client._call(Op.RECOVER_FINISH, request, RecoverFinishResponse)
        except VaultError:
            pass  # the refusal is the answer timed
        else:
            raise AssertionError("a recover-finish with a garbage ticket succeeded")
    return [s for _, s in transport.seconds]


def _across_sites(recoveries: int) -> tuple[list[float], list[float]]:
    """(recovery times, uncommitted request times) with RTT between the nodes."""
    with tempfile.TemporaryDirectory(prefix="bench-vault-rtt-") as tmp:
        fleet = Fleet(Path(tmp) / "deployment", rtt=RTT)
        try:
            fleet.up()
            return _e2e_latency(fleet, recoveries), _uncommitted_latency(fleet, recoveries)
        finally:
            fleet.down()


def _in_process_latency(recoveries: int) -> tuple[list[float], float]:
    """The firmware alone answering the same requests (no HTTP, no replication): per
    recovery times, and the median recover-start (KE1) time."""
    fleet_id = os.urandom(16)
    secrets = make_fleet_secrets(fleet_id, os.urandom)
    issuer = Ed25519PrivateKey.generate()
    accounts = TokenVerifier(issuer.public_key(), "bench", fleet_audience(fleet_id))
    node_key = NodePrivateKey.generate()
    firmware = VaultFirmware(secrets, NodeKey(0, node_key), os.urandom, accounts)
    states: dict[bytes, EntryState] = {}

    def answer(request: httpx.Request) -> httpx.Response:
        _, _, _, entry, op_name = request.url.path.split("/")
        op = Op(op_name)
        copy = SealedCopies.for_nodes(request.read(), 1).copies[0]
        opened = firmware.open(op, "bench", entry, copy, time.time())
        assert not isinstance(opened, ErrorResponse)
        message, response_key = opened
        action = firmware.handle(op, message, time.time())
        if isinstance(action, Reply):
            reply = action.response
        else:
            state, build_reply = action.apply(states.get(action.key, EntryState()))
            states[action.key] = state
            reply = build_reply()
        sealed = response_key.seal(pad_response(op, reply.to_bytes()))
        return httpx.Response(200, content=sealed, headers={NODE_HEADER: "0"})

    transport = TimingTransport(httpx.MockTransport(answer))
    client = VaultClient(
        "http://in-process",
        "no-token",
        "bench",
        fleet_id,
        [node_key.public_key()],
        secrets.server_public_key,
        entry="latency",
        ksf_params=FAST_KSF,
        http=httpx.Client(transport=transport),
        fleet_token=mint_token(
            issuer, "bench", issuer="bench", audience=fleet_audience(fleet_id), ttl_seconds=3600
        ),
    )
    client.register(PASSWORD, os.urandom(32))
    for _ in range(5):
        client.recover(PASSWORD)
    transport.seconds.clear()
    for _ in range(recoveries):
        client.recover(PASSWORD)
    ke1 = statistics.median(s for op, s in transport.seconds if op == "recover-start")
    return _recovery_times(transport), ke1


# ---- (b) committed guesses per second -------------------------------------------------


def _fleet_pids(fleet: Fleet) -> list[int]:
    """The node and relay processes (the witness is idle during these runs)."""
    return [
        int(p["pid"]) for name, p in fleet.deployment._processes().items() if "witness" not in name
    ]


def _commit_latency(fleet: Fleet, commits: int) -> list[float]:
    """One client, sequential wrong-password recover-starts: each is one committed guess
    (plus the OPRF evaluation). Seconds per request, timed in the client's transport."""
    transport = TimingTransport(httpx.HTTPTransport())
    client = fleet.client("bench-commit", "commit", transport)
    client.register(PASSWORD, os.urandom(32), guess_limit=GUESS_LIMIT)
    for i in range(10 + commits):
        if i % (GUESS_LIMIT - 1) == GUESS_LIMIT - 2:
            client.recover(PASSWORD)  # reset the counter
        _, ke1 = opaque.client_login_start(b"wrong password")
        now_ms = time.time_ns() // 1_000_000
        request = RecoverStartRequest(client.account, client.entry, ke1.to_bytes(), now_ms)
        client._call(Op.RECOVER_START, request, RecoverStartResponse)
        if i == 9:
            transport.seconds.clear()
    return [s for op, s in transport.seconds if op == "recover-start"]


def _recovery_rate(fleet: Fleet, seconds: float) -> tuple[float, float]:
    """16 clients, each recovering its own entry with the right password in a loop:
    (recoveries per second, CPU seconds per recovery over every fleet process)."""
    clients = [fleet.client("bench-recover", f"recover-{i}") for i in range(CLIENTS)]
    for client in clients:
        client.register(PASSWORD, os.urandom(32))
    counts = [0] * CLIENTS
    start = threading.Barrier(CLIENTS + 1)
    stop = threading.Event()

    def recover(index: int) -> None:
        start.wait()
        while not stop.is_set():
            try:
                clients[index].recover(PASSWORD)
            except FleetUnavailable:
                continue
            if not stop.is_set():
                counts[index] += 1

    pids = _fleet_pids(fleet)
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(recover, i) for i in range(CLIENTS)]
        start.wait()
        cpu_before = cpu_seconds(pids)
        time.sleep(seconds)
        stop.set()
        cpu = cpu_seconds(pids) - cpu_before
        for future in futures:
            future.result()
    return sum(counts) / seconds, cpu / max(1, sum(counts))


def _guess_rate(fleet: Fleet, seconds: float) -> tuple[float, int, int, int, float]:
    """(committed wrong guesses per second, guesses counted, evaluations delta, requests
    refused as fleet_unavailable, CPU seconds per committed guess over every fleet
    process)."""
    clients = [fleet.client("bench-guess", f"guess-{i}") for i in range(CLIENTS)]
    for client in clients:
        client.register(PASSWORD, os.urandom(32), guess_limit=GUESS_LIMIT)
    counts = [0] * CLIENTS
    refused = [0] * CLIENTS
    start = threading.Barrier(CLIENTS + 1)
    stop = threading.Event()

    def guess(index: int) -> None:
        client = clients[index]
        start.wait()
        while not stop.is_set():
            _, ke1 = opaque.client_login_start(b"wrong password")
            now_ms = time.time_ns() // 1_000_000
            request = RecoverStartRequest(client.account, client.entry, ke1.to_bytes(), now_ms)
            try:
                answer = client._call(Op.RECOVER_START, request, RecoverStartResponse)
            except FleetUnavailable:
                refused[index] += 1
                continue
            if stop.is_set():
                break  # finished after the window closed: not counted
            counts[index] += 1
            if answer.guesses_remaining <= 1:
                client.recover(PASSWORD)  # reset the counter; not counted

    before = fleet.evaluations()
    pids = _fleet_pids(fleet)
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(guess, i) for i in range(CLIENTS)]
        start.wait()
        cpu_before = cpu_seconds(pids)
        time.sleep(seconds)
        stop.set()
        cpu = cpu_seconds(pids) - cpu_before
        for future in futures:
            future.result()
    evaluations = fleet.evaluations() - before
    cpu_per_guess = cpu / max(1, sum(counts))
    return sum(counts) / seconds, sum(counts), evaluations, sum(refused), cpu_per_guess


# ---- (c) bytes per entry --------------------------------------------------------------


def _store_bytes(root: Path) -> tuple[int, int]:
    """(bytes, rows) of node0's store as a reader sees it (WAL included): page count times
    page size, and the record count. File sizes would not do: the WAL file is reused."""
    db = root / "node0" / "store.sqlite"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        (rows,) = conn.execute("SELECT count(*) FROM record").fetchone()
    return int(pages) * int(page_size), int(rows)


def _row_bytes(root: Path) -> float:
    """Mean bytes of name + seq + encrypted row over every entry on every node (names are
    keyed HMACs, so the bench's entries cannot be picked out; all entries are alike)."""
    sizes: list[int] = []
    for index in range(NODES):
        db = root / f"node{index}" / "store.sqlite"
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            sizes += [
                int(n) for (n,) in conn.execute("SELECT length(name) + 8 + length(row) FROM record")
            ]
    return statistics.mean(sizes)


def _entry_bytes(fleet: Fleet, entries: int) -> tuple[float, float]:
    bytes_before, rows_before = _store_bytes(fleet.root)

    def register(index: int) -> None:
        fleet.client("bench-size", f"size-{index:04d}").register(PASSWORD, os.urandom(32))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(register, range(entries)))
    time.sleep(0.5)  # the last accepts reach every node
    bytes_after, rows_after = _store_bytes(fleet.root)
    growth = (bytes_after - bytes_before) / max(1, rows_after - rows_before)
    return _row_bytes(fleet.root), growth


def _etcd(quick: bool, seconds: float) -> tuple[list[float], Throughput]:
    with tempfile.TemporaryDirectory(prefix="bench-etcd-") as tmp:
        etcd = EtcdCluster.start(Path(tmp))
        try:
            return put_latencies(etcd, 50 if quick else 300), put_rate(etcd, CLIENTS, seconds)
        finally:
            etcd.stop()


def run(quick: bool) -> list[dict[str, object]]:
    recoveries = 50 if quick else 300
    seconds = 3.0 if quick else 15.0
    entries = 50 if quick else 200
    etcd_latency, etcd = _etcd(quick, seconds)
    with tempfile.TemporaryDirectory(prefix="bench-vault-") as tmp:
        fleet = Fleet(Path(tmp) / "deployment")
        try:
            fleet.up()
            e2e = _e2e_latency(fleet, recoveries)
            commit = _commit_latency(fleet, recoveries)
            rate, guesses, evaluations, refused, cpu_guess = _guess_rate(fleet, seconds)
            recovery_rate, cpu_recovery = _recovery_rate(fleet, seconds)
            row_bytes, file_growth = _entry_bytes(fleet, entries)
        finally:
            fleet.down()
    rtt_e2e, rtt_plain = _across_sites(recoveries)
    local, local_ke1 = _in_process_latency(recoveries)
    etcd_p50 = median_ms(etcd_latency)
    commit_p50 = median_ms(commit)
    etcd_ref = f"etcd 3.4, {NODES} members, same run"

    p50, p99 = _percentile(e2e, 50) * 1000, _percentile(e2e, 99) * 1000
    local_p50, local_p99 = _percentile(local, 50) * 1000, _percentile(local, 99) * 1000
    local_rate = 1 / local_ke1  # one thread, firmware alone: KE1s per second
    rtt_p50 = _percentile(rtt_e2e, 50) * 1000
    relay_time = 2 * _percentile(rtt_plain, 50) * 1000
    target = 2 * (RTT + COMMIT_ALLOWANCE) * 1000 + relay_time
    return [
        {
            "name": f"committed wrong-guess recover-starts/s vs etcd puts/s, {CLIENTS} clients",
            "value": rate,
            "unit": "/s",
            "reference": f"{etcd_ref}: {etcd.per_second:.0f} puts/s; ours: {guesses} "
            f"answered, {refused} refused, {evaluations} evaluations; firmware alone, "
            f"1 thread: {local_rate:.0f}/s",
            "ratio": rate / etcd.per_second,
            "goal": "ratio ≥ 1.0",
        },
        {
            "name": "one client, one commit (wrong-guess recover-start) p50 vs etcd put p50",
            "value": commit_p50,
            "unit": "ms",
            "reference": f"{etcd_ref}: put p50 {etcd_p50:.2f} ms",
            "ratio": commit_p50 / etcd_p50,
            "goal": "ratio ≤ 2.0",
        },
        {
            "name": f"recoveries/s (start + finish), {CLIENTS} clients vs etcd puts/s",
            "value": recovery_rate,
            "unit": "/s",
            "reference": f"{etcd_ref}: {etcd.per_second:.0f} puts/s",
            "ratio": recovery_rate / etcd.per_second,
            "goal": "ratio ≥ 0.5",
        },
        {
            "name": "CPU per committed guess, every fleet process (5 nodes + relay)",
            "value": cpu_guess * 1000,
            "unit": "ms",
            "reference": f"{etcd_ref}: {etcd.cpu_per_operation * 1000:.2f} ms per put "
            f"(all members); per recovery {cpu_recovery * 1000:.1f} ms",
            "ratio": cpu_guess / etcd.cpu_per_operation,
            "goal": "printed (lower is better)",
        },
        {
            "name": f"recovery through relay + 5 nodes, p50 (2 round trips, n={len(e2e)})",
            "value": p50,
            "unit": "ms",
            "reference": f"firmware in-process p50 {local_p50:.2f} ms",
            "ratio": p50 / local_p50,
            "goal": "p50 ≤ 50 ms on loopback (2 majority commits with fsync)",
        },
        {
            "name": f"recovery through relay + 5 nodes, p99 (n={len(e2e)})",
            "value": p99,
            "unit": "ms",
            "reference": f"firmware in-process p99 {local_p99:.2f} ms",
            "ratio": p99 / local_p99,
            "goal": "p99 ≤ 200 ms on loopback",
        },
        {
            "name": f"recovery p50, {RTT * 1000:.0f} ms RTT between nodes (n={len(rtt_e2e)})",
            "value": rtt_p50,
            "unit": "ms",
            "reference": f"target 2 × ({RTT * 1000:.0f} + {COMMIT_ALLOWANCE * 1000:.0f}) ms +"
            f" client↔relay {relay_time:.1f} ms (2 uncommitted requests, p50) = {target:.1f} ms",
            "ratio": rtt_p50 / target,
            "goal": "ratio ≤ 1.0",
        },
        {
            "name": "bytes per stored entry (name + seq + encrypted row, mean over nodes)",
            "value": row_bytes,
            "unit": "B",
            "reference": f"database growth {file_growth:.0f} B/entry in pages (n={entries})",
            "ratio": None,
            "goal": "≤ 1 KiB: a million entries in about 1 GB per node",
        },
    ]
