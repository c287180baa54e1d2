"""The installed llama.cpp keeps to the documented ISA baseline (x86-64-v3, no AVX-512, no AMX).

A build with ``-march=native`` on a CPU that advertises AMX the VM does not enable dies with
SIGILL, and a native wheel cached by pip crashes on a CPU without what it was built for. This
test reads the machine code of the installed libraries: it fails for any native build on an
AVX-512 machine, whichever machine the suite runs on.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

# AVX-512 shows as zmm registers, the upper 16 vector registers or opmask registers; AMX as
# its tile instructions.
FORBIDDEN = {
    "AVX-512 (zmm registers)": re.compile(r"%zmm\d"),
    "AVX-512 (xmm16-31/ymm16-31)": re.compile(r"%[xy]mm(1[6-9]|2\d|3[01])\b"),
    "AVX-512 (opmask registers)": re.compile(r"%k[1-7]\b"),
    "AMX": re.compile(
        r"\b(ldtilecfg|sttilecfg|tilezero|tileloadd|tilestored|tilerelease|tdp\w+)\b"
    ),
}


def _libraries() -> list[Path]:
    import llama_cpp

    lib = Path(llama_cpp.__file__).parent / "lib"
    return sorted(p for p in lib.glob("lib*.so") if p.is_file())


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 baseline")
def test_installed_llama_cpp_uses_only_the_baseline_isa() -> None:
    objdump = shutil.which("objdump")
    assert objdump is not None, "objdump (binutils) is needed to check the llama.cpp build"
    libraries = _libraries()
    assert any(p.name.startswith("libggml-cpu") for p in libraries), libraries
    found: dict[str, list[str]] = {}
    for path in libraries:
        code = subprocess.run(
            [objdump, "-d", "--no-show-raw-insn", str(path)],
            check=True, capture_output=True, text=True,
        ).stdout
        for name, pattern in FORBIDDEN.items():
            if pattern.search(code):
                found.setdefault(path.name, []).append(name)
    assert not found, (
        f"llama.cpp was built beyond the x86-64-v3 baseline: {found}. Reinstall with the "
        "Makefile's LLAMA_CMAKE_ARGS (make clean && make install)."
    )


def test_the_baseline_still_has_avx2() -> None:
    """The baseline is not a slow generic build: the CPU kernels use AVX2 (ymm)."""
    cpu = next(p for p in _libraries() if p.name.startswith("libggml-cpu"))
    code = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(cpu)],
        check=True, capture_output=True, text=True,
    ).stdout
    assert re.search(r"vfmadd\w+\s.*%ymm", code), "no AVX2/FMA code in libggml-cpu"


def test_the_build_reports_the_documented_features() -> None:
    """llama.cpp's own feature report: AVX2 on; AVX-512, AMX and llamafile's tinyBLAS off."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    features = dict(re.findall(r"(\w+) = (\d)", info))
    assert features.get("AVX2") == "1" and features.get("FMA") == "1", info
    for off in ("AVX512", "AMX_INT8", "LLAMAFILE"):
        assert features.get(off, "0") == "0", info
