"""The exceptions callers see: one base class, one subclass per cause."""

from __future__ import annotations

import re as _re
import signal as _signal

from snakepit_trio_bridge.protocol.framing import ProtocolError as _WireProtocolError

__all__ = [
    "CommandError",
    "PoolClosed",
    "PoolSaturated",
    "ProtocolError",
    "QueueTimeout",
    "SessionError",
    "SnakepitError",
    "StartupError",
    "UnsupportedCommand",
    "WorkerCrashed",
    "WorkerTimeout",
]


class SnakepitError(Exception):
    """Base class of every error snakepit-trio raises on purpose."""


class PoolSaturated(SnakepitError):
    """The queue is full (``max_queue``); the request was rejected at once and never ran."""


class QueueTimeout(SnakepitError, TimeoutError):
    """No worker became free in time (``queue_timeout`` or the call's timeout); it never ran.

    Also a ``TimeoutError``, so code written for timeouts in general catches it.
    """


class WorkerTimeout(SnakepitError, TimeoutError):
    """The command ran past its timeout. It may have run in part; its worker is cleaned up.

    Also a ``TimeoutError``, so code written for timeouts in general catches it.
    """


class WorkerCrashed(SnakepitError):
    """The worker process died (or broke the protocol) while it held this request."""

    def __init__(
        self,
        message: str,
        *,
        exit_code: int | None = None,
        signal: int | None = None,
        stderr_tail: str = "",
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.signal = signal
        self.stderr_tail = stderr_tail

    def __str__(self) -> str:
        text = super().__str__()
        if self.signal is not None:
            try:
                name = _signal.Signals(self.signal).name
            except ValueError:
                name = str(self.signal)
            text += f" (killed by {name})"
        elif self.exit_code is not None:
            text += f" (exit code {self.exit_code})"
        if self.stderr_tail:
            tail = self.stderr_tail.rstrip()[-2000:]
            text += "\n--- worker stderr (tail) ---\n" + tail
        return text


# A Python traceback's frame line, and a JavaScript stack's frame line.
_PY_FRAME = _re.compile(r'^\s*File (".*", line \d+, in .*)$')
_JS_FRAME = _re.compile(r"^\s*at (.+)$")


def _where(traceback: str) -> str:
    """Where a remote error happened: the innermost frame of a Python traceback (its last
    ``File`` line) or of a JavaScript stack (its first ``at`` line); "" if neither."""
    lines = traceback.splitlines()
    for line in reversed(lines):
        match = _PY_FRAME.match(line)
        if match:
            return match.group(1)
    for line in lines:
        match = _JS_FRAME.match(line)
        if match:
            return match.group(1)
    return ""


class CommandError(SnakepitError):
    """The command raised in the worker.

    ``str()`` is the error and where it happened (the innermost remote frame), on one line;
    ``traceback`` holds the whole remote traceback, when the bridge sent one.
    """

    def __init__(
        self, message: str, error_type: str | None = None, traceback: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        self.traceback = traceback

    def __str__(self) -> str:
        prefix = f"{self.error_type}: " if self.error_type else ""
        where = _where(self.traceback) if self.traceback else ""
        return f"{prefix}{self.message} (at {where})" if where else prefix + self.message


class UnsupportedCommand(SnakepitError):
    """The adapter or the bridge does not know this command (or lacks a needed feature)."""


class ProtocolError(SnakepitError, _WireProtocolError):
    """A worker broke the wire protocol; it is replaced."""


class StartupError(SnakepitError):
    """No worker could be started (or the restart breaker is open); carries their stderr."""

    def __init__(self, message: str, *, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.stderr_tail = stderr_tail

    def __str__(self) -> str:
        text = super().__str__()
        if self.stderr_tail:
            text += "\n--- worker stderr (tail) ---\n" + self.stderr_tail.rstrip()[-4000:]
        return text


class PoolClosed(SnakepitError):
    """The pool is closing or closed: the request was not run."""


class SessionError(SnakepitError):
    """Bad session id, unknown session, or the session quota is reached."""
