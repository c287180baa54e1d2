"""The stand-in cloud: ``llama_cpp.server`` serving a bundled model on 127.0.0.1.

It gives the cloud tier a real OpenAI-compatible endpoint on a machine with no network. The
server runs as a child process in its own process group, writing to a log file (a pipe nobody
reads would fill and block it), and is stopped with SIGTERM, then SIGKILL.
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
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

import httpx

from tandem.errors import CloudError
from tandem.net import free_port

if TYPE_CHECKING:
    from tandem.settings import Settings

logger = logging.getLogger(__name__)

# Variables llama_cpp.server would read as settings (it uses unprefixed pydantic-settings):
# an inherited API_KEY would lock our own client out, a CONFIG_FILE would replace our flags.
_CHILD_ENV_DROP = {"API_KEY", "CONFIG_FILE", "SSL_KEYFILE", "SSL_CERTFILE", "ROOT_PATH"}
_LOG_TAIL_CHARS = 2000


class StandinCloud:
    """Runs ``python -m llama_cpp.server`` as a child process; a context manager.

    ``model`` is a bundled model name or a GGUF path, resolved when the server starts.
    ``port=0`` picks a free port. ``logprobs=True`` makes the server keep logits for every token
    (``--logits_all``), which logprobs need but which slows prompt processing.
    """

    def __init__(
        self,
        model: str = "qwen2.5-coder-1.5b",
        *,
        chat_format: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        alias: str = "cloud",
        logprobs: bool = False,
        startup_timeout_s: float = 60.0,
        log_dir: Path | None = None,
    ) -> None:
        self.model = model
        self.chat_format = chat_format
        self.host = host
        self.port = port
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.alias = alias
        self.logprobs = logprobs
        self.startup_timeout_s = startup_timeout_s
        self._log_dir = log_dir
        self._owns_log_dir = log_dir is None
        self._proc: subprocess.Popen[bytes] | None = None
        self.model_path: Path | None = None  # the GGUF it serves, once started
        self.fim_tokens: list[str] | None = None  # its model's FIM tokens, once started

    @classmethod
    def from_settings(
        cls, settings: Settings, *, port: int | None = None, startup_timeout_s: float = 60.0
    ) -> StandinCloud:
        """A stand-in configured from the ``standin_*`` settings (``port`` overrides)."""
        return cls(
            settings.standin_model,
            port=settings.standin_port if port is None else port,
            n_ctx=settings.standin_n_ctx,
            n_threads=settings.n_threads,
            alias=settings.cloud_model,
            startup_timeout_s=startup_timeout_s,
        )

    def __repr__(self) -> str:
        return f"StandinCloud(model={self.model!r}, host={self.host!r}, port={self.port})"

    def gateway_settings(self) -> dict[str, Any]:
        """The cloud settings a gateway uses with this stand-in (call after ``start``): its
        URL, its dialect, and fill-in-the-middle when its model has FIM tokens."""
        fim = self.fim_tokens
        return {
            "cloud_url": self.base_url,
            "cloud_dialect": "llama_cpp",
            "cloud_fim": fim is not None,
            "cloud_fim_tokens": fim,
        }

    # --- addresses -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The OpenAI API root, e.g. ``http://127.0.0.1:8081/v1``."""
        if self.port == 0:
            raise RuntimeError("The stand-in cloud picks its port when it starts: call start().")
        return f"http://{self.host}:{self.port}/v1"

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
        return None if self._log_dir is None else self._log_dir / "llama_server.log"

    # --- lifecycle -------------------------------------------------------------------------

    def command(self, model_path: Path, chat_format: str | None) -> list[str]:
        """The server's command line for an already resolved model."""
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path)]
        cmd += ["--model_alias", self.alias, "--host", self.host, "--port", str(self.port)]
        cmd += ["--n_ctx", str(self.n_ctx), "--logits_all", str(self.logprobs)]
        # Without this a second request (even GET /models) cuts the running stream short.
        cmd += ["--interrupt_requests", "False", "--verbose", "False"]
        if chat_format is not None:
            cmd += ["--chat_format", chat_format]
        if self.n_threads is not None:
            cmd += ["--n_threads", str(self.n_threads)]
        return cmd

    def start(self) -> None:
        """Start the server and wait until ``GET /v1/models`` answers.

        Raises CloudError, with the tail of the server's log, if it exits or does not answer
        within ``startup_timeout_s``.
        """
        if self.running:
            return
        from tandem.catalog import resolve_model  # may assemble the GGUF: not at import time

        model_path, hint = resolve_model(self.model)
        self.model_path = model_path
        if self.port == 0:
            self.port = free_port(self.host)
        elif not _port_free(self.host, self.port):
            # Otherwise whatever holds the port would answer the readiness check for us.
            raise CloudError(
                f"Port {self.port} on {self.host} is in use (another stand-in cloud?): stop "
                "that process or choose another port (TANDEM_STANDIN_PORT).",
                code="standin_failed",
            )
        self._spawn(self.command(model_path, self.chat_format or hint))
        from tandem.local.fim import fim_token_texts

        # Read while the server starts, not after: the gateway then starts at once (and a
        # signal that arrives then finds it in Python, not inside a vocabulary load).
        try:
            self.fim_tokens = fim_token_texts(model_path)
        except ValueError:  # not a model llama.cpp can load: the server's log says why
            self.fim_tokens = None
        self._wait_ready()

    def _spawn(self, cmd: list[str]) -> None:
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="tandem-standin-"))
        logger.info("Starting the stand-in cloud: %s", " ".join(cmd))
        with (self._log_dir / "llama_server.log").open("ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                start_new_session=True,  # own process group: stop() can signal all of it
                preexec_fn=_die_with_parent,
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                self._fail("exited while starting")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=1.0).is_success:
                    logger.info("Stand-in cloud ready at %s (pid %s)", self.base_url, self.pid)
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            time.sleep(0.1)
        self._fail(f"did not answer within {self.startup_timeout_s:.0f} s")

    def _fail(self, what: str) -> NoReturn:
        tail = self.log_tail()
        self.stop()
        raise CloudError(
            f"The stand-in cloud (llama_cpp.server on port {self.port}) {what}; check that "
            f"the port is free and llama-cpp-python[server] is installed. Log tail:\n{tail}",
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
            logger.info("Stand-in cloud stopped (exit code %s)", self._proc.returncode)
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

    def __enter__(self) -> StandinCloud:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As uvicorn does: connections of a stopped server lingering in TIME_WAIT don't count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.upper() not in _CHILD_ENV_DROP}
    # The stand-in shares the CPU with the local model. llama.cpp's OpenMP threads spin while
    # they wait for work; two spinning teams on a small machine starve each other (measured:
    # throughput fell 9x at 16 clients). Passive waiting lets them share the cores, at a price
    # this fixture can pay: about 3.7x slower decoding (measured on the local model, 2 cores).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


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
    start the stand-in from a thread that lives as long as it should (the main thread)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
