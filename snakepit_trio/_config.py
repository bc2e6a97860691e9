"""PoolConfig: every tunable of a pool in one validated, immutable object."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeAlias

import attrs
from snakepit_trio_bridge.protocol.codecs import DEFAULT_MAX_CONTAINERS
from snakepit_trio_bridge.protocol.framing import DEFAULT_MAX_FRAME_SIZE

__all__ = [
    "MAX_FRAME_SIZE",
    "MAX_GRACE",
    "MAX_POOL_SIZE",
    "MAX_SECONDS",
    "MIN_FRAME_SIZE",
    "Affinity",
    "PoolConfig",
    "validate_size",
]

Affinity: TypeAlias = Literal["hint", "strict", "fail"]
"""Where a session's calls go (``PoolConfig.affinity``): ``"hint"`` prefers the worker that
served the session last, ``"strict"`` waits for it, ``"fail"`` raises ``PoolSaturated`` when it
is busy."""
_AFFINITIES = ("hint", "strict", "fail")

#: Longest duration any setting takes: a year. Longer waits overflow some timers (a thread's
#: wait tops out near 292 years), and nobody means them.
MAX_SECONDS = 365 * 24 * 3600.0
#: Longest grace period: a day. Graces reach the workers, and Node's setTimeout fires at once
#: for delays past 2**31 - 1 ms (24.8 days).
MAX_GRACE = 24 * 3600.0
#: What a frame's 4-byte big-endian length prefix can announce.
MAX_FRAME_SIZE = 2**32 - 1
#: Smallest frame limit: the negotiation reply and a short error response must fit.
MIN_FRAME_SIZE = 4096
#: Most workers one pool starts (a typo like 10**6 would fork until the machine gives up).
MAX_POOL_SIZE = 4096
# Ceiling of counts and byte sizes: what a signed 64-bit integer holds (msgpack, C).
_MAX_INT = 2**63 - 1
# Stream credits are sent to the worker; a Node worker holds them exactly up to 2**53, and
# nobody needs more than 2**31 chunks in flight.
_MAX_CREDITS = 2**31 - 1


def _number(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value}"


def _seconds_rule(
    low_allowed: bool, high: float = MAX_SECONDS, *, optional: bool = False
) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """A validator: a finite number of seconds, 0 < s <= high (0 <= s when ``low_allowed``);
    None too when ``optional`` (it disables the limit)."""
    low = "0 <=" if low_allowed else "0 <"
    kind = "a finite number of seconds" + (" or None" if optional else "")
    allowed = f"{kind}, {low} seconds <= {_number(high)}"

    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"PoolConfig.{attribute.name} must be {allowed}; got {value!r}")
        # Comparisons are false for NaN, and exact for ints too large for a float.
        in_range = (value >= 0 if low_allowed else value > 0) and value <= high
        if not in_range:
            raise ValueError(f"PoolConfig.{attribute.name} must be {allowed}; got {value!r}")

    return check


def _int_rule(
    lowest: int, highest: int = _MAX_INT, *, optional: bool = False
) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """A validator: an int (not a bool, not a float) from ``lowest`` to ``highest``; None too
    when ``optional`` (it disables the limit)."""
    kind = "an int" + (" or None" if optional else "")
    allowed = f"{kind} from {lowest} to {highest}"

    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"PoolConfig.{attribute.name} must be {allowed}; got {value!r}")
        if not lowest <= value <= highest:
            raise ValueError(f"PoolConfig.{attribute.name} must be {allowed}; got {value!r}")

    return check


def _affinity(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    allowed = ", ".join(repr(a) for a in _AFFINITIES)
    if not isinstance(value, str):
        raise TypeError(f"PoolConfig.{attribute.name} must be one of {allowed}; got {value!r}")
    if value not in _AFFINITIES:
        raise ValueError(f"PoolConfig.{attribute.name} must be one of {allowed}; got {value!r}")


def _bool(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"PoolConfig.{attribute.name} must be True or False; got {value!r}")


def validate_size(size: object, name: str = "size") -> int:
    """``size`` if it is a usable number of workers, else a TypeError or ValueError that says
    what is allowed (``open_pool`` calls it)."""
    allowed = f"{name} must be an int from 1 to {MAX_POOL_SIZE}"
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"{allowed}; got {size!r}")
    if not 1 <= size <= MAX_POOL_SIZE:
        raise ValueError(f"{allowed}; got {size!r}")
    return size


_POSITIVE_SECONDS = _seconds_rule(False)
_OPTIONAL_SECONDS = _seconds_rule(False, optional=True)
_SECONDS_OR_ZERO = _seconds_rule(True)
_GRACE = _seconds_rule(True, MAX_GRACE)
_COUNT = _int_rule(1)
_OPTIONAL_COUNT = _int_rule(1, optional=True)


@attrs.frozen(kw_only=True)
class PoolConfig:
    """How a pool starts, queues, times out, checks, recycles and stops its workers.

    All durations are seconds: finite, at most ``MAX_SECONDS`` (graces at most ``MAX_GRACE``),
    and more than 0 unless 0 has a meaning (no queue wait, no grace). ``None`` disables a limit
    where that is allowed. Every value is checked here, so a bad one raises ``TypeError`` or
    ``ValueError`` naming the field and the allowed range, never an error inside the pool.
    """

    # start-up
    startup_timeout: float = attrs.field(default=10.0, validator=_POSITIVE_SECONDS)
    """How long ``open_pool`` waits for all workers; it starts with those ready by then."""
    worker_init_timeout: float = attrs.field(default=20.0, validator=_POSITIVE_SECONDS)
    """Bound on one worker's start (spawn, negotiation, init ping), also for restarts."""
    negotiation_timeout: float = attrs.field(default=5.0, validator=_POSITIVE_SECONDS)
    """How long to wait for the answer to protocol negotiation before falling back to JSON."""

    # requests
    command_timeout: float = attrs.field(default=30.0, validator=_POSITIVE_SECONDS)
    """Default bound on a whole call (queue wait included) when neither the call nor the adapter
    gives one."""
    stream_timeout: float | None = attrs.field(default=None, validator=_OPTIONAL_SECONDS)
    """Default bound on a whole stream; None: the consumer decides by leaving the block."""
    queue_timeout: float = attrs.field(default=5.0, validator=_SECONDS_OR_ZERO)
    """Longest wait for a free worker; past it the call raises ``QueueTimeout``."""
    max_queue: int = attrs.field(default=1000, validator=_int_rule(0))
    """Requests that may wait for a worker; one more raises ``PoolSaturated`` at once."""
    max_in_flight: int = attrs.field(default=1, validator=_COUNT)
    """Requests in flight per worker, for bridges that announce ``multiplex`` (capped by the
    bridge's ``max_concurrency``). 1 is Snakepit's behaviour."""
    stream_credits: int = attrs.field(default=64, validator=_int_rule(1, _MAX_CREDITS))
    """Most chunks a stream may run ahead of its consumer (backpressure). A stream starts with
    at most 8 and grows its window as the consumer keeps up."""
    stream_window: int = attrs.field(default=8 * 1024 * 1024, validator=_COUNT)
    """Bytes a stream may run ahead of its consumer: big chunks get fewer credits, so a slow
    consumer of large chunks keeps memory flat."""
    affinity: Affinity = attrs.field(default="hint", validator=_affinity)
    """Session affinity: prefer the session's worker ("hint"), wait for it ("strict"), or raise
    ``PoolSaturated`` when it is busy ("fail")."""

    # cancellation and shutdown ladder
    cancel_grace: float = attrs.field(default=1.0, validator=_GRACE)
    """How long a cancelled request's worker may take to confirm before it is replaced."""
    shutdown_grace: float = attrs.field(default=2.0, validator=_GRACE)
    """After the graceful close (shutdown frame or stdin EOF), wait this long before SIGTERM."""
    kill_grace: float = attrs.field(default=2.0, validator=_GRACE)
    """After SIGTERM, wait this long before SIGKILL."""
    drain_timeout: float = attrs.field(default=5.0, validator=_SECONDS_OR_ZERO)
    """On close, how long requests in flight may take to finish before the ladder starts."""

    hardened: bool = attrs.field(default=False, validator=_bool)
    """Run each worker under a small nanny process (Linux): a child subreaper with its own
    death signal, so even descendants that escape the process group and ignore signals are
    killed when the worker stops or the pool dies. Costs one small extra process per worker;
    ``WorkerInfo.pid`` and ``rss`` are then the nanny's."""

    # health and recycling
    health_check_interval: float | None = attrs.field(default=30.0, validator=_OPTIONAL_SECONDS)
    """Ping each idle worker this often; None disables health checks."""
    health_check_timeout: float = attrs.field(default=5.0, validator=_POSITIVE_SECONDS)
    heartbeat_interval: float = attrs.field(default=1.0, validator=_POSITIVE_SECONDS)
    """How often a busy worker whose bridge announces ``heartbeat`` says it is alive."""
    heartbeat_timeout: float | None = attrs.field(default=30.0, validator=_OPTIONAL_SECONDS)
    """A busy worker silent this long (stopped, or wedged in C with the bridge's heartbeat
    thread starved) is replaced even while its call runs. None: never."""
    max_requests: int | None = attrs.field(default=None, validator=_OPTIONAL_COUNT)
    """Recycle a worker after this many requests."""
    max_lifetime: float | None = attrs.field(default=None, validator=_OPTIONAL_SECONDS)
    """Recycle a worker after this many seconds."""
    max_memory: int | None = attrs.field(default=None, validator=_OPTIONAL_COUNT)
    """Recycle a worker whose resident memory exceeds this many bytes."""
    restart_backoff: float = attrs.field(default=0.05, validator=_SECONDS_OR_ZERO)
    """First delay before restarting a crashed worker; doubles per crash, with jitter."""
    restart_backoff_max: float = attrs.field(default=5.0, validator=_SECONDS_OR_ZERO)
    max_restarts: int = attrs.field(default=10, validator=_COUNT)
    """Crash breaker: more crashes than this within ``restart_window`` stop the worker slot."""
    restart_window: float = attrs.field(default=60.0, validator=_POSITIVE_SECONDS)

    # sessions
    session_ttl: float = attrs.field(default=3600.0, validator=_POSITIVE_SECONDS)
    session_cleanup_interval: float = attrs.field(default=60.0, validator=_POSITIVE_SECONDS)
    max_sessions: int | None = attrs.field(default=None, validator=_OPTIONAL_COUNT)

    # wire
    max_containers: int = attrs.field(default=DEFAULT_MAX_CONTAINERS, validator=_COUNT)
    """Most maps, arrays (and MessagePack ext values) one frame from a worker may decode to;
    past it the frame is a ``ProtocolError`` (docs/protocol.md: the worst-case memory per
    frame). Raise it for workers that legitimately send more."""
    max_frame_size: int = attrs.field(
        default=DEFAULT_MAX_FRAME_SIZE, validator=_int_rule(MIN_FRAME_SIZE, MAX_FRAME_SIZE)
    )
    """Largest frame either side may send or accept, from ``MIN_FRAME_SIZE`` (4 KiB) to
    ``MAX_FRAME_SIZE`` (what the 4-byte length prefix carries)."""
    stderr_tail_bytes: int = attrs.field(default=16384, validator=_COUNT)
    """How much of each worker's recent stderr is kept for error messages."""
