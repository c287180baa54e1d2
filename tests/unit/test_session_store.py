"""The SQLite session store: exchanges, interruptions, migrations, foreign files, threads."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from tandem.errors import InvalidRequestError
from tandem.sessions.schema import MIGRATIONS
from tandem.sessions.store import (
    Answer,
    SessionStoreError,
    SqliteSessionStore,
    check_session_id,
)


def answer(text: str, status: str = "complete", tier: str = "local") -> Answer:
    return Answer(
        content=text,
        status=status,  # type: ignore[arg-type]
        tier=tier,
        model=f"{tier}-model",
        reason="default_local",
        prompt_tokens=10,
        completion_tokens=3,
        prefill_tokens=4,
        timings={"prefill_s": 0.01},
        context={"start": 0, "dropped": 0},
    )


@pytest.fixture
def store(tmp_path: Path) -> SqliteSessionStore:
    return SqliteSessionStore(tmp_path / "s.db")


def test_exchanges_build_the_context_in_order(store: SqliteSessionStore) -> None:
    store.append("s1", [{"role": "system", "content": "Be brief."}, user("one")], answer("a1"))
    store.append("s1", [user("two")], answer("a2", tier="cloud"), {"local": 0, "cloud": 2})
    ctx = store.context("s1")
    assert [m["content"] for m in ctx.messages] == ["Be brief.", "one", "a1", "two", "a2"]
    assert [m["role"] for m in ctx.messages] == ["system", "user", "assistant"] * 1 + [
        "user",
        "assistant",
    ]
    assert ctx.starts == {"local": 0, "cloud": 2}
    assert store.context("other").messages == []


def test_transcript_names_the_tier_of_each_answer(store: SqliteSessionStore) -> None:
    store.append("s1", [user("one")], answer("a1", tier="local"))
    store.append("s1", [user("two")], answer("a2", tier="cloud"))
    t = store.transcript("s1")
    assert t is not None
    answers = [m for m in t["messages"] if m["role"] == "assistant"]
    assert [a["tier"] for a in answers] == ["local", "cloud"]
    assert answers[1]["model"] == "cloud-model"
    assert answers[0]["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "prefill_tokens": 4}
    assert [m["exchange"] for m in t["messages"]] == [0, 0, 1, 1]
    assert store.transcript("missing") is None


def test_interrupted_answers_are_kept_but_not_in_context(store: SqliteSessionStore) -> None:
    store.append("s1", [user("one")], answer("a1"))
    store.append("s1", [user("two")], answer("half an ans", status="interrupted"))
    assert [m["content"] for m in store.context("s1").messages] == ["one", "a1"]
    t = store.transcript("s1")
    assert t is not None
    assert [m["status"] for m in t["messages"]] == ["complete"] * 2 + ["interrupted"] * 2


def test_delete_forgets_every_message(store: SqliteSessionStore) -> None:
    store.append("s1", [user("one")], answer("a1"))
    store.append("s2", [user("other")], answer("b1"))
    assert store.delete("s1") is True
    assert store.delete("s1") is False
    assert store.transcript("s1") is None
    assert store.context("s1").messages == []
    assert [s["id"] for s in store.list_sessions()] == ["s2"]


def test_a_failed_exchange_writes_nothing(store: SqliteSessionStore) -> None:
    store.append("s1", [user("one")], answer("a1"))
    bad = [user("two"), {"role": "function", "content": "x"}]  # the schema refuses the role
    with pytest.raises(sqlite3.IntegrityError):
        store.append("s1", bad, answer("a2"))
    assert [m["content"] for m in store.context("s1").messages] == ["one", "a1"]


def test_reopening_keeps_data_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    first = SqliteSessionStore(path)
    first.append("s1", [user("one")], answer("a1"))
    first.close()
    again = SqliteSessionStore(path)
    assert again.schema_version == len(MIGRATIONS)
    assert [m["content"] for m in again.context("s1").messages] == ["one", "a1"]
    (mode,) = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()
    assert mode == "wal"


def test_a_foreign_sqlite_file_is_refused_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(SessionStoreError, match="another application") as err:
        SqliteSessionStore(path)
    assert str(path) in err.value.message
    (count,) = sqlite3.connect(path).execute("SELECT count(*) FROM sqlite_master").fetchone()
    assert count == 1  # untouched


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    with pytest.raises(SessionStoreError, match="not a usable session database"):
        SqliteSessionStore(path)
    assert path.read_bytes().startswith(b"these are my notes")


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SqliteSessionStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.commit()
    db.close()
    with pytest.raises(SessionStoreError, match="newer than this Tandem"):
        SqliteSessionStore(path)


def test_concurrent_writers_get_distinct_positions(store: SqliteSessionStore) -> None:
    def write(i: int) -> None:
        for j in range(10):
            store.append("s1", [user(f"{i}-{j}")], answer(f"a{i}-{j}"))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t = store.transcript("s1")
    assert t is not None
    assert [m["seq"] for m in t["messages"]] == list(range(80))
    # Each exchange is contiguous: a user message is followed by its own answer.
    pairs = zip(t["messages"][::2], t["messages"][1::2], strict=True)
    assert all("a" + u["content"] == a["content"] for u, a in pairs)


@pytest.mark.parametrize("bad", ["", "-x", "a b", "a/b", "x" * 129, "é"])
def test_session_ids_are_checked(bad: str) -> None:
    with pytest.raises(InvalidRequestError):
        check_session_id(bad)


def test_valid_session_ids_pass() -> None:
    for good in ["a", "user-42", "chat:2026.11.27_1", "X" * 128]:
        assert check_session_id(good) == good


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}
