"""The vault client's transport: seal one request per node, post them through the relay's
fan-out, open every node's answer (`VaultClient.call_each`). The flows (register, recover,
change the password, delete, status) are the threshold vault's (client/threshold.py) and,
across fleet epochs, `client.trust.FleetSession`'s.

Speaks only the wire protocol (`backupvault.protocol`) through the relay. The password,
export_key and root key never leave this process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.client import DEFAULT_ENTRY
from backupvault.client.errors import (
    EpochNotRouted,
    FleetUnavailable,
    RateLimited,
    RelayUnreachable,
    Unauthorized,
    VaultError,
    one_line,
    relay_says,
)
from backupvault.codec import Message
from backupvault.crypto import ksf
from backupvault.crypto.seal import NodePublicKey, ResponseKey, seal_request
from backupvault.errors import AuthenticationFailed, InvalidInput
from backupvault.fanout import FanoutAnswers, FanoutReply
from backupvault.http_answers import AnswerRefused, read_answer, untrusted_client
from backupvault.protocol import (
    AuthorizedRequest,
    EntryStatus,
    ErrorResponse,
    Op,
    SealedCopies,
    check_name,
    decode_response,
)
from backupvault.tokens import sign_request_proof

if TYPE_CHECKING:
    from backupvault.client.threshold import ThresholdRecovery

T = TypeVar("T", bound=Message)

#: How long the SDK waits, in all, on a relay's Retry-After before giving up.
MAX_RATE_LIMIT_WAIT_SECONDS = 30.0
#: A lost answer or a 503 is sent again after RESEND_BACKOFF_SECONDS, doubling.
RESEND_BACKOFF_SECONDS = 0.5
#: A relay's answer is read up to this many bytes per node: a node's padded, sealed answer
#: is at most ~1.1 KB and the relay's JSON error for it far less; this leaves room.
MAX_ANSWER_BYTES_PER_NODE = 16 * 1024
#: The hint of a relay answer that was not read: it may have been sent on to the nodes.
_UNREAD_ANSWER_HINT = (
    "report this to the operator; the vault may have counted a password evaluation sent in"
    " it as a guess"
)


@dataclass(frozen=True)
class Recovery:
    """A successful recovery: the root key, how many wrong passwords were tried since the
    last success, and the threshold flow's recovery (manifest, export_key, attempt), which
    a password change or a delete in the next moments needs."""

    root_key: bytes = field(repr=False)
    wrong_guesses_before: int
    threshold: ThresholdRecovery = field(repr=False)
    #: The fleet epoch the entry was migrated from (OTA clients after a rotation), or None.
    migrated_from: int | None = None


@dataclass(frozen=True)
class NodeOutcome(Generic[T]):
    """One node's part of a fan-out: its answer, its refusal, or why there is none."""

    index: int
    response: T | None = None
    error: ErrorResponse | None = None
    failure: str | None = None
    #: The relay could not reach the node at all (it did not get the request).
    unreachable: bool = False
    #: The HTTP status the node answered with, if it answered with an error (403: it
    #: refused the fleet token). Told by the relay, so never a reason to erase anything.
    status: int | None = None

    @property
    def refused(self) -> bool:
        """The node answered that it refuses this request (a 4xx other than 429): asking
        it again the same way gets the same answer."""
        return self.status is not None and 400 <= self.status < 500 and self.status != 429

    def describe(self) -> str:
        if self.error is not None:
            # A hostile node's detail is bound by no firmware of ours (review s60).
            return f"node {self.index}: {one_line(self.error.detail or self.error.code)}"
        return f"node {self.index}: {self.failure or 'answered'}"


@dataclass(frozen=True)
class VaultStatus:
    status: EntryStatus
    guess_limit: int
    guesses_remaining: int
    version: int
    #: The nodes that do not hold the agreed manifest, and why.
    nodes_without: tuple[str, ...] = ()
    #: Deliveries this device still owes the fleet (shares, erasures), by node.
    pending: tuple[str, ...] = ()
    #: The highest figure a node reported, when the nodes that answered disagree and are
    #: too few to outvote a hostile one (what is left lies between); None when they agree.
    guesses_remaining_up_to: int | None = None


def _retry_after(answer: httpx.Response) -> float:
    """Seconds to wait, at least 1: "0" from a relay would make the wait never add up to
    MAX_RATE_LIMIT_WAIT_SECONDS, and the client post again without end."""
    value = answer.headers.get("retry-after", "1")
    return max(1.0, float(value)) if value.isascii() and value.isdigit() else 1.0


class VaultClient:
    def __init__(
        self,
        relay_url: str,
        token: str,
        account: str,
        fleet_id: bytes,
        node_keys: Sequence[NodePublicKey],
        entry: str = DEFAULT_ENTRY,
        ksf_params: ksf.Argon2idParams = ksf.DEFAULT_ARGON2ID,
        http: httpx.Client | None = None,
        epoch: int | None = None,
        fleet_token: str = "",
        notify: Callable[[str], None] | None = None,
        device_key: Ed25519PrivateKey | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`epoch`: send to that epoch of the fleet (the relay's
        /v1/epochs/{epoch}/vault/... route, as OTA clients do); None: the relay's current
        fleet (/v1/vault/..., for pinned keys). `token` goes to the relay; `fleet_token`
        only inside the seal, for the nodes, with a proof per copy signed by `device_key`
        (the key the fleet token is bound to; with None the copies carry no proof, which
        nodes refuse). `node_keys`: each node's HPKE key by index,
        from the pinned config or the verified deployment record (never from the relay).
        `notify` hears about automatic waits; `clock` dates the proofs."""
        self.relay_url = relay_url.rstrip("/")
        self.epoch = epoch
        self._vault_url = (
            f"{self.relay_url}/v1/vault"
            if epoch is None
            else f"{self.relay_url}/v1/epochs/{epoch}/vault"
        )
        self.account = check_name("account", account)
        self.entry = check_name("entry", entry)
        self.fleet_id = fleet_id
        if not node_keys:
            raise InvalidInput("a fleet has at least one node key")
        self.node_keys = tuple(node_keys)
        self.ksf_params = ksf_params
        self._token = token
        self._fleet_token = fleet_token
        self._device_key = device_key
        self._clock = clock
        self._notify = notify or (lambda _message: None)
        self._http = http or untrusted_client(httpx.Timeout(30.0, connect=5.0))

    # ---- transport ---------------------------------------------------------------------

    def _post(
        self,
        op: Op,
        seal: Callable[[], tuple[bytes, list[ResponseKey]]],
        resends: int,
    ) -> tuple[httpx.Response, list[ResponseKey]]:
        """Post a freshly sealed body (`seal` again for every try: a seal is used once). A
        429 is waited out (up to MAX_RATE_LIMIT_WAIT_SECONDS in all). An answer lost on the
        way (a timeout) or a 503 (a node timed out, the fleet could not commit in time; the
        request may still take effect) is sent again up to `resends` times, for requests
        where that cannot cost anything twice."""
        waited = 0.0
        backoff = RESEND_BACKOFF_SECONDS
        # Whether a try before this one reached the relay: it may have passed the request
        # on (the relay is not trusted to say it did not), so a connection refused after
        # it does not mean nothing reached the vault (review s47, findings 2 and 3).
        reached = False
        while True:
            sealed, response_keys = seal()
            try:
                answer = self._post_once(op, sealed)
            except httpx.ConnectError as err:
                if reached:
                    effect = (
                        "the password's evaluation may have been counted as a guess"
                        if op is Op.EVALUATE
                        else "the request may have taken effect"
                    )
                    raise FleetUnavailable(
                        f"the relay at {self.relay_url} stopped taking connections ({err})"
                        f" after it had taken an earlier try of this request, which it may"
                        f" have passed on: {effect}"
                    ) from None
                raise RelayUnreachable(self.relay_url, str(err)) from None
            except httpx.HTTPError as err:
                reached = True
                if resends > 0:
                    resends -= 1
                    time.sleep(backoff)
                    backoff *= 2
                    continue
                raise FleetUnavailable(
                    f"the relay at {self.relay_url} did not answer ({type(err).__name__});"
                    " the request may have been counted"
                ) from None
            reached = True
            if answer.status_code == 429:
                wait = _retry_after(answer)
                if waited + wait <= MAX_RATE_LIMIT_WAIT_SECONDS:
                    self._notify(f"the relay asks to slow down: waiting {wait:g} s")
                    time.sleep(wait)
                    waited += wait
                    continue
            if answer.status_code == 503 and resends > 0:
                resends -= 1
                time.sleep(backoff)
                backoff *= 2
                continue
            return answer, response_keys

    def _post_once(self, op: Op, sealed: bytes) -> httpx.Response:
        """One post, its body read up to MAX_ANSWER_BYTES_PER_NODE per node and within
        http_answers.ANSWER_SECONDS: the relay is not trusted, and a body without end would
        take the device's memory (review s25), one trickled would never time out."""
        limit = MAX_ANSWER_BYTES_PER_NODE * len(self.node_keys)
        try:
            return read_answer(
                self._http,
                "POST",
                f"{self._vault_url}/{self.entry}/{op}",
                limit=limit,
                what="the relay's answer",
                content=sealed,
                headers={
                    "Authorization": f"Bearer {self._token}",
                    "Content-Type": "application/octet-stream",
                },
            )
        except AnswerRefused as err:
            raise VaultError(err.message, hint=_UNREAD_ANSWER_HINT) from None
        except httpx.HTTPError:
            raise  # a timeout or a lost answer: `_post` decides whether to send again
        except Exception as err:
            # Anything else the transport raises on what the relay sent is a VaultError
            # too: past the flows' `except VaultError`, one made a right password's reset
            # fail after its attempt was counted, and each retry burn a guess (review s49).
            raise VaultError(
                f"the relay's answer cannot be read ({type(err).__name__})",
                hint=_UNREAD_ANSWER_HINT,
            ) from err

    def call_each(
        self, op: Op, requests: Sequence[Message], kind: type[T], resends: int = 0
    ) -> list[NodeOutcome[T]]:
        """Send `requests[i]` to node i, all at once through the relay's fan-out
        (docs/relay.md), and return every node's outcome by index. A 429 is waited out; a
        lost answer or a 503 (no node answered) is sent again up to `resends` times (for
        requests that cannot cost anything twice)."""
        if len(requests) != len(self.node_keys):
            raise ValueError("one request per node")
        payloads = [r.to_bytes() for r in requests]
        answer, response_keys = self._post(
            op, lambda: self._seal_each(op, self._authorize(payloads)), resends
        )
        if answer.status_code != 200:
            self._raise_http_error(answer)
        try:
            replies = FanoutAnswers.for_nodes(answer.content, len(self.node_keys)).replies
        except InvalidInput as err:
            raise VaultError(f"the relay's answer is malformed: {err.message}") from None
        return [self._outcome(op, reply, response_keys[reply.index], kind) for reply in replies]

    @staticmethod
    def _outcome(
        op: Op, reply: FanoutReply, response_key: ResponseKey, kind: type[T]
    ) -> NodeOutcome[T]:
        """One node's reply, opened with its own copy's response key."""
        index = reply.index
        if reply.status != 200:
            code, detail = reply.error()  # not sealed: the relay's words, whoever wrote them
            if not reply.answered:
                return NodeOutcome(
                    index,
                    failure=relay_says(detail) if detail else "no answer",
                    unreachable=code == "node_unreachable",
                )
            said = f", {relay_says(f'{code}: {detail}')}" if code or detail else ""
            return NodeOutcome(index, failure=f"HTTP {reply.status}{said}", status=reply.status)
        try:
            response = decode_response(op, response_key.open(reply.body))
        except (InvalidInput, AuthenticationFailed) as err:
            return NodeOutcome(index, failure=f"its answer did not verify: {err.message}")
        if isinstance(response, ErrorResponse):
            return NodeOutcome(index, error=response)
        if not isinstance(response, kind):
            return NodeOutcome(index, failure=f"unexpected answer {type(response).__name__}")
        return NodeOutcome(index, response=response)

    def _authorize(self, payloads: Sequence[bytes]) -> list[bytes]:
        """Each node's request with the fleet token and a fresh proof for that node alone
        (made again for every try: a node accepts each proof once)."""
        return [
            AuthorizedRequest(self._fleet_token, payload, self._proof(index, payload)).to_bytes()
            for index, payload in enumerate(payloads)
        ]

    def _proof(self, index: int, payload: bytes) -> bytes:
        if self._device_key is None:
            return b""
        return sign_request_proof(
            self._device_key,
            fleet_id=self.fleet_id,
            node_index=index,
            node_key=self.node_keys[index].to_bytes(),
            token=self._fleet_token,
            request=payload,
            now=self._clock(),
        )

    def _seal_each(self, op: Op, bodies: Sequence[bytes]) -> tuple[bytes, list[ResponseKey]]:
        """`bodies[i]` sealed to node i's own key; the response key of each copy."""
        sealed = [
            seal_request(key, self.fleet_id, index, str(op), body)
            for index, (key, body) in enumerate(zip(self.node_keys, bodies, strict=True))
        ]
        return SealedCopies([copy for copy, _ in sealed]).to_bytes(), [key for _, key in sealed]

    @staticmethod
    def _raise_http_error(answer: httpx.Response) -> None:
        try:
            body = answer.json()
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            body = None
        if isinstance(body, dict):
            detail = relay_says(str(body.get("detail") or body.get("error")))
        else:
            detail = answer.reason_phrase
        if answer.status_code == 401:
            raise Unauthorized(detail)
        if answer.status_code == 403:
            raise Unauthorized(detail, by_vault=True)
        if answer.status_code == 429:
            # Shown only as a number of seconds: the header is the relay's text, unmarked.
            wait = answer.headers.get("retry-after", "")
            shown = wait if wait.isascii() and wait.isdigit() and len(wait) < 7 else "a few"
            raise RateLimited(shown)
        if answer.status_code == 503:
            raise FleetUnavailable(detail)
        if (
            answer.status_code == 404
            and isinstance(body, dict)
            and body.get("error") == "unknown_epoch"
        ):
            raise EpochNotRouted(detail)
        raise VaultError(f"the relay answered {answer.status_code}: {detail}")
