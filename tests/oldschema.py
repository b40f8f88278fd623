"""A database as the last release before schema versions (commit 5c2620b, sidechat 0.2.0)
left it: its schema.sql, saved as tests/data/schema-5c2620b.sql by
`git show 5c2620b:schema.sql`, and rows as its store wrote them."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

OLD_SCHEMA = Path(__file__).parent / "data" / "schema-5c2620b.sql"
REPLY = json.dumps({"provider": "demo", "model": "demo-1", "usage": {"input_tokens": 3, "output_tokens": 9}})


def old_database(path: Path, *, filler: int = 0) -> None:
    """A finished turn under an idempotency key in a conversation shared with a member, a
    reply a crash left streaming, and `filler` more finished turns of some 8 KB each, each
    in a conversation of its own, last active in 2025."""
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA foreign_keys = ON")
        db.executescript(OLD_SCHEMA.read_text())
        db.execute(
            "INSERT INTO conversations (id, user_id, title, created_at, updated_at)"
            " VALUES (1, 'alice', 'Old times', '2025-01-02T03:04:05.000Z', '2025-01-02T03:04:05.000Z'),"
            " (2, 'bob', NULL, '2025-02-01T00:00:00.000Z', '2025-02-01T00:00:00.000Z')"
        )
        db.execute("INSERT INTO members VALUES (1, 'bob', '2025-01-02T03:05:00.000Z')")
        db.execute(
            "INSERT INTO messages (conversation_id, role, content, status, metadata, idempotency_key,"
            " request_hash, created_at, completed_at, user_id, last_event_id) VALUES"
            " (1, 'user', 'hello there', 'completed', '{}', 'alice:key-1', 'hash-1',"
            "  '2025-01-02T03:04:06.000Z', '2025-01-02T03:04:06.000Z', 'alice', 0),"
            " (1, 'assistant', 'General Kenobi', 'completed', :reply, NULL, NULL,"
            "  '2025-01-02T03:04:06.000Z', '2025-01-02T03:04:07.000Z', NULL, 5),"
            " (2, 'user', 'cut off', 'completed', '{}', NULL, NULL,"
            "  '2025-02-01T00:00:01.000Z', '2025-02-01T00:00:01.000Z', 'bob', 0),"
            " (2, 'assistant', 'half a rep', 'streaming', :reply, NULL, NULL,"
            "  '2025-02-01T00:00:01.000Z', NULL, NULL, 0)",
            {"reply": REPLY},
        )
        for n in range(filler):
            stamp = f"2025-03-01T00:00:{n % 60:02d}.000Z"
            found = db.execute(
                "INSERT INTO conversations (user_id, created_at, updated_at) VALUES ('alice', ?, ?)",
                (stamp, stamp),
            )
            db.execute(
                "INSERT INTO messages (conversation_id, role, content, status, created_at, completed_at)"
                " VALUES (?, 'user', ?, 'completed', ?, ?), (?, 'assistant', ?, 'completed', ?, ?)",
                (found.lastrowid, "ask " * 500, stamp, stamp, found.lastrowid, "answer " * 600, stamp, stamp),
            )
    with closing(sqlite3.connect(path)) as db:  # the last to close: the log goes into the file
        assert db.execute("PRAGMA user_version").fetchone() == (0,)
        assert db.execute("PRAGMA auto_vacuum").fetchone() == (0,)
