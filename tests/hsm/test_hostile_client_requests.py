"""A hostile account holder (or a relay forwarding what it likes) against honest nodes: any
mix of well-formed and malformed requests, to any node, in any order, several at once,
for an entry whose owner it is (it knows the password, export_key and every share, so
it can sign any owner statement and deal any polynomial). A node must answer each with
a response or an error, never raise: since a broken invariant stops the node
(node/service.py), an exception on a request's path is a way to stop nodes one after
another; any other becomes a 500 or wedges the entry's proposals at that node. The sim
world's observer checks the guess counting all along (no evaluation without a counted,
committed attempt; at most L per window)."""

from __future__ import annotations

from backupvault.codec import Message
from backupvault.crypto import manifest, oprf, owner, threshold
from backupvault.hsm.state import ThresholdState
from backupvault.protocol import (
    AckKind,
    CommitAck,
    CommitSharesRequest,
    EntryStatus,
    ErrorCode,
    ErrorResponse,
    Op,
    RegisterShareRequest,
    ShareAck,
    encode_commit_acks,
    share_ack_message,
)
from backupvault.sim.clients import SIM_KSF
from backupvault.sim.world import EPOCH, FLEET_ID, Simulation, ThresholdClient, threshold_world

NODES = 3
LIMIT = 3


def _scalar(value: int) -> bytes:
    return (value % oprf.GROUP_ORDER).to_bytes(oprf.SCALAR_LEN, "little")


def deal_with_zero_share(
    account: str, entry: str, version: int, zero_at: int
) -> manifest.Registration:
    """A registration whose polynomial is 0 at `zero_at` (f(x) = a1·(x − zero_at)): the
    commitments give that node the identity as its key K_i. Only a hostile dealer makes
    one (`threshold.deal` never does); its shares for the other nodes all verify."""
    a1 = int.from_bytes(oprf.random_scalar(), "little")
    coefficients = [_scalar(-zero_at * a1), _scalar(a1)]

    def f(x: int) -> bytes:
        return _scalar((x - zero_at) * a1)

    dealing = threshold.Dealing(
        coefficients[0],
        tuple(threshold.KeyShare(i, f(i) if i != zero_at else _scalar(1)) for i in (1, 2, 3)),
        threshold.Commitments(tuple(oprf.scalar_mult_base(a) for a in coefficients)),
    )
    real_deal = threshold.deal
    threshold.deal = lambda t, n, coefficients=None: dealing  # type: ignore[assignment]
    try:
        return manifest.register(
            b"pw",
            bytes(32),
            fleet_id=FLEET_ID,
            account=account,
            entry=entry,
            epoch=EPOCH,
            nodes=NODES,
            threshold_count=2,
            ksf=SIM_KSF,
            version=version,
        )
    finally:
        threshold.deal = real_deal


class Attacker:
    """What the hostile account holder knows and makes: its registrations (export keys,
    shares), the B values it sent, its clock; each method makes one request, valid or not."""

    def __init__(self, world: Simulation) -> None:
        self.world = world
        self.client = ThresholdClient(world)
        self.account, self.entry = self.client.account, self.client.entry
        self.made: list[manifest.Registration] = []
        self.staged: dict[bytes, dict[int, ShareAck]] = {}
        self.blinded: list[bytes] = [oprf.scalar_mult_base(oprf.random_scalar())]
        self.clock = 1_000

    def state(self, slot: int) -> ThresholdState:
        return self.world.replicated(slot, self.client.key)

    def new_registration(self, version: int, zero_at: int = 0) -> manifest.Registration:
        if zero_at:
            made = deal_with_zero_share(self.account, self.entry, version, zero_at)
        else:
            made = manifest.register(
                b"pw",
                bytes(32),
                fleet_id=FLEET_ID,
                account=self.account,
                entry=self.entry,
                epoch=EPOCH,
                nodes=NODES,
                threshold_count=2,
                ksf=SIM_KSF,
                version=version,
            )
        self.made.append(made)
        return made

    def register(self, made: manifest.Registration) -> None:
        """The owner's own registration of `made`, as the client makes it: staged on every
        node, then committed with their acknowledgements."""
        encoded = made.manifest.to_bytes()
        for slot in range(NODES):
            request = RegisterShareRequest(
                self.account, self.entry, encoded, made.shares[slot].to_bytes(), b"", 0
            )
            ack = self.world.request(slot, Op.REGISTER_SHARE, request)
            assert isinstance(ack, ShareAck), ack
            self.staged.setdefault(encoded, {})[ack.index] = ack
        acks = [
            CommitAck(s.index, AckKind(s.kind), s.signature) for s in self.staged[encoded].values()
        ]
        commit = CommitSharesRequest(
            self.account, self.entry, encoded, b"", 0, encode_commit_acks(acks)
        )
        for slot in range(NODES):
            assert isinstance(self.world.request(slot, Op.COMMIT_SHARES, commit), ShareAck)

    def sign(
        self,
        made: manifest.Registration,
        kind: owner.StatementKind,
        version: int,
        counter: int,
        payload_hash: bytes,
    ) -> bytes:
        statement = owner.OwnerStatement(
            kind, FLEET_ID, self.account, self.entry, version, counter, payload_hash
        )
        return owner.sign_statement(made.export_key, statement)


def _stage_everywhere(a: Attacker, made: manifest.Registration) -> dict[int, Message]:
    encoded = made.manifest.to_bytes()
    answers: dict[int, Message] = {}
    for slot in range(NODES):
        request = RegisterShareRequest(
            a.account, a.entry, encoded, made.shares[slot].to_bytes(), b"", 0
        )
        answers[slot] = a.world.request(slot, Op.REGISTER_SHARE, request)
    return answers


def test_a_manifest_that_gives_a_node_no_key_is_refused_before_it_can_commit() -> None:
    """The owner deals f with f(3) = 0: K_3 is the identity. Nodes 1 and 2 took their
    shares (each verifies) and signed STAGED, so the commit took M with node 3 holding
    nothing; the owner's delete then committed everywhere, and node 3's answer raised
    building its ERASED acknowledgement over K_3 (a 500, after the delete took effect).
    Now every node refuses such a manifest at stage and at commit, with the reason."""
    world = threshold_world(nodes=NODES, limit=LIMIT)
    a = Attacker(world)
    made = a.new_registration(1, zero_at=3)
    answers = _stage_everywhere(a, made)
    for slot in (0, 1):  # their own shares verify; node 3's cannot (it would be 0)
        answer = answers[slot]
        assert isinstance(answer, ErrorResponse), answer
        assert answer.code == ErrorCode.BAD_REQUEST
        assert "give node 3 no key" in answer.detail
    # Acknowledgements signed over this M by nodes 1 and 2 (their signatures are real)
    # do not make a commit of it either.
    encoded = made.manifest.to_bytes()
    acks = [
        CommitAck(
            index,
            AckKind.STAGED,
            world.signing[index - 1].sign(
                share_ack_message(
                    AckKind.STAGED,
                    FLEET_ID,
                    a.account,
                    a.entry,
                    1,
                    made.shares[index - 1].public_key(),
                    encoded,
                )
            ),
        )
        for index in (1, 2)
    ]
    commit = CommitSharesRequest(a.account, a.entry, encoded, b"", 0, encode_commit_acks(acks))
    for slot in range(NODES):
        answer = world.request(slot, Op.COMMIT_SHARES, commit)
        assert isinstance(answer, ErrorResponse) and "no key" in answer.detail, answer
        assert a.state(slot).status == EntryStatus.EMPTY
