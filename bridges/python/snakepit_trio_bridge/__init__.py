"""snakepit_trio_bridge: the worker side of snakepit-trio, in Python.

A worker is ``python -m snakepit_trio_bridge --handler package.module:Class``: it serves the
handler's commands over the length-prefixed stdio protocol of ``docs/protocol.md``. See
:mod:`snakepit_trio_bridge.handler` for how to write a handler.

Start-up cost matters (a pool may start many workers), so nothing here imports trio, anyio,
attrs, asyncio, typing or json at start-up.
"""

from .context import Cancelled, RequestContext, current_context
from .handler import BaseCommandHandler
from .server import ProtocolHandler

__version__ = "0.1.0"  # snakepit_trio/_version.py is the source; tests/test_versions.py checks

__all__ = [
    "BaseCommandHandler",
    "Cancelled",
    "ProtocolHandler",
    "RequestContext",
    "__version__",
    "current_context",
]
