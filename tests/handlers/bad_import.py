"""A handler module that fails at import: it opens a model file that does not exist.

The path is absolute and fixed, so tests can look for it whatever the checkout's path is.
"""

from __future__ import annotations

from snakepit_trio_bridge import BaseCommandHandler

MISSING_MODEL = "/nonexistent/snakepit-test/model-weights.bin"

with open(MISSING_MODEL, "rb") as _weights:  # raises FileNotFoundError at import
    WEIGHTS = _weights.read()


class Handler(BaseCommandHandler):
    """Never reached: the module does not import."""
