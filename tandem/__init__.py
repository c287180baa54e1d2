"""Tandem: an on-device LLM gateway that hands requests to a cloud model when it should.

The public names are imported on first use (PEP 562), so that ``import tandem``, its settings
and ``tandem --help`` do not load llama.cpp, Presidio or spaCy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tandem.errors import TandemError
    from tandem.events import Finish, GenerationParams, TokenEvent
    from tandem.gateway import Gateway
    from tandem.runtime import Runtime
    from tandem.settings import Settings
    from tandem.turn import RouteInfo, Turn

# name → the module that defines it
_LAZY = {
    "Finish": "tandem.events",
    "Gateway": "tandem.gateway",
    "GenerationParams": "tandem.events",
    "RouteInfo": "tandem.turn",
    "Runtime": "tandem.runtime",
    "Settings": "tandem.settings",
    "TandemError": "tandem.errors",
    "TokenEvent": "tandem.events",
    "Turn": "tandem.turn",
}

__all__ = [
    "Finish",
    "Gateway",
    "GenerationParams",
    "RouteInfo",
    "Runtime",
    "Settings",
    "TandemError",
    "TokenEvent",
    "Turn",
    "__version__",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tandem' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
