"""The relay's answer to a vault request: every node's answer, labelled with its index.

Every vault operation (register a share, fetch the manifest, evaluate, the owner's
statements) needs answers from several nodes: t partial evaluations, t identical manifests,
N share acknowledgements. The client posts one body holding a sealed copy per node
(`protocol.SealedCopies`, each copy may differ); the relay sends copy i to node i, all at
once, and answers `FanoutAnswers` (docs/relay.md, "Fan-out"):

    FanoutAnswers = tag 91 || u32 count || count × (u32 length || FanoutReply)
    FanoutReply   = tag 90 || index u64 || status u64 || u32 length || body

`status` is the node's HTTP status (200: `body` is the node's sealed answer, opened with the
response key of copy `index`; 4xx or 503: the node's `{"error", "detail"}` JSON), or 0 when
the node gave no answer the relay could pass on (unreachable, too slow, answered outside the
contract); then `body` is the relay's `{"error", "detail"}` JSON saying which. Each node
appears once, by index, in index order. Relay and client both import this module; it is a
leaf beside `protocol`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from backupvault.codec import Message
from backupvault.errors import InvalidInput

#: `FanoutReply.status` when the node gave no answer the relay could pass on.
NO_ANSWER = 0


@dataclass(frozen=True)
class FanoutReply(Message):
    TAG = 90
    index: int
    status: int
    body: bytes = field(repr=False)  # a sealed response (or an error): never printed

    @property
    def answered(self) -> bool:
        return self.status != NO_ANSWER

    def error(self) -> tuple[str, str]:
        """(code, detail) of a JSON error body; ("", "") when the body is not one."""
        try:
            value = json.loads(self.body)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            return "", ""
        if isinstance(value, dict):
            code, detail = value.get("error"), value.get("detail")
            if isinstance(code, str) and isinstance(detail, str):
                return code, detail
        return "", ""


@dataclass(frozen=True)
class FanoutAnswers(Message):
    TAG = 91
    replies: list[FanoutReply]

    @classmethod
    def for_nodes(cls, data: bytes, nodes: int) -> FanoutAnswers:
        """Decode the client's view of a relay answer: exactly one reply per node, in
        index order."""
        answers = cls.from_bytes(data)
        if [reply.index for reply in answers.replies] != list(range(nodes)):
            raise InvalidInput(
                f"the relay's fan-out answer does not hold one reply for each of the {nodes} nodes"
            )
        return answers
