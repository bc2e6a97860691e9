"""The lifeline: when the pool disappears, take this worker's process group down with it.

The pool passes the read end of a pipe in ``SNAKEPIT_LIFELINE_FD`` and never writes to it. Its
write end closes when the pool process ends, however it ends (SIGKILL included). A thread
blocks reading the pipe; at end of file it waits ``grace`` seconds (``SNAKEPIT_LIFELINE_GRACE``,
or the ``grace`` of the negotiation frame, default 2 s) so that a graceful exit can finish,
then SIGKILLs the process group when this process leads one (the pool starts each worker in a
session of its own), and otherwise exits with status 1.
"""

from __future__ import annotations

import _thread
import os
import time
from select import select

from .protocol.constants import ENV_LIFELINE_FD, ENV_LIFELINE_GRACE

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from collections.abc import Mapping
else:  # the same functions and constants without ``signal``'s enum wrappers (saves ~3 ms)
    import _signal

__all__ = ["DEFAULT_GRACE", "kill_group", "pool_gone", "set_grace", "start"]

DEFAULT_GRACE = 2.0

_state = {"fd": -1, "grace": DEFAULT_GRACE}


def start(environ: Mapping[str, str]) -> bool:
    """Start watching the lifeline named in ``environ``; False when there is none."""
    text = environ.get(ENV_LIFELINE_FD)
    if not text:
        return False
    try:
        fd = int(text)
        os.set_inheritable(fd, False)  # grandchildren must not keep the pipe open
    except (ValueError, OSError) as exc:
        _log(f"ignoring {ENV_LIFELINE_FD}={text!r}: {exc}")
        return False
    try:
        set_grace(float(environ.get(ENV_LIFELINE_GRACE, DEFAULT_GRACE)))
    except ValueError:
        _log(f"ignoring {ENV_LIFELINE_GRACE}={environ.get(ENV_LIFELINE_GRACE)!r}")
    _state["fd"] = fd
    _thread.start_new_thread(_watch, (fd,))
    return True


def set_grace(seconds: float) -> None:
    """How long to wait, once the pool is gone, before killing the process group."""
    if seconds >= 0 and seconds != float("inf"):
        _state["grace"] = float(seconds)


def pool_gone(timeout: float) -> bool:
    """True when the lifeline is watched and reaches end of file within ``timeout`` seconds."""
    fd = int(_state["fd"])
    if fd < 0:
        return False
    try:
        readable, _, _ = select([fd], [], [], timeout)
    except (OSError, ValueError):
        return True
    return bool(readable)  # the pool never writes: readable means end of file


def kill_group(reason: str) -> None:
    """SIGKILL our process group if we lead it (ourselves included); else exit with 1."""
    _log(f"{reason}; killing the worker's process group")
    try:
        if os.getpgrp() == os.getpid():
            os.killpg(0, _signal.SIGKILL)
    finally:
        os._exit(1)


def _watch(fd: int) -> None:
    try:
        while os.read(fd, 64):
            pass
    except OSError:
        pass
    time.sleep(float(_state["grace"]))
    kill_group("the pool is gone (lifeline closed)")


def _log(message: str) -> None:
    try:
        os.write(2, f"snakepit_bridge[{os.getpid()}]: {message}\n".encode())
    except OSError:
        pass
