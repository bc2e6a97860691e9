"""Handlers for the gRPC tests (imported by the worker processes, via PYTHONPATH)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Generator
from typing import Any

from snakepit_trio_bridge.testing import TestingHandler

#: Where the pool puts the worker's token (kept literal: a test must not trust the constant).
TOKEN_VARIABLE = "SNAKEPIT_GRPC_TOKEN"


def _record(path: str, produced: int, finished: bool) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"produced": produced, "finally": finished}, handle)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no words for it")


class GrpcTestHandler(TestingHandler):
    """``TestingHandler`` plus commands the gRPC tests need (see each handler)."""

    def _register_commands(self) -> None:
        super()._register_commands()
        self.register_command("async_record_stream", self.handle_async_record_stream)
        self.register_command("big_result", self.handle_big_result)
        self.register_command("touch", self.handle_touch)
        self.register_command("huge_error", self.handle_huge_error)
        self.register_command("deep_error", self.handle_deep_error)
        self.register_command("surrogate_error", self.handle_surrogate_error)
        self.register_command("unprintable_error", self.handle_unprintable_error)
        self.register_command("unencodable", self.handle_unencodable)
        self.register_command("big_chunk_stream", self.handle_big_chunk_stream)
        self.register_command("token_seen", self.handle_token_seen)

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

    def handle_touch(self, args: dict[str, Any]) -> dict[str, bool]:
        """A side effect a test can look for: create the file ``path``."""
        with open(str(args["path"]), "w", encoding="utf-8") as handle:
            handle.write("ran")
        return {"touched": True}

    def handle_huge_error(self, args: dict[str, Any]) -> None:
        """Fail with a message of ``size`` characters."""
        raise ValueError("E" * int(args["size"]))

    def handle_deep_error(self, args: dict[str, Any]) -> None:
        """Fail after a chain of ``count`` exceptions of ``padding`` characters each: a
        traceback over any size limit, whose innermost end is the short last one."""
        padding = "p" * int(args.get("padding", 2000))
        cause: Exception | None = None
        for i in range(int(args.get("count", 300))):
            try:
                raise ValueError(f"link {i} {padding}") from cause
            except ValueError as exc:
                cause = exc
        raise RuntimeError("the last straw") from cause

    def handle_surrogate_error(self, args: dict[str, Any]) -> None:
        """Fail with a message protobuf cannot carry as a string (a lone surrogate)."""
        raise ValueError("bad byte \udcff in a file name")

    def handle_unprintable_error(self, args: dict[str, Any]) -> None:
        """Fail with an exception that has no words: its ``str()`` raises."""
        raise Unprintable()

    def handle_unencodable(self, args: dict[str, Any]) -> object:
        return {"value": object()}

    def handle_big_chunk_stream(self, args: dict[str, Any]) -> Generator[bytes, None, None]:
        """Two small chunks, then one of ``size`` bytes."""
        yield b"a"
        yield b"b"
        yield b"x" * int(args["size"])

    def handle_token_seen(self, args: dict[str, Any]) -> dict[str, Any]:
        """Where the worker's token is visible from inside the worker, after start-up."""
        child = subprocess.run(
            [sys.executable, "-c", f"import os; print(os.environ.get({TOKEN_VARIABLE!r}, ''))"],
            capture_output=True,
            text=True,
            check=True,
        )
        return {"environ": os.environ.get(TOKEN_VARIABLE), "child": child.stdout.strip()}


class SlowInitHandler(GrpcTestHandler):
    """Takes ``SLOW_INIT_SECONDS`` to construct, as a handler loading a model does."""

    def __init__(self) -> None:
        time.sleep(float(os.environ.get("SLOW_INIT_SECONDS", "0")))
        super().__init__()
