"""The stand-in cloud: ``llama_cpp.server`` serving a bundled model on 127.0.0.1.

It gives the cloud tier a real OpenAI-compatible endpoint on a machine with no network. It runs
as a child process (``tandem.cloud.process``): its own process group, a log file, SIGTERM then
SIGKILL.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tandem.cloud.process import ChildServer, child_env

if TYPE_CHECKING:
    from tandem.cloud.vllm import VllmCloud
    from tandem.settings import Settings


# Variables llama_cpp.server would read as settings (it uses unprefixed pydantic-settings):
# an inherited API_KEY would lock our own client out, a CONFIG_FILE would replace our flags.
_CHILD_ENV_DROP = frozenset({"API_KEY", "CONFIG_FILE", "SSL_KEYFILE", "SSL_CERTFILE", "ROOT_PATH"})


class StandinCloud(ChildServer):
    """Runs ``python -m llama_cpp.server`` as a child process; a context manager.

    ``model`` is a bundled model name or a GGUF path, resolved when the server starts.
    ``port=0`` picks a free port. ``logprobs=True`` makes the server keep logits for every token
    (``--logits_all``), which logprobs need but which slows prompt processing.
    """

    kind = "stand-in cloud (llama_cpp.server)"
    hint = "check that the port is free and llama-cpp-python[server] is installed."
    port_setting = "TANDEM_STANDIN_PORT"
    log_name = "llama_server.log"

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
        super().__init__(
            host=host, port=port, startup_timeout_s=startup_timeout_s, log_dir=log_dir
        )
        self.model = model
        self.chat_format = chat_format
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.alias = alias
        self.logprobs = logprobs
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
        self._claim_port()
        self._spawn(self.command(model_path, self.chat_format or hint), _child_env())
        from tandem.local.fim import fim_token_texts

        # Read while the server starts, not after: the gateway then starts at once (and a
        # signal that arrives then finds it in Python, not inside a vocabulary load).
        try:
            self.fim_tokens = fim_token_texts(model_path)
        except ValueError:  # not a model llama.cpp can load: the server's log says why
            self.fim_tokens = None
        self._wait_ready()


def _child_env() -> dict[str, str]:
    # The stand-in shares the CPU with the local model. llama.cpp's OpenMP threads spin while
    # they wait for work; two spinning teams on a small machine starve each other (measured:
    # throughput fell 9x at 16 clients). Passive waiting lets them share the cores, at a price
    # this fixture can pay: about 3.7x slower decoding (measured on the local model, 2 cores).
    return child_env(_CHILD_ENV_DROP, OMP_WAIT_POLICY="PASSIVE")


def standin_from_settings(
    settings: Settings, port: int | None = None
) -> StandinCloud | VllmCloud:
    """The stand-in cloud ``standin_engine`` names: llama_cpp.server, or a vLLM server."""
    if settings.standin_engine == "vllm":
        from tandem.cloud.vllm import VllmCloud

        return VllmCloud.from_settings(settings, port=port)
    return StandinCloud.from_settings(settings, port=port)
