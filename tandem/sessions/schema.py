"""The session database's schema, as numbered migrations (``PRAGMA user_version``), and how
its message rows read."""

from __future__ import annotations

import json
from typing import Any

from tandem.local.chat import Message
from tandem.tools import decode_calls

APPLICATION_ID = 0x54414E44  # "TAND": marks a file as a Tandem session database

# Each entry upgrades the schema by one version (PRAGMA user_version). Never edit a shipped
# entry: append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE sessions (
        id          TEXT PRIMARY KEY,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL,
        local_start INTEGER NOT NULL DEFAULT 0,
        cloud_start INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE messages (
        session_id        TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        seq               INTEGER NOT NULL,
        exchange          INTEGER NOT NULL,
        role              TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        content           TEXT NOT NULL,
        status            TEXT NOT NULL CHECK (status IN ('complete', 'interrupted')),
        tier              TEXT,
        model             TEXT,
        reason            TEXT,
        prompt_tokens     INTEGER,
        completion_tokens INTEGER,
        prefill_tokens    INTEGER,
        timings           TEXT,
        context           TEXT,
        created_at        REAL NOT NULL,
        PRIMARY KEY (session_id, seq)
    ) WITHOUT ROWID;
    CREATE INDEX sessions_by_update ON sessions(updated_at);
    """,
    """
    ALTER TABLE sessions ADD COLUMN privacy TEXT;
    CREATE TABLE placeholders (
        session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        value       TEXT NOT NULL,
        placeholder TEXT NOT NULL,
        PRIMARY KEY (session_id, value)
    ) WITHOUT ROWID;
    CREATE TABLE audit (
        id          INTEGER PRIMARY KEY,
        at          REAL NOT NULL,
        session_id  TEXT,
        endpoint    TEXT NOT NULL,
        model       TEXT,
        mode        TEXT NOT NULL,
        redacted    TEXT NOT NULL,
        body_sha256 TEXT NOT NULL,
        body_bytes  INTEGER NOT NULL,
        outcome     TEXT NOT NULL
    );
    CREATE INDEX audit_by_time ON audit(at);
    CREATE INDEX audit_by_session ON audit(session_id, at);
    """,
    # Tool calling: tool results (role 'tool') and the calls of assistant messages. SQLite
    # cannot change a CHECK constraint in place, so the table is rebuilt.
    """
    CREATE TABLE messages_v3 (
        session_id        TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        seq               INTEGER NOT NULL,
        exchange          INTEGER NOT NULL,
        role              TEXT NOT NULL
                          CHECK (role IN ('system', 'user', 'assistant', 'tool')),
        content           TEXT NOT NULL,
        status            TEXT NOT NULL CHECK (status IN ('complete', 'interrupted')),
        tier              TEXT,
        model             TEXT,
        reason            TEXT,
        prompt_tokens     INTEGER,
        completion_tokens INTEGER,
        prefill_tokens    INTEGER,
        timings           TEXT,
        context           TEXT,
        created_at        REAL NOT NULL,
        tool_calls        TEXT,
        tool_call_id      TEXT,
        PRIMARY KEY (session_id, seq)
    ) WITHOUT ROWID;
    INSERT INTO messages_v3 (session_id, seq, exchange, role, content, status, tier, model,
        reason, prompt_tokens, completion_tokens, prefill_tokens, timings, context, created_at)
    SELECT session_id, seq, exchange, role, content, status, tier, model, reason,
        prompt_tokens, completion_tokens, prefill_tokens, timings, context, created_at
    FROM messages;
    DROP TABLE messages;
    ALTER TABLE messages_v3 RENAME TO messages;
    """,
)


def message_from_row(
    role: str, content: str, tool_calls: str | None, call_id: str | None
) -> Message:
    """A stored message as the models see it."""
    message = {"role": role, "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    if call_id is not None:
        message["tool_call_id"] = call_id
    return message


def message_view(row: dict[str, Any]) -> dict[str, Any]:
    """A stored message as a transcript shows it."""
    view: dict[str, Any] = {
        "seq": row["seq"],
        "exchange": row["exchange"],
        "role": row["role"],
        "content": row["content"],
        "status": row["status"],
        "created_at": row["created_at"],
    }
    if row["tool_calls"] is not None:
        view["tool_calls"] = decode_calls(row["tool_calls"])
    if row["tool_call_id"] is not None:
        view["tool_call_id"] = row["tool_call_id"]
    if row["role"] == "assistant":
        view.update(
            tier=row["tier"],
            model=row["model"],
            reason=row["reason"],
            usage={
                "prompt_tokens": row["prompt_tokens"],
                "completion_tokens": row["completion_tokens"],
                "prefill_tokens": row["prefill_tokens"],
            },
            timings=json.loads(row["timings"] or "{}"),
            context=json.loads(row["context"] or "{}"),
        )
    return view
