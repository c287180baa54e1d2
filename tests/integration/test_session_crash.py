"""Session durability under SIGKILL: the store's writer and the whole gateway, killed at random.

An exchange is acknowledged (to the writer's caller, or to an HTTP client) only after its
transaction commits, so after any kill the database must pass SQLite's integrity check, hold
every acknowledged exchange whole, and hold no half exchange. At most one exchange per killed
writer (per session, for the gateway) may be present without having been acknowledged: the one
whose commit had reached the file when the kill came, before its acknowledgement went out.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tandem.sessions.store import SqliteSessionStore
from tests.integration.gateway_proc import gateway_server

SEED = int(os.environ.get("TANDEM_CRASH_SEED", "1729"))
REPO = Path(__file__).resolve().parents[2]
WRITER_SESSIONS = ("s-0", "user:42.chat", "Z_9")
GATEWAY_SESSIONS = ("crash-a", "crash-b")

_WRITER = textwrap.dedent(
    """
    import hashlib, json, random, sys
    from tandem.sessions.store import Answer, SqliteSessionStore

    db, round_no, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sessions = sys.argv[4].split(",")
    rng = random.Random(seed)
    alphabet = (
        "plain ascii text, 'quotes' \\"double\\" \\n newline ÄÖÜ ß é ñ 日本語の文章 "
        "Ελληνικά кириллица עברית العربية 🙂🚀𝄞 e\\u0301 \\u2028 \\u200b "
    ) * 4

    def text(size):
        start = rng.randrange(len(alphabet))
        return ((alphabet * (size // len(alphabet) + 2))[start : start + size])

    def digest(s):
        return hashlib.sha256(s.encode("utf-8")).hexdigest()

    store = SqliteSessionStore(db)
    n = 0
    while True:
        sid = rng.choice(sessions)
        marker = f"r{round_no}-n{n}"
        size = rng.choices((0, 12, 300, 4000, 60000), weights=(3, 10, 6, 3, 1))[0]
        messages = [{"role": "user", "content": f"{marker} {text(size)}"}]
        if rng.random() < 0.2:
            messages.insert(0, {"role": "system", "content": f"{marker} {text(40)}"})
        status = "interrupted" if rng.random() < 0.1 else "complete"
        answer = Answer(
            content=f"{marker} {text(rng.choice((0, 20, 2000)))}",
            status=status,
            tier=rng.choice(("local", "cloud")),
            model="crash-writer",
            reason="crash_test",
            prompt_tokens=n,
            completion_tokens=size,
            timings={"decode_s": 0.001},
            context={"start": 0, "dropped": 0},
        )
        store.append(sid, messages, answer, starts={"local": n % 7, "cloud": n % 3})
        ack = {
            "sid": sid,
            "marker": marker,
            "roles": [m["role"] for m in messages] + ["assistant"],
            "digests": [digest(m["content"]) for m in messages] + [digest(answer.content)],
            "status": status,
        }
        sys.stdout.write(json.dumps(ack) + "\\n")
        sys.stdout.flush()
        n += 1
    """
)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _integrity(db: Path) -> None:
    """SQLite's own checks on the file, through a plain connection (which recovers the WAL)."""
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        orphans = conn.execute(
            "SELECT count(*) FROM messages WHERE session_id NOT IN (SELECT id FROM sessions)"
        ).fetchone()[0]
        assert orphans == 0


def _exchanges(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split a transcript into exchanges, asserting that each one is whole and numbered in order:
    seq 0..n-1, exchange 0..k-1, each exchange one or more non-assistant messages and then its
    answer, all with one status."""
    seqs = [m["seq"] for m in messages]
    assert seqs == list(range(len(messages))), f"seq numbers are not 0..n-1: {seqs}"
    groups: list[list[dict[str, Any]]] = []
    for m in messages:
        if not groups or groups[-1][0]["exchange"] != m["exchange"]:
            assert m["exchange"] == len(groups), f"exchange numbers skip at seq {m['seq']}"
            groups.append([])
        groups[-1].append(m)
    for group in groups:
        roles = [m["role"] for m in group]
        where = f"exchange {group[0]['exchange']} has roles {roles}"
        assert len(roles) >= 2, where
        assert roles[-1] == "assistant", where
        assert "assistant" not in roles[:-1], where
        assert len({m["status"] for m in group}) == 1, where
    return groups


# -- the store, killed while it writes -------------------------------------------------------


@dataclass
class _Writer:
    proc: subprocess.Popen[bytes]
    lines: list[bytes] = field(default_factory=list)
    first: threading.Event = field(default_factory=threading.Event)

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self.first.set()
        self.first.set()

    def acks(self) -> list[dict[str, Any]]:
        """The acknowledgements written whole (a line cut by the kill does not count)."""
        return [json.loads(line) for line in self.lines if line.endswith(b"\n")]


def _kill_writer_round(
    db: Path, round_no: int, rng: random.Random, stderr: Path
) -> list[dict[str, Any]]:
    """Start a writer on ``db``, SIGKILL it at a random moment, and return its acks."""
    cmd = [sys.executable, "-c", _WRITER, str(db), str(round_no), str(rng.randrange(2**32))]
    cmd.append(",".join(WRITER_SESSIONS))
    with stderr.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=REPO)
    writer = _Writer(proc)
    reader = threading.Thread(target=writer.read, daemon=True)
    reader.start()
    try:
        assert writer.first.wait(30), "the writer acknowledged nothing in 30 s"
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    reader.join(10)
    assert proc.returncode == -signal.SIGKILL, stderr.read_text()[-2000:]
    acks = writer.acks()
    assert acks, f"round {round_no}: no acknowledgement before the kill"
    return acks


def _check_store(db: Path, acks: list[dict[str, Any]], kills: int) -> None:
    _integrity(db)
    store = SqliteSessionStore(db)
    try:
        found: dict[str, tuple[str, int, list[dict[str, Any]]]] = {}
        for sid in WRITER_SESSIONS:
            transcript = store.transcript(sid)
            messages = [] if transcript is None else transcript["messages"]
            for index, group in enumerate(_exchanges(messages)):
                marker = group[-1]["content"].split(" ", 1)[0]
                assert marker not in found, f"{marker} written twice"
                assert all(m["content"].startswith(f"{marker} ") for m in group), marker
                found[marker] = (sid, index, group)
            complete = [
                {"role": m["role"], "content": m["content"]}
                for m in messages
                if m["status"] == "complete"
            ]
            assert store.context(sid).messages == complete
        last_index: dict[str, int] = {}
        for ack in acks:
            marker = ack["marker"]
            assert marker in found, f"acknowledged exchange {marker} ({ack['sid']}) is missing"
            sid, index, group = found[marker]
            assert sid == ack["sid"], marker
            assert [m["role"] for m in group] == ack["roles"], marker
            assert [_digest(m["content"]) for m in group] == ack["digests"], marker
            assert {m["status"] for m in group} == {ack["status"]}, marker
            assert index > last_index.get(sid, -1), f"{marker} is out of order"
            last_index[sid] = index
        unacknowledged = sorted(set(found) - {a["marker"] for a in acks})
        assert len(unacknowledged) <= kills, unacknowledged
    finally:
        store.close()


@pytest.mark.timeout(120)
def test_store_survives_kill_9_at_random_moments(tmp_path: Path) -> None:
    """Kill a writer appending exchanges 24 times at random moments; nothing acknowledged is
    lost and the file stays consistent."""
    rng = random.Random(SEED)
    db = tmp_path / "sessions.db"
    acks: list[dict[str, Any]] = []
    rounds = 24
    for round_no in range(rounds):
        acks += _kill_writer_round(db, round_no, rng, tmp_path / f"writer{round_no}.err")
        _check_store(db, acks, kills=round_no + 1)
    assert len(acks) >= rounds
    assert {a["sid"] for a in acks} == set(WRITER_SESSIONS)


# -- the gateway, killed mid-traffic --------------------------------------------------------


PHRASES = (
    "Name a colour.",
    "Dis bonjour en un mot.",
    "¿Qué hora es? Responde corto.",
    "Zähle bis drei.",
    "日本語で一言。",
    "Say one word about 🚀.",
)


@dataclass
class _Traffic:
    """What the clients sent and which turns they received completely, per session."""

    sent: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in GATEWAY_SESSIONS})
    completed: dict[str, list[tuple[str, str]]] = field(
        default_factory=lambda: {s: [] for s in GATEWAY_SESSIONS}
    )
    problems: list[str] = field(default_factory=list)
    ended_by_transport_error: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {sid: len(turns) for sid, turns in self.completed.items()}


class _Unexpected(Exception):
    """The gateway answered, but not with a whole, successful response."""


def _plain_turn(client: httpx.Client, url: str, sid: str, text: str) -> str:
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": 8, "temperature": 0}
    response = client.post(f"{url}/chat/completions", json=body, headers={"X-Session-Id": sid})
    if response.status_code != 200:
        raise _Unexpected(f"{response.status_code}: {response.text[:300]}")
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


def _stream_turn(client: httpx.Client, url: str, sid: str, text: str) -> str:
    body = {
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
    }
    parts: list[str] = []
    finished = done = False
    headers = {"X-Session-Id": sid}
    with client.stream("POST", f"{url}/chat/completions", json=body, headers=headers) as response:
        if response.status_code != 200:
            raise _Unexpected(f"{response.status_code}: {response.read()[:300]!r}")
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[len("data: ") :])
            if "error" in chunk:
                raise _Unexpected(f"error event: {chunk['error']}")
            choice = chunk["choices"][0]
            parts.append(choice["delta"].get("content") or "")
            finished = finished or choice["finish_reason"] is not None
    if not done:
        raise httpx.RemoteProtocolError("the stream ended before [DONE]")
    if not finished:
        raise _Unexpected("[DONE] without a finish_reason")
    return "".join(parts)


def _drive(url: str, sid: str, round_no: int, traffic: _Traffic) -> None:
    """Send turns on one session, alternating streaming and not, until the gateway dies."""
    with httpx.Client(timeout=120) as client:
        n = 0
        while True:
            text = f"{sid} r{round_no} t{n}: {PHRASES[n % len(PHRASES)]}"
            turn = _stream_turn if (n + round_no) % 2 else _plain_turn
            with traffic.lock:
                traffic.sent[sid].append(text)
            try:
                answer = turn(client, url, sid, text)
            except httpx.TransportError:
                with traffic.lock:
                    traffic.ended_by_transport_error.add(sid)
                return
            except Exception as exc:
                with traffic.lock:
                    traffic.problems.append(f"{sid} {text!r}: {exc!r}")
                return
            with traffic.lock:
                traffic.completed[sid].append((text, answer))
            n += 1


def _check_sessions(
    transcripts: dict[str, dict[str, Any] | None], traffic: _Traffic, kills: int
) -> None:
    """Every completed turn is present, complete and in order; nothing else is there but at
    most one unconfirmed turn per session per kill."""
    for sid in GATEWAY_SESSIONS:
        transcript = transcripts[sid]
        assert transcript is not None, f"session {sid} is missing"
        assert transcript["id"] == sid
        groups = _exchanges(transcript["messages"])
        by_text: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        for index, group in enumerate(groups):
            assert [m["role"] for m in group] == ["user", "assistant"], group
            text = group[0]["content"]
            assert text in traffic.sent[sid], f"{sid}: a turn nobody sent: {text!r}"
            assert text not in by_text, f"{sid}: {text!r} written twice"
            by_text[text] = (index, group)
        last = -1
        for text, answer in traffic.completed[sid]:
            assert text in by_text, f"{sid}: completed turn {text!r} is missing"
            index, (user, assistant) = by_text[text]
            assert user["status"] == assistant["status"] == "complete", (text, user, assistant)
            assert assistant["content"] == answer, (text, assistant["content"], answer)
            assert index > last, f"{sid}: {text!r} is out of order"
            last = index
        unconfirmed = sorted(set(by_text) - {text for text, _ in traffic.completed[sid]})
        assert len(unconfirmed) <= kills, (sid, unconfirmed)


def _each_advanced(before: dict[str, int], traffic: _Traffic) -> bool:
    """Whether every session has completed a turn since ``before``."""
    return all(now > before[sid] for sid, now in traffic.counts().items())


def _store_transcripts(db: Path) -> dict[str, dict[str, Any] | None]:
    _integrity(db)
    store = SqliteSessionStore(db)
    try:
        return {sid: store.transcript(sid) for sid in GATEWAY_SESSIONS}
    finally:
        store.close()


def _http_transcripts(url: str) -> dict[str, dict[str, Any] | None]:
    out: dict[str, dict[str, Any] | None] = {}
    for sid in GATEWAY_SESSIONS:
        response = httpx.get(f"{url}/sessions/{sid}", timeout=30)
        assert response.status_code == 200, response.text
        out[sid] = response.json()
    return out


@pytest.mark.timeout(300)
def test_gateway_killed_mid_turn_loses_no_completed_turn(tmp_path: Path) -> None:
    """SIGKILL a real gateway mid-traffic three times; after each kill the database holds every
    turn a client received completely, and a restarted gateway serves them."""
    rng = random.Random(SEED)
    db = tmp_path / "sessions.db"
    traffic = _Traffic()
    rounds = 3
    for round_no in range(rounds):
        with gateway_server(None, TANDEM_SESSIONS_DB=str(db)) as gw:
            if round_no:
                _check_sessions(_http_transcripts(gw.url), traffic, kills=round_no)
            before = traffic.counts()
            clients = [
                threading.Thread(target=_drive, args=(gw.url, sid, round_no, traffic), daemon=True)
                for sid in GATEWAY_SESSIONS
            ]
            for client in clients:
                client.start()
            deadline = time.monotonic() + 120
            while not _each_advanced(before, traffic) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert _each_advanced(before, traffic), f"no traffic: {gw.log.read_text()[-2000:]}"
            time.sleep(rng.uniform(0.3, 2.5))
            assert all(c.is_alive() for c in clients), traffic.problems
            gw.proc.send_signal(signal.SIGKILL)
            gw.proc.wait(10)
            for client in clients:
                client.join(90)
            assert gw.proc.returncode == -signal.SIGKILL
        assert not any(c.is_alive() for c in clients)
        assert traffic.problems == []
        assert traffic.ended_by_transport_error == set(GATEWAY_SESSIONS)
        traffic.ended_by_transport_error.clear()
        _check_sessions(_store_transcripts(db), traffic, kills=round_no + 1)
