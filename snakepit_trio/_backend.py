"""What differs between trio and asyncio, in one place.

The pool runs on both of anyio's backends. anyio hides their differences at a cost of a few
microseconds per call, which the hot path pays once per request; so the few primitives the
hot path uses come from here, bound to the running backend once per pool:

- ``Backend.new_event``: a one-shot event (trio: a light one built on ``wait_task_rescheduled``;
  asyncio: ``asyncio.Event``), awaited inside anyio cancel scopes on both.
- ``Backend.now`` and ``Backend.checkpoint_if_cancelled``: the backend's own clock and check.
- ``Backend.checkpoint``: a full checkpoint (a cancellation check and a pass through the
  scheduler), which a public call takes before it raises a validation error, so that it fails
  the way trio's own functions do: a call made in a cancelled scope raises ``Cancelled``.
- ``Backend.pump``: read a descriptor until its consumer says stop (trio: ``wait_readable``
  then ``os.read``; asyncio: one persistent ``add_reader`` callback, which saves a task switch
  and a registration per read).
- ``read_some``: one read of a descriptor, waiting for it to be readable.

What each await does when cancelled: ``wait`` on an event leaves the event as it was;
``pump`` and ``read_some`` stop reading (nothing read is lost: a read either happened and was
handed on, or did not happen).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import anyio
import anyio.lowlevel
import attrs
import sniffio

__all__ = ["Backend", "Waitable", "current_backend", "read_some"]

# Stay below glibc's mmap threshold (128 KiB): a larger os.read buffer costs an mmap and a
# munmap per call, ~60 us here, more than a whole round trip.
READ_SIZE: Final = 1 << 16


class Waitable(Protocol):
    """What the hot path needs of an event: trio's, asyncio's or anyio's all fit."""

    def set(self) -> object:
        """Set the event and wake its waiters (setting it again does nothing)."""

    def is_set(self) -> bool:
        """Whether it was set."""

    async def wait(self) -> object:
        """Return once it is set."""


@attrs.frozen
class Backend:
    """The running backend's primitives (see the module doc)."""

    name: str
    new_event: Callable[[], Waitable]
    now: Callable[[], float]
    checkpoint_if_cancelled: Callable[[], Awaitable[None]]
    checkpoint: Callable[[], Awaitable[None]]
    pump: Callable[[int, Callable[[bytes], bool]], Awaitable[None]]


def current_backend() -> Backend:
    """The primitives of the backend this task runs on."""
    name = sniffio.current_async_library()
    if name == "trio":
        import trio

        return Backend(
            name,
            _trio_signal_class(),
            trio.current_time,
            trio.lowlevel.checkpoint_if_cancelled,
            trio.lowlevel.checkpoint,
            _pump_waiting,
        )
    if name == "asyncio":
        import asyncio

        return Backend(
            name,
            asyncio.Event,
            anyio.current_time,
            anyio.lowlevel.checkpoint_if_cancelled,
            anyio.lowlevel.checkpoint,
            _pump_asyncio,
        )
    return Backend(  # pragma: no cover - another backend: anyio's portable forms
        name,
        anyio.Event,
        anyio.current_time,
        anyio.lowlevel.checkpoint_if_cancelled,
        anyio.lowlevel.checkpoint,
        _pump_waiting,
    )


async def read_some(fd: int, size: int = READ_SIZE) -> bytes:
    """One read of ``fd`` once it is readable: up to ``size`` bytes, ``b""`` at end of file
    (or when the descriptor is broken)."""
    while True:
        await anyio.wait_readable(fd)
        try:
            return os.read(fd, size)
        except BlockingIOError:
            continue
        except OSError:
            return b""


async def _pump_waiting(fd: int, on_data: Callable[[bytes], bool]) -> None:
    """Feed what ``fd`` yields to ``on_data`` (``b""``: end of file) until it returns False:
    one ``wait_readable`` and one ``os.read`` per batch."""
    read = os.read
    while True:
        await anyio.wait_readable(fd)
        try:
            data = read(fd, READ_SIZE)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if not on_data(data):
            return


async def _pump_asyncio(fd: int, on_data: Callable[[bytes], bool]) -> None:
    """``_pump_waiting`` for asyncio: the reads run in an ``add_reader`` callback; the task
    only keeps the callback's lifetime inside its caller's task group."""
    import asyncio

    loop = asyncio.get_running_loop()
    over = asyncio.Event()

    def on_readable() -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not on_data(data):
            loop.remove_reader(fd)
            over.set()

    loop.add_reader(fd, on_readable)
    try:
        await over.wait()
    finally:
        loop.remove_reader(fd)


_TRIO_SIGNAL: Callable[[], Waitable] | None = None


def _trio_signal_class() -> Callable[[], Waitable]:
    """A one-shot event for trio, lighter than ``trio.Event`` (one per request).

    ``trio.Event`` builds an attrs object with a parking lot (an ``OrderedDict``) and parks
    each waiter through it; this one keeps its waiting tasks in a list made on first wait and
    reschedules them directly. Same semantics: ``wait()`` is a checkpoint, waiters wake in
    order, and a cancelled waiter leaves the list.
    """
    global _TRIO_SIGNAL
    if _TRIO_SIGNAL is not None:
        return _TRIO_SIGNAL
    from trio.lowlevel import (
        Abort,
        checkpoint,
        current_task,
        enable_ki_protection,
        reschedule,
        wait_task_rescheduled,
    )

    class TrioSignal:
        __slots__ = ("_flag", "_waiters")

        def __init__(self) -> None:
            self._flag = False
            self._waiters: list[Any] | None = None

        def is_set(self) -> bool:
            return self._flag

        @enable_ki_protection  # as trio.Event.set: a KeyboardInterrupt cannot strand a waiter
        def set(self) -> None:
            if self._flag:
                return
            self._flag = True
            waiters = self._waiters
            if waiters:
                self._waiters = None
                for task in waiters:
                    reschedule(task)

        async def wait(self) -> None:
            if self._flag:
                await checkpoint()
                return
            task = current_task()
            waiters = self._waiters
            if waiters is None:
                self._waiters = waiters = []
            waiters.append(task)

            def abort(_: object) -> Abort:
                waiters.remove(task)
                return Abort.SUCCEEDED

            await wait_task_rescheduled(abort)

    _TRIO_SIGNAL = TrioSignal
    return TrioSignal
