"""The node side of the threshold OPRF (docs/threshold.md): key shares, the per-node count,
owner statements, and what an acceptor checks of a threshold entry's value.

Pure, like the rest of the firmware. Consensus (`ThresholdUpdate`) only numbers attempts;
every evaluation, reset and erasure rests on what this node checks itself: its own share
against the manifest's commitments, the value it durably accepted itself (`on_accept`),
and the owner's signatures rebuilt from its own state. What a node keeps for itself
(`NodeShare`) is returned as `ShareWrite`s inside an `Answer`: the shell persists them
before the answer leaves the node.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.codec import Message
from backupvault.crypto import owner, threshold
from backupvault.crypto.manifest import Manifest
from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.hsm.state import (
    DEFAULT_GUESS_LIMIT,
    MAX_GUESS_LIMIT,
    EntryId,
    Evaluation,
    NodeShare,
    ThresholdState,
    single_seed_status,
)
from backupvault.protocol import (
    MAX_ERROR_DETAIL,
    AckKind,
    DeleteShareRequest,
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
    ShareAck,
    share_ack_message,
)

#: Rows kept in memory besides those not yet durable (least recently used go first).
ROWS_CACHED = 4096
#: Attempts whose accepted H(B) a node remembers per entry: the client asks for the
#: latest one within seconds, older ones only matter to a reset that already travels in
#: the replicated value.
ACCEPTED_KEPT = 16


@dataclass(frozen=True)
class FleetShape:
    """What a node knows of its fleet from its deployment record: the node-set epoch, N,
    t, and L, the per-node limit of evaluations between two owner resets."""

    epoch: int
    nodes: int
    threshold: int
    guess_limit: int = DEFAULT_GUESS_LIMIT

    def __post_init__(self) -> None:
        threshold.check_threshold(self.threshold, self.nodes)
        if not 1 <= self.guess_limit <= MAX_GUESS_LIMIT:
            raise InvalidInput(f"per-node guess limit: 1..{MAX_GUESS_LIMIT}")


@dataclass(frozen=True)
class ShareWrite:
    """Persist this node's own row for `key` (never replicated)."""

    key: bytes
    row: NodeShare


@dataclass(frozen=True)
class Answer:
    """A reply and the rows the shell must persist before the reply leaves the node."""

    response: Message
    writes: tuple[ShareWrite, ...] = ()


@dataclass(frozen=True)
class ThresholdUpdate:
    """Commit `apply(current)`'s new value by majority, then build the answer."""

    key: bytes
    apply: Callable[[ThresholdState], tuple[ThresholdState, Callable[[], Answer]]]

    def change(self, payload: bytes) -> tuple[bytes, Callable[[], Answer]]:
        """The replica's change function on a record's payload. A single-seed value (see
        `decode_threshold`) is left as it is and answered so."""
        state = decode_threshold(payload)
        if state is None:
            return payload, lambda: Answer(error(ErrorCode.BAD_REQUEST, SINGLE_SEED_DETAIL))
        new, build = self.apply(state)
        return new.to_bytes(), build


@dataclass(frozen=True)
class ThresholdRead:
    """Answer from the value this node holds for `key` (its latest accepted or caught-up
    copy), without a consensus round: `answer(payload)` on that record's payload. Only
    for answers the client trusts when t nodes agree byte for byte (docs/threshold.md,
    "Reading the manifest without a round")."""

    key: bytes
    read: Callable[[ThresholdState], Answer]

    def answer(self, payload: bytes) -> Answer:
        state = decode_threshold(payload)
        if state is None:
            return Answer(error(ErrorCode.BAD_REQUEST, SINGLE_SEED_DETAIL))
        return self.read(state)


def decode_threshold(payload: bytes) -> ThresholdState | None:
    """A record's payload as an entry (an empty payload is an empty entry). A value of the
    removed single-seed flow that holds no key reads as an empty entry; None for one that
    does, which no node of this version keeps (it refuses to start on a store holding
    one, and its acceptor refuses one) but a catch-up copy from an older node could carry."""
    if not payload:
        return ThresholdState()
    single_seed = single_seed_status(payload)
    if single_seed is not None:
        return None if single_seed == EntryStatus.LIVE else ThresholdState()
    return ThresholdState.from_bytes(payload)


SINGLE_SEED_DETAIL = (
    "this entry is on the removed single-seed flow; re-register it (recover it with the"
    " previous version, then register again)"
)


def error(code: ErrorCode, detail: str, remaining: int = 0) -> ErrorResponse:
    return ErrorResponse(str(code), detail[:MAX_ERROR_DETAIL], remaining)


def _blinded_hash(blinded: bytes) -> bytes:
    return hashlib.sha256(blinded).digest()


class ShareKeeper:
    """One node's threshold logic. `load_row(key)` reads this node's persisted row (or
    None); rows it hands out in `ShareWrite`s are also kept here at once, so the next
    request sees them, and the shell persists them before the answer leaves."""

    def __init__(
        self,
        fleet_id: bytes,
        slot: int,
        shape: FleetShape,
        signing_key: Ed25519PrivateKey,
        load_row: Callable[[bytes], NodeShare | None],
    ) -> None:
        if not 0 <= slot < shape.nodes:
            raise InvalidInput(f"slot {slot} is not in a fleet of {shape.nodes}")
        self.fleet_id = fleet_id
        self.index = slot + 1  # the share index x_i = slot + 1 (docs/threshold.md)
        self.shape = shape
        self._signing_key = signing_key
        self._load_row = load_row
        # Rows handed out in ShareWrites and not yet reported durable (`durable`): never
        # dropped, so no request reads an older count from the store meanwhile. Then a
        # bounded cache of rows read or made durable.
        self._pending: dict[bytes, NodeShare] = {}
        self._cache: OrderedDict[bytes, NodeShare | None] = OrderedDict()
        # After a detected rollback of this node's store, rows read from it are not
        # trusted to hold the latest count: keys in `_trusted` were written since.
        self._distrusted = False
        self._trusted: set[bytes] = set()
        # Per distrusted key: the latest attempt number when first seen since the
        # rollback was detected; every evaluation lost in the rollback was for an attempt
        # at or below it, so a verified reset at or above it makes the row whole again.
        self._floors: dict[bytes, int] = {}
        # key -> attempt -> (version, H(B)) of the value this node durably accepted.
        self._accepted: dict[bytes, OrderedDict[int, tuple[int, bytes]]] = {}

    # ---- this node's own state --------------------------------------------------------

    def row(self, key: bytes) -> NodeShare | None:
        if key in self._pending:
            return self._pending[key]
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        row = self._load_row(key)
        self._remember(key, row)
        return row

    def _remember(self, key: bytes, row: NodeShare | None) -> None:
        self._cache[key] = row
        self._cache.move_to_end(key)
        while len(self._cache) > ROWS_CACHED:
            self._cache.popitem(last=False)

    def durable(self, writes: tuple[ShareWrite, ...]) -> None:
        """The shell made these writes durable: the store answers for them from now on."""
        for write in writes:
            if self._pending.get(write.key) is write.row:
                del self._pending[write.key]
            self._remember(write.key, write.row)

    def distrust_stored_counts(self) -> None:
        """The store may have been rolled back (it did not match the token's counter): a
        row read from it may hold an old, lower count. Such a row is not evaluated until
        the owner's next verified reset (or a new registration) rewrites it; it is never
        erased on its count either."""
        self._distrusted = True
        self._trusted = set()
        self._floors = {}

    def _count_trusted(self, key: bytes, latest_attempt: int) -> bool:
        if not self._distrusted or key in self._trusted:
            return True
        self._floors.setdefault(key, latest_attempt)
        return False

    def _reset_restores_trust(self, key: bytes, attempt: int, latest_attempt: int) -> bool:
        return attempt >= self._floors.setdefault(key, latest_attempt)

    def _write(self, key: bytes, row: NodeShare, *, trusted: bool = True) -> ShareWrite:
        assert row.count <= self.shape.guess_limit, "count above L"
        attempts = [e.attempt for e in row.evaluated]
        assert len(set(attempts)) == len(attempts), "two B for one attempt"
        assert all(a > row.reset_at for a in attempts), "an evaluation from before the reset"
        assert not row.share or row.manifest, "a share without its manifest"
        self._pending[key] = row
        self._cache.pop(key, None)
        if trusted:
            self._trusted.add(key)
        return ShareWrite(key, row)

    def on_accept(self, key: bytes, payload: bytes) -> None:
        """The replica's hook: this node is durably accepting `payload` for `key` (called
        as the acceptor's record is written, before its Accepted leaves)."""
        try:
            state = decode_threshold(payload)
        except InvalidInput:
            return
        if state is None or state.status != EntryStatus.LIVE or not state.attempt_hash:
            return
        accepted = self._accepted.setdefault(key, OrderedDict())
        accepted[state.attempt] = (state.version, state.attempt_hash)
        accepted.move_to_end(state.attempt)
        while len(accepted) > ACCEPTED_KEPT:
            accepted.popitem(last=False)

    def accepted_hash(self, key: bytes, version: int, attempt: int) -> bytes | None:
        accepted = self._accepted.get(key)
        found = accepted.get(attempt) if accepted is not None else None
        return found[1] if found is not None and found[0] == version else None

    def _sign_ack(
        self, kind: AckKind, account: str, entry: str, manifest: bytes, share_key: bytes
    ) -> ShareAck:
        version = Manifest.from_bytes(manifest).version
        signed = share_ack_message(
            kind, self.fleet_id, account, entry, version, share_key, manifest
        )
        return ShareAck(kind, version, self.index, self._signing_key.sign(signed))

    def _statement(
        self,
        kind: owner.StatementKind,
        account: str,
        entry: str,
        version: int,
        counter: int,
        payload_hash: bytes,
    ) -> owner.OwnerStatement:
        return owner.OwnerStatement(
            kind, self.fleet_id, account, entry, version, counter, payload_hash
        )

    # ---- operations -------------------------------------------------------------------

    def handle(self, op: Op, request: Message) -> ThresholdUpdate | ThresholdRead:
        match op, request:
            case ((Op.REGISTER_SHARE | Op.CHANGE_SHARE), RegisterShareRequest()):
                return self._register(op, request)
            case Op.MANIFEST, ManifestRequest():
                return self._manifest(request)
            case Op.EVALUATE, EvaluateRequest():
                return self._evaluate(request)
            case Op.RESET, ResetRequest():
                return self._reset(request)
            case Op.DELETE_SHARE, DeleteShareRequest():
                return self._delete(request)
        raise InvalidInput("request does not match the operation")

    def _register(self, op: Op, request: RegisterShareRequest) -> ThresholdUpdate:
        """docs/threshold.md "Registration" step 3: every check on this node's own."""
        key = EntryId.of(request.account, request.entry).to_bytes()
        manifest = Manifest.from_bytes(request.manifest)
        share = threshold.KeyShare.from_bytes(request.share)
        if manifest.fleet_id != self.fleet_id:
            raise InvalidInput("the manifest is for another fleet")
        if (manifest.account, manifest.entry) != (request.account, request.entry):
            raise InvalidInput("the manifest is for another entry")
        if manifest.epoch != self.shape.epoch:
            raise InvalidInput(
                f"the manifest was dealt for epoch {manifest.epoch}; this fleet is at"
                f" epoch {self.shape.epoch} (is the client's deployment record current?)"
            )
        if (manifest.nodes, manifest.threshold) != (self.shape.nodes, self.shape.threshold):
            raise InvalidInput(
                f"the manifest is for {manifest.threshold} of {manifest.nodes} nodes; this"
                f" fleet is {self.shape.threshold} of {self.shape.nodes}"
            )
        if share.index != self.index:
            raise InvalidInput(f"share {share.index} sent to the node of share {self.index}")
        threshold.verify_share(share, manifest.commitments)  # k_i·G = Σ_j C_j·i^j
        changing = op is Op.CHANGE_SHARE
        if changing != bool(request.authorization):
            raise InvalidInput(
                "change-share needs the owner's signature; register-share takes none"
            )
        if not changing and (manifest.version == 0 or request.counter != 0):
            raise InvalidInput("a new entry's manifest has a version above 0 and counter 0")
        account, entry = request.account, request.entry

        def check_change(replicated_old: bytes) -> ErrorResponse | None:
            """The owner's CHANGE_PASSWORD statement about the previous version, rebuilt
            from this node's own state: pk_auth from the M it checked its old share
            against (the replicated one only if it holds none). A node that holds no
            share of the entry erases nothing, so it needs no statement to store one."""
            old_version = manifest.version - 1
            row = self.row(key)
            if row is not None and row.version >= manifest.version:
                return None  # already moved: `store` answers from the row
            mine = row if row is not None and row.version == old_version else None
            held = mine.manifest if mine is not None and mine.manifest else replicated_old
            if not held:
                if row is None or not row.share:
                    return None
                return error(ErrorCode.REFUSED, "cannot check the change against this node's share")
            statement = self._statement(
                owner.StatementKind.CHANGE_PASSWORD,
                account,
                entry,
                old_version,
                request.counter,
                owner.payload_hash(request.manifest),
            )
            try:
                owner.verify_statement(
                    Manifest.from_bytes(held).pk_auth,
                    statement,
                    request.authorization,
                    last_counter=None,  # acting on it moves the version: single use
                )
            except AuthenticationFailed as err:
                return error(ErrorCode.REFUSED, err.message)
            return None

        def apply(state: ThresholdState) -> tuple[ThresholdState, Callable[[], Answer]]:
            if state.manifest == request.manifest:
                # Another node's copy of the same request got there first: one registration
                # (a change is still checked against this node's own old manifest).
                refused = check_change(b"") if changing else None
                if refused is not None:
                    return state, lambda: Answer(refused)
                return state, lambda: store(state)
            if not changing:
                if state.status == EntryStatus.LIVE:
                    return state, _answer(
                        ErrorCode.ALREADY_REGISTERED,
                        "this entry already holds a key; recover it to change the password",
                    )
                if manifest.version != state.version + 1:
                    return state, _answer(
                        ErrorCode.STALE_MANIFEST,
                        f"a new registration here takes version {state.version + 1}",
                    )
                new = state.with_(
                    status=EntryStatus.LIVE,
                    version=manifest.version,
                    manifest=request.manifest,
                    attempt_hash=b"",
                    reset_attempt=state.attempt,
                    reset_hash=b"",
                    reset_signature=b"",
                    change_counter=0,
                    change_signature=b"",
                )
                return new, lambda: store(new)
            if state.status != EntryStatus.LIVE or manifest.version != state.version + 1:
                return state, _answer(
                    ErrorCode.STALE_MANIFEST,
                    f"a password change here takes version {state.version + 1} of a live entry",
                )
            refused = check_change(state.manifest)
            if refused is not None:
                return state, lambda: Answer(refused)
            new = state.with_(
                version=manifest.version,
                manifest=request.manifest,
                attempt_hash=b"",
                reset_attempt=state.attempt,  # a new window: the old attempts are void
                reset_hash=b"",
                reset_signature=b"",
                change_counter=request.counter,
                change_signature=request.authorization,
            )
            return new, lambda: store(new)

        def store(state: ThresholdState) -> Answer:
            if state.manifest != request.manifest:
                return Answer(error(ErrorCode.STALE_MANIFEST, "another registration won"))
            row = self.row(key)
            writes: tuple[ShareWrite, ...] = ()
            if row is None or row.version < manifest.version or not row.share:
                # The old version's share, if any, is overwritten here: erased.
                new_row = NodeShare(
                    manifest.version,
                    request.share,
                    request.manifest,
                    [],
                    reset_at=state.reset_attempt,
                    change_counter=request.counter,
                )
                writes = (self._write(key, new_row),)
            elif row.version > manifest.version or row.share != request.share:
                return Answer(
                    error(ErrorCode.REFUSED, "this node already holds another share for it")
                )
            ack = self._sign_ack(AckKind.HELD, account, entry, request.manifest, share.public_key())
            return Answer(ack, writes)

        return ThresholdUpdate(key, apply)

    def _manifest(self, request: ManifestRequest) -> ThresholdRead:
        """A read: answered from the value this node holds, with no write round (the
        client uses a manifest only when t > N/2 nodes return it byte for byte)."""
        key = EntryId.of(request.account, request.entry).to_bytes()
        limit = self.shape.guess_limit

        def read(state: ThresholdState) -> Answer:
            row = self.row(key)
            if row is not None and row.share and row.version > state.version:
                # The value this node holds is older than the share it took (it has not
                # caught up since): answer the M it checked that share against.
                return Answer(
                    ManifestResponse(
                        EntryStatus.LIVE, row.version, row.manifest, limit, limit - row.count, True
                    )
                )
            mine = row if row is not None and row.version == state.version else None
            if state.status != EntryStatus.LIVE:
                used = limit if state.status == EntryStatus.DESTROYED else 0
                return Answer(
                    ManifestResponse(state.status, state.version, b"", limit, limit - used, False)
                )
            # This node's answer is the M it checked its share against.
            holds = mine is not None and bool(mine.share)
            manifest = mine.manifest if mine is not None and mine.share else state.manifest
            count = mine.count if mine is not None else 0
            return Answer(
                ManifestResponse(state.status, state.version, manifest, limit, limit - count, holds)
            )

        return ThresholdRead(key, read)

    def _evaluate(self, request: EvaluateRequest) -> ThresholdUpdate:
        """docs/threshold.md "Recovery" steps 1 and 2."""
        key = EntryId.of(request.account, request.entry).to_bytes()
        blinded_hash = _blinded_hash(request.blinded)
        limit = self.shape.guess_limit

        def apply(state: ThresholdState) -> tuple[ThresholdState, Callable[[], Answer]]:
            if state.status == EntryStatus.EMPTY:
                return state, _answer(ErrorCode.NOT_REGISTERED, "no key is stored here")
            if state.status == EntryStatus.DESTROYED:
                return state, lambda: self._destroyed(key)
            if request.version != state.version:
                return state, _answer(
                    ErrorCode.STALE_MANIFEST,
                    f"the entry is at version {state.version}; fetch its manifest again",
                )
            if state.attempt > state.reset_attempt and hmac.compare_digest(
                state.attempt_hash, blinded_hash
            ):
                # This B is the latest attempt's: another node's copy of the same request,
                # or a resend. One attempt, not a new one.
                return state, lambda: self._evaluate_committed(key, request, state)
            if request.client_time_ms <= state.attempt_client_time_ms:
                return state, _answer(
                    ErrorCode.STALE_ATTEMPT,
                    "a later attempt was already made; check this device's clock, then retry",
                )
            if state.attempts_used >= limit:
                destroyed = state.with_(status=EntryStatus.DESTROYED, manifest=b"")
                return destroyed, lambda: self._destroyed(key)
            counted = state.with_(
                attempt=state.attempt + 1,
                attempt_hash=blinded_hash,
                attempt_client_time_ms=request.client_time_ms,
            )
            return counted, lambda: self._evaluate_committed(key, request, counted)

        return ThresholdUpdate(key, apply)

    def _evaluate_committed(
        self, key: bytes, request: EvaluateRequest, state: ThresholdState
    ) -> Answer:
        """After the commit (docs/threshold.md "Recovery" step 2): this node's own checks,
        then the count persisted (in the answer's writes), then the evaluation."""
        blinded_hash = _blinded_hash(request.blinded)
        limit = self.shape.guess_limit
        attempt = state.attempt
        if not hmac.compare_digest(state.attempt_hash, blinded_hash):
            return Answer(error(ErrorCode.STALE_ATTEMPT, "another attempt is under way"))
        accepted = self.accepted_hash(key, state.version, attempt)
        if accepted is None or not hmac.compare_digest(accepted, blinded_hash):
            # Committed, but not (yet) by this node's own acceptance: a resend makes it
            # accept the value (the attempt is the same, so nothing is charged again).
            return Answer(
                error(
                    ErrorCode.FLEET_UNAVAILABLE,
                    "this node has not accepted the attempt itself yet; resend",
                )
            )
        row = self.row(key)
        if row is None or row.version != state.version or not row.share:
            return Answer(error(ErrorCode.NOT_REGISTERED, "this node holds no share for it"))
        row, writes = self._apply_replicated_reset(key, request.account, request.entry, row, state)
        if attempt <= row.reset_at:
            return Answer(
                error(ErrorCode.STALE_ATTEMPT, "this attempt was already answered; start again")
            )
        earlier = row.evaluated_hash(attempt)
        if earlier is not None and not hmac.compare_digest(earlier, blinded_hash):
            return Answer(error(ErrorCode.REFUSED, "this attempt was answered for another B"))
        if earlier is None:
            if not self._count_trusted(key, state.attempt):
                return Answer(
                    error(
                        ErrorCode.FLEET_UNAVAILABLE,
                        "this node's store was restored from an older copy; it answers"
                        " again after the owner's next successful recovery",
                    ),
                    writes,
                )
            if row.count >= limit:
                # The count is at L and another request came: erase the share.
                erased = row.with_(share=b"")
                return Answer(_destroyed_error(), (*writes, self._write(key, erased)))
            row = row.with_(evaluated=[*row.evaluated, Evaluation(attempt, blinded_hash)])
            writes = (*writes, self._write(key, row))
        assert row.evaluated_hash(attempt) == blinded_hash and row.count <= limit
        share = threshold.KeyShare.from_bytes(row.share)
        partial = threshold.evaluate_partial(share, request.blinded)
        response = EvaluateResponse(
            attempt, partial.index, partial.evaluated, partial.proof, limit - row.count
        )
        return Answer(response, writes)

    def _apply_replicated_reset(
        self, key: bytes, account: str, entry: str, row: NodeShare, state: ThresholdState
    ) -> tuple[NodeShare, tuple[ShareWrite, ...]]:
        """A reset that travels in the replicated value, applied only if the owner's
        signature verifies over fields this node rebuilds itself."""
        if state.reset_attempt <= row.reset_at or not state.reset_signature:
            return row, ()
        blinded_hash = self._own_hash(key, row, state.version, state.reset_attempt)
        if blinded_hash is None:
            blinded_hash = state.reset_hash  # this node took no part in that attempt
        if not self._reset_verifies(
            account, entry, row, state.reset_attempt, blinded_hash, state.reset_signature
        ):
            return row, ()
        reset = _after_reset(row, state.reset_attempt)
        trusted = self._reset_restores_trust(key, state.reset_attempt, state.attempt)
        return reset, (self._write(key, reset, trusted=trusted),)

    def _own_hash(self, key: bytes, row: NodeShare, version: int, attempt: int) -> bytes | None:
        return row.evaluated_hash(attempt) or self.accepted_hash(key, version, attempt)

    def _reset_verifies(
        self,
        account: str,
        entry: str,
        row: NodeShare,
        attempt: int,
        blinded_hash: bytes,
        signature: bytes,
    ) -> bool:
        statement = self._statement(
            owner.StatementKind.RESET, account, entry, row.version, attempt, blinded_hash
        )
        try:
            owner.verify_statement(
                Manifest.from_bytes(row.manifest).pk_auth,
                statement,
                signature,
                last_counter=row.reset_at,
            )
        except (AuthenticationFailed, InvalidInput):
            return False
        return True

    def _reset(self, request: ResetRequest) -> ThresholdUpdate:
        """docs/threshold.md "Recovery" step 5: verified here, then carried in the value."""
        key = EntryId.of(request.account, request.entry).to_bytes()
        limit = self.shape.guess_limit
        account, entry, attempt = request.account, request.entry, request.attempt

        def apply(state: ThresholdState) -> tuple[ThresholdState, Callable[[], Answer]]:
            if state.status != EntryStatus.LIVE:
                return state, _answer(ErrorCode.NOT_REGISTERED, "no key is stored here")
            if request.version != state.version:
                return state, _answer(ErrorCode.STALE_MANIFEST, "the entry changed; recover again")
            row = self.row(key)
            if row is None or row.version != state.version or not row.manifest:
                return state, _answer(ErrorCode.NOT_REGISTERED, "this node holds no share for it")
            if attempt > state.attempt:
                return state, _answer(ErrorCode.REFUSED, "no such attempt")
            blinded_hash = self._own_hash(key, row, state.version, attempt)
            if blinded_hash is None and attempt == state.attempt:
                blinded_hash = state.attempt_hash
            if attempt <= row.reset_at:
                # Already reset here (a resend, or the replicated reset came first).
                return state, lambda: Answer(
                    ResetResponse(row.version, row.reset_at, limit - row.count)
                )
            if blinded_hash is None or not self._reset_verifies(
                account, entry, row, attempt, blinded_hash, request.signature
            ):
                return state, _answer(
                    ErrorCode.REFUSED, "the owner's reset does not verify for this attempt"
                )
            new = state
            if attempt > state.reset_attempt:
                new = state.with_(
                    reset_attempt=attempt,
                    reset_hash=blinded_hash,
                    reset_signature=request.signature,
                )

            def build() -> Answer:
                current = self.row(key)
                assert current is not None
                if attempt <= current.reset_at:
                    return Answer(
                        ResetResponse(current.version, current.reset_at, limit - current.count)
                    )
                reset = _after_reset(current, attempt)
                trusted = self._reset_restores_trust(key, attempt, new.attempt)
                return Answer(
                    ResetResponse(reset.version, reset.reset_at, limit - reset.count),
                    (self._write(key, reset, trusted=trusted),),
                )

            return new, build

        return ThresholdUpdate(key, apply)

    def _delete(self, request: DeleteShareRequest) -> ThresholdUpdate:
        key = EntryId.of(request.account, request.entry).to_bytes()
        account, entry = request.account, request.entry

        def apply(state: ThresholdState) -> tuple[ThresholdState, Callable[[], Answer]]:
            if request.version != state.version:
                return state, _answer(ErrorCode.STALE_MANIFEST, "the entry changed; recover again")
            # Another node's copy of this same delete committed first: one delete, and
            # this node still checks the owner's signature itself before it erases.
            already = (
                state.status == EntryStatus.EMPTY
                and state.change_counter == request.counter
                and hmac.compare_digest(state.change_signature, request.signature)
            )
            row = self.row(key)
            mine = row if row is not None and row.version == state.version else None
            held = mine.manifest if mine is not None and mine.manifest else state.manifest
            if not held or (state.status != EntryStatus.LIVE and not already):
                return state, _answer(ErrorCode.NOT_REGISTERED, "no key is stored here")
            new = state.with_(
                status=EntryStatus.EMPTY,
                manifest=b"",
                attempt_hash=b"",
                reset_attempt=state.attempt,
                reset_hash=b"",
                reset_signature=b"",
                change_counter=request.counter,
                change_signature=request.signature,
            )

            def build() -> Answer:
                share_key = Manifest.from_bytes(held).commitments.node_public_key(self.index)
                ack = self._sign_ack(AckKind.ERASED, account, entry, held, share_key)
                erased = NodeShare(
                    state.version,
                    b"",
                    b"",
                    [],
                    reset_at=new.reset_attempt,
                    delete_counter=request.counter,
                )
                return Answer(ack, (self._write(key, erased),))

            return new, build

        return ThresholdUpdate(key, apply)

    def _destroyed(self, key: bytes) -> Answer:
        """The entry is destroyed by consensus; this node erases its share only on its own
        count (never on a replicated tombstone alone)."""
        row = self.row(key)
        if row is not None and row.share and row.count >= self.shape.guess_limit:
            return Answer(_destroyed_error(), (self._write(key, row.with_(share=b"")),))
        return Answer(_destroyed_error())


def _after_reset(row: NodeShare, attempt: int) -> NodeShare:
    """Forget this node's evaluations for attempts up to `attempt`."""
    assert attempt > row.reset_at, "a reset never goes back"
    kept = [e for e in row.evaluated if e.attempt > attempt]
    return row.with_(reset_at=attempt, evaluated=kept)


def _answer(code: ErrorCode, detail: str) -> Callable[[], Answer]:
    return lambda: Answer(error(code, detail))


def _destroyed_error() -> ErrorResponse:
    return error(
        ErrorCode.DESTROYED,
        "too many wrong passwords: the key was destroyed and cannot be recovered",
    )


def check_threshold_value(
    fleet_id: bytes, key: bytes, shape: FleetShape, state: ThresholdState, held: bytes
) -> str | None:
    """Why an acceptor refuses a proposed threshold value, or None (docs/threshold.md
    "Recovery" step 1). `held` is the payload this acceptor holds for the key. What one
    value shows on its own, then what changed against the held value: a counter that goes
    down, or a field that changes without the owner's signature, is refused."""
    entry_id = EntryId.from_bytes(key)
    try:
        status = EntryStatus(state.status)
    except ValueError:
        return "unknown status"
    limit = shape.guess_limit
    if state.reset_attempt > state.attempt:
        return "a reset for an attempt never made"
    if state.attempt_hash and len(state.attempt_hash) != 32:
        return "malformed attempt hash"
    manifest: Manifest | None = None
    if status is EntryStatus.LIVE:
        if state.attempts_used > limit:
            return "more attempts than the limit"
        try:
            manifest = Manifest.from_bytes(state.manifest)
        except InvalidInput:
            return "a live entry without a well-formed manifest"
        if (manifest.fleet_id, manifest.account, manifest.entry, manifest.version) != (
            fleet_id,
            entry_id.account,
            entry_id.entry,
            state.version,
        ):
            return "the manifest is for another fleet, entry or version"
        if (manifest.nodes, manifest.threshold) != (shape.nodes, shape.threshold):
            return "the manifest is for another node set"
        if state.reset_signature:
            try:  # a forged value's fields may not even make a statement (a short hash)
                statement = owner.OwnerStatement(
                    owner.StatementKind.RESET,
                    fleet_id,
                    entry_id.account,
                    entry_id.entry,
                    state.version,
                    state.reset_attempt,
                    state.reset_hash,
                )
                owner.verify_statement(
                    manifest.pk_auth, statement, state.reset_signature, last_counter=None
                )
            except (AuthenticationFailed, InvalidInput):
                return "a reset the owner did not sign"
    elif state.manifest:
        return "an empty or destroyed entry still holding a manifest"
    elif status is EntryStatus.DESTROYED and state.attempts_used < limit:
        return "a tombstone with guesses left"
    previous = _held_threshold(held)
    if previous is None:
        return None  # nothing held: only the value's own checks
    return _check_transition(fleet_id, entry_id, previous, state, manifest)


def _held_threshold(held: bytes) -> ThresholdState | None:
    try:
        state = decode_threshold(held)
    except InvalidInput:
        return None
    return None if state is None or state == ThresholdState() else state


def _check_transition(
    fleet_id: bytes,
    entry_id: EntryId,
    held: ThresholdState,
    state: ThresholdState,
    manifest: Manifest | None,
) -> str | None:
    if state.version < held.version:
        return "the version went down"
    if state.attempt < held.attempt:
        return "the attempt counter went down"
    if state.attempt_client_time_ms < held.attempt_client_time_ms:
        return "the attempt clock went down"
    if state.version == held.version:
        if state.reset_attempt < held.reset_attempt:
            return "the reset went back"
        if held.status == EntryStatus.LIVE:
            if state.status == EntryStatus.LIVE and state.manifest != held.manifest:
                return "the manifest changed without the owner's signature"
            if state.status == EntryStatus.EMPTY and not _signed(
                fleet_id, entry_id, held, owner.StatementKind.DELETE, state, held.manifest
            ):
                return "a delete the owner did not sign"
            if (
                state.reset_attempt > held.reset_attempt
                and not state.reset_signature
                and (state.status == EntryStatus.LIVE)
            ):
                return "a reset without the owner's signature"
        elif state.status == EntryStatus.LIVE:
            return "an entry brought back to life without a new version"
        return None
    # A new version: a password change must be signed by the owner of the held one.
    if held.status == EntryStatus.LIVE:
        if state.version != held.version + 1 or manifest is None:
            return "a version skipped"
        if not _signed(
            fleet_id,
            entry_id,
            held,
            owner.StatementKind.CHANGE_PASSWORD,
            state,
            state.manifest,
        ):
            return "a password change the owner did not sign"
    return None


def _signed(
    fleet_id: bytes,
    entry_id: EntryId,
    held: ThresholdState,
    kind: owner.StatementKind,
    state: ThresholdState,
    payload: bytes,
) -> bool:
    """`state.change_signature` is the held owner's `kind` statement about the held
    version, over SHA-256(payload)."""
    statement = owner.OwnerStatement(
        kind,
        fleet_id,
        entry_id.account,
        entry_id.entry,
        held.version,
        state.change_counter,
        owner.payload_hash(payload),
    )
    try:
        owner.verify_statement(
            Manifest.from_bytes(held.manifest).pk_auth,
            statement,
            state.change_signature,
            last_counter=None,
        )
    except (AuthenticationFailed, InvalidInput):
        return False
    return True
