"""The seam between a worker slot and the way its worker is reached.

A ``Slot`` (``_slot.py``) supervises one worker: it restarts it, tracks its calls, times
cancels out, recycles and takes it down. A ``Transport`` moves one worker's requests and
answers, for the life of one process or connection: ``StdioTransport`` (``_stdio.py``) speaks
frames over pipes to a local process, ``GrpcTransport`` (``_grpc.py``) gRPC calls to a local
bridge server. A transport never imports the slot or the pool: it tells its slot what happened
through the ``EventSink`` it is given.

Adding a transport means one new module: a class with the methods of ``Transport``, and an
adapter whose ``transport(context)`` returns it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs
from snakepit_trio_bridge.protocol import codecs, constants
from snakepit_trio_bridge.protocol.framing import ProtocolError as WireProtocolError
from snakepit_trio_bridge.protocol.framing import encode_frame
from snakepit_trio_bridge.protocol.messages import Response, StreamChunk

from ._errors import ProtocolError

if TYPE_CHECKING:
    from ._backend import Backend
    from ._config import PoolConfig

__all__ = [
    "EventSink",
    "Handshake",
    "StartFailed",
    "Transport",
    "TransportContext",
    "encode_request",
]

# Credits a stream starts with, before the pool knows how big its chunks are.
INITIAL_STREAM_CREDITS = 8


class StartFailed(Exception):
    """A worker could not be started or did not complete its handshake; the message says why."""


@attrs.frozen
class Handshake:
    """What a worker told its slot at start: its codec's name and its features."""

    protocol: str
    features: frozenset[str]
    max_concurrency: int = 1


@attrs.frozen(eq=False)
class TransportContext:
    """What a transport is given by its slot."""

    slot_id: int
    run_id: str
    config: PoolConfig
    backend: Backend
    next_id: Callable[[], int]
    """Request ids, unique in the pool (the init command takes one)."""
    shared: dict[str, Any]
    """Per-pool state shared by every transport of the pool (the gRPC loop thread)."""


class CallLike(Protocol):
    """What a transport sees of a call: its id, whether it streams, its frame."""

    id: int
    stream: bool


class EventSink(Protocol):
    """How a transport tells its slot what arrived and when its peer ended."""

    @property
    def serving(self) -> bool:
        """The handshake is over and answers are being routed."""

    def response(self, event: Response) -> None: ...

    def chunk(self, event: StreamChunk, size: float) -> None:
        """A stream's chunk; ``size`` estimates its bytes on the wire (for credits)."""

    def heartbeat(self) -> None: ...

    def ended(self, reason: str) -> None:
        """The peer is gone or stopped talking; the slot takes the worker down."""

    def protocol_error(self, error: WireProtocolError, delivered: list[Any]) -> None:
        """The peer broke the protocol; ``delivered`` completed before the violation."""


class Transport(Protocol):
    """One worker, reached one way, for the life of one process or connection.

    Every method may assume the previous step succeeded; ``close`` is always called last,
    shielded, whatever happened. ``watch`` runs from ``start`` to ``close``.
    """

    @property
    def codec(self) -> codecs.Codec:
        """The codec the pool encodes this worker's requests with (after the handshake)."""

    @property
    def pid(self) -> int | None:
        """The local process the transport started, if any."""

    @property
    def worker_pid(self) -> int | None:
        """The process that runs the handler (not a nanny in front of it), if known."""

    @property
    def node(self) -> str:
        """Where the worker runs: a host name."""

    @property
    def started_at(self) -> float:
        """``time.monotonic()`` when it started."""

    @property
    def phase(self) -> str:
        """What the handshake is doing now, for error messages ("protocol negotiation")."""

    def rss(self) -> int | None: ...

    async def start(self) -> None:
        """Spawn the process or connect; raise ``StartFailed``."""

    async def watch(self, sink: EventSink) -> None:
        """Liveness, for the transport's whole life: tell ``sink.ended`` when the peer is
        gone (a local process's exit, watched directly, never inferred from EOF alone)."""

    async def handshake(self) -> Handshake:
        """Negotiate and run the adapter's init command; raise ``StartFailed``. The slot
        bounds it with ``worker_init_timeout``."""

    async def serve(self, sink: EventSink, capacity: int) -> None:
        """Carry answers to ``sink`` until the peer ends (then tell ``sink.ended``)."""

    def open_call(self, call: Any, frame: bytes) -> None:
        """Register a call whose frame is sent next (no await)."""

    def send_nowait(self, frame: bytes) -> bool:
        """Send ``frame`` now if that needs no wait; False: ``await send(frame)``."""

    async def send(self, frame: bytes) -> None:
        """Send ``frame``; a dead peer is not an error here (``watch`` reports it)."""

    async def cancel(self, call: Any) -> bool:
        """Ask the worker to stop ``call``; False if there is nothing to cancel."""

    def grant(self, call: Any, credits: int) -> None:
        """Let the worker send ``credits`` more chunks of ``call`` (no await)."""

    async def close(self, *, planned: bool) -> str:
        """Take the worker down: graceful when ``planned``, then SIGTERM, then SIGKILL
        (what applies to this transport). Bounded; returns the step that ended it."""

    def exit_status(self) -> tuple[int | None, int | None]:
        """The process's exit code and signal, once it has ended (else None, None)."""

    def stderr_tail(self) -> str: ...


def encode_request(
    codec: codecs.Codec,
    request_id: int,
    command: str,
    args: Mapping[str, Any],
    *,
    stream: bool = False,
    credits: int = INITIAL_STREAM_CREDITS,
    max_frame_size: int,
) -> bytes:
    """A request frame, as the pool and every transport build it."""
    message: dict[str, Any] = {
        "id": request_id,
        "command": command,
        "args": args,
        "timestamp": constants.utc_timestamp(),
    }
    if stream:
        message["stream"] = True
        message["credits"] = credits
    try:
        payload = codec.encode(message)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(
            f"the arguments of {command!r} cannot be sent as {codec.name}: {exc}"
        ) from exc
    try:
        return encode_frame(payload, max_frame_size)
    except WireProtocolError as exc:
        raise ProtocolError(f"request {command!r} is too large: {exc}") from None
