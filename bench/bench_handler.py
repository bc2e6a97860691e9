"""The bridge handler the benchmark runs in snakepit-trio workers.

Started as ``PythonAdapter(handler="bench_handler:BenchHandler")`` with ``bench/`` on the
worker's PYTHONPATH. Imports only ``snakepit_trio_bridge`` (no trio, no anyio) so that workers start
as fast as the generic ones.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

from snakepit_trio_bridge import current_context
from snakepit_trio_bridge.generic import GenericCommandHandler

_TICK = 0.005


class BenchHandler(GenericCommandHandler):
    """The generic commands (``ping_stream``...) plus ``bench_echo`` and the benchmark's own
    streaming and blocking commands."""

    bridge_type = "bench"

    def _register_commands(self) -> None:
        super()._register_commands()
        self.register_command("bench_echo", self.handle_bench_echo)
        self.register_command("count_stream", self.handle_count_stream)
        self.register_command("blob_stream", self.handle_blob_stream)
        self.register_command("block", self.handle_block)
        self.register_command("spin", self.handle_spin)

    def handle_bench_echo(self, args: dict[str, Any]) -> dict[str, Any]:
        """Return the arguments unchanged: the same job as ``workloads.echo`` for the peers."""
        return args

    def handle_count_stream(self, args: dict[str, Any]) -> Generator[dict[str, int], None, int]:
        """``n`` small chunks ``{"i": i}``, as fast as the stream takes them."""
        n = int(args.get("n", 1000))
        for i in range(n):
            yield {"i": i}
        return n

    def handle_blob_stream(self, args: dict[str, Any]) -> Generator[bytes, None, int]:
        """``n`` chunks of ``size`` bytes each (the same buffer every time: no garbage here)."""
        n = int(args.get("n", 16))
        blob = b"\xa5" * int(args.get("size", 1 << 20))
        for _ in range(n):
            yield blob
        return n

    def handle_spin(self, args: dict[str, Any]) -> int:
        """Burn ``us`` microseconds of CPU (a stand-in for real work); returns the loop count."""
        deadline = time.perf_counter() + float(args.get("us", 100)) / 1e6
        loops = 0
        while time.perf_counter() < deadline:
            loops += 1
        return loops

    def handle_block(self, args: dict[str, Any]) -> str:
        """Hold the worker for ``seconds`` (cooperatively: a cancel ends it within ~5 ms)."""
        ctx = current_context()
        deadline = time.monotonic() + float(args.get("seconds", 60.0))
        while time.monotonic() < deadline:
            ctx.check_cancelled()
            time.sleep(_TICK)
        return "unblocked"
