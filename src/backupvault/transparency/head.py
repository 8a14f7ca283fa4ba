"""Fleet heads: a witness's signed, timestamped statement of a fleet's latest record.

A bundle proves that a record was logged, not that it is still the fleet's current one,
and a checkpoint carries no time. So before a client uses a fleet it asks each witness it
trusts for the fleet's head, signed just now. A head is a C2SP checkpoint of the witness's
whole log with two extension lines:

    <origin> "\\n" <tree size> "\\n" base64(root hash) "\\n"
    "backupvault-fleet-head/v1 " hex(fleet id) " " <epoch> " " <leaf index> " "
        base64(leaf hash) "\\n"
    "time " <unix seconds, decimal> "\\n"
    [ "nonce " hex(16 bytes) "\\n" ]    only when the client sent one

signed as a note by the witness key. It says: at `time`, in my log of `size` leaves with
this root, the last record for this fleet id is leaf `leaf index`, of `epoch`, whose leaf
hash is this. The client accepts its bundle's record only if every trusted witness's head
names exactly that record (`EpochRetired` if a newer epoch was logged, `HeadMismatch` for
any other disagreement), the head is at most `max_age` seconds old (`StaleHead`; and not
from the future beyond `MAX_CLOCK_SKEW`), and its tree extends the last one the client saw
from that witness (`LogRolledBack`, `LogForked`).

Anyone may ask for a head: it reveals nothing the log does not, and it can only say what
the log holds now. A stateless client (a new device) is thereby refused a retired epoch,
and a relay cannot freeze clients on an old bundle for longer than `max_age`. A client
that must know the record is current *now* (before it asks an older epoch, which a newer
record may have retired) sends a random nonce, and takes only a head that signs it back:
a head recorded earlier and replayed cannot answer it.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from backupvault.transparency import merkle
from backupvault.transparency.errors import (
    EpochRetired,
    HeadMismatch,
    MalformedNote,
    StaleHead,
)
from backupvault.transparency.note import (
    Checkpoint,
    Signer,
    Verifier,
    open_checkpoint,
    unbase64,
)

HEAD_TAG = "backupvault-fleet-head/v1"
#: How far in the future a head's time may be (clocks differ).
MAX_CLOCK_SKEW = 300
#: A client's default for `max_age` (seconds): one day.
DEFAULT_MAX_AGE = 86_400

_HEAD_LINE = re.compile(
    HEAD_TAG + r" ([0-9a-f]{2,128}) (0|[1-9][0-9]{0,19}) (0|[1-9][0-9]{0,19}) ([A-Za-z0-9+/=]{44})"
)
_TIME_LINE = re.compile(r"time (0|[1-9][0-9]{0,19})")
#: A client's challenge: 16 random bytes, in lowercase hex on the wire and in the head.
NONCE_LEN = 16
_NONCE_LINE = re.compile(r"nonce ([0-9a-f]{32})")


@dataclass(frozen=True)
class FleetHead:
    checkpoint: Checkpoint
    fleet_id: bytes
    epoch: int
    leaf_index: int
    leaf_hash: bytes
    time: int
    #: The client's challenge this head answers (b"": asked without one).
    nonce: bytes = b""

    def extensions(self) -> tuple[str, ...]:
        leaf = base64.b64encode(self.leaf_hash).decode()
        lines = (
            f"{HEAD_TAG} {self.fleet_id.hex()} {self.epoch} {self.leaf_index} {leaf}",
            f"time {self.time}",
        )
        return (*lines, f"nonce {self.nonce.hex()}") if self.nonce else lines


def sign_head(
    signer: Signer,
    size: int,
    root_hash: bytes,
    fleet_id: bytes,
    epoch: int,
    leaf_index: int,
    leaf_hash: bytes,
    time: int,
    nonce: bytes = b"",
) -> str:
    """The signed note of a fleet head (what `GET /v1/head` serves), answering `nonce`
    if the client sent one."""
    if nonce and len(nonce) != NONCE_LEN:
        raise MalformedNote(f"a head's nonce is {NONCE_LEN} bytes")
    head = FleetHead(
        Checkpoint(signer.name, size, root_hash),
        fleet_id,
        epoch,
        leaf_index,
        leaf_hash,
        time,
        nonce,
    )
    return Checkpoint(signer.name, size, root_hash, head.extensions()).sign(signer)


def open_head(note: str | bytes, verifier: Verifier) -> FleetHead:
    """A fleet head signed by `verifier` for its own log (nothing about freshness yet)."""
    checkpoint = open_checkpoint(note, verifier)
    if len(checkpoint.extensions) not in (2, 3):
        raise MalformedNote("a fleet head has two extension lines, and a nonce line if asked")
    head = _HEAD_LINE.fullmatch(checkpoint.extensions[0])
    time = _TIME_LINE.fullmatch(checkpoint.extensions[1])
    nonce = _NONCE_LINE.fullmatch(checkpoint.extensions[2]) if checkpoint.extensions[2:] else None
    if head is None or time is None or (checkpoint.extensions[2:] and nonce is None):
        raise MalformedNote("not a fleet head (see docs/transparency.md, Fleet heads)")
    fleet_hex, epoch, index, leaf_b64 = head.groups()
    leaf_hash = unbase64(leaf_b64, "a fleet head's leaf hash")  # canonical, as every note's
    if len(fleet_hex) % 2 or len(leaf_hash) != merkle.HASH_LEN:
        raise MalformedNote("a fleet head's fleet id or leaf hash has the wrong length")
    values = int(epoch), int(index), int(time.group(1))
    if any(v >= 1 << 64 for v in values) or values[1] >= checkpoint.size:
        raise MalformedNote("a fleet head's numbers are out of range")
    plain = Checkpoint(checkpoint.origin, checkpoint.size, checkpoint.root_hash)
    challenge = b"" if nonce is None else bytes.fromhex(nonce.group(1))
    return FleetHead(
        plain, bytes.fromhex(fleet_hex), values[0], values[1], leaf_hash, values[2], challenge
    )


def check_head(
    head: FleetHead,
    leaf: bytes,
    fleet_id: bytes,
    epoch: int,
    *,
    now: int,
    max_age: int,
) -> None:
    """Refuse unless `head` names the record `leaf` (of `fleet_id`, `epoch`) as the
    fleet's latest, and was signed within `max_age` seconds before `now`."""
    witness = head.checkpoint.origin
    if head.fleet_id != fleet_id:
        raise HeadMismatch(
            f"the witness {witness} sent the head of fleet {head.fleet_id.hex()}, not of"
            f" {fleet_id.hex()}"
        )
    if head.epoch > epoch:
        raise EpochRetired(
            f"epoch {epoch} of fleet {fleet_id.hex()} is retired: the witness {witness} has"
            f" logged epoch {head.epoch} since",
            hint="the relay serves an old fleet bundle; it may have been retired after a"
            " compromise. Use a relay that serves the current one",
        )
    if head.epoch < epoch or head.leaf_hash != merkle.leaf_hash(leaf):
        raise HeadMismatch(
            f"the witness {witness} names another record as the latest of fleet"
            f" {fleet_id.hex()} (epoch {head.epoch}, leaf {head.leaf_index}) than the bundle's"
            f" (epoch {epoch})",
            hint="the operator showed different records to different witnesses, or this"
            " witness was never given the record; keep both as evidence",
        )
    age = now - head.time
    if age > max_age:
        raise StaleHead(
            f"the newest statement from the witness {witness} about this fleet is {age} s old,"
            f" more than the {max_age} s this client accepts",
            hint="something between you and the witness replays old answers; try again later",
        )
    if -age > MAX_CLOCK_SKEW:
        raise StaleHead(
            f"the witness {witness} dated its head {-age} s in the future",
            hint="this device's clock (or the witness's) is wrong; set it right",
        )
