"""Make the demo's sample folder: a chat-history-like SQLite database plus media files."""

from __future__ import annotations

import random
import sqlite3
import sys
from pathlib import Path


def make_sample(root: Path, seed: int = 7) -> None:
    rng = random.Random(seed)
    (root / "media").mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(root / "chats.db")
    db.executescript(
        """
        CREATE TABLE IF NOT EXISTS chat (id INTEGER PRIMARY KEY, title TEXT);
        CREATE TABLE IF NOT EXISTS message (
            id INTEGER PRIMARY KEY, chat_id INTEGER, sender TEXT, sent_at INTEGER,
            body TEXT, media TEXT);
        """
    )
    people = ["alice", "bob", "carol", "dave"]
    words = "see you at the station tomorrow lunch photo sent thanks great news call me".split()
    with db:
        for chat_id, title in enumerate(["family", "work", "climbing"], start=1):
            db.execute("INSERT INTO chat VALUES (?, ?)", (chat_id, title))
        for message_id in range(1, 2001):
            media = f"media/IMG_{message_id:05d}.jpg" if message_id % 100 == 0 else None
            body = " ".join(rng.choice(words) for _ in range(rng.randint(3, 14)))
            db.execute(
                "INSERT INTO message VALUES (?, ?, ?, ?, ?, ?)",
                (message_id, rng.randint(1, 3), rng.choice(people),
                 1_700_000_000 + message_id * 37, body, media),
            )
            if media:
                # Photos do not compress: random bytes behind a JPEG marker.
                (root / media).write_bytes(b"\xff\xd8\xff\xe0" + rng.randbytes(200_000))
    db.close()
    (root / "media" / "voice-note.txt").write_text("transcript: meet at 7, bring the rope\n")


if __name__ == "__main__":
    make_sample(Path(sys.argv[1]))
