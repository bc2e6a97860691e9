"""The request context: which request a handler is serving, and whether it was cancelled.

A server makes one :class:`RequestContext` per request and binds it while the handler runs;
the handler reaches it through :func:`current_context` (or ``self.context`` on a
:class:`~snakepit_trio_bridge.handler.BaseCommandHandler`).

Cancellation is cooperative and pluggable: ``ctx.cancelled`` returns the context's flag, and
when the flag is not yet set it first asks the server's ``poll`` callable. The stdio server's
poll reads any pending frames from stdin without blocking (so a ``cancel`` frame is seen while
the handler runs); a threaded server can pass ``threading.Event().is_set`` instead.
"""

from __future__ import annotations

from contextvars import ContextVar

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from contextvars import Token
    from typing import Any

__all__ = ["Cancelled", "RequestContext", "bind_context", "current_context", "unbind_context"]


class Cancelled(BaseException):
    """The pool cancelled the running request.

    Raised by :meth:`RequestContext.check_cancelled`. It derives from ``BaseException`` (like
    ``asyncio.CancelledError``) so that a handler's ``except Exception`` does not swallow it.
    The server answers it with the ``Cancelled`` response that confirms the cancel.
    """


class RequestContext:
    """One request being served: its id, command and arguments, and its cancellation state."""

    __slots__ = ("_cancelled", "_poll", "args", "command", "id", "session_id", "stream")

    def __init__(
        self,
        request_id: int,
        command: str,
        args: dict[str, Any],
        *,
        stream: bool = False,
        poll: Callable[[], bool] | None = None,
    ) -> None:
        self.id: int = request_id
        self.command: str = command
        self.args: dict[str, Any] = args
        self.stream: bool = stream
        session_id = args.get("session_id")
        self.session_id: str | None = session_id if isinstance(session_id, str) else None
        self._cancelled = False
        # Asked when the flag is not set yet; returns True once the request is cancelled.
        self._poll = poll

    @property
    def cancelled(self) -> bool:
        """True once the pool asked to cancel this request (polls for news when not yet)."""
        if not self._cancelled and self._poll is not None and self._poll():
            self._cancelled = True
        return self._cancelled

    def cancel(self) -> None:
        """Mark the request cancelled (called by servers when a cancel arrives)."""
        self._cancelled = True

    def check_cancelled(self) -> None:
        """Raise :class:`Cancelled` if the request was cancelled."""
        if self.cancelled:
            raise Cancelled(f"request {self.id} ({self.command}) was cancelled")

    def __repr__(self) -> str:
        return f"RequestContext(id={self.id!r}, command={self.command!r})"


_current: ContextVar[RequestContext | None] = ContextVar("snakepit_request", default=None)


def current_context() -> RequestContext:
    """The context of the request being served; ``RuntimeError`` outside of one."""
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("no snakepit request is being served in this context")
    return ctx


def bind_context(ctx: RequestContext | None) -> Token[RequestContext | None]:
    """Make ``ctx`` the current context (for servers); undo with :func:`unbind_context`."""
    return _current.set(ctx)


def unbind_context(token: Token[RequestContext | None]) -> None:
    """Restore the context that was current before :func:`bind_context`."""
    _current.reset(token)
