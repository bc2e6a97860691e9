"""Message classes and the pool-side connection state machine (sans-IO).

The shapes follow Snakepit v0.3.0 exactly where v0.3 defines them (requests, responses,
negotiation) and extend them through ``type``-tagged frames (chunk, cancel, credit, shutdown,
heartbeat). Unknown fields are ignored; an unknown ``type`` is a :class:`ProtocolError`.

This module uses attrs and is meant for the pool side and for tests. The worker-side bridge
works on plain dicts (see ``snakepit_trio_bridge.server``) so that it starts without importing attrs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, TypeAlias, final, overload

import attrs

from .codecs import JSON, Codec
from .constants import (
    CANCEL,
    CANCELLED_ERROR_TYPE,
    CHUNK,
    CREDIT,
    HEARTBEAT,
    PROTOCOL_NEGOTIATION,
    PROTOCOL_SELECTED,
    SHUTDOWN,
    utc_timestamp,
)
from .framing import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, ProtocolError, encode_frame

__all__ = [
    "BridgeEvent",
    "Cancel",
    "ClientConnection",
    "Credit",
    "Heartbeat",
    "PendingFrame",
    "PoolMessage",
    "ProtocolNegotiation",
    "ProtocolSelected",
    "Request",
    "Response",
    "Shutdown",
    "StreamChunk",
    "parse_bridge_message",
    "parse_negotiation_reply",
    "parse_pool_message",
]


def _require(msg: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    try:
        value = msg[key]
    except KeyError:
        raise ProtocolError(f"{what} frame has no {key!r} field") from None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"{what} frame has a {key!r} of type {type(value).__name__}")
    return value


def _request_id(msg: Mapping[str, Any], what: str) -> int:
    value = _require(msg, "id", int, what)
    return int(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seconds(value: Any) -> float | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer beyond float range (JSON allows it)
        return None


def _text(value: Any, key: str) -> str:
    """``value`` as a string. MessagePack nests up to 1023 levels, deeper than the default
    recursion limit, so ``str()`` of a decoded value can raise RecursionError."""
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except RecursionError:
        raise ProtocolError(f"{key!r} field is nested too deeply") from None


# --------------------------------------------------------------------------- negotiation


@attrs.define(frozen=True)
class ProtocolNegotiation:
    """The pool's first frame (always JSON) when the wire is negotiated."""

    supported: tuple[str, ...] = ("msgpack", "json")
    preferred: str = "msgpack"
    # Our extensions: how long the bridge's lifeline waits before killing its process group,
    # and the largest frame the pool accepts. v0.3 bridges ignore both.
    grace: float | None = None
    max_frame_size: int | None = None

    def to_wire(self) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "type": PROTOCOL_NEGOTIATION,
            "supported": list(self.supported),
            "preferred": self.preferred,
        }
        if self.grace is not None:
            msg["grace"] = self.grace
        if self.max_frame_size is not None:
            msg["max_frame_size"] = self.max_frame_size
        return msg


@attrs.define(frozen=True)
class ProtocolSelected:
    """The bridge's answer to negotiation. ``features`` is empty for v0.3 bridges."""

    protocol: str
    features: frozenset[str] = frozenset()
    max_concurrency: int = 1
    info: Mapping[str, Any] = attrs.field(factory=dict)

    def to_wire(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"type": PROTOCOL_SELECTED, "protocol": self.protocol}
        if self.features:
            msg["features"] = sorted(self.features)
            msg["max_concurrency"] = self.max_concurrency
        if self.info:
            msg["info"] = dict(self.info)
        return msg


def parse_negotiation_reply(payload: bytes, supported: Iterable[str]) -> ProtocolSelected | None:
    """Decode the bridge's (JSON) reply to negotiation.

    Returns ``None`` when the reply is not a ``protocol_selected`` frame for a protocol we
    offered: the v0.3 Node bridge answers with an error frame, and then the pool falls back to
    JSON. Raises :class:`ProtocolError` only when the payload is not JSON at all.
    """
    msg = JSON.decode(payload)
    if not isinstance(msg, dict) or msg.get("type") != PROTOCOL_SELECTED:
        return None
    protocol = msg.get("protocol")
    if not isinstance(protocol, str) or protocol not in set(supported):
        return None
    raw_features = msg.get("features")
    features: frozenset[str] = frozenset()
    if isinstance(raw_features, list):
        features = frozenset(f for f in raw_features if isinstance(f, str))
    max_concurrency = msg.get("max_concurrency", 1)
    if not isinstance(max_concurrency, int) or isinstance(max_concurrency, bool):
        max_concurrency = 1
    info = msg.get("info")
    return ProtocolSelected(
        protocol=str(protocol),
        features=features,
        max_concurrency=max(1, max_concurrency),
        info=info if isinstance(info, dict) else {},
    )


# --------------------------------------------------------------------------- pool -> bridge


@attrs.define(frozen=True)
class Request:
    """Run ``command`` with ``args``. ``stream`` asks for chunk frames (our extension)."""

    id: int
    command: str
    args: Mapping[str, Any] = attrs.field(factory=dict)
    timestamp: str = attrs.field(factory=utc_timestamp)
    stream: bool = False
    credits: int | None = None

    def to_wire(self) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "id": self.id,
            "command": self.command,
            "args": self.args,
            "timestamp": self.timestamp,
        }
        if self.stream:
            msg["stream"] = True
        if self.credits is not None:
            msg["credits"] = self.credits
        return msg


@attrs.define(frozen=True)
class Cancel:
    """Stop request ``id``; the bridge confirms with a ``Cancelled`` error response."""

    id: int

    def to_wire(self) -> dict[str, Any]:
        return {"type": CANCEL, "id": self.id}


@attrs.define(frozen=True)
class Credit:
    """Allow the bridge to send ``credits`` more chunks of stream ``id``."""

    id: int
    credits: int

    def to_wire(self) -> dict[str, Any]:
        return {"type": CREDIT, "id": self.id, "credits": self.credits}


@attrs.define(frozen=True)
class Shutdown:
    """Stop taking work, finish what is running, exit."""

    def to_wire(self) -> dict[str, Any]:
        return {"type": SHUTDOWN}


PoolMessage: TypeAlias = "Request | Cancel | Credit | Shutdown | ProtocolNegotiation"


def parse_pool_message(msg: Any) -> PoolMessage:
    """Classify a decoded pool-to-bridge message (used by test bridges and tools)."""
    if not isinstance(msg, dict):
        raise ProtocolError(f"message is a {type(msg).__name__}, not a map")
    kind = msg.get("type")
    if kind is None:
        args = msg.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ProtocolError("request 'args' is not a map")
        credits = msg.get("credits")
        return Request(
            id=_request_id(msg, "request"),
            command=_require(msg, "command", str, "request"),
            args=args,
            timestamp=_text(msg.get("timestamp", ""), "timestamp"),
            stream=bool(msg.get("stream", False)),
            credits=credits if isinstance(credits, int) and not isinstance(credits, bool) else None,
        )
    if kind == CANCEL:
        return Cancel(id=_request_id(msg, "cancel"))
    if kind == CREDIT:
        return Credit(
            id=_request_id(msg, "credit"), credits=_require(msg, "credits", int, "credit")
        )
    if kind == SHUTDOWN:
        return Shutdown()
    if kind == PROTOCOL_NEGOTIATION:
        supported = msg.get("supported", [])
        if not isinstance(supported, list):
            raise ProtocolError("negotiation 'supported' is not a list")
        max_frame_size = msg.get("max_frame_size")
        return ProtocolNegotiation(
            supported=tuple(_text(s, "supported") for s in supported),
            preferred=_text(msg.get("preferred", "json"), "preferred"),
            grace=_seconds(msg.get("grace")),
            max_frame_size=max_frame_size if _is_int(max_frame_size) else None,
        )
    raise ProtocolError(f"unknown message type {kind!r}")


# --------------------------------------------------------------------------- bridge -> pool


# Not frozen: one is built per message on the hot path, and frozen attrs classes cost ~1.5 us
# more to construct. Treat events as read-only all the same.
@attrs.define
class Response:
    """The one terminal outcome of a request (also ends a stream; ``result`` is its final value).

    ``id`` is None when the bridge could not parse the request it answers.
    """

    id: int | None
    success: bool
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    traceback: str | None = None
    timestamp: str | None = None

    @property
    def cancelled(self) -> bool:
        return not self.success and self.error_type == CANCELLED_ERROR_TYPE

    def to_wire(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"id": self.id, "success": self.success}
        if self.success:
            msg["result"] = self.result
        else:
            msg["error"] = self.error if self.error is not None else ""
            if self.error_type is not None:
                msg["error_type"] = self.error_type
            if self.traceback is not None:
                msg["traceback"] = self.traceback
        msg["timestamp"] = self.timestamp if self.timestamp is not None else utc_timestamp()
        return msg


@attrs.define
class StreamChunk:
    """One value of a streaming command; ``seq`` counts from 0 per request."""

    id: int
    seq: int
    data: Any

    def to_wire(self) -> dict[str, Any]:
        return {"type": CHUNK, "id": self.id, "seq": self.seq, "data": self.data}


@attrs.define(frozen=True)
class Heartbeat:
    """Sent by bridges that list the ``heartbeat`` feature."""

    timestamp: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"type": HEARTBEAT, "timestamp": self.timestamp or utc_timestamp()}


BridgeEvent: TypeAlias = "Response | StreamChunk | Heartbeat"


def _optional_str(msg: Mapping[str, Any], key: str) -> str | None:
    value = msg.get(key)
    if value is None:
        return None
    return _text(value, key)


def parse_bridge_message(msg: Any) -> BridgeEvent:
    """Classify a decoded bridge-to-pool message."""
    if not isinstance(msg, dict):
        raise ProtocolError(f"message is a {type(msg).__name__}, not a map")
    kind = msg.get("type")
    if kind is None or "success" in msg:
        success = msg.get("success")
        if not isinstance(success, bool):
            raise ProtocolError("response frame has no boolean 'success' field")
        raw_id = msg.get("id")
        if raw_id is not None and (not isinstance(raw_id, int) or isinstance(raw_id, bool)):
            raise ProtocolError(f"response frame has an 'id' of type {type(raw_id).__name__}")
        if success:
            return Response(
                raw_id, True, msg.get("result"), timestamp=_optional_str(msg, "timestamp")
            )
        error = msg.get("error")
        return Response(
            raw_id,
            False,
            None,
            error="" if error is None else _text(error, "error"),
            error_type=_optional_str(msg, "error_type"),
            traceback=_optional_str(msg, "traceback"),
            timestamp=_optional_str(msg, "timestamp"),
        )
    if kind == CHUNK:
        seq = _require(msg, "seq", int, "chunk")
        return StreamChunk(_request_id(msg, "chunk"), seq, msg.get("data"))
    if kind == HEARTBEAT:
        return Heartbeat(_optional_str(msg, "timestamp"))
    raise ProtocolError(f"unknown message type {kind!r}")


# --------------------------------------------------------------------------- connection


@attrs.define
class _InFlight:
    """The state of a stream, or of a request being cancelled. A plain request in flight has
    none: its entry in ``ClientConnection._in_flight`` is None (no object per request)."""

    stream: bool
    cancelling: bool = False
    next_seq: int = 0


_GONE: Final = _InFlight(False)  # a sentinel: "not in flight" (None means a plain request)
_NOT_DECODED: Final = object()
_NEVER: Final = 1 << 63  # defer_over when nothing is deferred: no payload is this long


@final
class PendingFrame:
    """A frame from the bridge whose payload is too big to decode on the event loop.

    ``ClientConnection.receive_data(data, defer_over=n)`` returns one, as the last item of its
    list, for the first payload over ``n`` bytes; the frames behind it wait in the connection.
    :meth:`decode` does the work and touches nothing but this object, so it may run in a
    thread while the event loop goes on; :meth:`ClientConnection.resume` (on the event loop)
    then turns the result into an event, and decodes the frames that waited behind it.
    """

    __slots__ = ("_decode", "_error", "_message", "_payload", "size")

    def __init__(self, payload: bytes, decode: Callable[[bytes], Any]) -> None:
        self.size: Final = len(payload)  # payload bytes, for the host's accounting
        self._payload = payload
        self._decode = decode
        self._message: Any = _NOT_DECODED
        self._error: ProtocolError | None = None

    def __repr__(self) -> str:
        return f"<PendingFrame of {self.size} bytes>"

    def decode(self) -> None:
        """Decode the payload (pure CPU; call it once, from any one thread). A payload that
        does not decode is not an error here: :meth:`ClientConnection.resume` raises it."""
        if self._message is not _NOT_DECODED or self._error is not None:
            return
        try:
            self._message = self._decode(self._payload)
        except ProtocolError as exc:
            self._error = exc
        self._payload = b""  # the decoded value is all that is needed now

    def _decoded(self) -> Any:
        """The decoded message (decoding it now if :meth:`decode` was not called)."""
        self.decode()
        if self._error is not None:
            raise self._error
        return self._message


class ClientConnection:
    """The pool's side of one worker connection, after negotiation.

    Tracks every request in flight by id and enforces the protocol's promises: each request
    gets exactly one terminal :class:`Response`; chunks belong to a streaming request in
    flight and arrive in sequence; nothing arrives for an id that is not in flight.
    A violation is a :class:`ProtocolError`, after which the connection is unusable.
    """

    def __init__(self, codec: Codec, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.codec: Final = codec
        self.max_frame_size: Final = max_frame_size
        self._decoder = FrameDecoder(max_frame_size)
        # Payloads up to _plain_max bytes (most) take a decoder that does not check their
        # size again; longer ones take codec.decode, whose checked path bounds them.
        self._decode, self._plain_max = codec.plain_decoder()
        # Request id -> None for a plain request (the common case: nothing to track but the
        # id), or the _InFlight of a stream or of a request being cancelled.
        self._in_flight: dict[int, _InFlight | None] = {}
        self._broken: ProtocolError | None = None
        # What receive_data raises at once: _broken, or a RuntimeError while a PendingFrame
        # waits for resume (one check on the hot path for both).
        self._refuse: Exception | None = None
        # A deferred frame (see PendingFrame), the payloads that arrived behind it, the
        # framing error that came after them, and the defer_over in force.
        self._pending: PendingFrame | None = None
        self._queue: list[bytes] = []
        self._queued_error: ProtocolError | None = None
        self._defer_over = _NEVER

    # -- state
    @property
    def in_flight(self) -> frozenset[int]:
        return frozenset(self._in_flight)

    def is_in_flight(self, request_id: int) -> bool:
        return request_id in self._in_flight

    # -- outgoing
    def encode(self, message: Request | Cancel | Credit | Shutdown) -> bytes:
        """Encode without touching state (lets callers validate arguments early)."""
        return encode_frame(self.codec.encode(message.to_wire()), self.max_frame_size)

    def send_request(self, request: Request, frame: bytes | None = None) -> bytes:
        """Register ``request`` as in flight and return its frame (or the pre-encoded one)."""
        self._check_usable()
        if request.id in self._in_flight:
            raise ValueError(f"request id {request.id} is already in flight")
        if frame is None:
            frame = self.encode(request)
        self._in_flight[request.id] = _InFlight(True) if request.stream else None
        return frame

    def start_request(self, request_id: int, stream: bool) -> None:
        """Register a request whose frame the caller encoded itself."""
        if self._broken is not None:
            raise self._broken
        in_flight = self._in_flight
        if request_id in in_flight:
            raise ValueError(f"request id {request_id} is already in flight")
        in_flight[request_id] = _InFlight(True) if stream else None

    def send_cancel(self, request_id: int) -> bytes:
        """Frame asking to cancel ``request_id``; empty when it already finished."""
        state = self._in_flight.get(request_id, _GONE)
        if state is None:
            self._in_flight[request_id] = _InFlight(False, cancelling=True)
        elif state is _GONE or state.cancelling:
            return b""
        else:
            state.cancelling = True
        return self.encode(Cancel(request_id))

    def send_credit(self, request_id: int, credits: int) -> bytes:
        if request_id not in self._in_flight:
            return b""
        return self.encode(Credit(request_id, credits))

    def send_shutdown(self) -> bytes:
        return self.encode(Shutdown())

    # -- incoming
    @overload
    def receive_data(self, data: bytes | bytearray | memoryview) -> list[BridgeEvent]: ...

    @overload
    def receive_data(
        self, data: bytes | bytearray | memoryview, defer_over: int | None
    ) -> list[BridgeEvent | PendingFrame]: ...

    def receive_data(
        self, data: bytes | bytearray | memoryview, defer_over: int | None = None
    ) -> list[Any]:
        """Feed bytes read from the bridge; return the events they completed.

        On a violation it raises :class:`ProtocolError` whose ``events`` are the valid events
        this call completed before it: those requests were answered and are no longer in
        flight. The connection is broken from then on (every later call raises the original
        error, without events).

        ``defer_over``: the first payload longer than this many bytes is not decoded here but
        returned as a :class:`PendingFrame`, always the last item of the list; everything the
        same bytes completed after it waits in the connection (and so does any error they
        hold). Call :meth:`resume` with it before feeding more data. A payload the codec
        decodes about as fast as it copies it (``Codec.decodes_quickly``: MessagePack of a few
        items, such as one big bin) is decoded here whatever its size.
        """
        if self._refuse is not None:
            raise self._refuse
        framing_error: ProtocolError | None = None
        try:
            payloads: Sequence[Any] = self._decoder.feed(data)
        except ProtocolError as exc:
            payloads, framing_error = exc.events, exc
        plain_max = self._plain_max
        if defer_over is None:
            defer_over = _NEVER
        elif defer_over < plain_max:
            plain_max = defer_over
        # The loop of _receive, inlined: this is the hot path (-150 ns a read).
        events: list[Any] = []
        decode = self._decode
        in_flight = self._in_flight
        append = events.append
        try:
            for payload in payloads:
                if len(payload) <= plain_max:
                    msg = decode(payload)
                elif len(payload) > defer_over and not self.codec.decodes_quickly(payload):
                    return self._defer(payload, payloads, framing_error, defer_over, events)
                else:
                    msg = self.codec.decode(payload)
                if type(msg) is dict and msg.get("success") is True:
                    request_id = msg.get("id")
                    timestamp = msg.get("timestamp")
                    if (
                        type(request_id) is int
                        and (timestamp is None or type(timestamp) is str)
                        and in_flight.pop(request_id, _GONE) is not _GONE
                    ):
                        result = msg.get("result")
                        append(Response(request_id, True, result, None, None, None, timestamp))
                        continue
                append(self._track(parse_bridge_message(msg)))
            if framing_error is not None:
                raise framing_error
            return events
        except ProtocolError as exc:
            self._broken = self._refuse = exc
            delivered = ProtocolError(*exc.args)
            delivered.events = tuple(events)
            raise delivered from None

    def resume(self, pending: PendingFrame) -> list[BridgeEvent | PendingFrame]:
        """Turn ``pending`` into its event, then decode the frames that waited behind it.

        Returns like :meth:`receive_data` (the list may end with the next PendingFrame) and
        raises like it: a :class:`ProtocolError` whose ``events`` are what this call
        completed before the violation. ``pending`` is decoded here if :meth:`PendingFrame.decode`
        was not called. Call it on the thread that feeds data (the event loop), like every
        method of the connection but ``PendingFrame.decode``.
        """
        if pending is not self._pending:
            raise ValueError("this is not the PendingFrame the connection is waiting for")
        self._pending = None
        self._refuse = None
        queue, self._queue = self._queue, []
        framing_error, self._queued_error = self._queued_error, None
        events: list[Any] = []
        try:
            events.append(self._track(parse_bridge_message(pending._decoded())))
        except ProtocolError as exc:
            self._broken = self._refuse = exc
            delivered = ProtocolError(*exc.args)
            raise delivered from None
        return self._receive(queue, framing_error, self._defer_over, events)

    def _receive(
        self,
        payloads: Sequence[bytes],
        framing_error: ProtocolError | None,
        defer_over: int,
        events: list[Any],
    ) -> list[Any]:
        """Decode and track ``payloads`` onto ``events``; then raise ``framing_error``."""
        decode = self._decode
        in_flight = self._in_flight
        append = events.append
        plain_max = min(defer_over, self._plain_max)
        try:
            for payload in payloads:
                if len(payload) <= plain_max:
                    msg = decode(payload)
                elif len(payload) > defer_over and not self.codec.decodes_quickly(payload):
                    return self._defer(payload, payloads, framing_error, defer_over, events)
                else:
                    msg = self.codec.decode(payload)
                # Fast path, the common case: a plain successful response to a request in
                # flight. Anything else (or anything odd) takes the general path below, which
                # checks everything and produces the errors.
                if type(msg) is dict and msg.get("success") is True:
                    request_id = msg.get("id")
                    timestamp = msg.get("timestamp")
                    if (
                        type(request_id) is int
                        and (timestamp is None or type(timestamp) is str)
                        and in_flight.pop(request_id, _GONE) is not _GONE
                    ):
                        result = msg.get("result")
                        append(Response(request_id, True, result, None, None, None, timestamp))
                        continue
                append(self._track(parse_bridge_message(msg)))
            if framing_error is not None:
                raise framing_error
            return events
        except ProtocolError as exc:
            self._broken = self._refuse = exc
            delivered = ProtocolError(*exc.args)
            delivered.events = tuple(events)
            raise delivered from None

    def _defer(
        self,
        payload: bytes,
        payloads: Sequence[bytes],
        framing_error: ProtocolError | None,
        defer_over: int,
        events: list[Any],
    ) -> list[Any]:
        """End ``events`` with a PendingFrame for ``payload``, one of ``payloads``; keep the
        ones after it."""
        pending = PendingFrame(payload, self.codec.decode)
        self._pending = pending
        self._refuse = RuntimeError("resume() the PendingFrame before feeding more data")
        # The first payload that is this object: an earlier equal one would have been
        # deferred itself (the same length), so this finds the right place.
        after = next(i for i, item in enumerate(payloads) if item is payload) + 1
        self._queue = list(payloads[after:])
        self._queued_error = framing_error
        self._defer_over = defer_over
        events.append(pending)
        return events

    def receive_eof(self) -> list[int]:
        """The bridge closed its output. Returns the ids that will never be answered.

        Raises :class:`ProtocolError` when the stream ended inside a frame; those ids are
        then left in :attr:`in_flight`. A :class:`PendingFrame` not yet resumed, and the
        frames behind it, are dropped: their requests count as never answered.
        """
        self._pending = None
        self._refuse = self._broken
        self._queue = []
        self._queued_error = None
        try:
            self._decoder.check_eof()
        except ProtocolError as exc:
            self._broken = self._refuse = exc
            raise
        lost = list(self._in_flight)
        self._in_flight.clear()
        return lost

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise self._broken

    def _track(self, event: BridgeEvent) -> BridgeEvent:
        if isinstance(event, Response):
            request_id = event.id
            if request_id is None:
                # v0.3 answers an unparseable request with a null id: attributable only
                # when exactly one request is in flight.
                if len(self._in_flight) != 1:
                    raise ProtocolError(
                        f"response with a null id while {len(self._in_flight)} requests are in flight"
                    )
                (request_id,) = self._in_flight
                event = attrs.evolve(event, id=request_id)
            if self._in_flight.pop(request_id, _GONE) is _GONE:
                raise ProtocolError(f"response for request id {request_id}, which is not in flight")
            return event
        if isinstance(event, StreamChunk):
            state = self._in_flight.get(event.id, _GONE)
            if state is _GONE:
                raise ProtocolError(f"chunk for request id {event.id}, which is not in flight")
            if state is None or not state.stream:
                raise ProtocolError(f"chunk for request id {event.id}, which is not a stream")
            if event.seq != state.next_seq:
                raise ProtocolError(
                    f"chunk {event.seq} of request {event.id} arrived, expected {state.next_seq}"
                )
            state.next_seq += 1
            return event
        return event
