"""Telemetry: typed events and a dependency-free listener hook.

``pool.telemetry.add_listener(fn)`` registers a callable that receives every event. Listeners
run synchronously in the pool's task; an exception in one is logged and ignored. When nobody
listens, no event object is built.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal, TypeAlias

import attrs

__all__ = [
    "Event",
    "Listener",
    "RequestCompleted",
    "RequestRejected",
    "Telemetry",
    "WorkerExited",
    "WorkerReady",
    "WorkerRecycled",
    "WorkerStarted",
]

logger = logging.getLogger("snakepit_trio.telemetry")

Outcome = Literal["ok", "error", "timeout", "crashed", "cancelled"]


@attrs.frozen
class RequestCompleted:
    """A request reached its outcome on a worker."""

    command: str
    worker_id: int
    duration: float
    outcome: Outcome
    session_id: str | None = None


@attrs.frozen
class RequestRejected:
    """A request never ran: the queue was full, the wait timed out, or the pool closed."""

    command: str
    reason: Literal["saturated", "queue_timeout", "closed"]
    waited: float = 0.0


@attrs.frozen
class WorkerStarted:
    """A worker process was spawned."""

    worker_id: int
    pid: int
    restart: int


@attrs.frozen
class WorkerReady:
    """A worker negotiated and answered its init ping."""

    worker_id: int
    pid: int
    init_time: float
    protocol: str
    features: frozenset[str]


@attrs.frozen
class WorkerExited:
    """A worker process ended; ``crashed`` unless the pool stopped it."""

    worker_id: int
    pid: int
    exit_code: int | None
    signal: int | None
    crashed: bool
    reason: str


@attrs.frozen
class WorkerRecycled:
    """A healthy worker is being replaced (request count, lifetime or memory)."""

    worker_id: int
    pid: int
    reason: str


Event: TypeAlias = (
    RequestCompleted | RequestRejected | WorkerStarted | WorkerReady | WorkerExited | WorkerRecycled
)
Listener: TypeAlias = Callable[[Event], object]


class Telemetry:
    """The pool's event hub."""

    __slots__ = ("_listeners",)

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    @property
    def active(self) -> bool:
        """True when at least one listener is registered (build events only then)."""
        return bool(self._listeners)

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Register ``listener``; returns a function that removes it."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def emit(self, event: Event) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("telemetry listener %r failed", listener)
