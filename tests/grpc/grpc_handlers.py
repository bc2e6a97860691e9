"""A handler for the gRPC tests (imported by the worker processes, via PYTHONPATH)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

from snakepit_bridge.testing import TestingHandler


def _record(path: str, produced: int, finished: bool) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"produced": produced, "finally": finished}, handle)


class GrpcTestHandler(TestingHandler):
    """``TestingHandler`` plus an async stream that records its ``finally`` and a big result."""

    def _register_commands(self) -> None:
        super()._register_commands()
        self.register_command("async_record_stream", self.handle_async_record_stream)
        self.register_command("big_result", self.handle_big_result)

    async def handle_async_record_stream(
        self, args: dict[str, Any]
    ) -> AsyncGenerator[dict[str, int], None]:
        path = str(args["record_path"])
        produced = 0
        try:
            for i in range(int(args.get("count", 1_000_000))):
                produced += 1
                _record(path, produced, False)
                yield {"i": i}
                await asyncio.sleep(0)
        finally:
            _record(path, produced, True)

    def handle_big_result(self, args: dict[str, Any]) -> bytes:
        return b"x" * int(args["size"])
