"""Handlers for the pool-side trust tests: a slow start, a crash on demand."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from snakepit_trio_bridge import BaseCommandHandler


class SlowStartHandler(BaseCommandHandler):
    """Sleeps ``SLOW_START`` seconds in its constructor, as a model load does."""

    def __init__(self) -> None:
        time.sleep(float(os.environ.get("SLOW_START", "2")))
        super().__init__()


class CrashOnStartHandler(BaseCommandHandler):
    """Exits at start while ``CRASH_MARKER`` names an existing file."""

    def __init__(self) -> None:
        marker = os.environ.get("CRASH_MARKER", "")
        if marker and os.path.exists(marker):
            os._exit(5)
        super().__init__()


class ForkingHandler(BaseCommandHandler):
    """Adds ``fork_child``: a forked child (as multiprocessing's fork start method makes)
    inherits every descriptor, the protocol's stdout included, and sleeps."""

    def _register_commands(self) -> None:
        super()._register_commands()
        self.register_command("fork_child", self.fork_child)
        self.register_command("block", self.block)
        self.register_command("count", self.count)

    def fork_child(self, args: dict[str, object]) -> dict[str, int]:
        pid = os.fork()
        if pid == 0:  # the child: hold everything open, do nothing
            time.sleep(float(str(args.get("seconds", 60))))
            os._exit(0)
        return {"pid": pid}

    def block(self, args: dict[str, object]) -> dict[str, float]:
        seconds = float(str(args.get("seconds", 1)))
        time.sleep(seconds)
        return {"slept": seconds}

    def count(self, args: dict[str, object]) -> Iterator[dict[str, int]]:
        for i in range(int(str(args.get("count", 10)))):
            yield {"i": i}


class BombHandler(BaseCommandHandler):
    """``bomb``: ``n`` empty lists, one byte each on the wire."""

    def _register_commands(self) -> None:
        super()._register_commands()
        self.register_command("bomb", self.bomb)

    def bomb(self, args: dict[str, object]) -> list[list[object]]:
        return [[] for _ in range(int(str(args["n"])))]
