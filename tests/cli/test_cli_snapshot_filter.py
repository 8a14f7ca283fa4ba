"""`--host` and `--path` on `backup list`, `backup ls` and `backup restore`: with several
folders backed up into one repository, "latest" was whichever was backed up last, and
nothing chose among them (restic's `restore latest --path`)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

from test_cli_backup import first_backup, next_backup, run


def _two_folders(tmp_path: Path) -> tuple[Path, Path, Path, str]:
    """`docs`, then `photos`, backed up into one repository: (docs, photos, storage, code)."""
    docs, photos = tmp_path / "docs", tmp_path / "photos"
    docs.mkdir()
    photos.mkdir()
    (docs / "letter.txt").write_text("dear bank\n")
    (photos / "cat.jpg").write_bytes(b"\xff\xd8" * 500)
    storage = tmp_path / "storage"
    code = first_backup(docs, storage)
    next_backup(photos, storage, code)
    return docs, photos, storage, code


def test_restore_takes_the_latest_of_the_folder_path_names(tmp_path: Path) -> None:
    docs, photos, storage, code = _two_folders(tmp_path)
    plain = run("backup", "restore", "--storage", str(storage), "--to", str(tmp_path / "a"),
                "--recovery-code", stdin=code + "\n")  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["cat.jpg"]
    assert f"of {photos}" in plain.stdout
    # Said, since the latest of them all may not be the folder meant.
    assert "also holds snapshots of 1 other folder or hosts" in plain.stderr
    assert "--path" in plain.stderr
    chosen = run("--json", "backup", "restore", "--path", str(docs), "--storage", str(storage),
                 "--to", str(tmp_path / "b"), "--recovery-code", stdin=code + "\n")  # fmt: skip
    assert chosen.returncode == 0, chosen.stderr
    assert json.loads(chosen.stdout)["source"] == str(docs)
    assert (tmp_path / "b" / "letter.txt").read_text() == "dear bank\n"
    # Relative to the folder the command runs in, as `backup create` took it.
    relative = run("backup", "restore", "latest", "--path", "docs", "--host", platform.node(),
                   "--storage", str(storage), "--to", str(tmp_path / "c"), "--recovery-code",
                   stdin=code + "\n", cwd=tmp_path)  # fmt: skip
    assert relative.returncode == 0, relative.stderr
    assert (tmp_path / "c" / "letter.txt").exists() and "other folder" not in relative.stderr


def test_a_filter_that_matches_nothing_is_exit_1_and_writes_nothing(tmp_path: Path) -> None:
    _docs, _photos, storage, code = _two_folders(tmp_path)
    missed = run("--json", "backup", "restore", "--host", "elsewhere", "--storage", str(storage),
                 "--to", str(tmp_path / "out"), "--recovery-code", stdin=code + "\n")  # fmt: skip
    assert missed.returncode == 1 and missed.stdout == ""
    error = json.loads(missed.stderr)
    assert error["error"] == f"no snapshots from host elsewhere at {storage}"
    assert "backup list" in error["hint"]
    assert not (tmp_path / "out").exists()


def test_a_filter_beside_a_snapshot_id_is_refused_before_the_key(tmp_path: Path) -> None:
    docs, _photos, storage, _code = _two_folders(tmp_path)
    for command in (
        ["backup", "restore", "0123abcd", "--to", str(tmp_path / "out")],
        ["backup", "ls", "0123abcd"],
    ):
        refused = run(*command, "--path", str(docs), "--storage", str(storage))  # no key given
        assert refused.returncode == 2, refused.stderr
        assert "do not go with a snapshot id" in refused.stderr
    assert not (tmp_path / "out").exists()


def test_list_shows_each_snapshots_host_and_lists_only_what_is_asked(tmp_path: Path) -> None:
    docs, photos, storage, code = _two_folders(tmp_path)
    listed = run("backup", "list", "--storage", str(storage), "--recovery-code",
                 stdin=code + "\n")  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    header = next(line for line in listed.stdout.splitlines() if line.startswith("SNAPSHOT"))
    assert header.split()[-2:] == ["HOST", "SOURCE"]
    rows = [line for line in listed.stdout.splitlines() if line.endswith((str(docs), str(photos)))]
    assert [row.split()[-2] for row in rows] == [platform.node()] * 2
    assert "2 snapshots in the repository" in listed.stdout
    only = run("--json", "backup", "list", "--path", str(photos), "--storage", str(storage),
               "--recovery-code", stdin=code + "\n")  # fmt: skip
    assert only.returncode == 0, only.stderr
    assert [s["source"] for s in json.loads(only.stdout)["snapshots"]] == [str(photos)]
    said = run("backup", "list", "--path", str(photos), "--storage", str(storage),
               "--recovery-code", stdin=code + "\n")  # fmt: skip
    assert f"1 of 2 snapshots of {photos} in the repository" in said.stdout
    ls = run("--json", "backup", "ls", "latest", "--path", str(docs), "--storage", str(storage),
             "--recovery-code", stdin=code + "\n")  # fmt: skip
    assert ls.returncode == 0, ls.stderr
    assert [e["path"] for e in json.loads(ls.stdout)["entries"]] == ["letter.txt"]
