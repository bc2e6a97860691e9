"""What every subcommand shares: the exit codes, the two errors, coloured output, JSON in
and out, one-line error messages, and running a coroutine under trio."""

from __future__ import annotations

import base64
import importlib.metadata
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO, TypeVar

import anyio

import snakepit_trio as sp

from .._progress import use_colour

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "PROG",
    "CliError",
    "Style",
    "Terminated",
    "UsageError",
    "describe",
    "dist_version",
    "dumps",
    "ms",
    "parse_args_json",
    "run_async",
    "table",
]

PROG = "snakepit-trio"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports it
_T = TypeVar("_T")


class UsageError(Exception):
    """Bad command line: exit code 2."""


class CliError(Exception):
    """A failure worth one line of explanation: exit code 1."""


class Style:
    """ANSI colours for one stream, switched off when it is not a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.on = use_colour(stream)

    def paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.on else text

    def bold(self, text: str) -> str:
        return self.paint(text, "1")

    def dim(self, text: str) -> str:
        return self.paint(text, "2")

    def good(self, text: str) -> str:
        return self.paint(text, "32")

    def warn(self, text: str) -> str:
        return self.paint(text, "33")

    def bad(self, text: str) -> str:
        return self.paint(text, "31;1")


def jsonable(value: Any) -> Any:
    """``value`` with bytes as ``{"__bytes__": base64}`` and tuples as lists, ready for json."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"__bytes__": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def dumps(value: Any, *, pretty: bool = False) -> str:
    return json.dumps(
        jsonable(value), indent=2 if pretty else None, ensure_ascii=False, default=repr
    )


def _bytes_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "__bytes__" in obj:
        encoded = obj["__bytes__"]
        try:
            return base64.b64decode(encoded, validate=True)
        except (TypeError, ValueError):
            raise UsageError(f"invalid base64 in {{'__bytes__': {encoded!r}}}") from None
    return obj


def parse_args_json(text: str | None) -> dict[str, Any]:
    """The command's arguments: a JSON object (``-`` reads it from stdin; bytes as above)."""
    if text is None:
        return {}
    if text == "-":
        text = sys.stdin.read()
    try:
        value = json.loads(text, object_hook=_bytes_hook)
    except json.JSONDecodeError as exc:
        raise UsageError(f"ARGS_JSON is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UsageError('ARGS_JSON must be a JSON object, like \'{"a": 1, "b": 2}\'')
    return value


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def describe(exc: BaseException, *, debug: bool = False) -> str:
    """The one-line message for ``exc`` (the full text, remote traceback included, on debug)."""
    if debug:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, sp.CommandError) and exc.traceback:
            text += "\n--- remote traceback ---\n" + exc.traceback.rstrip()
        return text
    if isinstance(exc, sp.CommandError):
        kind = f"{exc.error_type}: " if exc.error_type else ""
        return f"the command failed: {kind}{_first_line(exc.message)}"
    if isinstance(exc, sp.StartupError | sp.WorkerCrashed):
        head = _first_line(str(exc))
        cause = _last_line(exc.stderr_tail)
        return f"{head}: {cause}" if cause else head
    if isinstance(exc, sp.SnakepitError | CliError | UsageError):
        return _first_line(str(exc)) or type(exc).__name__
    return f"{type(exc).__name__}: {_first_line(str(exc))}".rstrip(": ")


class Terminated(Exception):
    """SIGTERM arrived (``docker stop``, systemd, ``timeout``): the pool was closed through
    its ladder, as for Ctrl-C; the command exits 143."""


def run_async(fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
    """Run ``fn(*args)`` on trio (the command line's own event loop). SIGTERM cancels it, so
    that an open pool closes through its ladder, and raises ``Terminated``."""
    import signal

    terminated = False
    results: list[_T] = []

    async def main() -> None:
        nonlocal terminated
        async with anyio.create_task_group() as tg:

            async def on_sigterm() -> None:
                nonlocal terminated
                with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                    async for _ in signals:
                        terminated = True
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(on_sigterm)
            results.append(await fn(*args))
            tg.cancel_scope.cancel()

    anyio.run(main, backend="trio")
    if terminated:
        raise Terminated("terminated by SIGTERM")
    return results[0]


def ms(seconds: float) -> str:
    """A duration for people: ``12.3 ms`` below a second, ``1.50 s`` above."""
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def table(rows: Sequence[Sequence[object]], indent: str = "    ") -> list[str]:
    """The lines of ``rows`` in left-aligned columns (short rows padded)."""
    columns = max(len(row) for row in rows)
    cells = [[str(c) for c in row] + [""] * (columns - len(row)) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(columns)]
    return [
        indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]


def dist_version(dist: str) -> str:
    """The installed version of distribution ``dist``, or ``?`` (e.g. run from a checkout)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"
