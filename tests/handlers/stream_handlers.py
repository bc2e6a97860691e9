"""Worker-side handlers used by the streaming tests (imported inside worker processes)."""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

from snakepit_trio_bridge import BaseCommandHandler, current_context


class StreamHandler(BaseCommandHandler):
    def _register_commands(self) -> None:
        self.register_command("fail_after", self.fail_after)
        self.register_command("timed_stream", self.timed_stream)
        self.register_command("cooperative_spin", self.cooperative_spin)

    def fail_after(self, args: dict[str, Any]) -> Generator[dict[str, int], None, None]:
        for i in range(int(args["good"])):
            yield {"i": i}
        raise RuntimeError("the stream broke on purpose")

    def timed_stream(self, args: dict[str, Any]) -> Generator[float, None, str]:
        for _ in range(int(args["count"])):
            time.sleep(float(args["interval"]))
            yield time.time()
        return "finished"

    def cooperative_spin(self, args: dict[str, Any]) -> dict[str, bool]:
        ctx = current_context()
        deadline = time.monotonic() + float(args.get("seconds", 10))
        while time.monotonic() < deadline:
            ctx.check_cancelled()
            time.sleep(0.002)
        return {"finished": True}
