"""`--host` and `--path` on `backup list`, `backup ls` and `backup restore`: with several
folders backed up into one repository, "latest" was whichever was backed up last, and
nothing chose among them (restic's `restore latest --path`)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

from test_cli_backup import first_backup, next_backup, run, single_blob_backup


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
    assert "also holds snapshots of 1 other folder: this restored the latest" in plain.stderr
    assert "--path" in plain.stderr
    chosen = run("--json", "backup", "restore", "--path", str(docs), "--storage", str(storage),
                 "--to", str(tmp_path / "b"), "--recovery-code", stdin=code + "\n")  # fmt: skip
    assert chosen.returncode == 0, chosen.stderr
    result = json.loads(chosen.stdout)
    assert result["source"] == str(docs)
    assert (result["other_folders"], result["other_hosts"]) == (0, 0)  # chosen
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


def test_a_filter_on_storage_without_snapshots_says_what_is_there(tmp_path: Path) -> None:
    """No storage, or nothing in it, was answered "there are none here, only single-blob
    backups" (review s43); storage with only single-blob backups is."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for storage, said, code in (
        (empty, f"no backups at {empty}", 1),
        (tmp_path / "nowhere", "storage not found", 2),
    ):
        refused = run("backup", "restore", "--host", "vm", "--storage", str(storage), "--to",
                      str(tmp_path / "out"), "--recovery-code", "-", stdin="x\n")  # fmt: skip
        assert refused.returncode == code and said in refused.stderr, refused.stderr
        assert "single-blob" not in refused.stderr
    old = tmp_path / "old"
    source = tmp_path / "docs"
    source.mkdir()
    (source / "a.txt").write_text("a")
    single_blob_backup(source, old)
    refused = run("backup", "restore", "--path", str(source), "--storage", str(old),
                  "--to", str(tmp_path / "out"), "--recovery-code", "-", stdin="x\n")  # fmt: skip
    assert refused.returncode == 2 and "only single-blob backups" in refused.stderr
    empty_path = run("backup", "list", "--path", "", "--storage", str(old))
    assert empty_path.returncode == 2 and "--path is empty" in empty_path.stderr
    assert not (tmp_path / "out").exists()


def test_diff_warns_when_its_two_snapshots_are_of_different_folders(tmp_path: Path) -> None:
    """`diff ID latest`: the latest may be another folder's, and the diff was all + and -
    without a word (review s43)."""
    docs, photos, storage, code = _two_folders(tmp_path)
    listed = run("--json", "backup", "list", "--storage", str(storage), "--recovery-code",
                 stdin=code + "\n")  # fmt: skip
    docs_id = json.loads(listed.stdout)["snapshots"][0]["backup_id"]
    diffed = run("backup", "diff", docs_id, "latest", "--storage", str(storage),
                 "--recovery-code", stdin=code + "\n")  # fmt: skip
    assert diffed.returncode == 0, diffed.stderr
    assert "not of one folder on one host" in diffed.stderr
    assert str(docs) in diffed.stderr and str(photos) in diffed.stderr
    same = run("backup", "diff", docs_id, docs_id, "--storage", str(storage),
               "--recovery-code", stdin=code + "\n")  # fmt: skip
    assert same.returncode == 0 and "warning" not in same.stderr


def test_forget_with_a_filter_keeps_by_policy_only_among_those(tmp_path: Path) -> None:
    docs, photos, storage, code = _two_folders(tmp_path)
    (docs / "letter.txt").write_text("dear bank, again\n")
    next_backup(docs, storage, code)
    next_backup(photos, storage, code)
    forgot = run("--json", "backup", "forget", "--keep-last", "1", "--path", str(photos),
                 "--storage", str(storage), "--recovery-code", "-", stdin=code + "\n")  # fmt: skip
    assert forgot.returncode == 0, forgot.stderr
    result = json.loads(forgot.stdout)
    assert len(result["removed"]) == 1 and len(result["kept"]) == 3  # both of docs kept
    listed = run("--json", "backup", "list", "--storage", str(storage), "--recovery-code",
                 stdin=code + "\n")  # fmt: skip
    assert sorted(s["source"] for s in json.loads(listed.stdout)["snapshots"]) == sorted(
        [str(docs), str(docs), str(photos)]
    )
    no_policy = run("backup", "forget", "--path", str(photos), "--storage", str(storage))
    assert no_policy.returncode == 2 and "keep policy" in no_policy.stderr


def test_host_dash_is_the_machine_with_no_name_as_list_shows_it() -> None:
    """Review s43: `backup list` shows an empty host as `-`, and `--host -` found nothing."""
    from backupvault.backup.repo.repository import SnapshotFilter
    from backupvault.cli.main import snapshot_filter

    assert snapshot_filter(("-", "desk"), ()) == SnapshotFilter(("", "desk"), ())
    assert snapshot_filter(("",), ()) == SnapshotFilter(("",), ())
