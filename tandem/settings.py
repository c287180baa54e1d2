"""Typed settings: the one source of defaults.

Values come from (highest first) explicit overrides (CLI flags), ``TANDEM_*`` environment
variables, a TOML file (``tandem.toml`` in the working directory or ``TANDEM_CONFIG``), then the
defaults below. Library code receives a ``Settings`` object and never parses arguments itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

KvType = Literal["f16", "q8_0", "q4_0"]
# The detector's default categories (tandem.privacy.detect.DEFAULT_CATEGORIES, kept here so
# settings load without importing Presidio).
DEFAULT_PRIVACY_CATEGORIES = (
    "PERSON",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
    "DATE_TIME",
    "LOCATION",
    "MEDICAL",
    "UK_NHS",
    # Found only next to their cue words ("passport no.", "account number"): tandem.privacy.cued
    "PASSPORT",
    "ACCOUNT_NUMBER",
)


class Settings(BaseSettings):
    """Everything the gateway, the engines and the CLI can be configured with."""

    model_config = SettingsConfigDict(env_prefix="TANDEM_", extra="ignore")

    # Server
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest accepted request body")

    # Local tier
    local_model: str = Field("smollm2", description="Bundled model name or a path to a GGUF file")
    local_chat_format: str | None = Field(
        None, description="llama-cpp-python chat format when the GGUF has no chat template"
    )
    n_ctx: int = Field(2048, ge=64)
    n_threads: int | None = Field(None, description="CPU threads (default: all cores)")
    n_batch: int = Field(512, ge=1)
    local_parallel: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Sequences the local model decodes together (default: 4, fewer if "
        "TANDEM_RAM_BUDGET_MIB cannot hold their KV cache)",
    )
    kv_type: KvType = "f16"
    ram_budget_mib: float | None = Field(
        None, gt=0, description="Refuse models whose plan is larger"
    )
    queue_size: int = Field(8, ge=1, description="Requests waiting per local context before 503")
    keep_alive_s: float | None = Field(
        300.0, description="Unload the local model after this many idle seconds (None: never)"
    )
    local_nice: int = Field(
        0, ge=0, le=19, description="Nice increment of the local engine's threads, so that the "
        "event loop, health probes and cloud streams preempt a running generation (0: none; "
        "above 0 the engine also yields to every other program on the device)"
    )
    max_tokens_limit: int = Field(4096, ge=1, description="Largest max_tokens a request may ask")
    default_max_tokens: int = Field(256, ge=1)

    # Security
    api_key: SecretStr | None = Field(
        None, description="Bearer token clients must send; required to bind beyond loopback"
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Browser origins allowed by CORS (none by default)"
    )
    max_messages: int = Field(256, ge=1, description="Most messages one request may carry")
    max_message_chars: int = Field(200_000, ge=1, description="Longest message, in characters")

    # Privacy
    privacy_default: Literal["local_only", "redact", "allow"] = "redact"
    privacy_categories: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PRIVACY_CATEGORIES),
        description="Categories redacted before the cloud sees a request",
    )
    privacy_keep_local: list[str] = Field(
        default_factory=lambda: ["MEDICAL"],
        description="Categories that keep a request on the device in redact mode",
    )
    privacy_threshold: float = Field(0.35, ge=0, le=1, description="Detector score cut-off")

    # Routing of ``auto`` requests
    routing_config: Path | None = Field(
        None, description="Routing config from `tandem calibrate` (default: the shipped one)"
    )
    routing_mode: Literal["local_first", "prompt", "cascade", "combined"] | None = Field(
        None, description="Override the config's mode (local_first: the local model unless a "
        "gate says otherwise)"
    )
    cascade_tokens: int | None = Field(
        None, ge=1, le=256, description="Local tokens generated before the cascade's check"
    )
    cascade_hedge_band: float | None = Field(
        None, ge=0, description="Start the cloud early when the cascade's score is this close "
        "to escalating half-way to the check (0: never)"
    )

    # Sessions
    sessions: bool = Field(True, description="Keep server-side sessions (X-Session-Id)")
    sessions_db: Path | None = Field(
        None, description="SQLite file for sessions (default: the user's data directory)"
    )
    session_state_mib: float = Field(
        256.0, ge=0, description="Memory for KV-cache snapshots of idle sessions (0: none)"
    )

    # Cloud tier
    cloud_url: str | None = Field(None, description="OpenAI-compatible base URL, e.g. .../v1")
    cloud_api_key: SecretStr | None = None
    cloud_model: str = "cloud"
    cloud_dialect: Literal["openai", "llama_cpp"] = Field(
        "openai",
        description="How the cloud takes a JSON schema in response_format: OpenAI's shape "
        "(OpenAI, vLLM) or llama_cpp.server's {type: json_object, schema} (set for the stand-in)",
    )
    cloud_n_ctx: int = Field(8192, ge=64, description="Context window of the cloud model")
    cloud_fim: bool = Field(
        False,
        description="The cloud fills in the middle: its /completions takes 'suffix'. FIM "
        "requests the local model cannot serve (no FIM tokens) then go to it",
    )
    cloud_fim_tokens: list[str] | None = Field(
        None,
        min_length=3,
        max_length=3,
        description="The cloud model's FIM prefix, suffix and middle tokens, for a llama_cpp "
        "dialect cloud: llama_cpp.server's 'suffix' uses token id 0, so Tandem writes the FIM "
        "prompt with these itself (set for the stand-in)",
    )
    cloud_fallback_urls: list[str] = Field(
        default_factory=list,
        description="Further OpenAI-compatible endpoints, tried in order when cloud_url fails",
    )
    cloud_connect_timeout_s: float = 3.0
    cloud_read_timeout_s: float = 60.0
    cloud_first_token_s: float | None = Field(
        None, gt=0, description="Longest wait for the cloud's first token, connect included "
        "(None: derived from the measured round trip and the prompt's size)"
    )
    cloud_first_token_floor_s: float = Field(
        2.5, gt=0, description="Least first-token deadline when it is derived"
    )
    cloud_deadline_s: float = Field(
        300.0, gt=0, description="Longest a whole cloud answer may take"
    )
    cloud_failure_threshold: int = Field(3, ge=1, description="Failures that open the breaker")
    cloud_cooldown_s: float = Field(15.0, ge=0, description="Breaker open time before a retry")
    cloud_probe_interval_s: float = Field(10.0, gt=0)

    # Stand-in cloud (used when cloud_url is not set)
    standin: bool = Field(True, description="Start the stand-in cloud when no cloud_url is set")
    standin_model: str = "qwen2.5-coder-1.5b"
    standin_port: int = Field(8081, ge=1, le=65535)
    standin_n_ctx: int = Field(2048, ge=64)
    standin_engine: Literal["llama_cpp", "vllm"] = Field(
        "llama_cpp",
        description="The stand-in's server: llama_cpp.server, or vLLM (`make vllm` installs it)",
    )
    vllm_model: str = Field(
        "smollm2", description="What a vLLM stand-in serves: a bundled model, a GGUF file or a "
        "Hugging Face checkpoint folder"
    )
    vllm_python: Path | None = Field(
        None, description="The Python with vLLM installed (default: the vllm folder inside "
        "this environment, where `make vllm` puts it)"
    )
    vllm_kv_cache_gib: float = Field(
        1.0, gt=0, description="Memory a vLLM stand-in gives its KV cache (VLLM_CPU_KVCACHE_SPACE)"
    )

    # Files: models, evaluation data, caches
    models_dir: Path | None = Field(
        None, description="Where assembled bundled models live (default: the user cache)"
    )
    data_dir: Path | None = Field(
        None, description="Evaluation data folder (default: ../shared/data next to a checkout)"
    )
    eval_cache: Path | None = Field(None, description="Cache of `tandem evaluate` results")
    route_cache: Path | None = Field(None, description="Cache of `tandem route-eval` records")

    @model_validator(mode="after")
    def _fim_needs_tokens(self) -> Settings:
        if self.cloud_fim and self.cloud_dialect == "llama_cpp" and not self.cloud_fim_tokens:
            raise ValueError(
                "TANDEM_CLOUD_FIM with the llama_cpp dialect needs TANDEM_CLOUD_FIM_TOKENS: the "
                "cloud model's FIM prefix, suffix and middle tokens, e.g. '[\"<|fim_prefix|>\", "
                '"<|fim_suffix|>", "<|fim_middle|>"]\''
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("TANDEM_CONFIG", "tandem.toml"))
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_path),
        )


def default_sessions_db() -> Path:
    from platformdirs import user_data_path

    return user_data_path("tandem") / "sessions.db"


def load_settings(**overrides: Any) -> Settings:
    """Settings from env/TOML with explicit overrides; ``None`` overrides are ignored."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
