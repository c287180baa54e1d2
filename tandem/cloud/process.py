"""A model server run as a child process on loopback: the stand-in cloud (``llama_cpp.server``)
and a local vLLM server (``tandem.cloud.vllm``) are both started, watched and stopped so.

The server runs in its own process group, writing to a log file (a pipe nobody reads would fill
and block it), and is stopped with SIGTERM, then SIGKILL. Linux is asked to SIGTERM it when its
parent dies, so a gateway killed without cleanup leaves no orphan.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import NoReturn, Self

import httpx

from tandem.errors import CloudError
from tandem.net import free_port

logger = logging.getLogger(__name__)

_LOG_TAIL_CHARS = 2000


class ChildServer:
    """An OpenAI-compatible server as a child process; a context manager.

    Subclasses say what to run (:meth:`_command`) and how to describe a failure
    (``kind``, ``hint``, ``port_setting``). ``port=0`` picks a free port when it starts.
    """

    kind = "server"  # what the errors call it
    hint = ""  # what to check when it fails to start
    port_setting = ""  # the setting that moves it to another port
    log_name = "server.log"

    def __init__(
        self, *, host: str, port: int, startup_timeout_s: float, log_dir: Path | None
    ) -> None:
        self.host = host
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self._log_dir = log_dir
        self._owns_log_dir = log_dir is None
        self._proc: subprocess.Popen[bytes] | None = None

    # --- addresses -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The OpenAI API root, e.g. ``http://127.0.0.1:8081/v1``."""
        if self.port == 0:
            raise RuntimeError(f"The {self.kind} picks its port when it starts: call start().")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def ready_url(self) -> str:
        """A URL that answers 200 once the model is loaded."""
        return f"{self.base_url}/models"

    @property
    def pid(self) -> int | None:
        """The server's process id, or None when it was never started."""
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path | None:
        """The server's log file (stdout and stderr), once started."""
        return None if self._log_dir is None else self._log_dir / self.log_name

    # --- lifecycle -------------------------------------------------------------------------

    def _claim_port(self) -> None:
        """Pick a free port for ``port=0``; refuse a configured port that something holds
        (otherwise whatever holds it would answer the readiness check for us)."""
        if self.port == 0:
            self.port = free_port(self.host)
        elif not _port_free(self.host, self.port):
            raise CloudError(
                f"Port {self.port} on {self.host} is in use (another {self.kind}?): stop that "
                f"process or choose another port ({self.port_setting}).",
                code="standin_failed",
            )

    def _spawn(self, cmd: list[str], env: Mapping[str, str]) -> None:
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="tandem-server-"))
        logger.info("Starting the %s: %s", self.kind, " ".join(cmd))
        with (self._log_dir / self.log_name).open("ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,  # own process group: stop() can signal all of it
                preexec_fn=_die_with_parent,
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                self._fail("exited while starting")
            try:
                if httpx.get(self.ready_url, timeout=1.0).is_success:
                    logger.info("The %s is ready at %s (pid %s)", self.kind, self.base_url,
                                self.pid)
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            time.sleep(0.1)
        self._fail(f"did not answer within {self.startup_timeout_s:.0f} s")

    def _fail(self, what: str) -> NoReturn:
        tail = self.log_tail()
        self.stop()
        raise CloudError(
            f"The {self.kind} on port {self.port} {what}; {self.hint} Log tail:\n{tail}",
            code="standin_failed",
        )

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        """The last ``chars`` characters of the server's log."""
        path = self.log_path
        if path is None or not path.exists():
            return ""
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - chars))
            return f.read().decode("utf-8", errors="replace")

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM the server's process group, SIGKILL it after ``timeout_s``; idempotent."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._signal(signal.SIGTERM)
                try:
                    self._proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    self._proc.wait()
            logger.info("The %s stopped (exit code %s)", self.kind, self._proc.returncode)
            self._proc = None
        if self._owns_log_dir and self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None

    def kill(self) -> None:
        """SIGKILL the server at once (a crash, for fault tests); stop() still cleans up."""
        if self._proc is not None and self._proc.poll() is None:
            self._signal(signal.SIGKILL)
            self._proc.wait()

    def _signal(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(self._proc.pid, sig)

    def start(self) -> None:
        raise NotImplementedError

    def run_forever(self) -> None:
        """Start (if needed) and block until Ctrl-C or SIGTERM, then stop the server.

        Raises CloudError if the server exits by itself.
        """
        self.start()
        restore = _sigterm_as_exit()
        try:
            code = self._proc.wait() if self._proc is not None else None
            self._fail(f"exited with code {code}")
        except KeyboardInterrupt:
            pass
        finally:
            restore()
            self.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def child_env(drop: frozenset[str] = frozenset(), **defaults: str) -> dict[str, str]:
    """This process's environment without the variables in ``drop`` (upper case), with
    ``defaults`` set where the environment does not set them."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in drop}
    for key, value in defaults.items():
        env.setdefault(key, value)
    return env


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As uvicorn does: connections of a stopped server lingering in TIME_WAIT don't count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _sigterm_as_exit() -> Callable[[], None]:
    """Make SIGTERM raise KeyboardInterrupt (so cleanup runs); returns the undo function."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when its parent dies, so a gateway
    killed without cleanup (SIGKILL) leaves no orphan. Linux ties this to the spawning thread:
    start the server from a thread that lives as long as it should (the main thread)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
