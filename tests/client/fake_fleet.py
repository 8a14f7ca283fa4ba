"""A stand-in for N threshold vault nodes behind the relay's fan-out, for client tests.

It follows the node rules of docs/threshold.md closely enough to test the client (share
check, per-node count, one attempt number per B, resets and changes only on owner
signatures rebuilt from the node's own state), and can make single nodes go down or lie.
It is a test double, not the firmware: the process tests run the real nodes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.client.pending import PendingStore
from backupvault.client.threshold import FleetKeys, ThresholdVault
from backupvault.client.vault import VaultClient
from backupvault.codec import Message
from backupvault.crypto import ksf, owner, threshold
from backupvault.crypto.manifest import Manifest
from backupvault.crypto.seal import Kem, NodePrivateKey, open_request, open_share
from backupvault.errors import AuthenticationFailed, BackupVaultError
from backupvault.fanout import NO_ANSWER, FanoutAnswers, FanoutReply
from backupvault.protocol import (
    REQUEST_TYPES,
    AckKind,
    AuthorizedRequest,
    CommitSharesRequest,
    DeleteShareRequest,
    DeliverShareRequest,
    EntryStatus,
    ErrorCode,
    ErrorResponse,
    EvaluateRequest,
    EvaluateResponse,
    ManifestRequest,
    ManifestResponse,
    Op,
    RegisterShareRequest,
    ResetRequest,
    ResetResponse,
    SealedCopies,
    ShareAck,
    decode_commit_acks,
    pad_response,
    share_ack_message,
)

FAST_KSF = ksf.Argon2idParams(
    memory_kib=256, iterations=1, parallelism=1, salt=ksf.ZERO_SALT, output_len=64
)
FLEET_ID = b"fake-threshold-fleet"
LIMIT = 10


@dataclass
class FakeNode:
    index: int
    hpke: NodePrivateKey
    signing: Ed25519PrivateKey
    #: "ok", "down", "down_once" (no answer to the next request), "bad_partial", "bad_ack",
    #: "wrong_index", "stale_once" (the next manifest answer is `stale_manifest`),
    #: "wrong_attempt" (a verifying partial with an attempt number of its own),
    #: "claims_registered" (every share delivery answered `already_registered`),
    #: "deleted" (evaluations answered `stale_manifest`: it took another device's delete)
    mode: str = "ok"
    #: No answer to this many more requests (then "ok").
    down_for: int = 0
    #: Answer this many more evaluate requests with `fleet_unavailable` (a node that has
    #: not accepted the attempt itself yet: stalled, or catching up after a restart).
    unavailable_for: int = 0
    stale_manifest: bytes = b""
    #: A hostile node's own figure of guesses left, in its evaluate and manifest answers
    #: (None: the truth, LIMIT - count).
    claims_left: int | None = None
    manifest: bytes = b""
    share: threshold.KeyShare | None = None
    version: int = 0
    destroyed: bool = False
    count: int = 0
    last_blinded: bytes = b""
    resets: int = 0
    seen: list[str] = field(default_factory=list)
    staged: dict[bytes, threshold.KeyShare] = field(default_factory=dict)

    def take(self, manifest: bytes, share: threshold.KeyShare) -> None:
        self.manifest, self.share = manifest, share
        self.version = Manifest.from_bytes(manifest).version
        self.count, self.destroyed = 0, False

    def ack(self, kind: AckKind, manifest: bytes) -> ShareAck:
        m = Manifest.from_bytes(manifest)
        key = m.commitments.node_public_key(self.index + 1)
        message = share_ack_message(kind, FLEET_ID, m.account, m.entry, m.version, key, manifest)
        signer = Ed25519PrivateKey.generate() if self.mode == "bad_ack" else self.signing
        return ShareAck(kind, m.version, self.index + 1, signer.sign(message))


def _error(code: ErrorCode, detail: str, remaining: int = 0) -> ErrorResponse:
    return ErrorResponse(code, detail, remaining)


class FakeFleet:
    def __init__(self, n: int = 5) -> None:
        self.nodes = [
            FakeNode(i, NodePrivateKey.generate(Kem.X25519), Ed25519PrivateKey.generate())
            for i in range(n)
        ]
        #: Consensus stand-ins: attempt numbers by H(B), and the entry's committed
        #: manifest (empty when there is none), shared by all nodes.
        self.attempts: dict[bytes, int] = {}
        self.replicated = b""
        self.evaluations = 0  # partials produced, all nodes
        #: Answer this many more evaluate fan-outs with the relay's 503 (no node answered
        #: before its timeout) after the nodes acted on them.
        self.relay_unavailable_for = 0

    @property
    def t(self) -> int:
        return len(self.nodes) // 2 + 1

    def vault(
        self, notes: list[str] | None = None, pending: PendingStore | None = None, epoch: int = 0
    ) -> ThresholdVault:
        client = VaultClient(
            "http://relay.test",
            "token",
            "alice",
            FLEET_ID,
            [node.hpke.public_key() for node in self.nodes],
            ksf_params=FAST_KSF,
            # Looked up at each request, so that a test can put a wrapper in its place.
            http=httpx.Client(transport=httpx.MockTransport(lambda r: self.handle(r))),
            fleet_token="fleet-token",
        )
        keys = FleetKeys(
            tuple(node.signing.public_key().public_bytes_raw() for node in self.nodes),
            self.t,
            epoch,
        )
        return ThresholdVault(
            client,
            keys,
            notify=None if notes is None else notes.append,
            pending=pending,
            delivery_patience=0.5,  # nodes set "down" stay down
        )

    def handle(self, request: httpx.Request) -> httpx.Response:
        op_name = request.url.path.rsplit("/", 1)[1]
        op = Op(op_name)
        if op is Op.EVALUATE and self.relay_unavailable_for > 0:
            # The nodes act on the request, but their answers come too late for the relay.
            self.relay_unavailable_for -= 1
            self._replies(op_name, op, request)
            return httpx.Response(
                503, json={"error": "fleet_unavailable", "detail": "no node answered in time"}
            )
        return httpx.Response(
            200, content=FanoutAnswers(self._replies(op_name, op, request)).to_bytes()
        )

    def _replies(self, op_name: str, op: Op, request: httpx.Request) -> list[FanoutReply]:
        copies = SealedCopies.for_nodes(request.read(), len(self.nodes)).copies
        replies = []
        for node, copy in zip(self.nodes, copies, strict=True):
            if node.down_for > 0:
                node.down_for -= 1
                node.mode = "down_once"
            if node.mode == "down_once":
                node.mode = "ok"
                replies.append(
                    FanoutReply(node.index, NO_ANSWER, b'{"error":"node_slow","detail":"cut off"}')
                )
                continue
            if node.mode == "down":
                replies.append(
                    FanoutReply(
                        node.index, NO_ANSWER, b'{"error":"node_unreachable","detail":"down"}'
                    )
                )
                continue
            body, key = open_request(node.hpke, FLEET_ID, node.index, str(op), copy)
            inner = REQUEST_TYPES[op].from_bytes(AuthorizedRequest.from_bytes(body).request)
            node.seen.append(op_name)
            response = self._answer(node, op, inner)
            replies.append(
                FanoutReply(node.index, 200, key.seal(pad_response(op, response.to_bytes())))
            )
        return replies

    def _answer(self, node: FakeNode, op: Op, request: Message) -> Message:
        try:
            return self._answer_or_raise(node, op, request)
        except BackupVaultError as err:
            return _error(ErrorCode.REFUSED, err.message)

    def _answer_or_raise(self, node: FakeNode, op: Op, request: Message) -> Message:
        if node.mode == "claims_registered" and isinstance(request, RegisterShareRequest):
            return _error(ErrorCode.ALREADY_REGISTERED, "already registered")
        if isinstance(request, DeliverShareRequest):
            # As the firmware: the share opens only here, for this manifest; then it is
            # a register-share of that manifest.
            try:
                share_bytes = open_share(
                    node.hpke,
                    FLEET_ID,
                    node.index,
                    hashlib.sha256(request.manifest).digest(),
                    request.sealed_share,
                )
            except AuthenticationFailed as err:
                return _error(ErrorCode.BAD_REQUEST, err.message)
            op = Op.REGISTER_SHARE
            request = RegisterShareRequest(
                request.account, request.entry, request.manifest, share_bytes, b"", 0
            )
        if isinstance(request, RegisterShareRequest):
            if sum(n.mode != "down" for n in self.nodes) < self.t:
                # As a real fleet: no majority, no commit, so no node stores or acknowledges.
                return _error(ErrorCode.FLEET_UNAVAILABLE, "no majority")
            m = Manifest.from_bytes(request.manifest)
            share = threshold.KeyShare.from_bytes(request.share)
            threshold.verify_share(share, m.commitments)
            if request.manifest == node.manifest:  # the same delivery again
                return node.ack(AckKind.HELD, request.manifest)
            late = bool(self.replicated) and request.manifest == self.replicated
            if op is Op.REGISTER_SHARE:
                # A share of the committed M is taken whatever this node held before.
                if not late and (node.share is not None or self.replicated):
                    return _error(ErrorCode.ALREADY_REGISTERED, "already registered")
            elif not late and (
                not self.replicated or m.version != Manifest.from_bytes(self.replicated).version + 1
            ):
                return _error(ErrorCode.STALE_MANIFEST, "not the live version's successor")
            elif node.manifest or not late:
                old = Manifest.from_bytes(node.manifest or self.replicated)
                statement = owner.OwnerStatement(
                    owner.StatementKind.CHANGE_PASSWORD,
                    FLEET_ID,
                    m.account,
                    m.entry,
                    old.version,
                    request.counter,
                    owner.payload_hash(request.manifest),
                )
                owner.verify_statement(
                    old.pk_auth, statement, request.authorization, last_counter=None
                )
            if late:
                node.take(request.manifest, share)
                return node.ack(AckKind.HELD, request.manifest)
            node.staged[request.manifest] = share  # kept aside until M commits
            return node.ack(AckKind.STAGED, request.manifest)
        if isinstance(request, CommitSharesRequest):
            if sum(n.mode != "down" for n in self.nodes) < self.t:
                return _error(ErrorCode.FLEET_UNAVAILABLE, "no majority")
            if len(decode_commit_acks(request.acks)) < self.t:
                return _error(ErrorCode.BAD_REQUEST, "too few acknowledgements")
            if (
                self.replicated
                and request.manifest != self.replicated
                and Manifest.from_bytes(self.replicated).version
                >= Manifest.from_bytes(request.manifest).version
            ):
                # As the acceptors: a version takes one M; another device's came first.
                return _error(ErrorCode.ALREADY_REGISTERED, "already registered")
            if request.authorization and not self.replicated:
                # As the acceptors: the key this change was authorized on was deleted.
                return _error(ErrorCode.STALE_MANIFEST, "the entry changed")
            self.replicated = request.manifest
            if request.manifest != node.manifest:
                share = node.staged.pop(request.manifest, None)
                if share is None:
                    return _error(ErrorCode.NOT_REGISTERED, "no staged share")
                node.take(request.manifest, share)
            return node.ack(AckKind.HELD, request.manifest)
        if isinstance(request, ManifestRequest):
            if node.mode == "stale_once":
                node.mode = "ok"
                old = Manifest.from_bytes(node.stale_manifest)
                return ManifestResponse(
                    EntryStatus.LIVE, old.version, node.stale_manifest, LIMIT, LIMIT, True
                )
            status = (
                EntryStatus.DESTROYED
                if node.destroyed
                else EntryStatus.LIVE
                if node.share is not None
                else EntryStatus.EMPTY
            )
            if status == EntryStatus.EMPTY and self.replicated:
                # A node without a share answers with the committed manifest.
                live = Manifest.from_bytes(self.replicated)
                return ManifestResponse(
                    EntryStatus.LIVE, live.version, self.replicated, LIMIT, LIMIT, False
                )
            return ManifestResponse(
                status,
                node.version,
                node.manifest if node.share else b"",
                LIMIT,
                LIMIT - node.count if node.claims_left is None else node.claims_left,
                status == EntryStatus.LIVE,
            )
        if isinstance(request, EvaluateRequest):
            if node.mode == "deleted":
                return _error(ErrorCode.STALE_MANIFEST, "the key was deleted; fetch it again")
            if node.destroyed:
                return _error(ErrorCode.DESTROYED, "destroyed")
            if node.share is None:
                return _error(ErrorCode.NOT_REGISTERED, "no entry")
            if node.unavailable_for > 0:
                node.unavailable_for -= 1
                return _error(ErrorCode.FLEET_UNAVAILABLE, "not accepted itself yet; resend")
            if request.blinded != node.last_blinded:
                if node.count >= LIMIT:
                    node.share, node.manifest, node.destroyed = None, b"", True
                    return _error(ErrorCode.DESTROYED, "destroyed")
                node.count += 1
                node.last_blinded = request.blinded
            digest = hashlib.sha256(request.blinded).digest()
            attempt = self.attempts.setdefault(digest, len(self.attempts) + 1)
            partial = threshold.evaluate_partial(node.share, request.blinded)
            self.evaluations += 1
            if node.mode == "bad_partial":
                other = threshold.KeyShare(node.index + 1, os.urandom(31) + b"\x00")
                partial = threshold.evaluate_partial(other, request.blinded)
            index = partial.index + 1 if node.mode == "wrong_index" else partial.index
            if node.mode == "wrong_attempt":
                attempt += 1000 + node.index
            left = LIMIT - node.count if node.claims_left is None else node.claims_left
            return EvaluateResponse(attempt, index, partial.evaluated, partial.proof, left)
        if isinstance(request, ResetRequest):
            m = Manifest.from_bytes(node.manifest)
            statement = owner.OwnerStatement(
                owner.StatementKind.RESET,
                FLEET_ID,
                m.account,
                m.entry,
                m.version,
                request.attempt,
                owner.payload_hash(node.last_blinded),
            )
            owner.verify_statement(m.pk_auth, statement, request.signature, last_counter=None)
            node.count, node.resets = 0, node.resets + 1
            return ResetResponse(m.version, request.attempt, LIMIT)
        if isinstance(request, DeleteShareRequest):
            if node.destroyed:
                # As the acceptors: a destroyed entry holds no key to delete.
                return _error(ErrorCode.NOT_REGISTERED, "no key is stored here")
            m = Manifest.from_bytes(node.manifest)
            statement = owner.OwnerStatement(
                owner.StatementKind.DELETE,
                FLEET_ID,
                m.account,
                m.entry,
                m.version,
                request.counter,
                owner.payload_hash(node.manifest),
            )
            owner.verify_statement(m.pk_auth, statement, request.signature, last_counter=None)
            ack = node.ack(AckKind.ERASED, node.manifest)
            node.share, node.manifest = None, b""
            if self.replicated and Manifest.from_bytes(self.replicated).version == m.version:
                self.replicated = b""
            return ack
        raise AssertionError(f"unexpected {op}")
