"""The vault end to end on the threshold flow (docs/threshold.md): a local 5-node fleet
(node processes with SoftHSM2 tokens and SQLite stores, WAL + full sync) behind the relay,
on loopback, brought up in a temporary folder, set against etcd (5 members, same run).

- Recovery latency: the three fan-outs of one recovery (manifest read, evaluate: one
  committed attempt, reset: one committed owner reset; relay, every node, sealing), timed
  inside the client's HTTP transport, so the client's Argon2id and OPRF math are not
  counted. Reference: a manifest read alone (a fan-out every node answers from the value
  it holds, without a commit).
- Commit latency: one client, sequential wrong-password evaluate fan-outs; each is one
  committed attempt (the N copies of the request make one round) plus t partial
  evaluations.
- Guess throughput: 16 client threads, each on its own entry (distinct CAS registers, as
  real users are), sending wrong-password evaluate fan-outs only; every fan-out that
  brings back t partials is a committed attempt; one that does not is counted apart
  (refused). An entry near its limit is reset by one correct recovery, not counted.
- Recoveries/s: 16 threads recovering their own entries with the right password.
- Across sites: a second fleet whose node-to-node streams pass through the chaos proxies
  (backupvault.chaos.proxy) holding every chunk RTT/2 each way (a delay line, RTT = 40 ms),
  the relay's links undelayed. Its recovery p50 is set against the issue's target
  2 × (RTT + 10 ms) + client↔relay time (two commits per recovery), where client↔relay
  time is three manifest reads (p50 each): the path of a recovery's three fan-outs, the
  sealing included, without the fleet's commits.

The relay's per-account rate limits are raised for this deployment: they would otherwise
be what is measured. The client threads share the machine's cores with the 6 servers.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx

from backupvault.chaos.proxy import Mode
from backupvault.chaos.soak import ProxiedFleet
from backupvault.client.config import ClientConfig
from backupvault.client.errors import FleetUnavailable, WrongPassword
from backupvault.client.threshold import ThresholdVault
from backupvault.crypto import ksf, oprf
from backupvault.deploy.local import AUDIENCE, ISSUER, LocalDeployment
from backupvault.node.config import write_toml
from backupvault.protocol import (
    EvaluateRequest,
    EvaluateResponse,
    ManifestRequest,
    ManifestResponse,
    Op,
)
from backupvault.tokens import fleet_audience, load_operator_private_key, mint_token
from bench.etcd_reference import (
    EtcdCluster,
    Throughput,
    TimingTransport,
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
#: The fleet's per-node limit: a reset every GUESS_LIMIT - 1 guesses.
GUESS_LIMIT = 10
#: The round trip between nodes in the cross-site mode, and the per-commit allowance.
RTT = 0.040
COMMIT_ALLOWANCE = 0.010


def timed_recoveries(
    vault: ThresholdVault, transport: TimingTransport, count: int, warm_up: int = 5
) -> list[float]:
    """Seconds per right-password recovery spent in the client's transport (every
    fan-out of it), after `warm_up` untimed ones."""
    for _ in range(warm_up):
        vault.recover(PASSWORD, ksf_floor=FAST_KSF)
    times = []
    for _ in range(count):
        before = len(transport.seconds)
        vault.recover(PASSWORD, ksf_floor=FAST_KSF)
        times.append(sum(s for _, s in transport.seconds[before:]))
    return times


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
    ) -> ThresholdVault:
        """The entry's threshold vault, set up through the SDK (`ClientConfig.session`)."""
        config = self.config
        assert config is not None and config.fleet_id is not None
        assert config.device_key is not None
        operator = load_operator_private_key(self.root / "operator.key")
        own = replace(
            config,
            account=account,
            entry=entry,
            token=mint_token(operator, account, issuer=ISSUER, audience=AUDIENCE, ttl_seconds=3600),
            fleet_token=mint_token(
                operator,
                account,
                issuer=ISSUER,
                audience=fleet_audience(config.fleet_id),
                ttl_seconds=3600,
                device_key=config.device_key.public_key(),  # fleet tokens are bound to it
            ),
        )
        http = httpx.Client(transport=transport or httpx.HTTPTransport(), timeout=30.0)
        return own.session(ksf_params=FAST_KSF, http=http).threshold

    def evaluations(self) -> int:
        return sum(int(m["evaluations"]) for m in self.deployment.metrics().values())


def fleet_pids(fleet: Fleet) -> list[int]:
    """The node and relay processes (the witness is idle during these runs)."""
    return [
        int(p["pid"]) for name, p in fleet.deployment._processes().items() if "witness" not in name
    ]


# ---- (a) recovery latency -------------------------------------------------------------


def _e2e_latency(fleet: Fleet, recoveries: int) -> list[float]:
    transport = TimingTransport(httpx.HTTPTransport())
    vault = fleet.client("bench-latency", "latency", transport)
    vault.register(PASSWORD, os.urandom(32), ksf=FAST_KSF)
    return timed_recoveries(vault, transport, recoveries)


def _uncommitted_latency(fleet: Fleet, requests: int) -> list[float]:
    """Seconds per fan-out that crosses client → relay → every node → back and is answered
    without a commit: a manifest read (each node answers from the value it holds)."""
    transport = TimingTransport(httpx.HTTPTransport())
    vault = fleet.client("bench-latency", "latency", transport)
    request = ManifestRequest(vault.account, vault.entry)
    for i in range(5 + requests):
        if i == 5:
            transport.seconds.clear()
        answers = vault.vault.call_each(Op.MANIFEST, [request] * NODES, ManifestResponse)
        assert sum(a.response is not None for a in answers) >= vault.t
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


# ---- (b) committed guesses per second -------------------------------------------------


def _wrong_guess(vault: ThresholdVault, version: int) -> int | None:
    """One wrong-password evaluate fan-out: the guesses left after it (the t-th largest
    of the partials' counts), or None when fewer than t nodes answered (not committed)."""
    _, blinded = oprf.blind(b"wrong password")
    now_ms = time.time_ns() // 1_000_000
    request = EvaluateRequest(vault.account, vault.entry, version, blinded, now_ms)
    answers = vault.vault.call_each(Op.EVALUATE, [request] * NODES, EvaluateResponse)
    left = sorted(
        (a.response.guesses_remaining for a in answers if a.response is not None), reverse=True
    )
    return left[vault.t - 1] if len(left) >= vault.t else None


def _commit_latency(fleet: Fleet, commits: int) -> list[float]:
    """One client, sequential wrong-password evaluate fan-outs: each is one committed
    attempt (plus t partial evaluations). Seconds per fan-out, timed in the transport."""
    transport = TimingTransport(httpx.HTTPTransport())
    vault = fleet.client("bench-commit", "commit", transport)
    version = vault.register(PASSWORD, os.urandom(32), ksf=FAST_KSF).version
    for i in range(10 + commits):
        if i % (GUESS_LIMIT - 1) == GUESS_LIMIT - 2:
            vault.recover(PASSWORD, ksf_floor=FAST_KSF)  # reset the count
        assert _wrong_guess(vault, version) is not None
        if i == 9:
            transport.seconds.clear()
    return [s for op, s in transport.seconds if op == str(Op.EVALUATE)]


def _recovery_rate(fleet: Fleet, seconds: float) -> tuple[float, float]:
    """16 clients, each recovering its own entry with the right password in a loop:
    (recoveries per second, CPU seconds per recovery over every fleet process)."""
    vaults = [fleet.client("bench-recover", f"recover-{i}") for i in range(CLIENTS)]
    for vault in vaults:
        vault.register(PASSWORD, os.urandom(32), ksf=FAST_KSF)
    counts = [0] * CLIENTS
    start = threading.Barrier(CLIENTS + 1)
    stop = threading.Event()

    def recover(index: int) -> None:
        start.wait()
        while not stop.is_set():
            try:
                vaults[index].recover(PASSWORD, ksf_floor=FAST_KSF)
            except FleetUnavailable:
                continue
            if not stop.is_set():
                counts[index] += 1

    pids = fleet_pids(fleet)
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
    """(committed wrong guesses per second, guesses counted, evaluations delta, fan-outs
    with fewer than t partials, CPU seconds per committed guess over every fleet process)."""
    vaults = [fleet.client("bench-guess", f"guess-{i}") for i in range(CLIENTS)]
    versions = [v.register(PASSWORD, os.urandom(32), ksf=FAST_KSF).version for v in vaults]
    counts = [0] * CLIENTS
    refused = [0] * CLIENTS
    start = threading.Barrier(CLIENTS + 1)
    stop = threading.Event()

    def guess(index: int) -> None:
        vault = vaults[index]
        start.wait()
        while not stop.is_set():
            left = _wrong_guess(vault, versions[index])
            if left is None:
                refused[index] += 1
                continue
            if stop.is_set():
                break  # finished after the window closed: not counted
            counts[index] += 1
            if left <= 1:
                try:
                    vault.recover(PASSWORD, ksf_floor=FAST_KSF)  # reset the count; not counted
                except (FleetUnavailable, WrongPassword):
                    refused[index] += 1

    before = fleet.evaluations()
    pids = fleet_pids(fleet)
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
    etcd_latency, etcd = _etcd(quick, seconds)
    with tempfile.TemporaryDirectory(prefix="bench-vault-") as tmp:
        fleet = Fleet(Path(tmp) / "deployment")
        try:
            fleet.up()
            e2e = _e2e_latency(fleet, recoveries)
            plain = _uncommitted_latency(fleet, recoveries)
            commit = _commit_latency(fleet, recoveries)
            rate, guesses, evaluations, refused, cpu_guess = _guess_rate(fleet, seconds)
            recovery_rate, cpu_recovery = _recovery_rate(fleet, seconds)
        finally:
            fleet.down()
    rtt_e2e, rtt_plain = _across_sites(recoveries)
    etcd_p50 = median_ms(etcd_latency)
    commit_p50 = median_ms(commit)
    etcd_ref = f"etcd 3.4, {NODES} members, same run"

    p50, p99 = _percentile(e2e, 50) * 1000, _percentile(e2e, 99) * 1000
    read_p50, read_p99 = _percentile(plain, 50) * 1000, _percentile(plain, 99) * 1000
    rtt_p50 = _percentile(rtt_e2e, 50) * 1000
    relay_time = 3 * _percentile(rtt_plain, 50) * 1000
    target = 2 * (RTT + COMMIT_ALLOWANCE) * 1000 + relay_time
    return [
        {
            "name": f"committed wrong-guess evaluate fan-outs/s vs etcd puts/s, {CLIENTS} clients",
            "value": rate,
            "unit": "/s",
            "reference": f"{etcd_ref}: {etcd.per_second:.0f} puts/s; ours: {guesses} "
            f"committed, {refused} with fewer than t partials, {evaluations} partial "
            "evaluations",
            "ratio": rate / etcd.per_second,
            "goal": "ratio ≥ 1.0",
        },
        {
            "name": "one client, one commit (wrong-guess evaluate fan-out) p50 vs etcd put p50",
            "value": commit_p50,
            "unit": "ms",
            "reference": f"{etcd_ref}: put p50 {etcd_p50:.2f} ms",
            "ratio": commit_p50 / etcd_p50,
            "goal": "ratio ≤ 2.0",
        },
        {
            "name": f"threshold recoveries/s (manifest, evaluate, reset), {CLIENTS} clients "
            "vs etcd puts/s",
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
            "name": f"recovery through relay + 5 nodes, p50 (3 fan-outs, n={len(e2e)})",
            "value": p50,
            "unit": "ms",
            "reference": f"manifest read (no commit) p50 {read_p50:.2f} ms",
            "ratio": p50 / read_p50,
            "goal": "p50 ≤ 50 ms on loopback (2 majority commits with fsync)",
        },
        {
            "name": f"recovery through relay + 5 nodes, p99 (n={len(e2e)})",
            "value": p99,
            "unit": "ms",
            "reference": f"manifest read (no commit) p99 {read_p99:.2f} ms",
            "ratio": p99 / read_p99,
            "goal": "p99 ≤ 200 ms on loopback",
        },
        {
            "name": f"recovery p50, {RTT * 1000:.0f} ms RTT between nodes (n={len(rtt_e2e)})",
            "value": rtt_p50,
            "unit": "ms",
            "reference": f"target 2 × ({RTT * 1000:.0f} + {COMMIT_ALLOWANCE * 1000:.0f}) ms +"
            f" client↔relay {relay_time:.1f} ms (3 manifest reads, p50) = {target:.1f} ms",
            "ratio": rtt_p50 / target,
            "goal": "ratio ≤ 1.0",
        },
    ]
