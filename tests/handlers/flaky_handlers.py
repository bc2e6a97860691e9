"""A handler that refuses to start while a marker file exists (for crash-loop tests)."""

from __future__ import annotations

import os

from snakepit_trio_bridge import BaseCommandHandler


class CrashOnStartHandler(BaseCommandHandler):
    def __init__(self) -> None:
        marker = os.environ.get("CRASH_MARKER", "")
        if marker and os.path.exists(marker):
            os._exit(5)
        super().__init__()

    def _register_commands(self) -> None:
        self.register_command("die", self.die)

    def die(self, args: dict[str, object]) -> None:
        os._exit(6)
