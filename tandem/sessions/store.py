"""Durable conversation state: the ``SessionStore`` interface and its SQLite implementation.

A session is an ordered list of messages. Messages are written one exchange at a time (the new
user/system messages together with the answer), in one transaction, and only once the answer is
complete; an answer cut short is written with status ``interrupted`` and is kept out of the
context the models see. WAL mode with ``synchronous=FULL`` makes every acknowledged exchange
survive a crash of the process (and of the machine).
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from tandem.errors import InvalidRequestError, TandemError
from tandem.local.chat import Message
from tandem.sessions.schema import APPLICATION_ID, MIGRATIONS, message_from_row, message_view

Status = Literal["complete", "interrupted"]
SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class SessionStoreError(TandemError):
    """The session database cannot be opened or used."""

    code = "session_store_error"

    def __init__(self, message: str, *, code: str | None = None, status_code: int | None = None):
        super().__init__(message, code=code)
        if status_code is not None:
            self.status_code = status_code


@dataclass(frozen=True)
class Answer:
    """The assistant message that closes an exchange, with how it was produced."""

    content: str
    status: Status
    tier: str
    model: str
    reason: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prefill_tokens: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    context: dict[str, int] = field(default_factory=dict)  # first kept message, dropped count
    tool_calls: str | None = None  # the calls it made (tandem.tools.encode_calls)


@dataclass(frozen=True)
class SessionContext:
    """What the models see of a session: its complete messages, and where each tier's window
    started last time (the index of the first kept message), so fitting keeps a stable prefix;
    the strictest privacy mode used so far and the session's placeholder table."""

    messages: list[Message]
    starts: dict[str, int]
    privacy: str | None = None
    placeholders: dict[str, str] = field(default_factory=dict)  # value → placeholder


class SessionStore(Protocol):
    """Where sessions live. SQLite is the implementation; a server database could be another."""

    def context(self, session_id: str) -> SessionContext: ...

    def append(
        self,
        session_id: str,
        messages: Sequence[Message],
        answer: Answer,
        starts: dict[str, int] | None = None,
        privacy: str | None = None,
        placeholders: dict[str, str] | None = None,
    ) -> None: ...

    def record_audit(self, record: dict[str, Any]) -> None: ...

    def audit(self, session_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]: ...

    def transcript(self, session_id: str) -> dict[str, Any] | None: ...

    def delete(self, session_id: str) -> bool: ...

    def list_sessions(self, limit: int = 100) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


def check_session_id(session_id: str) -> str:
    if not SESSION_ID.match(session_id):
        raise InvalidRequestError(
            "A session id is 1–128 characters of letters, digits, '_', '.', ':' or '-', "
            f"starting with a letter or digit; got {session_id[:40]!r}.",
            param="session_id",
        )
    return session_id


class SqliteSessionStore:
    """Sessions in one SQLite file. Thread-safe (one connection behind a lock)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA busy_timeout = 5000")
            self._migrate(db)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            (ok,) = db.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as exc:
            raise SessionStoreError(
                f"{self.path} is not a usable session database ({exc}). Move it away or point "
                "TANDEM_SESSIONS_DB at another file."
            ) from None
        if ok != "ok":
            raise SessionStoreError(
                f"{self.path} failed SQLite's integrity check ({ok}). Move it away or point "
                "TANDEM_SESSIONS_DB at another file."
            )
        return db

    def _migrate(self, db: sqlite3.Connection) -> None:
        (app_id,) = db.execute("PRAGMA application_id").fetchone()
        (version,) = db.execute("PRAGMA user_version").fetchone()
        tables = db.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
        if app_id != APPLICATION_ID and (tables or version):
            raise SessionStoreError(
                f"{self.path} is an SQLite database of another application, not a Tandem "
                "session store. Point TANDEM_SESSIONS_DB at another file."
            )
        if version > len(MIGRATIONS):
            raise SessionStoreError(
                f"{self.path} has schema version {version}, newer than this Tandem knows "
                f"({len(MIGRATIONS)}). Upgrade Tandem or use another file."
            )
        for target in range(version + 1, len(MIGRATIONS) + 1):
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(MIGRATIONS[target - 1]):
                    db.execute(statement)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {target}")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite may have rolled back already (disk full)
                    db.execute("ROLLBACK")
                raise

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # -- reads -----------------------------------------------------------------------------

    def context(self, session_id: str) -> SessionContext:
        with self._lock:
            rows = self._db.execute(
                "SELECT role, content, tool_calls, tool_call_id FROM messages "
                "WHERE session_id = ? AND status = 'complete' ORDER BY seq",
                (session_id,),
            ).fetchall()
            session = self._db.execute(
                "SELECT local_start, cloud_start, privacy FROM sessions WHERE id = ?",
                (session_id,),
            ).fetchone()
            table = self._db.execute(
                "SELECT value, placeholder FROM placeholders WHERE session_id = ?", (session_id,)
            ).fetchall()
        messages = [message_from_row(*row) for row in rows]
        local, cloud, privacy = session or (0, 0, None)
        return SessionContext(messages, {"local": local, "cloud": cloud}, privacy, dict(table))

    def transcript(self, session_id: str) -> dict[str, Any] | None:
        with self._lock:
            session = self._db.execute(
                "SELECT created_at, updated_at FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            if session is None:
                return None
            cursor = self._db.execute(
                "SELECT * FROM messages WHERE session_id = ? ORDER BY seq", (session_id,)
            )
            names = [d[0] for d in cursor.description]
            rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        return {
            "id": session_id,
            "object": "tandem.session",
            "created_at": session[0],
            "updated_at": session[1],
            "messages": [message_view(row) for row in rows],
        }

    def list_sessions(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT s.id, s.created_at, s.updated_at, count(m.seq) FROM sessions s "
                "LEFT JOIN messages m ON m.session_id = s.id GROUP BY s.id "
                "ORDER BY s.updated_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            {"id": r[0], "created_at": r[1], "updated_at": r[2], "messages": r[3]} for r in rows
        ]

    # -- writes ----------------------------------------------------------------------------

    def append(
        self,
        session_id: str,
        messages: Sequence[Message],
        answer: Answer,
        starts: dict[str, int] | None = None,
        privacy: str | None = None,
        placeholders: dict[str, str] | None = None,
    ) -> None:
        """Write one exchange (the new messages and the answer) atomically, with the session's
        privacy mode and new placeholders."""
        now = time.time()
        with self._lock, self._writing():
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT INTO sessions (id, created_at, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET updated_at = excluded.updated_at",
                    (session_id, now, now),
                )
                seq, exchange = db.execute(
                    "SELECT coalesce(max(seq), -1) + 1, coalesce(max(exchange), -1) + 1 "
                    "FROM messages WHERE session_id = ?",
                    (session_id,),
                ).fetchone()
                status = answer.status
                for m in messages:
                    db.execute(
                        "INSERT INTO messages (session_id, seq, exchange, role, content, status, "
                        "created_at, tool_calls, tool_call_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            session_id,
                            seq,
                            exchange,
                            m["role"],
                            m["content"],
                            status,
                            now,
                            m.get("tool_calls"),
                            m.get("tool_call_id"),
                        ),
                    )
                    seq += 1
                db.execute(
                    "INSERT INTO messages VALUES (?, ?, ?, 'assistant', ?, ?, ?, ?, ?, ?, ?, ?, "
                    "?, ?, ?, ?, NULL)",
                    (
                        session_id,
                        seq,
                        exchange,
                        answer.content,
                        status,
                        answer.tier,
                        answer.model,
                        answer.reason,
                        answer.prompt_tokens,
                        answer.completion_tokens,
                        answer.prefill_tokens,
                        json.dumps(answer.timings),
                        json.dumps(answer.context),
                        now,
                        answer.tool_calls,
                    ),
                )
                if starts:
                    db.execute(
                        "UPDATE sessions SET local_start = ?, cloud_start = ? WHERE id = ?",
                        (starts.get("local", 0), starts.get("cloud", 0), session_id),
                    )
                if privacy is not None:
                    db.execute(
                        "UPDATE sessions SET privacy = ? WHERE id = ?", (privacy, session_id)
                    )
                db.executemany(
                    "INSERT OR IGNORE INTO placeholders VALUES (?, ?, ?)",
                    [(session_id, v, p) for v, p in (placeholders or {}).items()],
                )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite may have rolled back already (disk full)
                    db.execute("ROLLBACK")
                raise

    def record_audit(self, record: dict[str, Any]) -> None:
        """One cloud call: when, for which session, where, what was redacted, a hash of the
        body. Never the text."""
        with self._lock, self._writing():
            self._db.execute(
                "INSERT INTO audit (at, session_id, endpoint, model, mode, redacted, body_sha256, "
                "body_bytes, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record["at"],
                    record.get("session_id"),
                    record["endpoint"],
                    record.get("model"),
                    record["mode"],
                    json.dumps(record.get("redacted", {}), sort_keys=True),
                    record["body_sha256"],
                    record["body_bytes"],
                    record["outcome"],
                ),
            )

    def audit(self, session_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The latest audit records, newest first."""
        where, args = ("WHERE session_id = ?", [session_id]) if session_id else ("", [])
        with self._lock:
            cursor = self._db.execute(
                f"SELECT * FROM audit {where} ORDER BY at DESC, id DESC LIMIT ?", (*args, limit)
            )
            names = [d[0] for d in cursor.description]
            rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        for row in rows:
            row["redacted"] = json.loads(row["redacted"])
        return rows

    def delete(self, session_id: str) -> bool:
        with self._lock, self._writing():
            cursor = self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            return cursor.rowcount > 0

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Storage failures (disk full, I/O error, file locked too long) as a clear error; the
        transaction is rolled back, so the database keeps its last committed state."""
        try:
            yield
        except sqlite3.IntegrityError:
            raise  # a bug or bad data, not the storage
        except sqlite3.OperationalError as exc:
            full = "full" in str(exc)
            raise SessionStoreError(
                f"Could not write to the session database {self.path}: {exc}. Nothing of this "
                "turn was saved; "
                + ("free disk space" if full else "check the disk and the file's permissions")
                + " and retry.",
                code="storage_full" if full else "storage_error",
                status_code=507 if full else 503,
            ) from None

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
