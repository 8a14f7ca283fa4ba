"""Sealed payloads stay out of reprs, as secrets do: a repr ends up in a log line, an
exception or a traceback, and the relay, the client and the node each hold objects that
carry a sealed request, a sealed response or a sealed share. A sealed request holds the
account's fleet token and, for a registration, a node's key share; kept in a log, it
opens for whoever later gets that node's HPKE key."""

from __future__ import annotations

from backupvault.fanout import FanoutAnswers, FanoutReply
from backupvault.node.service import ClientAnswer
from backupvault.protocol import SealedCopies
from backupvault.relay.forward import NodeAnswer

SEALED = bytes(range(7, 7 + 48))


def _absent(text: str, payload: bytes) -> None:
    assert repr(payload) not in text and repr(payload[:8])[2:-1] not in text
    assert payload.hex() not in text and payload[:8].hex() not in text


def test_sealed_copies_and_fanout_answers_hide_their_payloads() -> None:
    copies = SealedCopies([SEALED, SEALED[::-1]])
    _absent(repr(copies), SEALED)
    reply = FanoutReply(3, 200, SEALED)
    answers = FanoutAnswers([reply])
    for shown in (repr(reply), repr(answers)):
        _absent(shown, SEALED)
        assert "index=3" in shown and "status=200" in shown
    # Still equal and encodable as before: only what a repr shows changed.
    assert SealedCopies.from_bytes(copies.to_bytes()) == copies
    assert FanoutReply.from_bytes(reply.to_bytes()) == reply


def test_relay_and_node_answers_hide_the_sealed_body() -> None:
    for answer in (NodeAnswer(200, SEALED, "application/octet-stream"), ClientAnswer(200, SEALED)):
        _absent(repr(answer), SEALED)
        assert "status=200" in repr(answer)
