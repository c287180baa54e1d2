"""Tandem: an on-device LLM gateway that hands requests to a cloud model when it should."""

from tandem.errors import TandemError
from tandem.events import Finish, GenerationParams, TokenEvent
from tandem.gateway import Gateway
from tandem.settings import Settings
from tandem.turn import RouteInfo, Turn

__all__ = [
    "Finish",
    "Gateway",
    "GenerationParams",
    "RouteInfo",
    "Settings",
    "TandemError",
    "TokenEvent",
    "Turn",
    "__version__",
]

__version__ = "0.1.0"
