"""An in-process fleet: the real firmware and replicas on an in-memory network, reached by
the real client SDK through an httpx transport. No sockets, no processes, deterministic
message order; nodes can be taken down and brought back."""

from __future__ import annotations

import os
import random
from collections import deque
from collections.abc import Iterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.client.vault import VaultClient
from backupvault.codec import Message, decode_any
from backupvault.crypto import ksf
from backupvault.crypto.seal import Kem, NodePrivateKey
from backupvault.fleet.messages import PEER_MESSAGES, AcceptorRecord, payload_of
from backupvault.fleet.records import MemoryRecords
from backupvault.fleet.replica import Committed, Effect, Failed, Persist, Replica, Send
from backupvault.hsm.ceremony import make_fleet_secrets
from backupvault.hsm.firmware import FleetSecrets, NodeKey, Reply, VaultFirmware
from backupvault.hsm.state import EntryState
from backupvault.protocol import NODE_HEADER, ErrorResponse, Op, SealedCopies, pad_response
from backupvault.tokens import TokenVerifier, fleet_audience, mint_token

ISSUER = "test-issuer"

FAST_KSF = ksf.Argon2idParams(
    memory_kib=256, iterations=1, parallelism=1, salt=ksf.ZERO_SALT, output_len=64
)


class InProcessFleet:
    def __init__(self, n: int = 5, seed: int = 0) -> None:
        self.rand = random.Random(seed)
        self.now = 1_000.0
        self.secrets: FleetSecrets = make_fleet_secrets(b"test-fleet", os.urandom)
        self.node_keys = [NodePrivateKey.generate(Kem.X25519) for _ in range(n)]
        self.issuer = Ed25519PrivateKey.generate()
        accounts = TokenVerifier(
            self.issuer.public_key(), ISSUER, fleet_audience(self.secrets.fleet_id)
        )
        self.accounts = accounts
        self.firmware = {
            i: VaultFirmware(self.secrets, NodeKey(i, self.node_keys[i]), os.urandom, accounts)
            for i in range(n)
        }
        self.disk: dict[int, dict[bytes, AcceptorRecord]] = {i: {} for i in range(n)}
        self.replicas = {
            i: Replica(i, range(n), self.rand.randbytes, check_value=self.firmware[i].check_value)
            for i in range(n)
        }
        self.down: set[int] = set()
        self.queue: deque[tuple[int, int, bytes]] = deque()
        self.results: dict[bytes, Committed | Failed] = {}
        self.evaluations = 0  # KE2s produced, counted where they are built
        self.sent: list[bytes] = []  # every byte that crossed the relay, for secrecy checks
        self.requests: list[tuple[str, bytes]] = []  # (op, sealed body), as the relay saw
        for i in range(n):
            self._run(i, self.replicas[i].start(self.now))
        self._settle()

    # -- network ---------------------------------------------------------------------------
    def _run(self, node: int, effects: list[Effect]) -> None:
        for effect in effects:
            match effect:
                case Send(to, message):
                    self.queue.append((node, to, message.to_bytes()))
                case Persist(record):
                    self.disk[node][record.key] = record
                case Committed() | Failed():
                    self.results[effect.op_id] = effect

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

    def restart(self, node: int, wipe: bool = False) -> None:
        self.down.discard(node)
        if wipe:
            self.disk[node] = {}
        self.replicas[node] = Replica(
            node,
            self.replicas.keys(),
            self.rand.randbytes,
            MemoryRecords.of(list(self.disk[node].values()), f"node{node}".encode()),
            check_value=self.firmware[node].check_value,
        )
        self._run(node, self.replicas[node].start(self.now))
        self._settle()

    def state(self, node: int, key: bytes) -> EntryState:
        record = self.disk[node].get(key)
        payload = payload_of(record.value) if record else b""
        return EntryState.from_bytes(payload) if payload else EntryState()

    # -- the node's client endpoint, as the relay would call it ----------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        _, _, _, entry, op_name = request.url.path.split("/")
        account = "alice"
        body = request.read()
        self.sent.append(body)
        self.requests.append((op_name, body))
        live = [i for i in self.replicas if i not in self.down]
        if not live:
            return httpx.Response(503, json={"error": "fleet_unavailable", "detail": "none"})
        node = self.rand.choice(live)
        op = Op(op_name)
        copy = SealedCopies.for_nodes(body, len(self.replicas)).copies[node]
        opened = self.firmware[node].open(op, account, entry, copy, self.now)
        if isinstance(opened, ErrorResponse):
            return httpx.Response(403, json={"error": opened.code, "detail": opened.detail})
        message, response_key = opened
        action = self.firmware[node].handle(op, message, self.now)
        if isinstance(action, Reply):
            response = action.response
        else:
            op_id = os.urandom(8)

            def change(value: bytes, action=action):  # type: ignore[no-untyped-def]
                state = EntryState.from_bytes(value) if value else EntryState()
                new, build = action.apply(state)
                return new.to_bytes(), build

            self._run(node, self.replicas[node].propose(op_id, action.key, change, self.now))
            self._settle(until=op_id)
            result = self.results.get(op_id)
            if not isinstance(result, Committed):
                return httpx.Response(503, json={"error": "fleet_unavailable", "detail": "x"})
            response = result.outcome()
            if op is Op.RECOVER_START and type(response).__name__ == "RecoverStartResponse":
                self.evaluations += 1
        sealed = response_key.seal(pad_response(op, response.to_bytes()))
        self.sent.append(sealed)
        return httpx.Response(200, content=sealed, headers={NODE_HEADER: str(node)})

    def fleet_token(self, account: str) -> str:
        audience = fleet_audience(self.secrets.fleet_id)
        return mint_token(
            self.issuer, account, issuer=ISSUER, audience=audience, ttl_seconds=3600, now=self.now
        )

    def client(self, account: str = "alice", token_for: str | None = None) -> VaultClient:
        """The SDK as `account`, holding the fleet token of `token_for` (default: its own)."""
        return VaultClient(
            "http://relay.test",
            "token",
            account,
            self.secrets.fleet_id,
            [key.public_key() for key in self.node_keys],
            self.secrets.server_public_key,
            ksf_params=FAST_KSF,
            http=httpx.Client(transport=httpx.MockTransport(self.handle)),
            fleet_token=self.fleet_token(token_for or account),
        )


@pytest.fixture
def fleet() -> Iterator[InProcessFleet]:
    yield InProcessFleet()
