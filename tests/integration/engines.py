"""The bundled SmolLM2 behind a started LocalEngine, for tests of the engine itself."""

from __future__ import annotations

from typing import Any

from tandem.catalog import resolve_model
from tandem.local.engine import LocalEngine
from tandem.settings import Settings
from tandem.tiers import EngineState


def smollm2_engine(**settings: Any) -> LocalEngine:
    """A ready engine on SmolLM2 (a 1,024-token window, no keep-alive unload unless given)."""
    path, fmt = resolve_model("smollm2")
    engine = LocalEngine(Settings(**{"n_ctx": 1024, "keep_alive_s": None, **settings}), path, fmt)
    engine.start()
    assert engine.wait_ready() == EngineState.READY, engine.last_error
    return engine
