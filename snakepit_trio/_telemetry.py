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
    "Listener",
    "Outcome",
    "RejectReason",
    "RequestCompleted",
    "RequestRejected",
    "Telemetry",
    "TelemetryEvent",
    "WorkerExited",
    "WorkerReady",
    "WorkerRecycled",
    "WorkerStarted",
]

logger = logging.getLogger("snakepit_trio.telemetry")

Outcome: TypeAlias = Literal["ok", "error", "timeout", "crashed", "cancelled"]
"""How a request ended: ``"ok"``; ``"error"`` (the command raised, or the bridge refused it);
``"timeout"``; ``"crashed"`` (its worker died or broke the protocol); ``"cancelled"`` (the
caller gave up, or left a stream early)."""

RejectReason: TypeAlias = Literal["saturated", "queue_timeout", "closed"]
"""Why a request never ran: the queue was full (``PoolSaturated``), no worker became free in
time (``QueueTimeout``), or the pool closed (``PoolClosed``)."""


@attrs.frozen
class RequestCompleted:
    """A request reached its outcome on a worker."""

    command: str
    worker_id: int
    duration: float
    """Seconds from the request's hand-over to its worker until its outcome."""
    outcome: Outcome
    session_id: str | None = None


@attrs.frozen
class RequestRejected:
    """A request never ran: the queue was full, the wait timed out, or the pool closed."""

    command: str
    reason: RejectReason
    waited: float = 0.0
    """Seconds the request spent in the queue before it was rejected."""


@attrs.frozen
class WorkerStarted:
    """A worker process was spawned."""

    worker_id: int
    pid: int
    restart: int
    """How many times this slot's worker was restarted before (0: its first start)."""


@attrs.frozen
class WorkerReady:
    """A worker negotiated and answered its init ping."""

    worker_id: int
    pid: int
    init_time: float
    """Seconds from the start of its handshake until it was ready."""
    protocol: str
    """What it speaks: the negotiated codec (``"msgpack"``, ``"json"``), or ``"grpc"``."""
    features: frozenset[str]
    """The protocol features its bridge announced (streaming, cancellation, ...)."""


@attrs.frozen
class WorkerExited:
    """A worker process ended; ``crashed`` unless the pool stopped it."""

    worker_id: int
    pid: int
    exit_code: int | None
    signal: int | None
    """The signal that ended it, if one did."""
    crashed: bool
    reason: str
    """Why it stopped, in words."""


@attrs.frozen
class WorkerRecycled:
    """A healthy worker is being replaced (request count, lifetime or memory)."""

    worker_id: int
    pid: int
    reason: str


TelemetryEvent: TypeAlias = (
    RequestCompleted | RequestRejected | WorkerStarted | WorkerReady | WorkerExited | WorkerRecycled
)
"""Any event a listener receives."""
Event: TypeAlias = TelemetryEvent  # the name this alias had before it was public

Listener: TypeAlias = Callable[[TelemetryEvent], object]
"""A callable that receives every event; what it returns is ignored."""


class Telemetry:
    """The pool's event hub (``pool.telemetry``)."""

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

    def emit(self, event: TelemetryEvent) -> None:
        """Hand ``event`` to every listener, in the order they were added."""
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("telemetry listener %r failed", listener)
