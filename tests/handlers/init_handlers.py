"""Handlers whose constructor is slow, gated or failing (start-up ordering tests).

``SlowInitHandler`` sleeps ``SLOW_INIT_SECONDS`` (default 2) in ``__init__``, as a model load
would. ``GatedInitHandler`` blocks in ``__init__`` until a byte arrives on the file
descriptor ``INIT_GATE_FD``, so a test decides when construction ends (no timing involved).
``RaisingInitHandler`` fails in ``__init__`` by opening a file that does not exist.
"""

from __future__ import annotations

import os
import time
from typing import Any

from snakepit_trio_bridge import BaseCommandHandler

MISSING_CONFIG = "/nonexistent/snakepit-test/handler-config.toml"


class SlowInitHandler(BaseCommandHandler):
    def __init__(self) -> None:
        time.sleep(float(os.environ.get("SLOW_INIT_SECONDS", "2")))
        super().__init__()


class GatedInitHandler(BaseCommandHandler):
    def __init__(self) -> None:
        gate = int(os.environ["INIT_GATE_FD"])
        os.read(gate, 1)  # blocks until the test writes a byte (or closes its end)
        os.close(gate)
        super().__init__()

    def _register_commands(self) -> None:
        self.register_command("built", lambda args: {"built": True})


def _read_config(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return {"text": handle.read()}


class RaisingInitHandler(BaseCommandHandler):
    def __init__(self) -> None:
        self.config = _read_config(MISSING_CONFIG)
        super().__init__()
