"""Running async handlers: an asyncio loop, created the first time one is needed.

Each awaitable (a coroutine, or one step of an async generator) runs as a task while the loop
watches stdin, so that frames arriving meanwhile are handled, and a ``cancel`` frame for the
running request cancels the task.
"""

from __future__ import annotations

import asyncio

from .context import Cancelled

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable
    from typing import Any

__all__ = ["AsyncRunner"]


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class AsyncRunner:
    """Runs awaitables to completion on a private event loop, one at a time."""

    def __init__(self, fd: int, on_readable: Callable[[], bool]) -> None:
        # on_readable() handles input on ``fd``; it returns False once the fd is at its end.
        self._fd = fd
        self._on_readable = on_readable
        self._watching = False
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[Any] | None = None

    def run(self, awaitable: Awaitable[Any]) -> Any:
        """Await ``awaitable``; raises :class:`Cancelled` if :meth:`cancel` stopped it."""
        task = self._loop.create_task(_await(awaitable))
        self._task = task
        self._watch(True)
        try:
            return self._loop.run_until_complete(task)
        except asyncio.CancelledError:
            raise Cancelled("the async handler was cancelled") from None
        finally:
            self._task = None
            self._watch(False)

    def anext(self, agen: AsyncGenerator[Any, Any]) -> Any:
        """The next value of ``agen``; ``StopAsyncIteration`` at its end."""
        return self.run(agen.__anext__())

    def aclose(self, agen: AsyncGenerator[Any, Any]) -> None:
        """Close ``agen`` (its ``finally`` blocks run)."""
        self.run(agen.aclose())

    def cancel(self) -> None:
        """Cancel the awaitable that is running, if any."""
        if self._task is not None:
            self._task.cancel()

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.close()

    def _watch(self, on: bool) -> None:
        if on and not self._watching:
            self._loop.add_reader(self._fd, self._readable)
            self._watching = True
        elif not on and self._watching:
            self._loop.remove_reader(self._fd)
            self._watching = False

    def _readable(self) -> None:
        if not self._on_readable():
            self._watch(False)
