"""Commands for testing pools: crashes, floods, stuck handlers, leaks and stray children.

Start a worker with ``--handler snakepit_trio_bridge.testing:TestingHandler``. It has every command
of the generic handler (``sleep``, the streaming demos) and these, each misbehaving in one
precise way. FOR TESTS ONLY: unlike the built-ins, these act on the caller's say-so (kill the
worker, write the file ``record_path``, start processes, hold memory, flood stderr), so never
serve this handler to callers you do not trust.

=================  ======================================================================
``crash``          ``os._exit(code)`` (default 3), after writing ``stderr`` text if given
``raise_error``    raises ``ValueError(message)``
``stderr_flood``   writes ``bytes`` bytes to stderr, returns ``{"written": n}``
``print_stdout``   ``print(text)`` (and, with ``raw``, ``os.write(1, text)``); ``{"ok": True}``
``spawn_child``    starts a grandchild that sleeps 1000 s (``new_session``: in a session of
                   its own, escaping the process group); returns ``{"pid": pid}``
``allocate``       keeps ``mb`` more megabytes alive; returns ``{"rss": bytes, "held_mb": n}``
``ignore_sigterm`` ignores SIGTERM from now on; returns ``{"ok": True}``
``block``          ``time.sleep(seconds)``, deaf to cancellation; returns ``{"slept": s}``
``count_stream``   yields ``{"i": i}`` for ``count`` items, recording in the JSON file
                   ``record_path`` how many it produced and whether its ``finally`` ran
``getpid``         ``{"pid": ..., "pgid": ..., "ppid": ...}``
``loaded_modules`` which of the module ``names`` are imported (start-up weight checks)
``async_sleep``    ``await asyncio.sleep(seconds)`` (cancellable); ``{"slept": seconds}``
``async_stream``   async generator of ``{"i": i}`` for ``count`` items, ``delay`` apart
=================  ======================================================================
"""

from __future__ import annotations

import os
import sys
import time

from .generic import GenericCommandHandler

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Generator
    from typing import Any

__all__ = ["TestingHandler"]

_held: list[bytes] = []  # what ``allocate`` keeps alive


def _record(path: str | None, produced: int, finished: bool) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(
                f'{{"produced": {produced}, "finally": {"true" if finished else "false"}}}'
            )


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class TestingHandler(GenericCommandHandler):
    """The generic handler plus commands that misbehave on purpose (see the module doc)."""

    __test__ = False  # not a pytest test class, despite its name
    bridge_type = "testing"

    def _register_commands(self) -> None:
        super()._register_commands()
        for name in (
            "crash",
            "raise_error",
            "stderr_flood",
            "print_stdout",
            "spawn_child",
            "allocate",
            "ignore_sigterm",
            "block",
            "count_stream",
            "getpid",
            "loaded_modules",
            "async_sleep",
            "async_stream",
        ):
            self.register_command(name, getattr(self, f"handle_{name}"))

    def handle_crash(self, args: dict[str, Any]) -> None:
        text = args.get("stderr")
        if text:
            os.write(2, str(text).encode())
        os._exit(int(args.get("code", 3)))

    def handle_raise_error(self, args: dict[str, Any]) -> None:
        raise ValueError(args.get("message", "raise_error was asked to fail"))

    def handle_stderr_flood(self, args: dict[str, Any]) -> dict[str, Any]:
        total = int(args.get("bytes", 1 << 20))
        block = b"x" * 1023 + b"\n"
        left = total
        while left > 0:
            left -= os.write(2, block[: min(left, len(block))])
        return {"written": total}

    def handle_print_stdout(self, args: dict[str, Any]) -> dict[str, Any]:
        text = str(args.get("text", "hello from print()"))
        print(text)
        if args.get("raw"):
            os.write(1, text.encode() + b"\n")
        return {"ok": True}

    def handle_spawn_child(self, args: dict[str, Any]) -> dict[str, Any]:
        import subprocess

        argv = ["/bin/sleep", "1000"]
        if not os.path.exists(argv[0]):
            argv = [sys.executable, "-c", "import time; time.sleep(1000)"]
        child = subprocess.Popen(argv, start_new_session=bool(args.get("new_session", False)))
        return {"pid": child.pid}

    def handle_allocate(self, args: dict[str, Any]) -> dict[str, Any]:
        size = int(float(args.get("mb", 10)) * (1 << 20))
        _held.append(b"\xa5" * size)  # bytes filled in, so the pages are really resident
        return {"rss": _rss(), "held_mb": sum(map(len, _held)) / (1 << 20)}

    def handle_ignore_sigterm(self, args: dict[str, Any]) -> dict[str, Any]:
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return {"ok": True}

    def handle_block(self, args: dict[str, Any]) -> dict[str, Any]:
        seconds = float(args.get("seconds", 1.0))
        time.sleep(seconds)
        return {"slept": seconds}

    def handle_count_stream(
        self, args: dict[str, Any]
    ) -> Generator[dict[str, int], None, dict[str, int]]:
        count = int(args.get("count", 10))
        path = args.get("record_path")
        produced = 0
        try:
            for i in range(count):
                produced += 1
                _record(path, produced, False)
                yield {"i": i}
        finally:
            _record(path, produced, True)
        return {"count": count}

    def handle_getpid(self, args: dict[str, Any]) -> dict[str, int]:
        return {"pid": os.getpid(), "pgid": os.getpgrp(), "ppid": os.getppid()}

    def handle_loaded_modules(self, args: dict[str, Any]) -> list[str]:
        return [name for name in args.get("names", []) if name in sys.modules]

    async def handle_async_sleep(self, args: dict[str, Any]) -> dict[str, Any]:
        import asyncio

        seconds = float(args.get("seconds", 0.1))
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    async def handle_async_stream(
        self, args: dict[str, Any]
    ) -> AsyncGenerator[dict[str, int], None]:
        import asyncio

        delay = float(args.get("delay", 0.0))
        for i in range(int(args.get("count", 3))):
            if delay:
                await asyncio.sleep(delay)
            yield {"i": i}
