"""`backupvault vault status` and `vault finish` on a degraded entry, in process, over the
fake fleet of tests/client (the process tests run the same commands on real nodes)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from tests.client.fake_fleet import FakeFleet

from backupvault.cli import main as cli_main
from backupvault.client.pending import PendingStore
from backupvault.client.trust import FleetSession

RK = bytes(range(32))


class _Config:
    """What the vault commands take from a config: a session (here on the fake fleet)."""

    def __init__(self, session: FleetSession) -> None:
        self._session = session

    def session(self, **_kwargs: object) -> FleetSession:
        return self._session


def _run(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    session: FleetSession,
    *args: str,
    stdin: str = "",
) -> tuple[int, dict[str, object]]:
    monkeypatch.setattr(cli_main.Context, "config", lambda self: _Config(session))
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as done:
        cli_main.main(["--json", *args])
    out = capsys.readouterr()
    code = int(done.value.code or 0)
    return code, json.loads(out.out if code == 0 else out.err)


def test_status_shows_pending_shares_and_finish_delivers_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fleet = FakeFleet(5)
    fleet.nodes[3].mode = "down"
    session = FleetSession(fleet.vault(pending=PendingStore(tmp_path / "client-pending.json")))
    session.register("correct horse battery", RK)
    code, status = _run(monkeypatch, capsys, session, "vault", "status")
    assert code == 0 and status["pending"] == ["node 3: share of version 1 not yet confirmed"]
    # Node 3 still down: finish says what is left, exit 5 (as fleet-unavailable). The
    # share is sealed to node 3: no password is asked (stdin is empty).
    code, error = _run(monkeypatch, capsys, session, "vault", "finish")
    assert code == 5 and "node 3" in str(error["error"])
    fleet.nodes[3].mode = "ok"
    code, done = _run(monkeypatch, capsys, session, "vault", "finish")
    assert (code, done) == (0, {"finished": True, "pending": []})
    assert fleet.nodes[3].share is not None
    assert not any("evaluate" in node.seen for node in fleet.nodes)  # no recovery
    code, status = _run(monkeypatch, capsys, session, "vault", "status")
    assert code == 0 and status["pending"] == []


def test_status_of_an_empty_vault_has_no_guess_count(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """No key is not "no guesses left" (that is a destroyed key): a script reading
    guesses_remaining gets null, not 0."""
    session = FleetSession(FakeFleet(5).vault(pending=PendingStore(tmp_path / "p.json")))
    code, status = _run(monkeypatch, capsys, session, "vault", "status")
    assert code == 0 and status["status"] == "empty"
    assert status["guesses_remaining"] is None
    session.register("correct horse battery", RK)
    code, status = _run(monkeypatch, capsys, session, "vault", "status")
    assert status["status"] == "live" and status["guesses_remaining"] == status["guess_limit"]
