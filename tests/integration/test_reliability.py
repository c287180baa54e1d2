"""The gateway under hostile conditions: no network from start-up, a full disk, two gateways on
one database. Real `tandem serve` processes with the real local model."""

from __future__ import annotations

import json
import resource
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tandem.sessions.store import SqliteSessionStore
from tests.integration.gateway_proc import gateway_server


def chat(base: str, text: str, session: str | None = None, **body: Any) -> httpx.Response:
    headers = {"X-Session-Id": session} if session else {}
    payload = {"messages": [{"role": "user", "content": text}], "max_tokens": 4, **body}
    return httpx.post(f"{base}/chat/completions", json=payload, headers=headers, timeout=120)


@pytest.mark.timeout(180)
def test_offline_from_start_up_serves_locally_with_one_clear_log_line() -> None:
    # A port held bound but never listening refuses connections, and no other process (a
    # server from another test) can take it while the test runs.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{holder.getsockname()[1]}/v1"
        with gateway_server(dead, TANDEM_CLOUD_PROBE_INTERVAL_S="0.3") as server:
            replies = [chat(server.url, f"Question {i}?") for i in range(3)]
            forced = chat(server.url, "Cloud please?", tandem={"route": "cloud"})
            time.sleep(1.5)  # several more probe failures
            log = _log_once_it_says(server.log, "local model")
    assert [r.status_code for r in replies] == [200, 200, 200]
    assert {r.headers["x-tandem-route"] for r in replies} == {"local"}
    assert forced.status_code == 200 and forced.headers["x-tandem-route"] == "local"
    assert forced.headers["x-tandem-reason"] in {"cloud_unavailable", "cloud_failed"}
    problems = [
        line
        for line in log.splitlines()
        if any(w in line for w in ("Traceback", "ERROR", "Error", "WARNING", "connect"))
    ]
    assert len(problems) == 1, (problems, log[-3000:])
    assert dead.removesuffix("/v1") in problems[0]
    assert "local model" in problems[0]


def _log_once_it_says(log: Path, text: str, within_s: float = 10.0) -> str:
    """The gateway's log once it contains ``text`` (or after ``within_s`` seconds)."""
    deadline = time.monotonic() + within_s
    while text not in (content := log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return content


def _limit_file_size(limit: int) -> Any:
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails, no kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return preexec


def _check_consistent(db: Path, acknowledged: dict[str, list[str]]) -> None:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = SqliteSessionStore(db)
    try:
        for session, texts in acknowledged.items():
            transcript = store.transcript(session)
            assert transcript is not None
            messages = transcript["messages"]
            assert [m["seq"] for m in messages] == list(range(len(messages)))
            complete = [m for m in messages if m["status"] == "complete"]
            users = [m["content"] for m in complete if m["role"] == "user"]
            assert all(t in users for t in texts), "an acknowledged turn is missing"
            for user, answer in zip(messages[::2], messages[1::2], strict=True):
                assert (user["role"], answer["role"]) == ("user", "assistant")
                assert user["exchange"] == answer["exchange"]
    finally:
        store.close()


@pytest.mark.timeout(240)
def test_a_full_disk_fails_the_turn_clearly_and_keeps_every_saved_turn(tmp_path: Path) -> None:
    db = tmp_path / "sessions.db"
    limit = 96 * 1024
    acknowledged: dict[str, list[str]] = {"disk": []}
    with gateway_server(
        None, preexec_fn=_limit_file_size(limit), TANDEM_SESSIONS_DB=str(db)
    ) as server:
        failure: httpx.Response | None = None
        for i in range(60):
            text = f"Turn {i}: " + "lorem ipsum dolor sit amet " * 60  # ~1.6 kB
            r = chat(server.url, text, "disk", stream=i % 2 == 1)
            in_band_error = r.status_code == 200 and '"error"' in r.text
            if r.status_code != 200 or in_band_error:
                failure = r
                break
            acknowledged["disk"].append(text)
        assert failure is not None, "the file size limit was never reached"
        assert len(acknowledged["disk"]) >= 3
        if failure.status_code == 200:  # streaming: the error arrives in-band, then [DONE]
            error = next(
                json.loads(line[6:])["error"]
                for line in failure.text.splitlines()
                if line.startswith("data: {") and '"error"' in line
            )
        else:
            assert failure.status_code in (503, 507)
            error = failure.json()["error"]
        assert error["code"] in ("storage_full", "storage_error")
        assert "session database" in error["message"]
        # The gateway lives on; once there is room again, sessions work again.
        assert httpx.get(server.url.removesuffix("/v1") + "/healthz").status_code == 200
        resource.prlimit(
            server.proc.pid,
            resource.RLIMIT_FSIZE,
            (resource.RLIM_INFINITY, resource.RLIM_INFINITY),
        )
        after = chat(server.url, "Still there?", "disk")
        assert after.status_code == 200
        acknowledged["disk"].append("Still there?")
        assert "Traceback" not in server.log.read_text()
    _check_consistent(db, acknowledged)


@pytest.mark.timeout(240)
def test_two_gateways_on_one_database_stay_consistent(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    acknowledged: dict[str, list[str]] = {"shared": [], "a": [], "b": []}
    lock = threading.Lock()
    statuses: list[int] = []
    with (
        gateway_server(None, TANDEM_SESSIONS_DB=str(db)) as first,
        gateway_server(None, TANDEM_SESSIONS_DB=str(db)) as second,
    ):

        def client(base: str, own: str) -> None:
            for i in range(4):
                for session in ("shared", own):
                    text = f"{own} turn {i} in {session}"
                    r = chat(base, text, session, stream=i % 2 == 0)
                    with lock:
                        statuses.append(r.status_code)
                        if r.status_code == 200 and '"error"' not in r.text:
                            acknowledged[session].append(text)

        threads = [
            threading.Thread(target=client, args=(first.url, "a")),
            threading.Thread(target=client, args=(second.url, "b")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert statuses == [200] * 16
    assert len(acknowledged["shared"]) == 8
    _check_consistent(db, acknowledged)
