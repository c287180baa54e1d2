"""The light entry points stay light: importing the package, its settings or running
``tandem --help`` must not load the inference, privacy or training libraries."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("llama_cpp", "presidio_analyzer", "spacy", "torch", "sklearn")

PROBE = """
import json, sys
{body}
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""

HELP = """
from tandem.cli import app
try:
    app(["--help"])
except SystemExit:
    pass
"""


def loaded_after(body: str) -> list[str]:
    code = PROBE.format(body=body, heavy=HEAVY)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    return list(json.loads(out.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "body",
    ["import tandem", "import tandem.settings", "from tandem import Settings, Turn", HELP],
    ids=["import tandem", "tandem.settings", "Settings and Turn", "tandem --help"],
)
def test_entry_points_load_no_heavy_library(body: str) -> None:
    assert loaded_after(body) == []


def test_the_public_names_still_resolve() -> None:
    import tandem

    assert tandem.Gateway.__name__ == "Gateway"
    assert tandem.Runtime.__name__ == "Runtime"
    assert set(tandem.__all__) <= set(dir(tandem))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        tandem.Nope  # noqa: B018
