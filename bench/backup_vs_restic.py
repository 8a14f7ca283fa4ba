"""Incremental backups against restic (Debian's), same data, same run.

Data: a generated chat-like folder (a SQLite database of messages that grows each day,
media files, many small JSON files; `SIZE` bytes, 1 GB, or 64 MB with --quick), backed
up by both tools through their command lines, as a user runs them:

  1. first backup; 2. again, nothing changed; 3. after 1% of files changed or appended
  (and the database grown by 1%): time and bytes added to the repository; 4.-10. seven
  more daily changes: repository size after these 10 backups; restore of the latest
  (best of 3 each, alternating); a folder of 50,000 small files (~4 KB; 3,000 with
  --quick): backup and restore (best of 3 each, alternating);
  one 512 MiB file of random bytes (32 MiB with --quick): first backup rate against
  `cat > file; sync` of the same bytes (best of 3 each; alone:
  `python -m bench.backup_vs_restic --rate-only`).

Both restores are checked against the source. restic is installed with apt-get when missing.
Our command runs as an installed package does: from compiled bytecode (pip compiles it at
install; `make` sets PYTHONDONTWRITEBYTECODE for the source tree, so the bench keeps its
bytecode in a folder of its own instead).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import backupvault

MB = 1_000_000
RESTIC_PASSWORD = "bench-password"


def ensure_restic() -> str:
    found = shutil.which("restic")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-qq", "restic"]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run([*sudo, "apt-get", "update", "-qq"], env=env, check=True)
        subprocess.run(install, env=env, check=True, capture_output=True)
    found = shutil.which("restic")
    if not found:
        raise RuntimeError("restic is not installed and apt-get could not install it")
    return found


# ---- data ---------------------------------------------------------------------------------

_WORDS = [
    "ok",
    "see",
    "you",
    "at",
    "the",
    "station",
    "tomorrow",
    "lol",
    "sure",
    "thanks",
    "send",
    "photo",
    "when",
    "can't",
    "wait",
    "meeting",
    "moved",
    "to",
    "3pm",
    "did",
    "you",
    "eat",
    "yes",
    "no",
    "maybe",
    "love",
    "it",
    "haha",
    "what",
    "time",
    "where",
    "are",
    "you",
    "I'll",
    "call",
    "later",
    "happy",
    "birthday",
    "congrats",
    "on",
    "the",
    "new",
    "job",
    "the",
    "cat",
    "is",
    "asleep",
    "again",
]


class ChatData:
    """A chat app's folder that changes a little every day (deterministic)."""

    def __init__(self, root: Path, size: int, seed: int = 1) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.size = size
        self.messages = [
            " ".join(self.rng.choice(_WORDS) for _ in range(self.rng.randint(3, 40)))
            for _ in range(5000)
        ]
        self.rows = 0
        self.media = 0
        self.small = 0

    def _insert(self, count: int) -> None:
        with sqlite3.connect(self.root / "chat.db") as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, chat INTEGER, "
                "sender TEXT, ts INTEGER, body TEXT)"
            )
            db.executemany(
                "INSERT INTO messages (chat, sender, ts, body) VALUES (?, ?, ?, ?)",
                (
                    (
                        self.rng.randrange(200),
                        f"+1555{self.rng.randrange(10**7):07}",
                        1_700_000_000 + self.rows + i,
                        self.rng.choice(self.messages),
                    )
                    for i in range(count)
                ),
            )
        self.rows += count

    def _media(self, total: int) -> None:
        folder = self.root / "media"
        folder.mkdir(exist_ok=True)
        while total > 0:
            size = min(total, self.rng.randint(100_000, 3_000_000))
            (folder / f"IMG_{self.media:05}.jpg").write_bytes(self.rng.randbytes(size))
            self.media += 1
            total -= size

    def _small_body(self) -> bytes:
        body = {
            "id": self.small,
            "messages": [self.rng.choice(self.messages) for _ in range(self.rng.randint(10, 40))],
        }
        return json.dumps(body).encode()

    def _smalls(self, total: int) -> None:
        while total > 0:
            folder = self.root / "cache" / f"{self.small % 100:02}"
            folder.mkdir(parents=True, exist_ok=True)
            data = self._small_body()
            (folder / f"{self.small:06}.json").write_bytes(data)
            self.small += 1
            total -= len(data)

    def create(self) -> None:
        self.root.mkdir(parents=True)
        self._insert(int(self.size * 0.3 / 130))  # ~130 bytes a row on disk
        self._media(int(self.size * 0.6))
        self._smalls(int(self.size * 0.1))

    def change(self, fraction: float) -> None:
        """A day: the database grows by `fraction`; new media; `fraction` of the small files
        rewritten, as many appended to."""
        self._insert(max(1, int(self.rows * fraction)))
        self._media(int(self.size * 0.6 * fraction))
        files = sorted((self.root / "cache").rglob("*.json"))
        for path in self.rng.sample(files, max(1, int(len(files) * fraction))):
            path.write_bytes(self._small_body())
        for path in self.rng.sample(files, max(1, int(len(files) * fraction))):
            with open(path, "ab") as handle:
                handle.write(b"\n" + self._small_body())


def small_files(root: Path, count: int) -> None:
    rng = random.Random(2)
    for i in range(count):
        folder = root / f"{i % 250:03}"
        folder.mkdir(parents=True, exist_ok=True)
        words = " ".join(rng.choice(_WORDS) for _ in range(700))
        (folder / f"{i:06}.txt").write_text(words[: rng.randint(3000, 5000)])


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            digest.update(str(path.relative_to(root)).encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# ---- tools --------------------------------------------------------------------------------


class Restic:
    name = "restic"

    def __init__(self, work: Path) -> None:
        self.binary = ensure_restic()
        self.env = {
            **os.environ,
            "RESTIC_PASSWORD": RESTIC_PASSWORD,
            "RESTIC_CACHE_DIR": str(work / "restic-cache"),
        }

    def _run(self, *args: str) -> None:
        subprocess.run([self.binary, *args], env=self.env, check=True, capture_output=True)

    def init(self, repo: Path) -> None:
        self._run("init", "--repo", str(repo))

    def backup(self, repo: Path, source: Path) -> None:
        self._run("--repo", str(repo), "backup", "--quiet", "--host", "bench", str(source))

    def restore(self, repo: Path, target: Path, source: Path) -> Path:
        self._run("--repo", str(repo), "restore", "latest", "--target", str(target))
        return target / source.relative_to("/")

    def key_seconds(self, repo: Path, runs: int = 3) -> float:
        """What each restic command spends opening the repository before its work: the
        fastest of `runs` `restic cat config`, its scrypt key derivation above all (restic
        calibrates it at `init` to about half a second on the machine). Our commands read
        a recovery code, a full-strength key, and stretch nothing."""
        return min(
            timed(partial(self._run, "--repo", str(repo), "cat", "config")) for _ in range(runs)
        )


class Backupvault:
    name = "backupvault"

    def __init__(self, work: Path) -> None:
        self.codes: dict[Path, str] = {}
        self.env = {
            **os.environ,
            "BACKUPVAULT_STATE_DIR": str(work / "backupvault-state"),
            "PYTHONPYCACHEPREFIX": str(work / "pycache"),
        }
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        package = Path(backupvault.__file__).parent
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(package)], env=self.env, check=True
        )

    def _run(self, *args: str, stdin: str = "") -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "backupvault", "--json", *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"backupvault {' '.join(args)} failed: {done.stderr}")
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def init(self, repo: Path) -> None:
        """The first backup creates the repository."""

    def backup(self, repo: Path, source: Path) -> None:
        args = ["backup", "create", str(source), "--storage", str(repo), "--recovery-code"]
        if repo in self.codes:
            self._run(*args, stdin=self.codes[repo] + "\n")
        else:
            self.codes[repo] = self._run(*args)["recovery_code"]

    def restore(self, repo: Path, target: Path, source: Path) -> Path:
        self._run(
            "backup", "restore", "--storage", str(repo), "--to", str(target),
            "--recovery-code", "-", stdin=self.codes[repo] + "\n",
        )  # fmt: skip
        return target


#: Restores (and the small-file backups) are repeatable: each tool runs this many times,
#: the two alternating and the first tool changing every round, and its fastest counts.
#: Single runs of the same command moved by up to 2x here (file creation in the kernel).
RESTORES = 3


def _alternating(tools: list[Any], rounds: int) -> Iterator[Any]:
    for round_number in range(rounds):
        yield from tools if round_number % 2 == 0 else reversed(tools)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def settle() -> None:
    """Dirty pages of the previous step written out before the next is timed. (Caches are
    not dropped: the machine is shared, and both tools read the same warm files.)"""
    os.sync()


# ---- the run ------------------------------------------------------------------------------


def _time_row(
    name: str, ours: float, theirs: float, restic_key: float, goal: str = "≤ 1.0×"
) -> dict[str, Any]:
    """A row of one command's time, ours against restic's without its per-command key
    derivation (`Restic.key_seconds`, `restic_key`): ours, given a recovery code, stretches
    nothing, so restic's scrypt is left out of the ratio held to the goal (review s61: it
    decided the short rows, a 1.2× read as 0.98×). The ratio with it is kept beside."""
    ratio = ours / max(theirs - restic_key, 1e-9)
    return {
        "name": name,
        "value": ours,
        "unit": "s",
        "reference": f"restic {theirs:.2f} s, {restic_key:.2f} s of it opening its key (scrypt)"
        f" left out: ours reads a recovery code; with it {ours / theirs:.2f}×",
        "ratio": ratio,
        "goal": goal,
        "met": ratio <= float(goal.split()[1].rstrip("×")),
        "restic_key_seconds": restic_key,
        "ratio_with_restic_key": ours / theirs,
    }


def run(quick: bool) -> list[dict[str, Any]]:
    size = 64 * MB if quick else 1000 * MB
    small_count = 3000 if quick else 50_000
    random_size = (32 if quick else 512) << 20
    days = 10
    work = Path(tempfile.mkdtemp(prefix="bench-backup-", dir=os.environ.get("BENCH_TMP")))
    tools: list[Any] = [Backupvault(work), Restic(work)]
    rows: list[dict[str, Any]] = []
    try:
        data = ChatData(work / "chat", size)
        data.create()
        repos = {t.name: work / f"repo-{t.name}" for t in tools}
        for tool in tools:
            tool.init(repos[tool.name])
        times: dict[str, dict[str, float]] = {t.name: {} for t in tools}
        stored: dict[str, list[int]] = {t.name: [] for t in tools}

        def backup_all(label: str) -> None:
            for tool in tools:
                settle()
                times[tool.name][label] = timed(partial(tool.backup, repos[tool.name], data.root))
                stored[tool.name].append(folder_bytes(repos[tool.name]))

        backup_all("first")
        restic = next(tool for tool in tools if isinstance(tool, Restic))
        restic_key = restic.key_seconds(repos[restic.name])
        backup_all("unchanged")
        data.change(0.01)
        backup_all("changed")
        for _day in range(4, days + 1):
            data.change(0.01)
            backup_all("daily")
        restored: dict[str, float] = {}
        expected = tree_digest(data.root)
        for tool in _alternating(tools, RESTORES):
            target = work / f"restored-{tool.name}"
            settle()
            started = time.perf_counter()
            root = tool.restore(repos[tool.name], target, data.root)
            took = time.perf_counter() - started
            restored[tool.name] = min(took, restored.get(tool.name, took))
            if tree_digest(root) != expected:
                raise RuntimeError(f"{tool.name} restored something else")
            shutil.rmtree(target)

        ours, theirs = times["backupvault"], times["restic"]
        label_size = f"{size // MB} MB"
        rows.append(
            _time_row(
                f"first backup ({label_size} chat folder)",
                ours["first"],
                theirs["first"],
                restic_key,
            )
        )
        rows.append(
            _time_row(
                "second backup, nothing changed", ours["unchanged"], theirs["unchanged"], restic_key
            )
        )
        rows.append(
            _time_row(
                "second backup, 1% changed or appended",
                ours["changed"],
                theirs["changed"],
                restic_key,
            )
        )
        added = {name: s[2] - s[1] for name, s in stored.items()}
        rows.append(
            {
                "name": "bytes uploaded for the 1% change",
                "value": added["backupvault"] / MB,
                "unit": "MB",
                "reference": f"restic {added['restic'] / MB:.2f} MB",
                "ratio": added["backupvault"] / added["restic"],
                "goal": "≤ 1.5×",
                "met": added["backupvault"] <= 1.5 * added["restic"],
            }
        )
        final = {name: s[-1] for name, s in stored.items()}
        rows.append(
            {
                "name": f"storage after {days} daily backups",
                "value": final["backupvault"] / MB,
                "unit": "MB",
                "reference": f"restic {final['restic'] / MB:.1f} MB",
                "ratio": final["backupvault"] / final["restic"],
                "goal": "≤ 1.1×",
                "met": final["backupvault"] <= 1.1 * final["restic"],
            }
        )
        rows.append(
            _time_row(
                "restore of the latest", restored["backupvault"], restored["restic"], restic_key
            )
        )
        shutil.rmtree(data.root)
        for tool in tools:
            shutil.rmtree(repos[tool.name])

        # Many small files.
        many = work / "small"
        small_files(many, small_count)
        expected = tree_digest(many)
        small_times: dict[str, tuple[float, float]] = {}
        for tool in _alternating(tools, RESTORES):
            repo = work / f"small-{tool.name}"
            tool.init(repo)
            settle()
            backup_time = timed(partial(tool.backup, repo, many))
            target = work / f"small-restored-{tool.name}"
            settle()
            started = time.perf_counter()
            root = tool.restore(repo, target, many)
            pair = (backup_time, time.perf_counter() - started)
            best = small_times.get(tool.name, pair)
            small_times[tool.name] = (min(pair[0], best[0]), min(pair[1], best[1]))
            if tree_digest(root) != expected:
                raise RuntimeError(f"{tool.name} restored the small files wrongly")
            shutil.rmtree(target)
            shutil.rmtree(repo)
            if isinstance(tool, Backupvault):
                tool.codes.pop(repo)  # the next round starts a new repository
        label = f"{small_count:,} small files"
        rows.append(
            _time_row(
                f"{label}: backup",
                small_times["backupvault"][0],
                small_times["restic"][0],
                restic_key,
            )
        )
        rows.append(
            _time_row(
                f"{label}: restore",
                small_times["backupvault"][1],
                small_times["restic"][1],
                restic_key,
            )
        )
        shutil.rmtree(many)

        rows.append(rate_row(work, random_size))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def rate_row(work: Path, size: int, runs: int = 3) -> dict[str, Any]:
    """First backup of one file of `size` random bytes against `cat > file; sync` of the
    same bytes (GNU cat copies in the kernel with copy_file_range: the disk's limit).
    Each side runs `runs` times, alternately; the fastest of each counts (the machine may
    be shared), and our CPU time (user + system) is given beside it."""
    source = work / "random"
    source.mkdir()
    blob = source / "random.bin"
    blob.write_bytes(os.urandom(size))
    copy = work / "copy.bin"
    disk_times: list[float] = []
    our_times: list[tuple[float, float]] = []
    load_before = os.getloadavg()[0]
    for run_number in range(runs):
        settle()
        disk_times.append(
            timed(lambda: subprocess.run(f"cat '{blob}' > '{copy}'; sync", shell=True, check=True))
        )
        copy.unlink()
        settle()
        repo = work / f"random-repo-{run_number}"
        tool = Backupvault(work)  # compiles the package in a child: not the backup's CPU
        before = os.times()
        wall = timed(partial(tool.backup, repo, source))
        after = os.times()
        cpu = (after.children_user - before.children_user) + (
            after.children_system - before.children_system
        )
        our_times.append((wall, cpu))
        shutil.rmtree(repo)
    shutil.rmtree(source)
    disk = min(disk_times)
    ours, cpu = min(our_times)
    disk_rate, our_rate = size / disk / MB, size / ours / MB
    return {
        "name": f"first backup rate, {size >> 20} MiB random (best of {runs})",
        "value": our_rate,
        "unit": "MB/s",
        "reference": f"cat > file; sync {disk_rate:.0f} MB/s; ours {ours:.2f} s, {cpu:.2f} s CPU",
        "ratio": our_rate / disk_rate,
        "goal": "≥ 0.5×",
        "met": our_rate / disk_rate >= 0.5,
        # The machine may be shared: wall times follow its load (docs/performance.md).
        "load_average": [load_before, os.getloadavg()[0]],
    }


def main() -> None:
    """`python -m bench.backup_vs_restic --rate-only [--quick] [--json FILE]`: the rows
    (or only the rate row) as a table, each goal beside its figure, and as JSON."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.backup_vs_restic")
    parser.add_argument("--rate-only", action="store_true", help="only the first-backup rate")
    parser.add_argument("--quick", action="store_true", help="32 MiB instead of 512 MiB")
    parser.add_argument(
        "--json",
        type=Path,
        default=Path(__file__).parent / "results" / "backup_vs_restic.json",
        help="where to write the rows as JSON",
    )
    args = parser.parse_args()
    if not args.rate_only:
        rows = run(args.quick)
    else:
        work = Path(tempfile.mkdtemp(prefix="bench-rate-", dir=os.environ.get("BENCH_TMP")))
        try:
            rows = [rate_row(work, (32 if args.quick else 512) << 20)]
        finally:
            shutil.rmtree(work, ignore_errors=True)
    for row in rows:
        met = "met" if row["met"] else "NOT met"
        print(
            f"{row['name']}: {row['value']:.1f} {row['unit']} ({row['reference']}); "
            f"ratio {row['ratio']:.2f}, goal {row['goal']}: {met}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
