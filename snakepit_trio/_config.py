"""PoolConfig: every tunable of a pool in one validated, immutable object."""

from __future__ import annotations

import math
from typing import Any, Literal

import attrs
from snakepit_bridge.protocol.framing import DEFAULT_MAX_FRAME_SIZE

__all__ = ["Affinity", "PoolConfig"]

Affinity = Literal["hint", "strict", "fail"]


def _seconds(_inst: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{attribute.name} must be a number of seconds, not {value!r}")
    if not value >= 0 or math.isnan(value):
        raise ValueError(f"{attribute.name} must be >= 0, not {value!r}")


def _optional_seconds(inst: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None:
        _seconds(inst, attribute, value)
        if value == 0:
            raise ValueError(f"{attribute.name} must be > 0 or None, not 0")


def _positive_int(_inst: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name} must be an int, not {value!r}")
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1, not {value!r}")


def _optional_positive_int(inst: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None:
        _positive_int(inst, attribute, value)


def _non_negative_int(_inst: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{attribute.name} must be an int >= 0, not {value!r}")


@attrs.frozen(kw_only=True)
class PoolConfig:
    """How a pool starts, queues, times out, checks, recycles and stops its workers.

    All durations are seconds. ``None`` disables a limit where that is allowed.
    """

    # start-up
    startup_timeout: float = attrs.field(default=10.0, validator=_seconds)
    """How long ``open_pool`` waits for all workers; it starts with those ready by then."""
    worker_init_timeout: float = attrs.field(default=20.0, validator=_seconds)
    """Bound on one worker's start (spawn, negotiation, init ping), also for restarts."""
    negotiation_timeout: float = attrs.field(default=5.0, validator=_seconds)
    """How long to wait for the answer to protocol negotiation before falling back to JSON."""

    # requests
    command_timeout: float = attrs.field(default=30.0, validator=_seconds)
    """Default bound on a whole call (queue wait included) when neither the call nor the adapter
    gives one."""
    stream_timeout: float | None = attrs.field(default=None, validator=_optional_seconds)
    """Default bound on a whole stream; None: the consumer decides by leaving the block."""
    queue_timeout: float = attrs.field(default=5.0, validator=_seconds)
    """Longest wait for a free worker; past it the call raises ``QueueTimeout``."""
    max_queue: int = attrs.field(default=1000, validator=_non_negative_int)
    """Requests that may wait for a worker; one more raises ``PoolSaturated`` at once."""
    max_in_flight: int = attrs.field(default=1, validator=_positive_int)
    """Requests in flight per worker, for bridges that announce ``multiplex`` (capped by the
    bridge's ``max_concurrency``). 1 is Snakepit's behaviour."""
    stream_credits: int = attrs.field(default=64, validator=_positive_int)
    """Most chunks a stream may run ahead of its consumer (backpressure). A stream starts with
    at most 8 and grows its window as the consumer keeps up."""
    stream_window: int = attrs.field(default=8 * 1024 * 1024, validator=_positive_int)
    """Bytes a stream may run ahead of its consumer: big chunks get fewer credits, so a slow
    consumer of large chunks keeps memory flat."""
    affinity: Affinity = attrs.field(
        default="hint", validator=attrs.validators.in_(("hint", "strict", "fail"))
    )
    """Session affinity: prefer the session's worker ("hint"), wait for it ("strict"), or raise
    ``PoolSaturated`` when it is busy ("fail")."""

    # cancellation and shutdown ladder
    cancel_grace: float = attrs.field(default=1.0, validator=_seconds)
    """How long a cancelled request's worker may take to confirm before it is replaced."""
    shutdown_grace: float = attrs.field(default=2.0, validator=_seconds)
    """After the graceful close (shutdown frame or stdin EOF), wait this long before SIGTERM."""
    kill_grace: float = attrs.field(default=2.0, validator=_seconds)
    """After SIGTERM, wait this long before SIGKILL."""
    drain_timeout: float = attrs.field(default=5.0, validator=_seconds)
    """On close, how long requests in flight may take to finish before the ladder starts."""

    hardened: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    """Run each worker under a small nanny process (Linux): a child subreaper with its own
    death signal, so even descendants that escape the process group and ignore signals are
    killed when the worker stops or the pool dies. Costs one small extra process per worker;
    ``WorkerInfo.pid`` and ``rss`` are then the nanny's."""

    # health and recycling
    health_check_interval: float | None = attrs.field(default=30.0, validator=_optional_seconds)
    """Ping each idle worker this often; None disables health checks."""
    health_check_timeout: float = attrs.field(default=5.0, validator=_seconds)
    max_requests: int | None = attrs.field(default=None, validator=_optional_positive_int)
    """Recycle a worker after this many requests."""
    max_lifetime: float | None = attrs.field(default=None, validator=_optional_seconds)
    """Recycle a worker after this many seconds."""
    max_memory: int | None = attrs.field(default=None, validator=_optional_positive_int)
    """Recycle a worker whose resident memory exceeds this many bytes."""
    restart_backoff: float = attrs.field(default=0.05, validator=_seconds)
    """First delay before restarting a crashed worker; doubles per crash, with jitter."""
    restart_backoff_max: float = attrs.field(default=5.0, validator=_seconds)
    max_restarts: int = attrs.field(default=10, validator=_positive_int)
    """Crash breaker: more crashes than this within ``restart_window`` stop the worker slot."""
    restart_window: float = attrs.field(default=60.0, validator=_seconds)

    # sessions
    session_ttl: float = attrs.field(default=3600.0, validator=_seconds)
    session_cleanup_interval: float = attrs.field(default=60.0, validator=_seconds)
    max_sessions: int | None = attrs.field(default=None, validator=_optional_positive_int)

    # wire
    max_frame_size: int = attrs.field(default=DEFAULT_MAX_FRAME_SIZE, validator=_positive_int)
    stderr_tail_bytes: int = attrs.field(default=16384, validator=_positive_int)
    """How much of each worker's recent stderr is kept for error messages."""
