"""Names shared by both ends of the wire. Import-light: the bridge reads these at start-up."""

from __future__ import annotations

import math
import time

TYPE_CHECKING = False  # no ``typing`` import at run time: it costs the worker ~5 ms to start
if TYPE_CHECKING:
    from typing import Final

# Message "type" values.
PROTOCOL_NEGOTIATION: Final = "protocol_negotiation"
PROTOCOL_SELECTED: Final = "protocol_selected"
CHUNK: Final = "chunk"
CANCEL: Final = "cancel"
CREDIT: Final = "credit"
SHUTDOWN: Final = "shutdown"
HEARTBEAT: Final = "heartbeat"

# Features a bridge may list in ``protocol_selected`` (our extension; v0.3 bridges list none).
FEATURE_STREAM: Final = "stream"  # chunk frames for generator commands
FEATURE_CANCEL: Final = "cancel"  # honours cancel frames and confirms them
FEATURE_CREDIT: Final = "credit"  # stream backpressure through credit frames
FEATURE_MULTIPLEX: Final = "multiplex"  # several requests in flight (see max_concurrency)
FEATURE_SHUTDOWN: Final = "shutdown"  # graceful shutdown frame
FEATURE_HEARTBEAT: Final = "heartbeat"  # sends heartbeat frames
FEATURE_LIFELINE: Final = "lifeline"  # kills its process group when the pool disappears
ALL_FEATURES: Final = frozenset(
    {
        FEATURE_STREAM,
        FEATURE_CANCEL,
        FEATURE_CREDIT,
        FEATURE_MULTIPLEX,
        FEATURE_SHUTDOWN,
        FEATURE_HEARTBEAT,
        FEATURE_LIFELINE,
    }
)

# error_type of the terminal response that confirms a cancel frame.
CANCELLED_ERROR_TYPE: Final = "Cancelled"
# error_type a bridge uses for a command it does not know.
UNSUPPORTED_ERROR_TYPE: Final = "UnsupportedCommand"

# Environment variables a pool sets for the workers it starts.
ENV_LIFELINE_FD: Final = "SNAKEPIT_LIFELINE_FD"
ENV_LIFELINE_GRACE: Final = "SNAKEPIT_LIFELINE_GRACE"
ENV_RUN_ID: Final = "SNAKEPIT_RUN_ID"
# The pool's session TTL in seconds: worker-side per-session state idle longer may be freed.
ENV_SESSION_TTL: Final = "SNAKEPIT_SESSION_TTL"
ENV_WORKER_ID: Final = "SNAKEPIT_WORKER_ID"
# Hardened mode: a pipe on which the nanny's child reports its pid before it runs the worker.
ENV_CHILD_PID_FD: Final = "SNAKEPIT_CHILD_PID_FD"
#: Seconds between heartbeats while busy; the pool sets it, and the bridge announces
#: ``heartbeat`` only then.
ENV_HEARTBEAT_INTERVAL: Final = "SNAKEPIT_HEARTBEAT_INTERVAL"

_last_second = -1
_last_prefix = ""
_last_stamp = ""
# The stamp is reused while time.time() stays in [_valid_from, _valid_until): from the clock
# reading that formatted it to just short of the next millisecond (by 1 us, far more than a
# float's rounding error at today's epoch, so the window never outlasts its millisecond).
_valid_from = 0.0
_valid_until = 0.0


def utc_timestamp() -> str:
    """ISO-8601 UTC timestamp with milliseconds, e.g. ``2026-11-23T18:15:11.123Z``.

    Cheap on the hot path: within a millisecond the same string is returned after two float
    comparisons, and the date and seconds are formatted once per second.
    """
    now = time.time()  # looked up per call, so patching time.time (mock, monkeypatch) still works
    if _valid_from <= now < _valid_until:
        return _last_stamp
    return _new_timestamp(now)


def _new_timestamp(now: float) -> str:
    global _last_second, _last_prefix, _last_stamp, _valid_from, _valid_until
    ms = int(now * 1000)
    second, fraction = divmod(ms, 1000)
    if second != _last_second:
        _last_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = second
    stamp = "%s.%03dZ" % (_last_prefix, fraction)  # noqa: UP031 - faster than f-string here
    until = (ms + 0.999) / 1000
    if int(math.nextafter(until, -math.inf) * 1000) != ms:
        # Past ~2514 a float second is too coarse for the 1 us margin: no reuse window.
        until = now
    # Stamp first, then the window: another thread never pairs this window with an older stamp.
    _last_stamp = stamp
    _valid_until = until
    _valid_from = now
    return stamp
