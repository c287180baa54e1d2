"""Where files live apart from the gateway's own state: evaluation data, result caches, and a
file's identity (its SHA-256) for cache keys. Shared by ``tandem evaluate`` (``optimize/``) and
``tandem route-eval`` (``routing/``); every location is a ``Settings`` field."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tandem.errors import ConfigError
from tandem.settings import load_settings

# The evaluation data of a source checkout: ../shared/data next to the repository.
CHECKOUT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
_SHA_BLOCK = 1 << 20


def default_data_dir() -> Path:
    """``data_dir`` (``TANDEM_DATA_DIR``), else the evaluation data next to a source checkout."""
    configured = load_settings().data_dir
    if configured is not None:
        return configured
    if CHECKOUT_DATA.is_dir():
        return CHECKOUT_DATA
    raise ConfigError(
        "No evaluation data folder: pass --data-dir DIR or set TANDEM_DATA_DIR to the folder "
        "that holds the evaluation files (arc_easy_dev.jsonl, piqa_dev.jsonl, ...).",
        param="data_dir",
    )


def cache_dir(kind: str) -> Path:
    """Where ``kind`` ("evaluate" or "route-eval") keeps its results: the setting
    (``TANDEM_EVAL_CACHE`` / ``TANDEM_ROUTE_CACHE``), else the user cache directory."""
    settings = load_settings()
    configured = {"evaluate": settings.eval_cache, "route-eval": settings.route_cache}[kind]
    if configured is not None:
        return configured
    from platformdirs import user_cache_path

    return user_cache_path("tandem") / kind


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(_SHA_BLOCK):
            digest.update(block)
    return digest.hexdigest()
