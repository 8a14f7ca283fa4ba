"""An in-process fleet: the real firmware (`VaultFirmware`, its `ShareKeeper`) and real
replicas on an in-memory network, reached by the real client SDK (`ThresholdVault` over
`VaultClient`) through an httpx transport that does what the relay's fan-out does. No
sockets, no processes, deterministic message order; nodes can be taken down and brought
back.

A module of its own, not conftest.py: test modules import it by name, and every test
folder without `__init__.py` has a `conftest` (tests/test_test_collection.py)."""

from __future__ import annotations

import json
import os
import random
from collections import deque
from collections.abc import Callable

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.client.threshold import FleetKeys, ThresholdVault
from backupvault.client.vault import VaultClient
from backupvault.codec import Message, decode_any
from backupvault.crypto import ksf
from backupvault.crypto.seal import Kem, NodePrivateKey
from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.fanout import NO_ANSWER, FanoutAnswers, FanoutReply
from backupvault.fleet.messages import PEER_MESSAGES, AcceptorRecord, payload_of
from backupvault.fleet.records import MemoryRecords
from backupvault.fleet.replica import Committed, Effect, Failed, Persist, Replica, Send
from backupvault.hsm.firmware import NodeKey, Reply, VaultFirmware
from backupvault.hsm.shares import (
    Answer,
    FleetShape,
    ThresholdRead,
    ThresholdUpdate,
    count_entries_in,
    count_staged_in,
    holds_live_value,
)
from backupvault.hsm.state import NodeShare, ThresholdState
from backupvault.protocol import ErrorResponse, Op, SealedCopies, pad_response
from backupvault.tokens import TokenVerifier, fleet_audience, mint_token

ISSUER = "test-issuer"
FLEET_ID = b"test-fleet"
EPOCH = 1
LIMIT = 10

FAST_KSF = ksf.Argon2idParams(
    memory_kib=256, iterations=1, parallelism=1, salt=ksf.ZERO_SALT, output_len=64
)


def _error(code: str, detail: str) -> bytes:
    return json.dumps({"error": code, "detail": detail}).encode()


class InProcessFleet:
    def __init__(self, n: int = 5, seed: int = 0, epoch: int = EPOCH) -> None:
        self.rand = random.Random(seed)
        self.now = 1_000.0
        #: alice's device key: her fleet tokens are bound to it
        self.device = Ed25519PrivateKey.generate()
        self.fleet_id = FLEET_ID
        self.shape = FleetShape(epoch, n, n // 2 + 1, LIMIT)
        self.node_keys = [NodePrivateKey.generate(Kem.X25519) for _ in range(n)]
        self.signing = [Ed25519PrivateKey.generate() for _ in range(n)]
        self.issuer = Ed25519PrivateKey.generate()
        self.accounts = TokenVerifier(self.issuer.public_key(), ISSUER, fleet_audience(FLEET_ID))
        #: Each node's own share rows, as its store keeps them.
        self.shares: dict[int, dict[bytes, NodeShare]] = {i: {} for i in range(n)}
        #: Keys of the entries each node wrote a live value of (its store's account_entries).
        self.live: dict[int, set[bytes]] = {i: set() for i in range(n)}
        self.firmware = {i: self._firmware(i) for i in range(n)}
        self.disk: dict[int, dict[bytes, AcceptorRecord]] = {i: {} for i in range(n)}
        self.replicas = {i: self._replica(i, None) for i in range(n)}
        self.down: set[int] = set()
        self.queue: deque[tuple[int, int, bytes]] = deque()
        self.results: dict[bytes, Committed | Failed] = {}
        self.requests: list[tuple[str, bytes]] = []  # (op, body), as the relay saw them
        self._entry = ""
        #: The relay's choice: drop node i's copy of an `op` request (it never arrives).
        self.relay_drops: Callable[[Op, int], bool] = lambda op, node: False
        for i in range(n):
            self._run(i, self.replicas[i].start(self.now))
        self._settle()

    def _firmware(self, i: int) -> VaultFirmware:
        key = NodeKey(i, self.node_keys[i], self.signing[i])
        peers = {j + 1: signing.public_key() for j, signing in enumerate(self.signing)}
        firmware = VaultFirmware(
            FLEET_ID, key, self.accounts, self.shape, self.shares[i].get, peers
        )
        firmware.shares.count_staged = count_staged_in(self.shares[i])  # as the node's store
        firmware.shares.count_entries = count_entries_in(self.live[i], self.shares[i])
        return firmware

    def _replica(self, i: int, records: MemoryRecords | None) -> Replica:
        firmware = self.firmware[i]
        return Replica(
            i,
            range(len(self.node_keys)),
            self.rand.randbytes,
            records,
            check_value=firmware.check_value,
            on_accept=firmware.on_accept,
            announce=firmware.announce,
            worth_fetching=firmware.worth_fetching,
        )

    # -- network ---------------------------------------------------------------------------
    def _run(self, node: int, effects: list[Effect]) -> None:
        for effect in effects:
            match effect:
                case Send(to, message):
                    self.queue.append((node, to, message.to_bytes()))
                case Persist(record):
                    self.disk[node][record.key] = record
                    if holds_live_value(record):  # counted for good (as the node's store)
                        self.live[node].add(record.key)
                case Committed() | Failed():
                    self.results[effect.op_id] = effect
        # Rows the firmware changed while accepting a value (a promoted or erased share),
        # persisted as the node's shell does: a restart from disk must find them.
        written = self.firmware[node].shares.take_writes()
        for write in written:
            self.shares[node][write.key] = write.row
        self.firmware[node].shares.durable(written)

    def _settle(self, until: bytes | None = None) -> None:
        deadline = self.now + 10
        while self.now < deadline:
            while self.queue:
                sender, to, raw = self.queue.popleft()
                if to in self.down or sender in self.down:
                    continue
                message: Message = decode_any(raw, PEER_MESSAGES)
                self._run(to, self.replicas[to].receive(sender, message, self.now))
            if until is not None and until in self.results:
                return
            if until is None and not any(r.pending() for r in self.replicas.values()):
                return
            self.now += 0.01
            for i, replica in self.replicas.items():
                if i not in self.down:
                    self._run(i, replica.tick(self.now))

    def crash(self, node: int) -> None:
        self.down.add(node)

    def restart(self, node: int, wipe: bool = False, *, intact: bool = False) -> None:
        """Bring `node` back from its disk (`wipe`: an empty one, its share rows too), with
        nothing in memory. `intact`: its store matched its token's counter, so it takes
        part at once and asks nobody (docs/fleet.md, "Intact restarts"); otherwise it
        catches up first."""
        self.down.discard(node)
        if wipe:
            self.disk[node] = {}
            self.shares[node].clear()
            self.live[node].clear()
        self.firmware[node] = self._firmware(node)
        records = MemoryRecords.of(list(self.disk[node].values()), f"node{node}".encode())
        self.replicas[node] = self._replica(node, records)
        self._run(node, self.replicas[node].start(self.now, intact=intact and not wipe))
        self._settle()

    def state(self, node: int, key: bytes) -> ThresholdState:
        record = self.disk[node].get(key)
        payload = payload_of(record.value) if record else b""
        return ThresholdState.from_bytes(payload) if payload else ThresholdState()

    # -- the nodes' client endpoint behind the relay's fan-out -----------------------------
    def _answer(self, node: int, op: Op, copy: bytes) -> FanoutReply:
        try:
            opened = self.firmware[node].open(op, "alice", self._entry, copy, self.now)
        except (InvalidInput, AuthenticationFailed) as err:
            return FanoutReply(node, 400, _error("bad_sealed_request", err.message))
        if isinstance(opened, ErrorResponse):
            return FanoutReply(node, 403, _error(opened.code, opened.detail))
        message, response_key = opened
        action = self.firmware[node].handle(op, message)
        read: Answer | None = None
        fresh = False
        if isinstance(action, ThresholdRead):
            read = action.answer(self.replicas[node].held_payload(action.key))
            if read.repair is not None:  # held too old: a round first, as the node's shell
                action, read, fresh = read.repair, None, True
        if isinstance(action, Reply):
            response = action.response
        elif read is not None:
            for write in read.writes:  # a staged share, durable before the answer leaves
                self.shares[node][write.key] = write.row
            self.firmware[node].shares.durable(read.writes)
            response = read.response
        elif unheld := action.without_round(self.replicas[node].held_payload(action.key)):
            response = unheld.response  # an entry this node holds nothing of: no round
        else:
            assert isinstance(action, ThresholdUpdate)
            op_id = os.urandom(8)
            effects = self.replicas[node].propose(
                op_id, action.key, action.change, self.now, joinable=True, fresh=fresh
            )
            self._run(node, effects)
            self._settle(until=op_id)
            result = self.results.get(op_id)
            if not isinstance(result, Committed):
                return FanoutReply(node, 503, _error("fleet_unavailable", "no majority"))
            answer: Answer = result.outcome()
            for write in answer.writes:  # this node's rows, durable before the answer leaves
                self.shares[node][write.key] = write.row
            self.firmware[node].shares.durable(answer.writes)
            response = answer.response
        sealed = response_key.seal(pad_response(op, response.to_bytes()))
        return FanoutReply(node, 200, sealed)

    def handle(self, request: httpx.Request) -> httpx.Response:
        _, _, _, entry, op_name = request.url.path.split("/")
        self._entry = entry
        body = request.read()
        self.requests.append((op_name, body))
        op = Op(op_name)
        copies = SealedCopies.for_nodes(body, len(self.replicas)).copies
        replies = []
        for node, copy in enumerate(copies):
            if self.relay_drops(op, node):
                replies.append(FanoutReply(node, NO_ANSWER, _error("node_slow", "no answer")))
            elif node in self.down:
                replies.append(FanoutReply(node, NO_ANSWER, _error("node_unreachable", "down")))
            else:
                replies.append(self._answer(node, op, copy))
        return httpx.Response(200, content=FanoutAnswers(replies).to_bytes())

    def fleet_token(self, account: str) -> str:
        return mint_token(
            self.issuer,
            account,
            issuer=ISSUER,
            audience=fleet_audience(FLEET_ID),
            ttl_seconds=3600,
            now=self.now,
            device_key=self.device.public_key(),
        )

    def client(self, token_for: str = "alice", entry: str = "backup-root-key") -> ThresholdVault:
        """The SDK as alice, holding the fleet token of `token_for` (default: her own)."""
        vault = VaultClient(
            "http://relay.test",
            "token",
            "alice",
            FLEET_ID,
            [key.public_key() for key in self.node_keys],
            entry=entry,
            ksf_params=FAST_KSF,
            http=httpx.Client(transport=httpx.MockTransport(self.handle)),
            fleet_token=self.fleet_token(token_for),
            device_key=self.device,
            clock=lambda: self.now,
        )
        signing = tuple(key.public_key().public_bytes_raw() for key in self.signing)
        return ThresholdVault(vault, FleetKeys(signing, self.shape.threshold, self.shape.epoch))
