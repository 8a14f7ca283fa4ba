"""The chaos soak: a real local fleet (5 node processes + relay) behind fault-injecting
proxies, many concurrent SDK clients on the threshold vault (client/threshold.py) for a set
time, a chaos driver that kills, terminates (SIGTERM), restarts, cuts off, slows and
stalls a random minority of nodes, and checks at the end.

Layout of a run (see docs/soak.md):

    clients --HTTP--> relay --proxy relay->node<i>--> node<i>
                      node<i> --proxy node<i>->node<j>--> node<j>   (one proxy per link)

`LocalDeployment` provisions the deployment; before any process starts, the driver points
the relay (`relay.toml [relay] nodes`) and every node (`node<i>.toml [node] fleet_file`, a
copy of fleet.toml whose peer addresses are the proxies of node i's outgoing links) at the
proxies. Nodes still listen on the ports of their own node<i>.toml. The top-level
fleet.toml keeps the direct URLs: the driver uses it (through `LocalDeployment.status`) to
watch each node's own health and counters, whatever the proxies do.

No node is hostile here, so consensus numbers every attempt and the bound is exactly L
per window (docs/threshold.md). Checks after healing every fault and waiting for every
node to be ready:

1. no lost registration: every entry whose registration was confirmed is LIVE through the
   fleet (attacked ones DESTROYED), and every node's disk holds it, all agreeing;
2. no guess beyond the limit: each combined OPRF output a client gets answers its own
   attempt number (one output per attempt, numbers rising), at most L attempts after the
   last success; on every node's disk `attempts_used <= L`, and a destroyed entry used
   exactly L; the outputs a client got never exceed the entry's attempts; each node's
   evaluations (summed over restarts) never exceed the attempts of all entries; every
   partial evaluation a client got is in that node's own count on its disk;
3. every success is real: every recovered root key equals the registered one; a wrong
   password never recovers; a right one is never refused; a destroyed entry stays
   destroyed, also when every node is asked to evaluate it directly, and no node at its
   own count of L keeps its share.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault import serving
from backupvault.chaos.proxy import LinkProxy, Mode, ProxyPool
from backupvault.client.config import ClientConfig
from backupvault.client.errors import (
    AlreadyRegistered,
    Destroyed,
    FleetUnavailable,
    NotRegistered,
    RateLimited,
    VaultError,
    WrongPassword,
)
from backupvault.client.pending import PendingStore
from backupvault.client.threshold import ThresholdRecovery, ThresholdVault
from backupvault.client.vault import NodeOutcome, VaultClient
from backupvault.codec import Message
from backupvault.crypto import ksf, oprf
from backupvault.deploy.local import AUDIENCE, ISSUER, DeploymentError, LocalDeployment
from backupvault.hop import metrics_headers
from backupvault.node.config import FleetDescription, NodeConfig, write_toml
from backupvault.node.softhsm import softhsm_env
from backupvault.protocol import (
    EntryStatus,
    ErrorCode,
    EvaluateRequest,
    EvaluateResponse,
    Op,
)
from backupvault.tokens import fleet_audience, load_operator_private_key, mint_token

T = TypeVar("T", bound=Message)

NODES = 5
#: The per-node limit L (the fleet's default); with no hostile node, the bound per window.
GUESS_LIMIT = 10
#: An operation counts as available when it is answered within this long of its start
#: (the issue's goal: 99 % of operations, with at most a minority of nodes faulty).
AVAILABILITY_DEADLINE = 10.0

#: A cheap KSF: a recovery costs milliseconds on the client; the fleet's work is the same.
FAST_KSF = ksf.Argon2idParams(
    memory_kib=256, iterations=1, parallelism=1, salt=ksf.ZERO_SALT, output_len=64
)

#: Relay settings for the soak: every client has its own account, but runs flat out; the
#: default per-account limit would make most requests 429s. A node gives up on a proposal
#: after 4 s, so the relay waits a little longer than that.
RELAY_SETTINGS: dict[str, Any] = {
    "burst": 100_000,
    "rate_per_minute": 6_000_000.0,
    "request_timeout": 6.0,
    "connect_timeout": 1.0,
}


class FaultKind(enum.StrEnum):
    KILL = "kill"  # SIGKILL, restarted after a while (catches up before it answers)
    #: SIGTERM, as an operator's restart: requests in flight get the grace, new ones are
    #: refused; restarted after a while (killed first if it outlives its grace).
    TERM = "term"
    CUT = "cut"  # every link into and out of the node drops everything
    SLOW = "slow"  # every link into and out of the node delays every chunk
    STALL = "stall"  # relay->node: requests arrive, answers are withheld (lost answers)


@dataclass(frozen=True)
class SoakConfig:
    seconds: float = 60.0
    clients: int = 16
    #: Clients that attack their own entry with wrong guesses until it is destroyed.
    attackers: int | None = None  # default: a quarter of the clients, at least one
    seed: int | None = None
    nodes: int = NODES
    max_faulty: int = 2
    #: Mean pause between two faults, and how long a fault lasts (uniform range).
    fault_every: float = 1.5
    fault_seconds: tuple[float, float] = (1.0, 6.0)
    #: The share of operations that must be answered within AVAILABILITY_DEADLINE for the
    #: run to pass (None: the figure is reported, not checked; it depends on the load).
    availability_goal: float | None = None
    #: Keep the deployment folder (logs, stores) here instead of a temporary one.
    directory: Path | None = None
    keep: bool = False
    log: Callable[[str], None] = field(default=lambda _: None)

    @property
    def attacker_count(self) -> int:
        if self.attackers is not None:
            return min(self.attackers, self.clients)
        return max(1, self.clients // 4)


# ---- results -------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Tally:
    """What happened, thread-safe: operations by type and outcome, errors, violations."""

    operations: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    log: Callable[[str], None] = field(default=lambda _: None)

    #: Liveness: when a client last got a definite answer, and the longest wait for one.
    last_answer: float = field(default_factory=time.monotonic)
    longest_without_answer: float = 0.0
    #: Availability: operations answered (not failed) within AVAILABILITY_DEADLINE of their
    #: start, and every operation's duration in seconds.
    answered_in_time: int = 0
    durations: list[float] = field(default_factory=list)
    #: Operations not answered in time, by "kind:outcome" (where availability is lost).
    late: Counter[str] = field(default_factory=Counter)
    #: The first errors' messages (which nodes did not answer, and why).
    samples: list[str] = field(default_factory=list)
    #: Every error's message with its numbers masked, counted: why operations failed.
    reasons: Counter[str] = field(default_factory=Counter)
    #: Their time, by the fan-out it was spent in (the rest: the client's pauses, crypto).
    late_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    _began: threading.local = field(default_factory=threading.local)
    #: Where operations' times come from (a test gives its own, never patching the
    #: process-wide `time.monotonic` other threads use).
    clock: Callable[[], float] = time.monotonic

    def begin(self) -> None:
        """This thread starts an operation now (its `op` call ends it)."""
        self._began.at = self.clock()

    def op(self, kind: str, outcome: str, spent: dict[str, float] | None = None) -> None:
        """End this thread's operation; `spent`: its seconds by fan-out (then cleared)."""
        now = self.clock()
        took = now - getattr(self._began, "at", now)
        by_fanout = dict(spent or {})
        if spent is not None:
            spent.clear()
        with self.lock:
            self.operations[kind] += 1
            self.outcomes[f"{kind}:{outcome}"] += 1
            self.durations.append(took)
            if "@" not in outcome and took <= AVAILABILITY_DEADLINE:
                self.answered_in_time += 1
            else:
                self.late[f"{kind}:{outcome}"] += 1
                for fanout, seconds in by_fanout.items():
                    self.late_seconds[fanout] += seconds
            if "@" not in outcome:  # not a failure (those are named "error@request")
                self.longest_without_answer = max(
                    self.longest_without_answer, now - self.last_answer
                )
                self.last_answer = now

    def availability(self) -> dict[str, Any]:
        """The share of operations answered within the deadline (the issue's goal: 99 %
        with at most a minority of nodes faulty), with the durations' p50 and p99."""
        with self.lock:
            total = sum(self.operations.values())
            ordered = sorted(self.durations)

        def at(share: float) -> float:
            if not ordered:
                return 0.0
            return round(ordered[min(len(ordered) - 1, int(len(ordered) * share))], 3)

        return {
            "deadline_seconds": AVAILABILITY_DEADLINE,
            "operations": total,
            "answered_in_time": self.answered_in_time,
            "share": round(self.answered_in_time / total, 4) if total else 0.0,
            "p50_seconds": at(0.5),
            "p99_seconds": at(0.99),
            "not_in_time": dict(self.late.most_common()),
            "not_in_time_seconds_by_fanout": {
                k: round(v, 1) for k, v in sorted(self.late_seconds.items(), key=lambda x: -x[1])
            },
        }

    def answered(self) -> int:
        with self.lock:
            return sum(v for k, v in self.outcomes.items() if "@" not in k)

    def error(self, name: str, message: str = "") -> None:
        with self.lock:
            self.errors[name] += 1
            if message and len(self.samples) < 40:
                self.samples.append(message)
            if message:
                self.reasons[reason(name, message)] += 1

    def violation(self, text: str) -> None:
        with self.lock:
            self.violations.append(text)
        self.log(f"VIOLATION: {text}")


def restarts_check(exited: list[tuple[int, str]], came_back: int) -> Check:
    """Every node a fault stopped ran again after its restart: one whose process exited
    (its code refused, its store or token unreadable) fails the run, with its last words."""
    return Check(
        "every node restarted after a fault kept running",
        not exited,
        f"{came_back} restarts ready"
        + "".join(f"; node{node} exited: {why}" for node, why in exited[:3]),
    )


def availability_check(figure: dict[str, Any], goal: float | None) -> Check | None:
    """The availability figure against `goal` (a share of all operations), or None
    without a goal. No operation at all is a failure: there is nothing to show."""
    if goal is None:
        return None
    total, in_time = figure["operations"], figure["answered_in_time"]
    share = in_time / total if total else 0.0
    return Check(
        f"availability: at least {100 * goal:.1f} % of operations answered within "
        f"{AVAILABILITY_DEADLINE:.0f} s of their start",
        total > 0 and share >= goal,
        f"{in_time} of {total} ({100 * figure['share']:.1f} %, as in the summary)",
    )


def error_name(err: Exception) -> str:
    """A short, stable name for an error seen by a client."""
    if type(err) is VaultError:
        message = err.message
        if "relay answered 502" in message:
            return "BadNodeAnswer"
        return f"VaultError({message[:60]})"
    return type(err).__name__


def reason(name: str, message: str) -> str:
    """An error's kind and its message's first line, without the entry it names and with
    every number masked, so that the same cause counts once whatever node or entry."""
    first = message.partition(": ")[2].splitlines()[0] if ": " in message else message
    return f"{name}: {re.sub(r'[0-9]+', '#', first)}"


#: Errors a client may see from a healthy fleet under chaos: the request may or may not
#: have taken effect, and nothing it was told was wrong.
TRANSIENT = (FleetUnavailable, RateLimited)


def transient(err: Exception) -> bool:
    return isinstance(err, TRANSIENT)


def _failed(err: Exception, client: TracingVaultClient) -> str:
    """An outcome name for a failed operation: the error, and the fan-out it failed at."""
    return f"{error_name(err)}@{client.current_op}"


# ---- the client side's ghost state -----------------------------------------------------------


@dataclass
class EntryGhost:
    """What the client knows about its entry: keys, passwords, and the attempt number of
    every combined OPRF output it got (each node's partial names the attempt it counted)."""

    account: str
    entry: str
    attacker: bool
    root_key: bytes
    password: str
    #: After a password change whose answer was lost: the passwords it may have now.
    candidates: list[str] = field(default_factory=list)
    told_done: bool = False  # the fleet answered the registration with every share held
    registered: bool = False  # confirmed registered (t acknowledgements, or already-registered)
    destroyed: bool = False  # the fleet said destroyed
    #: Told "destroyed" with an output (its L-th attempt): the replicated state turns
    #: DESTROYED only at the next request, so the fleet may still call it LIVE until then.
    exhausted: bool = False
    #: The attempt of the last known success (the window's start). A reset that reached no
    #: node leaves the fleet's window starting earlier, so `attempt - base <= L` still
    #: holds; a password change restarts it at the same attempt.
    base: int = 0
    #: The attempt of the latest output or success: a new output must answer a later one.
    last_attempt: int = 0
    outputs: int = 0  # combined outputs (right or wrong password) received
    successes: int = 0
    wrong_answers: int = 0  # WrongPassword answers since the last success
    charged: int = 0  # guesses the client believes used since the last success
    max_window: int = 0  # the most attempts after a success at which it got an output
    #: Attempts the fleet counted that no output the client received answered (gaps in the
    #: attempt numbers): answers lost to faults, fan-outs that got fewer than t partials.
    hidden_guesses: int = 0
    #: Of those, gaps that appeared while the client had seen no error since its last output.
    hidden_without_error: int = 0
    errors_since_output: int = 0
    #: Every partial evaluation a node gave: (node, version, attempt). Each must be counted
    #: in that node's own row (`_uncounted_partials`).
    partials_from: set[tuple[int, int, int]] = field(default_factory=set)
    #: The device's pending deliveries (degraded registrations, unconfirmed erasures),
    #: kept across the entry's clients as the CLI keeps them in its file.
    pending: PendingStore = field(default_factory=lambda: PendingStore(None), repr=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.account, self.entry)

    def on_output(self, attempt: int, tally: Tally) -> None:
        """The client combined t partials, all for `attempt`."""
        self.outputs += 1
        where = f"{self.account}/{self.entry}"
        if attempt <= self.last_attempt:
            tally.violation(
                f"{where}: an output for attempt {attempt} after one for attempt "
                f"{self.last_attempt} (an evaluation not paid for by its own attempt)"
            )
        gap = attempt - self.last_attempt - 1
        if gap > 0:
            self.hidden_guesses += gap
            if self.errors_since_output == 0:
                self.hidden_without_error += gap
        self.errors_since_output = 0
        self.last_attempt = max(self.last_attempt, attempt)
        window = attempt - self.base
        self.max_window = max(self.max_window, window)
        self.charged = max(self.charged, window)
        if window > GUESS_LIMIT:
            tally.violation(
                f"{where}: an output for attempt {attempt}, {window} attempts after the "
                f"success at attempt {self.base} (limit {GUESS_LIMIT})"
            )

    def reset_may_have_landed(self, failed_at: Op | None) -> None:
        """A right-password recovery failed while sending the owner's reset: the entry
        opened at the latest output's attempt and the signed reset went out, so nodes may
        have taken it (and settling commits a value a minority took, docs/threshold.md),
        which starts the fleet's window there. A window checked from a later start than
        the fleet's never reports a correct fleet (it can only miss an output beyond L
        if the reset reached no node); one from an earlier start can (soak run P). What
        the client believes it used is left as it was."""
        if failed_at is Op.RESET:
            self.base = max(self.base, self.last_attempt)

    def on_success(self, attempt: int) -> None:
        """The owner proved the password at `attempt`: the window starts again there."""
        self.base = attempt
        self.last_attempt = max(self.last_attempt, attempt)
        self.successes += 1
        self.wrong_answers = 0
        self.charged = 0


class TracingVaultClient(VaultClient):
    """The SDK's transport, reporting which fan-out is in flight and every node's partial
    evaluation (the attempt it counted) for the recovery under way. Only observes: requests
    and answers are unchanged. Built from the client a `FleetSession` made, so the soak
    sets up its clients exactly as the SDK does."""

    def __init__(self, base: VaultClient) -> None:
        vars(self).update(vars(base))
        self.current_op: Op | None = None
        #: Node index -> attempt of its partial, and the version it named, since
        #: `begin_recovery`.
        self.partials: dict[int, int] = {}
        self.partial_versions: dict[int, int] = {}
        #: Seconds spent in each kind of fan-out, since the client's last operation ended.
        self.seconds: dict[str, float] = defaultdict(float)

    def begin_recovery(self) -> None:
        self.partials = {}
        self.partial_versions = {}

    def call_each(
        self, op: Op, requests: Sequence[Message], kind: type[T], resends: int = 0
    ) -> list[NodeOutcome[T]]:
        self.current_op = op
        started = time.monotonic()
        outcomes = super().call_each(op, requests, kind, resends)
        self.seconds[str(op)] += time.monotonic() - started
        for outcome in outcomes:
            request = requests[outcome.index]
            if isinstance(outcome.response, EvaluateResponse) and isinstance(
                request, EvaluateRequest
            ):
                self.partials.setdefault(outcome.index, outcome.response.attempt)
                self.partial_versions.setdefault(outcome.index, request.version)
        return outcomes

    def output_attempt(self, threshold: int, tally: Tally, where: str) -> int | None:
        """The attempt the recovery under way combined an output for (None: fewer than t
        partials, so no output). Every partial for one blinded element names one attempt."""
        if len(self.partials) < threshold:
            return None
        attempts = set(self.partials.values())
        if len(attempts) > 1:
            tally.violation(f"{where}: one blinded element counted as attempts {sorted(attempts)}")
        return max(attempts)


@dataclass
class GhostClient:
    """An entry's threshold vault and the transport that traces it."""

    vault: ThresholdVault
    trace: TracingVaultClient


# ---- the deployment behind proxies -------------------------------------------------------------


class Counters:
    """Node counters (/v1/metrics) summed over every process a node had: polled often, and
    once more right before a kill or a SIGTERM; a restarted node's counters start again at
    0."""

    def __init__(self, urls: dict[int, str], key: Ed25519PrivateKey) -> None:
        self.urls = urls
        self._key = key  # the local relay's: nodes answer metrics to its signature only
        self.done: dict[int, Counter[str]] = {i: Counter() for i in urls}
        self.last: dict[int, dict[str, int]] = {i: {} for i in urls}
        self.lock = threading.Lock()
        self._http = httpx.Client(timeout=httpx.Timeout(1.0))

    def poll(self, node: int) -> bool:
        try:
            answer = self._http.get(
                f"{self.urls[node]}/v1/metrics", headers=metrics_headers(self._key, node)
            )
            answer.raise_for_status()
            data = answer.json()
        except (httpx.HTTPError, ValueError):
            return False
        values = {k: int(v) for k, v in data.items() if k != "node" and isinstance(v, int)}
        with self.lock:
            last = self.last[node]
            if any(values.get(k, 0) < v for k, v in last.items()):
                # A restart we did not see coming: what the old process had is in `last`.
                self.done[node].update(last)
            self.last[node] = values
        return True

    def poll_all(self) -> None:
        for node in self.urls:
            self.poll(node)

    def process_ended(self, node: int) -> None:
        with self.lock:
            self.done[node].update(self.last[node])
            self.last[node] = {}

    def total(self, name: str) -> int:
        return sum(self.of(i, name) for i in self.urls)

    def of(self, node: int, name: str) -> int:
        """Node `node`'s counter `name`, summed over its processes."""
        with self.lock:
            return self.done[node][name] + self.last[node].get(name, 0)

    def close(self) -> None:
        self._http.close()


#: Prints a node's `inspect_store` as JSON (argument: the node's config file).
DUMP_SCRIPT = (
    "import json, sys; from pathlib import Path; "
    "from backupvault.node.config import NodeConfig; "
    "from backupvault.node.main import inspect_store; "
    "print(json.dumps(inspect_store(NodeConfig.load(Path(sys.argv[1])))))"
)


class ProxiedFleet:
    """A LocalDeployment whose relay and nodes reach each node through a `LinkProxy`."""

    def __init__(self, root: Path, nodes: int, log: Callable[[str], None]) -> None:
        self.root = root
        self.nodes = nodes
        self.log = log
        self.deployment = LocalDeployment(root)
        self.pool = ProxyPool()
        self.node_urls: dict[int, str] = {}
        self.counters: Counters | None = None
        self._tokens: dict[str, str] = {}
        self.client_config: ClientConfig | None = None

    def provision(self) -> None:
        self.deployment.provision(self.nodes)
        fleet = FleetDescription.load(self.root / "fleet.toml")
        configs = {i: NodeConfig.load(self.deployment.node_config(i)) for i in range(self.nodes)}
        ports = {i: c.port for i, c in configs.items()}
        for node in fleet.nodes:
            # The node listens where its own config says; fleet.toml's URL is the same port.
            assert node.url.endswith(f":{ports[node.index]}"), (node.url, ports)
            assert configs[node.index].peer_listen == node.peer, (node, configs[node.index])
            self.node_urls[node.index] = node.url
        for target in range(self.nodes):
            self.pool.add("relay", f"node{target}", ports[target])
            peer_port = int(fleet.nodes[target].peer.rpartition(":")[2])
            for source in range(self.nodes):
                if source != target:
                    self.pool.add(f"node{source}", f"node{target}", peer_port)
        for source in range(self.nodes):
            own = replace(
                fleet,
                nodes=tuple(
                    n
                    if n.index == source
                    else replace(
                        n, peer=self.pool.links[(f"node{source}", f"node{n.index}")].address
                    )
                    for n in fleet.nodes
                ),
            )
            own.save(self.root / f"fleet-node{source}.toml")
            path = self.deployment.node_config(source)
            config = tomllib.loads(path.read_text())
            config["node"]["fleet_file"] = f"fleet-node{source}.toml"
            write_toml(path, config)
        relay_path = self.root / "relay.toml"
        relay = tomllib.loads(relay_path.read_text())
        relay["relay"]["nodes"] = [
            self.pool.links[("relay", f"node{i}")].url for i in range(self.nodes)
        ]
        relay["relay"].update(RELAY_SETTINGS)
        write_toml(relay_path, relay)
        self.client_config = ClientConfig.load(self.root / "client.toml")
        self.counters = Counters(self.node_urls, self.deployment.relay_key())

    def start(self, timeout: float = 90.0) -> None:
        self.pool.start()
        for index in range(self.nodes):
            self.deployment.start_node(index)
        self.deployment.start_relay()
        self.deployment.wait_ready(timeout)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.deployment.down()
        self.pool.stop()
        if self.counters is not None:
            self.counters.close()

    def token(self, account: str) -> str:
        if account not in self._tokens:
            operator = load_operator_private_key(self.root / "operator.key")
            self._tokens[account] = mint_token(
                operator, account, issuer=ISSUER, audience=AUDIENCE, ttl_seconds=24 * 3600
            )
        return self._tokens[account]

    def fleet_token(self, account: str) -> str:
        """The account's token for the nodes, carried inside the seal."""
        assert self.client_config is not None and self.client_config.fleet_id is not None
        operator = load_operator_private_key(self.root / "operator.key")
        audience = fleet_audience(self.client_config.fleet_id)
        assert self.client_config.device_key is not None
        device = self.client_config.device_key.public_key()
        return mint_token(
            operator,
            account,
            issuer=ISSUER,
            audience=audience,
            ttl_seconds=86400,
            device_key=device,
        )

    def client(self, ghost: EntryGhost, http: httpx.Client) -> GhostClient:
        """The entry's threshold vault through the SDK (`ClientConfig.session`, pinned
        keys), its transport traced."""
        config = self.client_config
        assert config is not None
        own = replace(
            config,
            account=ghost.account,
            token=self.token(ghost.account),
            fleet_token=self.fleet_token(ghost.account),
            entry=ghost.entry,
        )
        vault = own.session(ksf_params=FAST_KSF, http=http).threshold
        vault.pending = ghost.pending
        trace = TracingVaultClient(vault.vault)
        vault.vault = trace
        return GhostClient(vault, trace)

    def node_exited(self, index: int) -> str | None:
        """Why node `index`'s process has exited (its log's last lines), or None while it
        runs."""
        name = f"node{index}"
        if name in self.deployment.running():
            return None
        return self.deployment.last_words(name)

    def node_ready(self, index: int) -> bool:
        try:
            answer = httpx.get(f"{self.node_urls[index]}/v1/health", timeout=1.0)
            return answer.status_code == 200 and bool(answer.json().get("ready"))
        except (httpx.HTTPError, ValueError):
            return False

    def stop_node(self, index: int, sig: signal.Signals) -> None:
        """Read the node's counters one last time, then send `sig` (SIGKILL: a crash;
        SIGTERM: an operator's stop). `restart` reaps the process."""
        assert self.counters is not None
        self.counters.poll(index)
        self.deployment.signal_process(f"node{index}", sig)

    def restart(self, index: int) -> bool:
        """Start the node again. A process of it still running (obeying a SIGTERM) gets
        the rest of its grace, then is killed: True if it had to be."""
        name = f"node{index}"
        deadline = time.monotonic() + serving.GRACEFUL_SECONDS + 2
        while name in self.deployment.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        outlived = name in self.deployment.running()
        self.deployment.stop_process(name, signal.SIGKILL)
        assert self.counters is not None
        self.counters.process_ended(index)
        self.deployment.start_node(index)
        return outlived

    def dump(self, index: int) -> list[dict[str, Any]]:
        """Every entry on node `index`'s disk, as `backupvault node inspect` reads it (its
        `inspect_store`, in a process of its own: the node's token needs its SoftHSM2
        configuration in the environment)."""
        env = softhsm_env(self.root / f"node{index}" / "hsm" / "softhsm2.conf")
        done = subprocess.run(
            [sys.executable, "-c", DUMP_SCRIPT, str(self.deployment.node_config(index))],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"dumping node {index} failed: {done.stderr.strip()[-500:]}")
        data: list[dict[str, Any]] = json.loads(done.stdout)
        return data


# ---- the chaos driver ----------------------------------------------------------------------------


#: Faults that stop the node's process, with their signal; the driver restarts it.
_STOPS = {FaultKind.KILL: signal.SIGKILL, FaultKind.TERM: signal.SIGTERM}


@dataclass
class ActiveFault:
    node: int
    kind: FaultKind
    until: float
    restarted: bool = False  # KILL, TERM: the process runs again, catching up
    delay: float = 0.0  # SLOW: what each chunk is held on the node's links
    slow: bool = False  # KILL, TERM: still not ready 30 s after the restart (reported once)
    exited: bool = False  # KILL, TERM: the restarted process exited (reported once)


class ChaosDriver:
    """Injects faults on a random minority of nodes; never more than `max_faulty` at once
    (a killed node counts as faulty until it has caught up and is ready again)."""

    def __init__(self, fleet: ProxiedFleet, config: SoakConfig, rng: random.Random) -> None:
        self.fleet = fleet
        self.config = config
        self.rng = rng
        self.active: dict[int, ActiveFault] = {}
        self.injected: Counter[str] = Counter()
        self.max_concurrent = 0
        self.restart_seconds: list[float] = []
        self.slow_catch_up = 0
        #: Restarted nodes whose process exited before it was ready: (node, its last words).
        self.exited: list[tuple[int, str]] = []
        #: Terminated nodes still running at the end of their grace (SIGKILLed then).
        self.outlived_term = 0
        self._kinds: list[FaultKind] = []
        self._restarted_at: dict[int, float] = {}
        self.events: list[dict[str, Any]] = []
        self._started = time.monotonic()

    def _next_kind(self) -> FaultKind:
        """Each kind once per round, in a random order: every kind shows up in a short run."""
        if not self._kinds:
            self._kinds = list(FaultKind)
            self.rng.shuffle(self._kinds)
        return self._kinds.pop()

    def _event(self, what: str, node: int, **extra: Any) -> None:
        at = round(time.monotonic() - self._started, 2)
        self.events.append({"t": at, "event": what, "node": node, **extra})
        self.config.log(f"[{at:7.2f}s] {what} node{node} {extra if extra else ''}".rstrip())

    def run(self, stop: threading.Event) -> None:
        assert self.fleet.counters is not None
        next_fault = time.monotonic() + self.rng.uniform(0.3, 1.0)
        while not stop.is_set():
            now = time.monotonic()
            self.fleet.counters.poll_all()
            self._end_expired(now)
            if now >= next_fault and len(self.active) < self.config.max_faulty:
                self._inject(now)
                next_fault = now + self.rng.expovariate(1.0 / self.config.fault_every)
            self.max_concurrent = max(self.max_concurrent, len(self.active))
            stop.wait(0.2)

    def _inject(self, now: float) -> None:
        healthy = [i for i in range(self.fleet.nodes) if i not in self.active]
        node = self.rng.choice(healthy)
        kind = self._next_kind()
        low, high = self.config.fault_seconds
        until = now + self.rng.uniform(low, high)
        self.begin(node, kind, until)
        self._event(str(kind), node, seconds=round(until - now, 2))

    def begin(self, node: int, kind: FaultKind, until: float) -> None:
        """Start fault `kind` on `node` until `until` (monotonic seconds)."""
        fault = ActiveFault(node, kind, until)
        if kind in _STOPS:
            self.fleet.stop_node(node, _STOPS[kind])
        elif kind is FaultKind.SLOW:
            fault.delay = round(self.rng.uniform(0.05, 0.6), 3)
        self.active[node] = fault
        self.injected[kind] += 1
        self._set_links(node)

    def _set_links(self, node: int) -> None:
        """Give every link of `node` the mode its two ends' faults call for together. A
        link between two faulty nodes belongs to both faults: setting it from one fault
        alone would let a cut node talk to a slowed peer, or a heal end another node's
        cut on the link they share."""
        by_mode: dict[tuple[Mode, float], list[LinkProxy]] = defaultdict(list)
        for (source, target), link in self.fleet.pool.links.items():
            if f"node{node}" in (source, target):
                wanted = self._link_mode(source, target)
                if (link.mode, link.delay) != wanted:
                    by_mode[wanted].append(link)
        for (mode, delay), links in by_mode.items():
            self.fleet.pool.set_mode(links, mode, delay)

    def _link_mode(self, source: str, target: str) -> tuple[Mode, float]:
        """The strongest of the modes the active faults of a link's ends ask for: a drop,
        then a stall (relay links only), then the longer delay."""
        wanted: list[tuple[int, Mode, float]] = []
        for end in (source, target):
            fault = self.active.get(int(end[4:])) if end.startswith("node") else None
            if fault is None:
                continue
            if fault.kind is FaultKind.CUT:
                wanted.append((3, Mode.DROP, 0.0))
            elif fault.kind is FaultKind.STALL and source == "relay":
                wanted.append((2, Mode.STALL, 0.0))
            elif fault.kind is FaultKind.SLOW:
                wanted.append((1, Mode.DELAY, fault.delay))
        if not wanted:
            return (Mode.PASS, 0.0)
        _, mode, delay = max(wanted)
        return (mode, delay)

    def _end_expired(self, now: float) -> None:
        for node, fault in list(self.active.items()):
            if fault.kind in _STOPS:
                if not fault.restarted and now >= fault.until:
                    self._restart(node)
                    fault.restarted = True
                    self._restarted_at[node] = now
                elif fault.restarted and not fault.exited and (why := self.fleet.node_exited(node)):
                    # It will not become ready: said now, where it used to look like a slow
                    # catch-up until the heal (a node refusing its own code, session 55).
                    fault.exited = True
                    self.exited.append((node, why))
                    self._event("exited after its restart", node, why=why)
                elif fault.restarted and now - self._restarted_at[node] > 30 and not fault.slow:
                    fault.slow = True
                    self.slow_catch_up += 1
                    self._event("still catching up 30 s after restart", node)
                elif fault.restarted and self.fleet.node_ready(node):
                    took = now - self._restarted_at.pop(node)
                    self.restart_seconds.append(took)
                    del self.active[node]
                    self._event("ready", node, catch_up_seconds=round(took, 2))
            elif now >= fault.until:
                self.heal(node)

    def _restart(self, node: int) -> None:
        """Start a stopped node again; one that outlived its SIGTERM grace is counted."""
        if self.fleet.restart(node):
            self.outlived_term += 1
            self._event("still running after its SIGTERM grace; killed", node)
        self._event("restart", node)

    def heal(self, node: int) -> None:
        """End the link fault on `node`; the links it shares with another faulty node keep
        that node's fault."""
        del self.active[node]
        self._set_links(node)
        self._event("heal", node)

    def heal_all(self, timeout: float = 60.0) -> None:
        """End every fault: all links pass, every node runs and is ready."""
        self.fleet.pool.set_mode(self.fleet.pool.links.values(), Mode.PASS)
        for node, fault in list(self.active.items()):
            if fault.kind in _STOPS and not fault.restarted:
                self._restart(node)
        self.active.clear()
        for index in range(self.fleet.nodes):
            self.fleet.deployment.start_node(index)  # no-op for a running node
        self.fleet.deployment.wait_ready(timeout)
        self.config.log("healed every fault; every node is ready")


# ---- the workload ----------------------------------------------------------------------------


def _password(rng: random.Random) -> str:
    return "pw-" + "".join(rng.choice("abcdefghijkmnpqrstuvwxyz23456789") for _ in range(16))


def recover_traced(
    ghost: EntryGhost, client: GhostClient, password: str, tally: Tally
) -> ThresholdRecovery:
    """One threshold recovery; the output it combined (if any) goes to the ghost, whatever
    the recovery ends with (a wrong password and a destruction at 0 are outputs too)."""
    client.trace.begin_recovery()
    try:
        found = client.vault.recover(password, ksf_floor=FAST_KSF)
    finally:
        where = f"{ghost.account}/{ghost.entry}"
        for node, evaluated in client.trace.partials.items():
            ghost.partials_from.add((node, client.trace.partial_versions[node], evaluated))
        attempt = client.trace.output_attempt(client.vault.t, tally, where)
        if attempt is not None:
            ghost.on_output(attempt, tally)
    if found.attempt != attempt:
        tally.violation(f"{where}: recovered at attempt {found.attempt}, partials for {attempt}")
    return found


class Worker:
    """One client thread: its own account; a normal client owns one entry and mixes right
    and wrong recoveries, status and password changes; an attacker registers an entry and
    guesses wrong until the fleet destroys it, then starts on a new entry."""

    def __init__(
        self,
        index: int,
        attacker: bool,
        fleet: ProxiedFleet,
        tally: Tally,
        rng: random.Random,
        ghosts: list[EntryGhost],
        ghosts_lock: threading.Lock,
    ) -> None:
        self.index = index
        self.attacker = attacker
        self.fleet = fleet
        self.tally = tally
        self.rng = rng
        self.ghosts = ghosts
        self.ghosts_lock = ghosts_lock
        self.account = f"soak-{'attacker' if attacker else 'user'}-{index}"
        self.http = httpx.Client(timeout=httpx.Timeout(45.0, connect=5.0))

    def _new_ghost(self, entry: str) -> tuple[EntryGhost, GhostClient]:
        ghost = EntryGhost(self.account, entry, self.attacker, os.urandom(32), _password(self.rng))
        with self.ghosts_lock:
            self.ghosts.append(ghost)
        return ghost, self.fleet.client(ghost, self.http)

    def run(self, stop: threading.Event) -> None:
        try:
            if self.attacker:
                self._attack(stop)
            else:
                self._use(stop)
        except Exception as err:  # a bug in the soak itself, or an unexpected client error
            self.tally.violation(f"{self.account}: worker crashed: {error_name(err)}: {err!r}")
        finally:
            self.http.close()

    def _pause_after(self, err: Exception, stop: threading.Event, ghost: EntryGhost) -> None:
        ghost.errors_since_output += 1
        self.tally.error(error_name(err), f"{ghost.account}/{ghost.entry}: {err}")
        stop.wait(self.rng.uniform(0.05, 0.3))

    def _register(self, ghost: EntryGhost, client: GhostClient, stop: threading.Event) -> bool:
        tried = False
        while not stop.is_set():
            self.tally.begin()
            try:
                client.vault.register(ghost.password, ghost.root_key, ksf=FAST_KSF)
            except AlreadyRegistered:
                # An earlier try of ours committed its manifest: same password, same root
                # key. Not "told done": the final checks recover it like any other.
                self.tally.op(
                    "register",
                    "already_registered" if tried else "already_first",
                    client.trace.seconds,
                )
                ghost.registered = True
                return True
            except (WrongPassword, Destroyed, NotRegistered) as err:
                self.tally.violation(f"{ghost.account}/{ghost.entry}: register got {err!r}")
                return False
            except VaultError as err:
                self.tally.op("register", _failed(err, client.trace), client.trace.seconds)
                if not transient(err):
                    self.tally.violation(f"{ghost.account}/{ghost.entry}: register: {err!r}")
                    return False
                tried = True
                self._pause_after(err, stop, ghost)
                continue
            self.tally.op("register", "ok", client.trace.seconds)
            ghost.told_done = ghost.registered = True
            return True
        return False

    # ---- attackers ----

    def _attack(self, stop: threading.Event) -> None:
        generation = 0
        while not stop.is_set():
            ghost, client = self._new_ghost(f"attack-{generation}")
            generation += 1
            if not self._register(ghost, client, stop):
                return
            while not stop.is_set() and not ghost.destroyed:
                self._wrong_recovery(ghost, client, stop)

    # ---- normal users ----

    def _use(self, stop: threading.Event) -> None:
        ghost, client = self._new_ghost("main")
        if not self._register(ghost, client, stop):
            return
        while not stop.is_set() and not ghost.destroyed:
            roll = self.rng.random()
            if roll < 0.40:
                self._right_recovery(ghost, client, stop)
            elif roll < 0.65:
                # Leave room for the guesses a lost answer may have cost: never risk the
                # entry of a user who knows the password.
                if ghost.charged <= GUESS_LIMIT - 4 and not ghost.candidates:
                    self._wrong_recovery(ghost, client, stop)
                else:
                    self._right_recovery(ghost, client, stop)
            elif roll < 0.90:
                self._status(ghost, client, stop)
            else:
                self._change_password(ghost, client, stop)

    def _right_recovery(
        self, ghost: EntryGhost, client: GhostClient, stop: threading.Event
    ) -> None:
        self.tally.begin()
        password = ghost.candidates[0] if ghost.candidates else ghost.password
        where = f"{ghost.account}/{ghost.entry}"
        try:
            found = recover_traced(ghost, client, password, self.tally)
        except WrongPassword as err:
            if ghost.candidates:
                # The password change whose answer was lost did not happen after all.
                ghost.password = ghost.candidates[1]
                ghost.candidates = []
                ghost.wrong_answers += 1
                self.tally.op(
                    "recover_right", "resolved_lost_password_change", client.trace.seconds
                )
                return
            self.tally.op("recover_right", "WrongPassword", client.trace.seconds)
            self.tally.violation(f"{where}: the right password was refused: {err!r}")
            return
        except Destroyed as err:
            self.tally.op("recover_right", "Destroyed", client.trace.seconds)
            self.tally.violation(
                f"{where}: a registered entry was destroyed (last attempt {ghost.last_attempt},"
                f" last success at {ghost.base}, {ghost.hidden_guesses} attempts without an"
                f" output so far): {err!r}"
            )
            ghost.destroyed = True
            return
        except NotRegistered as err:
            self.tally.op("recover_right", "NotRegistered", client.trace.seconds)
            self.tally.violation(f"{where}: registration lost: {err!r}")
            ghost.destroyed = True
            return
        except VaultError as err:
            self.tally.op("recover_right", _failed(err, client.trace), client.trace.seconds)
            if not transient(err):
                self.tally.violation(f"{where}: right-password recovery: {err!r}")
            ghost.charged += 1  # the attempt may have been counted
            ghost.reset_may_have_landed(client.trace.current_op)
            self._pause_after(err, stop, ghost)
            return
        if found.root_key != ghost.root_key:
            self.tally.op("recover_right", "WRONG_ROOT_KEY", client.trace.seconds)
            self.tally.violation(f"{where}: recovered a root key that was never registered")
            return
        self.tally.op("recover_right", "ok", client.trace.seconds)
        if ghost.candidates:
            ghost.password, ghost.candidates = password, []
        ghost.on_success(found.attempt)

    def _wrong_recovery(
        self, ghost: EntryGhost, client: GhostClient, stop: threading.Event
    ) -> None:
        self.tally.begin()
        where = f"{ghost.account}/{ghost.entry}"
        kind = "attack_guess" if ghost.attacker else "recover_wrong"
        outputs = ghost.outputs
        try:
            found = recover_traced(ghost, client, _password(self.rng) + "-wrong", self.tally)
        except WrongPassword as err:
            self.tally.op(kind, "WrongPassword", client.trace.seconds)
            ghost.wrong_answers += 1
            ghost.charged = max(ghost.charged, GUESS_LIMIT - err.guesses_remaining)
            if ghost.wrong_answers > GUESS_LIMIT:
                self.tally.violation(f"{where}: {ghost.wrong_answers} wrong answers since success")
            return
        except Destroyed:
            self.tally.op(kind, "Destroyed", client.trace.seconds)
            if not ghost.attacker:
                self.tally.violation(
                    f"{where}: destroyed while the user had guesses left (last attempt "
                    f"{ghost.last_attempt}, last success at {ghost.base})"
                )
            ghost.destroyed = True
            ghost.exhausted = ghost.outputs > outputs
            return
        except NotRegistered as err:
            self.tally.op(kind, "NotRegistered", client.trace.seconds)
            self.tally.violation(f"{where}: registration lost: {err!r}")
            ghost.destroyed = True
            return
        except VaultError as err:
            self.tally.op(kind, _failed(err, client.trace), client.trace.seconds)
            if not transient(err):
                self.tally.violation(f"{where}: wrong-password recovery: {err!r}")
            ghost.charged += 1
            self._pause_after(err, stop, ghost)
            return
        self.tally.op(kind, "RECOVERED_WITH_WRONG_PASSWORD", client.trace.seconds)
        self.tally.violation(
            f"{where}: a wrong password recovered a key (ours: {found.root_key == ghost.root_key})"
        )

    def _status(self, ghost: EntryGhost, client: GhostClient, stop: threading.Event) -> None:
        self.tally.begin()
        where = f"{ghost.account}/{ghost.entry}"
        try:
            status = client.vault.status()
        except VaultError as err:
            self.tally.op("status", _failed(err, client.trace), client.trace.seconds)
            if not transient(err):
                self.tally.violation(f"{where}: status: {err!r}")
            self._pause_after(err, stop, ghost)
            return
        self.tally.op("status", "ok", client.trace.seconds)
        if status.status is not EntryStatus.LIVE:
            self.tally.violation(f"{where}: status {status.status.name} for a registered entry")
        elif not 0 <= status.guesses_remaining <= GUESS_LIMIT:
            self.tally.violation(f"{where}: status shows {status.guesses_remaining} guesses left")

    def _change_password(
        self, ghost: EntryGhost, client: GhostClient, stop: threading.Event
    ) -> None:
        if ghost.candidates:
            self._right_recovery(ghost, client, stop)
            return
        self.tally.begin()
        where = f"{ghost.account}/{ghost.entry}"
        new = _password(self.rng)
        try:
            found = recover_traced(ghost, client, ghost.password, self.tally)
            if found.root_key != ghost.root_key:
                self.tally.op("change_password", "WRONG_ROOT_KEY", client.trace.seconds)
                self.tally.violation(f"{where}: recovered a root key that was never registered")
                return
            # A committed change starts the window at this same attempt.
            ghost.on_success(found.attempt)
            client.vault.change_password(found, new, ksf=FAST_KSF)
        except WrongPassword as err:
            self.tally.op("change_password", "WrongPassword", client.trace.seconds)
            self.tally.violation(f"{where}: the right password was refused: {err!r}")
            return
        except (Destroyed, NotRegistered) as err:
            self.tally.op("change_password", type(err).__name__, client.trace.seconds)
            self.tally.violation(f"{where}: registration lost: {err!r}")
            ghost.destroyed = True
            return
        except VaultError as err:
            self.tally.op("change_password", _failed(err, client.trace), client.trace.seconds)
            if not transient(err):
                self.tally.violation(f"{where}: password change: {err!r}")
            ghost.reset_may_have_landed(client.trace.current_op)
            if client.trace.current_op in (Op.COMMIT_SHARES, Op.MANIFEST):
                # The commit may have landed (a failed staging changes nothing).
                ghost.candidates = [new, ghost.password]
            self._pause_after(err, stop, ghost)
            return
        self.tally.op("change_password", "ok", client.trace.seconds)
        ghost.password = new


# ---- final checks -----------------------------------------------------------------------------

R = TypeVar("R")


def _retry(call: Callable[[], R], until: float) -> R:
    """Retries `call` on transient errors (the fleet may still be settling) until `until`."""
    while True:
        try:
            return call()
        except VaultError as err:
            if not transient(err) or time.monotonic() > until:
                raise
            time.sleep(0.3)


def final_checks(
    fleet: ProxiedFleet,
    ghosts: list[EntryGhost],
    tally: Tally,
    log: Callable[[str], None],
    fleet_live: bool = True,
) -> tuple[list[Check], dict[str, Any]]:
    """The end-of-run checks. With `fleet_live` False (the fleet did not get ready again
    after the heal) only what needs no fleet answer: the disks, read directly, and what
    the clients saw."""
    checks: list[Check] = []
    figures: dict[str, Any] = {}
    assert fleet.counters is not None
    fleet.counters.poll_all()
    http = httpx.Client(timeout=httpx.Timeout(45.0, connect=5.0))
    local = Tally()
    deadline = time.monotonic() + 60

    # Through the fleet: every confirmed registration is live, every destroyed entry is
    # destroyed (t nodes agreeing on the manifest, or on the tombstone).
    known = [g for g in ghosts if g.registered]
    lost: list[str] = []
    versions: dict[tuple[str, str], int] = {}  # each entry's version, as the fleet says
    for ghost in known if fleet_live else []:
        client = fleet.client(ghost, http)
        try:
            found = _retry(client.vault.status, deadline)
            status = found.status
        except VaultError as err:
            lost.append(f"{ghost.account}/{ghost.entry}: status failed: {err!r}")
            continue
        versions[ghost.key] = found.version
        expected = {EntryStatus.DESTROYED} if ghost.destroyed else {EntryStatus.LIVE}
        if ghost.attacker and not ghost.destroyed:
            expected = {EntryStatus.LIVE, EntryStatus.DESTROYED}  # stopped mid-attack
        if ghost.exhausted:
            # Told "destroyed" with its L-th output: the entry turns DESTROYED at the next
            # request (checked below: it stays destroyed, with exactly L attempts).
            expected = {EntryStatus.LIVE, EntryStatus.DESTROYED}
        if status not in expected:
            lost.append(f"{ghost.account}/{ghost.entry}: {status.name}, expected {expected}")
        if status is EntryStatus.DESTROYED:
            ghost.destroyed = True
    live_expected = [g for g in known if not g.destroyed]
    if fleet_live:
        checks.append(
            Check(
                "registrations live through the fleet",
                not lost,
                f"{len(live_expected)} live, {len(known) - len(live_expected)} destroyed as "
                f"attacked, {len(lost)} lost" + (f": {lost[:5]}" if lost else ""),
            )
        )

    # Every success a real success: one last recovery of every live entry of a user; and a
    # destroyed entry stays destroyed, with no output, even for the right password. (Both
    # commit a round on the entry, which the committing node repairs onto every node.)
    destroyed = [g for g in known if g.destroyed]
    wrong_keys: list[str] = []
    recovered = 0
    for ghost in live_expected if fleet_live else []:
        if ghost.attacker:
            continue
        client = fleet.client(ghost, http)
        passwords = list(ghost.candidates) or [ghost.password]  # candidates: new, then old
        for password in passwords:

            def recover(
                client: GhostClient = client, password: str = password, ghost: EntryGhost = ghost
            ) -> bytes:
                return recover_traced(ghost, client, password, local).root_key

            try:
                root_key = _retry(recover, deadline)
            except WrongPassword:
                if password == passwords[-1]:
                    wrong_keys.append(f"{ghost.account}/{ghost.entry}: password refused")
                continue
            except VaultError as err:
                wrong_keys.append(f"{ghost.account}/{ghost.entry}: {err!r}")
                break
            recovered += 1
            if root_key != ghost.root_key:
                wrong_keys.append(f"{ghost.account}/{ghost.entry}: different root key")
            break
    checks.append(
        Check(
            _needs_fleet(
                "final recovery of every user entry returns its registered root key", fleet_live
            ),
            not wrong_keys,
            f"{recovered} recovered" + (f"; {wrong_keys[:5]}" if wrong_keys else ""),
        )
    )
    reopened: list[str] = []
    for ghost in destroyed if fleet_live else []:
        client = fleet.client(ghost, http)
        outputs = ghost.outputs

        def attempt(client: GhostClient = client, ghost: EntryGhost = ghost) -> bytes:
            return recover_traced(ghost, client, ghost.password, local).root_key

        try:
            _retry(attempt, deadline)
            reopened.append(f"{ghost.account}/{ghost.entry}: recovered")
        except Destroyed:
            pass
        except VaultError as err:
            reopened.append(f"{ghost.account}/{ghost.entry}: {err!r}")
        if ghost.outputs != outputs:
            reopened.append(f"{ghost.account}/{ghost.entry}: an evaluation after destruction")
    probe_until = time.monotonic() + PROBE_SECONDS
    for ghost in destroyed if fleet_live else []:
        # The SDK above stopped at the tombstones; ask every node itself, as a client that
        # ignores them would (this also makes a node at L erase its share, `_kept_shares`).
        client = fleet.client(ghost, http)
        reopened += _probe_destroyed(
            ghost,
            client.trace.call_each,
            version=versions.get(ghost.key, 1),
            nodes=fleet.nodes,
            until=probe_until,
        )
    checks.append(
        Check(
            _needs_fleet(
                "a destroyed entry stays destroyed, even for the right password, and no node"
                " evaluates it when asked directly",
                fleet_live,
            ),
            not reopened,
            f"{len(destroyed)} tried" + (f"; {reopened[:5]}" if reopened else ""),
        )
    )
    # On every node's disk, after catch-up.
    by_key = {g.key: g for g in known}
    disk_problems: list[str] = []
    dumps: dict[int, dict[tuple[str, str], dict[str, Any]]] = {}
    deadline = time.monotonic() + 30  # for nodes still catching up
    while True:
        with ThreadPoolExecutor(fleet.nodes) as pool:
            raw = list(pool.map(fleet.dump, range(fleet.nodes)))
        dumps = {i: {(r["account"], r["entry"]): r for r in raw[i]} for i in range(fleet.nodes)}
        if not fleet_live:
            disk_problems = _majority_problems(dumps, by_key)
            break
        disk_problems = _disk_problems(dumps, by_key)
        if not disk_problems or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    checks.append(
        Check(
            "every node's disk holds every live entry, destroyed ones as destroyed, all agreeing"
            if fleet_live
            else "a majority of disks holds every confirmed registration (fleet not ready)",
            not disk_problems,
            f"{len(known)} entries x {fleet.nodes} nodes"
            + (f"; {len(disk_problems)} problems: {disk_problems[:5]}" if disk_problems else ""),
        )
    )

    kept = _kept_shares(dumps, destroyed if fleet_live else [])
    checks.append(
        Check(
            _needs_fleet(
                "no node at its own count of L keeps the share of a destroyed entry", fleet_live
            ),
            not kept,
            f"{len(destroyed)} destroyed entries" + (f"; {kept[:5]}" if kept else ""),
        )
    )

    # Guess counting: exactly L per window (no hostile node).
    over: list[str] = []
    for ghost in known:
        for index in range(fleet.nodes):
            record = dumps[index].get(ghost.key)
            if record is None:
                continue
            used = record["attempts_used"]
            if used > GUESS_LIMIT or (record["status"] == "destroyed" and used != GUESS_LIMIT):
                over.append(f"node{index} {ghost.account}/{ghost.entry}: {record}")
    checks.append(
        Check(
            "on disk: attempts_used <= L on every node, and exactly L in every destroyed entry",
            not over,
            f"L={GUESS_LIMIT}, {len(destroyed)} destroyed"
            + (f"; over: {over[:5]}" if over else ""),
        )
    )
    attempts: dict[tuple[str, str], int] = {}
    for records in dumps.values():
        for key, record in records.items():
            attempts[key] = max(attempts.get(key, 0), int(record.get("attempt", 0)))
    unpaid = [
        f"{g.account}/{g.entry}: {g.outputs} outputs, attempt {attempts.get(g.key, 0)}"
        for g in ghosts
        if g.outputs > attempts.get(g.key, 0)
    ]
    checks.append(
        Check(
            "per entry: outputs received <= attempts counted (each paid by its own attempt)",
            not unpaid,
            f"{sum(g.outputs for g in ghosts)} outputs received over {len(ghosts)} entries"
            + (f"; {unpaid[:5]}" if unpaid else ""),
        )
    )
    uncounted = _uncounted_partials(dumps, ghosts)
    checks.append(
        Check(
            "per node: every partial evaluation a client got is counted in that node's own row",
            not uncounted,
            f"{sum(len(g.partials_from) for g in ghosts)} partial evaluations received"
            + (f"; {len(uncounted)} not counted: {uncounted[:5]}" if uncounted else ""),
        )
    )
    total_attempts = sum(attempts.values())
    by_node = {i: fleet.counters.of(i, "evaluations") for i in range(fleet.nodes)}
    checks.append(
        Check(
            "per node: partial evaluations (summed over restarts) <= attempts of all entries",
            all(n <= total_attempts for n in by_node.values()),
            f"evaluations by node {by_node}, {total_attempts} attempts counted",
        )
    )
    attacked = [g for g in ghosts if g.attacker and g.destroyed]
    worst = max((g.max_window for g in ghosts), default=0)
    checks.append(
        Check(
            "per entry: one output per attempt, rising, at most L attempts after a success",
            not any("an output for attempt" in v or "one blinded" in v for v in tally.violations),
            f"most attempts after a success at an output: {worst}; "
            f"{len(attacked)} entries attacked to destruction",
        )
    )

    assert fleet.client_config is not None and fleet.client_config.fleet_id is not None
    fleet_id = fleet.client_config.fleet_id
    figures.update(
        entries=len(ghosts),
        entries_registered=len(known),
        entries_destroyed_by_attack=len(attacked),
        outputs_received=sum(g.outputs for g in ghosts),
        evaluations_counted=fleet.counters.total("evaluations"),
        evaluations_by_node=by_node,
        committed_counted=fleet.counters.total("committed"),
        fleet_unavailable_counted=fleet.counters.total("fleet_unavailable"),
        attempts_total=total_attempts,
        successes=sum(g.successes for g in ghosts),
        hidden_guesses=sum(g.hidden_guesses for g in ghosts),
        hidden_guesses_without_error=sum(g.hidden_without_error for g in ghosts),
        error_samples=tally.samples,
        error_reasons=dict(tally.reasons.most_common(20)),
        share_holders=_share_holders(
            dumps, known, (fleet_id, fleet.client_config.epoch), fleet.nodes
        ),
    )

    checks.append(
        Check(
            "no violation seen by any client during the run",
            not tally.violations,
            f"{len(tally.violations)} violations"
            + (f": {tally.violations[:5]}" if tally.violations else ""),
        )
    )
    http.close()
    log(f"final checks done: {sum(c.passed for c in checks)}/{len(checks)} passed")
    return checks, figures


def _share_holders(
    dumps: dict[int, dict[tuple[str, str], dict[str, Any]]],
    ghosts: list[EntryGhost],
    fleet: tuple[bytes, int],
    nodes: int,
) -> dict[str, Any]:
    """After the final recoveries, how many nodes hold a share of each live entry's
    version (a figure: fewer than N is allowed, and shrinks the faults an entry rides out),
    and whether the device still owes the missing ones their share ("Finishing later")."""
    by_count: Counter[int] = Counter()
    owed = not_owed = 0
    for ghost in ghosts:
        records = [dumps[i].get(ghost.key) for i in range(nodes)]
        if not any(r is not None and r["status"] == "live" for r in records):
            continue
        holders = {i for i, r in enumerate(records) if r is not None and r.get("holds_share")}
        by_count[len(holders)] += 1
        debts = ghost.pending.owed(fleet[0], ghost.account, ghost.entry, fleet[1])
        for node in set(range(nodes)) - holders:
            if any(node in debt.nodes for debt in debts):
                owed += 1
            else:
                not_owed += 1
    return {
        "live_entries_by_holders": {str(k): by_count[k] for k in sorted(by_count)},
        "missing_owed_by_the_device": owed,
        "missing_not_owed": not_owed,
    }


def _needs_fleet(name: str, fleet_live: bool) -> str:
    """A check's name, saying so when it was not run (the fleet was not ready again)."""
    return name + ("" if fleet_live else " (not run: fleet not ready)")


#: How long the final checks keep asking the nodes that have not answered a direct
#: evaluate of a destroyed entry (the fleet is healed and ready by then).
PROBE_SECONDS = 30.0


def _probe_destroyed(
    ghost: EntryGhost,
    send: Callable[[Op, Sequence[Message], type[EvaluateResponse]], list[NodeOutcome[Any]]],
    *,
    version: int,
    nodes: int,
    until: float,
) -> list[str]:
    """Send every node an `evaluate` of the destroyed entry, with a fresh B each time, until
    each has answered `destroyed` or `until`: a node that evaluates is a problem (a
    destroyed entry gets no evaluation, invariant 2), and so is one that never answers.
    A node at its own count of L erases its share on such a request (`_destroyed` in
    hsm/shares.py), which `_kept_shares` then checks on its disk."""
    where = f"{ghost.account}/{ghost.entry}"
    problems: list[str] = []
    waiting = set(range(nodes))
    while True:
        _, blinded = oprf.blind(os.urandom(32))
        request = EvaluateRequest(
            ghost.account, ghost.entry, version, blinded, int(time.time() * 1000)
        )
        try:
            outcomes = send(Op.EVALUATE, [request] * nodes, EvaluateResponse)
        except VaultError:
            outcomes = []
        for outcome in outcomes:
            if outcome.index not in waiting:
                continue
            if isinstance(outcome.response, EvaluateResponse):
                waiting.discard(outcome.index)
                problems.append(
                    f"node{outcome.index} {where}: evaluated a destroyed entry "
                    f"(attempt {outcome.response.attempt})"
                )
            elif outcome.error is not None and outcome.error.code == ErrorCode.DESTROYED:
                waiting.discard(outcome.index)
        if not waiting:
            return problems
        if time.monotonic() > until:
            return [*problems, f"{where}: nodes {sorted(waiting)} never answered destroyed"]
        time.sleep(0.3)


def _kept_shares(
    dumps: dict[int, dict[tuple[str, str], dict[str, Any]]], ghosts: list[EntryGhost]
) -> list[str]:
    """A node whose own count of the destroyed version reached L (on its own evaluations,
    not its peers' reports) has erased its share once it was asked about the entry (the
    probe): the tombstone is not the only thing between that share and an evaluation."""
    problems: list[str] = []
    for ghost in ghosts:
        for node, records in sorted(dumps.items()):
            record = records.get(ghost.key)
            own = None if record is None else record.get("own")
            if record is None or own is None or record["status"] != "destroyed":
                continue
            if (
                own["version"] == record["version"]
                and own["keeps_share"]
                and not own["on_reports"]
                and len(own["evaluated"]) >= GUESS_LIMIT
            ):
                problems.append(
                    f"node{node} {ghost.account}/{ghost.entry}: destroyed, yet keeps its share"
                    f" at its own count of {GUESS_LIMIT}"
                )
    return problems


def _uncounted_partials(
    dumps: dict[int, dict[tuple[str, str], dict[str, Any]]], ghosts: list[EntryGhost]
) -> list[str]:
    """Every partial evaluation a client got from node i, for an attempt after node i's
    last owner reset in its row of that version, must be in that row's own count: a node
    persists its count before the partial leaves (docs/threshold.md, "Counters and
    erasure"). The replicated count cannot show a node that evaluates without counting:
    with no hostile node it still numbers every attempt, and the node's metrics count
    only evaluations that wrote its row. A later version's row, or a reset since, drops
    the old attempts (nothing to check)."""
    problems: list[str] = []
    for ghost in ghosts:
        for node, version, attempt in sorted(ghost.partials_from):
            record = dumps.get(node, {}).get(ghost.key)
            own = None if record is None else record.get("own")
            where = f"node{node} {ghost.account}/{ghost.entry}"
            given = f"gave a partial evaluation for attempt {attempt} of version {version}"
            if own is None:
                problems.append(f"{where}: {given}, but holds no row of its own for the entry")
                continue
            if own["version"] != version or attempt <= own["reset_at"]:
                continue
            if attempt not in own["evaluated"]:
                problems.append(
                    f"{where}: {given}, but its own count holds {own['evaluated']} since the "
                    f"reset at {own['reset_at']}"
                )
    return problems


def _majority_problems(
    dumps: dict[int, dict[tuple[str, str], dict[str, Any]]],
    ghosts: dict[tuple[str, str], EntryGhost],
) -> list[str]:
    """Without a live fleet: every confirmed registration must be on a majority of disks
    (live, or destroyed for an attacked entry), or a committed value would be lost."""
    problems: list[str] = []
    majority = len(dumps) // 2 + 1
    for key, ghost in ghosts.items():
        allowed = {"live", "destroyed"} if ghost.attacker else {"live"}
        holding = sum(
            1
            for records in dumps.values()
            if (r := records.get(key)) is not None and r["status"] in allowed
        )
        if holding < majority:
            problems.append(f"{key[0]}/{key[1]}: on {holding} disks, below a majority")
    return problems


def _disk_problems(
    dumps: dict[int, dict[tuple[str, str], dict[str, Any]]],
    ghosts: dict[tuple[str, str], EntryGhost],
) -> list[str]:
    problems: list[str] = []
    for key, ghost in ghosts.items():
        seen: set[tuple[int, int, int, str]] = set()
        for index, records in dumps.items():
            record = records.get(key)
            where = f"node{index} {key[0]}/{key[1]}"
            if record is None:
                problems.append(f"{where}: missing")
                continue
            if record.get("flow") != "threshold":
                problems.append(f"{where}: not a threshold entry ({record.get('flow')})")
                continue
            seen.add(
                (record["version"], record["attempt"], record["attempts_used"], record["status"])
            )
            expected = "destroyed" if ghost.destroyed else "live"
            if record["status"] != expected:
                problems.append(f"{where}: {record['status']}, expected {expected}")
        if len(seen) > 1:
            problems.append(f"{key[0]}/{key[1]}: nodes disagree: {sorted(seen)}")
    return problems


# ---- the whole run ---------------------------------------------------------------------------


@dataclass
class SoakResult:
    config: dict[str, Any]
    seconds: dict[str, float]
    operations: dict[str, int]
    outcomes: dict[str, int]
    errors: dict[str, int]
    faults: dict[str, Any]
    checks: list[Check]
    figures: dict[str, Any]
    violations: list[str]
    directory: str | None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "config": self.config,
            "seconds": self.seconds,
            "operations": self.operations,
            "outcomes": self.outcomes,
            "errors": self.errors,
            "faults": self.faults,
            "checks": [vars(c) for c in self.checks],
            "figures": self.figures,
            "violations": self.violations,
            "directory": self.directory,
        }


@contextlib.contextmanager
def _workdir(config: SoakConfig) -> Iterator[Path]:
    if config.directory is not None:
        if config.directory.exists() and any(config.directory.iterdir()):
            raise ValueError(f"{config.directory} is not empty")
        config.directory.mkdir(parents=True, exist_ok=True)
        yield config.directory
        return
    path = Path(tempfile.mkdtemp(prefix="backupvault-soak-"))
    try:
        yield path
    finally:
        if not config.keep:
            shutil.rmtree(path, ignore_errors=True)


#: A fleet with a majority up and connected must answer; a stretch this long with no answer
#: to any client is a liveness failure (a wedged fleet), not bad luck.
LIVENESS_SECONDS = 30.0


def _progress(
    config: SoakConfig,
    tally: Tally,
    driver: ChaosDriver,
    started: float,
    log: Callable[[str], None],
) -> None:
    """Wait out the chaos time, logging progress every 30 s."""
    end = started + config.seconds
    while (now := time.monotonic()) < end:
        time.sleep(min(30.0, end - now))
        elapsed = time.monotonic() - started
        faulty = ", ".join(f"node{n}:{f.kind}" for n, f in sorted(driver.active.items()))
        log(
            f"progress {elapsed:.0f}/{config.seconds:.0f} s: {sum(tally.operations.values())} "
            f"operations, {tally.answered()} answered, faults {_kinds(driver.injected)}, "
            f"faulty now: {faulty or 'none'}, violations {len(tally.violations)}"
        )


def _kinds(counts: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def run_soak(config: SoakConfig) -> SoakResult:
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    log = config.log
    seconds: dict[str, float] = {}
    with _workdir(config) as root:
        fleet = ProxiedFleet(root, config.nodes, log)
        try:
            started = time.monotonic()
            fleet.provision()
            fleet.start()
            seconds["setup"] = time.monotonic() - started
            log(f"fleet up in {seconds['setup']:.1f} s at {root} (seed {seed})")

            tally = Tally(log=log)
            ghosts: list[EntryGhost] = []
            ghosts_lock = threading.Lock()
            driver = ChaosDriver(fleet, config, random.Random(rng.randrange(2**32)))
            workers = [
                Worker(
                    i,
                    i < config.attacker_count,
                    fleet,
                    tally,
                    random.Random(rng.randrange(2**32)),
                    ghosts,
                    ghosts_lock,
                )
                for i in range(config.clients)
            ]
            stop_clients, stop_chaos = threading.Event(), threading.Event()
            threads = [
                threading.Thread(target=w.run, args=(stop_clients,), name=w.account, daemon=True)
                for w in workers
            ]
            chaos = threading.Thread(
                target=driver.run, args=(stop_chaos,), name="chaos", daemon=True
            )
            started = time.monotonic()
            tally.last_answer = started
            try:
                for thread in threads:
                    thread.start()
                chaos.start()
                _progress(config, tally, driver, started, log)
            finally:
                stop_chaos.set()
                stop_clients.set()
            chaos.join(60)
            tally.longest_without_answer = max(
                tally.longest_without_answer, time.monotonic() - tally.last_answer
            )
            heal_error = ""
            try:
                driver.heal_all(90)
            except DeploymentError as err:
                heal_error = str(err)
            deadline = time.monotonic() + 120
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            seconds["workload"] = time.monotonic() - started
            stuck = [t.name for t in threads if t.is_alive()]
            if stuck:
                tally.violation(f"clients still running 120 s after the end: {stuck}")
            log(f"workload stopped after {seconds['workload']:.1f} s; checking")

            started = time.monotonic()
            liveness = Check(
                f"liveness: with at most {config.max_faulty} nodes faulty, some client got an "
                f"answer within every {LIVENESS_SECONDS:.0f} s",
                tally.longest_without_answer <= LIVENESS_SECONDS,
                f"longest wait {tally.longest_without_answer:.1f} s",
            )
            checks, figures = final_checks(fleet, ghosts, tally, log, fleet_live=not heal_error)
            figures["availability"] = tally.availability()
            available = availability_check(figures["availability"], config.availability_goal)
            if available is not None:
                checks.append(available)
            if heal_error:
                checks.insert(
                    0, Check("fleet ready again after healing every fault", False, heal_error)
                )
            checks.insert(0, restarts_check(driver.exited, len(driver.restart_seconds)))
            checks.insert(0, liveness)
            seconds["checks"] = time.monotonic() - started
            restart = driver.restart_seconds
            result = SoakResult(
                config={
                    "seconds": config.seconds,
                    "clients": config.clients,
                    "attackers": config.attacker_count,
                    "nodes": config.nodes,
                    "max_faulty": config.max_faulty,
                    "fault_every": config.fault_every,
                    "fault_seconds": list(config.fault_seconds),
                    "seed": seed,
                    "guess_limit": GUESS_LIMIT,
                    "availability_goal": config.availability_goal,
                },
                seconds={k: round(v, 1) for k, v in seconds.items()},
                operations=dict(sorted(tally.operations.items())),
                outcomes=dict(sorted(tally.outcomes.items())),
                errors=dict(sorted(tally.errors.items())),
                faults={
                    "injected": {str(k): v for k, v in sorted(driver.injected.items())},
                    "max_concurrent": driver.max_concurrent,
                    "catch_up_over_30_seconds": driver.slow_catch_up,
                    "outlived_sigterm": driver.outlived_term,
                    "catch_up_seconds_max": round(max(restart), 2) if restart else None,
                    "catch_up_seconds_mean": round(sum(restart) / len(restart), 2)
                    if restart
                    else None,
                    "proxy": _proxy_totals(fleet.pool.stats()),
                    "proxy_links": fleet.pool.stats(),
                    "events": driver.events,
                },
                checks=checks,
                figures=figures,
                violations=tally.violations,
                directory=str(root) if (config.keep or config.directory) else None,
            )
        finally:
            fleet.stop()
    return result


def _proxy_totals(stats: dict[str, dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for link in stats.values():
        total.update(link)
    return dict(total)


# ---- report --------------------------------------------------------------------------------


def summary(result: SoakResult) -> str:
    lines: list[str] = []
    cfg = result.config
    lines.append(
        f"chaos soak: {cfg['nodes']} nodes, {cfg['clients']} clients ({cfg['attackers']} "
        f"attackers), {cfg['seconds']:.0f} s of chaos, seed {cfg['seed']}"
    )
    lines.append(
        "time: " + ", ".join(f"{name} {value:.1f} s" for name, value in result.seconds.items())
    )
    lines.append("")
    lines.append(f"{'operation':<18}{'total':>8}  outcomes")
    for op, count in result.operations.items():
        outcomes = {
            k.split(":", 1)[1]: v for k, v in result.outcomes.items() if k.split(":", 1)[0] == op
        }
        text = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items(), key=lambda x: -x[1]))
        lines.append(f"{op:<18}{count:>8}  {text}")
    lines.append(f"{'all':<18}{sum(result.operations.values()):>8}")
    lines.append("")
    injected = result.faults["injected"]
    lines.append(
        "faults injected: "
        + ", ".join(f"{k} {v}" for k, v in injected.items())
        + f" (total {sum(injected.values())}, at most {result.faults['max_concurrent']} at once"
        + (
            f"; catch-up after restart mean {result.faults['catch_up_seconds_mean']} s, "
            f"max {result.faults['catch_up_seconds_max']} s)"
            if result.faults["catch_up_seconds_max"] is not None
            else ")"
        )
        + (
            f"; {result.faults['outlived_sigterm']} still ran at the end of their SIGTERM"
            " grace, and were killed"
            if result.faults.get("outlived_sigterm")
            else ""
        )
    )
    proxy = result.faults["proxy"]
    lines.append(
        f"proxies: {proxy.get('connections', 0)} connections, {proxy.get('refused', 0)} "
        f"refused, {proxy.get('aborted', 0)} aborted"
    )
    lines.append(
        "errors seen by clients: "
        + (", ".join(f"{k} {v}" for k, v in result.errors.items()) or "none")
    )
    figures = result.figures
    lines.append(
        f"entries {figures.get('entries')}, destroyed by attack "
        f"{figures.get('entries_destroyed_by_attack')}, successes {figures.get('successes')}, "
        f"outputs received {figures.get('outputs_received')}, partial evaluations "
        f"{figures.get('evaluations_counted')} (by node {figures.get('evaluations_by_node')}), "
        f"attempts counted {figures.get('attempts_total')}"
    )
    lines.append(
        f"attempts counted with no output received for them: {figures.get('hidden_guesses')} "
        f"(of which {figures.get('hidden_guesses_without_error')} while the client saw no error)"
    )
    available = figures.get("availability")
    if isinstance(available, dict):
        lines.append(
            f"availability: {available['answered_in_time']} of {available['operations']} "
            f"operations ({100 * available['share']:.1f} %) answered within "
            f"{available['deadline_seconds']:.0f} s of their start (goal: 99 % with a minority"
            f" faulty); duration p50 {available['p50_seconds']} s, p99 "
            f"{available['p99_seconds']} s"
        )
        late = available.get("not_in_time") or {}
        spent = available.get("not_in_time_seconds_by_fanout") or {}
        lines.append(
            "not answered in time: "
            + (", ".join(f"{k} {v}" for k, v in late.items()) if late else "none")
            + (
                "; their seconds by fan-out: " + ", ".join(f"{k} {v}" for k, v in spent.items())
                if spent
                else ""
            )
        )
    reasons = figures.get("error_reasons")
    if isinstance(reasons, dict) and reasons:
        lines.append("most common errors:")
        lines += [f"  {count:5} {why}" for why, count in list(reasons.items())[:8]]
    lines.append("")
    for check in result.checks:
        lines.append(f"[{'PASS' if check.passed else 'FAIL'}] {check.name}: {check.detail}")
    lines.append("")
    lines.append("RESULT: " + ("PASS" if result.passed else "FAIL"))
    return "\n".join(lines)
