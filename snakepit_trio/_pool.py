"""The pool: ``open_pool``, dispatch, queueing, session affinity, streams and stats.

Dispatch keeps idle workers on a LIFO stack and waiting callers in a FIFO queue. A finished
request hands its worker straight to the oldest waiter, so a queued call costs one wake-up.
Everything here runs in the event loop's thread; nothing in it blocks.

Every public async function is a checkpoint, failures included: a call that fails fast (a bad
argument, a closed pool, a full queue) takes a full checkpoint before it raises, as trio's own
functions do, so a call made in a cancelled scope raises ``Cancelled`` rather than the error.
Only the failure branches pay for that pass through the scheduler; a call that succeeds takes
the same awaits as before.
"""

from __future__ import annotations

import heapq
import inspect
import itertools
import logging
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final, NoReturn, TypeVar, cast, final

import anyio
import anyio.abc
import anyio.lowlevel
from snakepit_trio_bridge.protocol import codecs, constants
from snakepit_trio_bridge.protocol.framing import HEADER_SIZE, encode_frame
from snakepit_trio_bridge.protocol.framing import ProtocolError as WireProtocolError

from . import _telemetry as tm
from ._adapters import Adapter
from ._backend import Waitable, current_backend
from ._config import MAX_POOL_SIZE, PoolConfig, validate_size
from ._errors import (
    CommandError,
    PoolClosed,
    PoolSaturated,
    ProtocolError,
    QueueTimeout,
    SessionError,
    SnakepitError,
    UnsupportedCommand,
    WorkerTimeout,
)
from ._orphans import kill_run, new_run_id
from ._sessions import SessionStore, validate_session_id
from ._slot import Call, Slot, WorkerInfo, startup_failure
from ._transport import INITIAL_STREAM_CREDITS, TransportContext, encode_request

__all__ = ["ChunkStream", "Pool", "open_pool"]

logger = logging.getLogger("snakepit_trio")
logger.addHandler(logging.NullHandler())

_T = TypeVar("_T")
_UNKNOWN_COMMAND_PREFIXES: Final = ("unknown command", "unsupported command")


class _Waiter:
    """A caller waiting for a worker. Small on purpose: 10,000 of them may be queued."""

    __slots__ = ("done", "error", "event", "prefer", "started", "worker")

    def __init__(self, prefer: Slot | None, event: Waitable, started: float) -> None:
        self.prefer = prefer
        self.event = event
        self.started = started
        self.worker: Slot | None = None
        self.error: SnakepitError | None = None
        self.done = False  # handed a worker, timed out, or failed


class _Stats:
    __slots__ = (
        "cancelled",
        "errors",
        "pool_saturated",
        "queue_timeouts",
        "requests",
        "timeouts",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.timeouts = 0
        self.cancelled = 0
        self.queue_timeouts = 0
        self.pool_saturated = 0


def _response_error(response: Any) -> SnakepitError:
    message = response.error or "command failed"
    error_type = response.error_type
    if error_type == constants.UNSUPPORTED_ERROR_TYPE or (
        error_type is None and message.lower().startswith(_UNKNOWN_COMMAND_PREFIXES)
    ):
        return UnsupportedCommand(message)
    return CommandError(message, error_type, response.traceback)


class _NoPublicConstructor(type):
    """Instances come from the library (``open_pool``, ``pool.stream``), as in trio."""

    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} has no public constructor")

    def _create(cls: type[_T], *args: Any, **kwargs: Any) -> _T:
        return cast(_T, type.__call__(cls, *args, **kwargs))


@final
class ChunkStream(metaclass=_NoPublicConstructor):
    """The chunks of one streaming call, as an async iterator.

    Use it only inside its ``async with pool.stream(...)`` block. After the iteration ends,
    ``result`` holds the stream's final value (the generator's return value).
    """

    result: Any
    """The stream's final value, once the iteration has ended (None until then)."""
    count: int
    """Chunks the iteration has returned so far."""
    _call: Call
    _worker: Slot
    _new_event: Callable[[], Waitable]
    _checkpoint: Callable[[], Awaitable[None]]
    _max_credits: int | None
    _window: int
    _granted: int

    @classmethod
    def _open(
        cls,
        call: Call,
        worker: Slot,
        credits: int | None,
        window: int,
        new_event: Callable[[], Waitable],
        checkpoint: Callable[[], Awaitable[None]],
    ) -> ChunkStream:
        # Not __init__: its parameters would put the pool's internals (Call, Slot) on the
        # public surface, and the class has no public constructor anyway.
        self = object.__new__(cls)
        self._call = call
        self._worker = worker
        self._new_event = new_event
        self._checkpoint = checkpoint
        self._max_credits = credits  # None: the transport does its own flow control
        self._window = window
        self._granted = min(credits, INITIAL_STREAM_CREDITS) if credits is not None else 0
        self.result = None
        self.count = 0
        return self

    def _grant(self) -> None:
        """Keep the stream's allowance near its window: fewer credits for bigger chunks."""
        assert self._max_credits is not None
        call = self._call
        allowed = self._max_credits
        if call.chunks_in:
            average = call.bytes_in / call.chunks_in
            allowed = max(1, min(allowed, int(self._window // max(average, 1.0))))
        outstanding = self._granted - self.count
        if outstanding * 2 <= allowed:
            self._granted += allowed - outstanding
            self._worker.grant_credit(call, allowed - outstanding)

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> Any:
        call = self._call
        chunks = call.chunks
        assert chunks is not None
        while True:
            if call.timed_out:
                await self._checkpoint()  # an error is raised after a checkpoint (module doc)
                raise WorkerTimeout(f"stream {call.command!r} ran past its timeout")
            if chunks:
                item = chunks.popleft()
                self.count += 1
                if self._max_credits is not None:
                    self._grant()
                return item
            if call.done:
                if call.error is not None:
                    await self._checkpoint()
                    raise call.error
                response = call.response
                assert response is not None
                if not response.success:
                    await self._checkpoint()
                    raise _response_error(response)
                self.result = response.result
                raise StopAsyncIteration
            call.chunk_event = self._new_event()
            await call.chunk_event.wait()


@final
class Pool(metaclass=_NoPublicConstructor):
    """A running pool; get one from ``open_pool``."""

    adapter: Adapter
    """How its workers are started and spoken to."""
    size: int
    """How many worker slots it keeps."""
    config: PoolConfig
    """Its settings."""
    run_id: str
    """Carried by every worker it starts (``SNAKEPIT_RUN_ID``): how leftovers are found."""
    telemetry: tm.Telemetry
    """Its event hub: ``pool.telemetry.add_listener(fn)``."""
    sessions: SessionStore
    """Its sessions and programs."""

    def __init__(self, adapter: Adapter, size: int, config: PoolConfig) -> None:
        self.adapter = adapter
        self.size = size
        self.config = config
        self.run_id = new_run_id()
        self.telemetry = tm.Telemetry()
        self.sessions = SessionStore(
            default_ttl=config.session_ttl,
            max_sessions=config.max_sessions,
            clock=anyio.current_time,
        )
        self._workers: list[Slot] = []  # made at start, on the running backend
        # Per-pool state the transports share (the gRPC loop thread), and how to release it.
        self._shared: dict[str, Any] = {}
        self._idle: list[Slot] = []
        self._waiters: deque[_Waiter] = deque()
        self._queued = 0
        self._stats = _Stats()
        # Whether _release must check the recycling limits after each request.
        self._recycle_limits = config.max_requests is not None or config.max_memory is not None
        self._ids = itertools.count(1)
        self._closing = False
        self._closed = anyio.Event()
        self._codec: codecs.Codec = codecs.get_codec("json")
        self._features: frozenset[str] = frozenset()
        self._tg: anyio.abc.TaskGroup | None = None
        self._task_scopes: list[anyio.CancelScope] = []
        self._new_event: Callable[[], Waitable] = anyio.Event
        # The backend's own clock and cancellation check, bound at start (anyio looks the
        # backend up on every call).
        self._now: Callable[[], float] = anyio.current_time
        self._checkpoint_if_cancelled: Callable[[], Awaitable[None]] = (
            anyio.lowlevel.checkpoint_if_cancelled
        )
        self._checkpoint: Callable[[], Awaitable[None]] = anyio.lowlevel.checkpoint
        # What the slots call (SlotOwner), apart from the pool's public surface.
        self._owner = _SlotOwnerView(self)
        # Deadlines of calls in flight: one watcher task instead of a cancel scope per call.
        self._deadlines: list[tuple[float, int, Call | _Waiter]] = []
        self._seq = itertools.count()
        self._deadline_target = math.inf
        self._deadline_wakeup: Waitable = anyio.Event()

    def __repr__(self) -> str:
        return f"<Pool {self.adapter.name} size={self.size} run_id={self.run_id}>"

    # ------------------------------------------------------------------ public API
    async def execute(
        self, command: str, args: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Run ``command`` on a free worker and return its result.

        ``timeout`` bounds the whole call, queue wait included (default: the adapter's
        ``command_timeout`` hook, else ``PoolConfig.command_timeout``). If the call is
        cancelled after its request was sent, the command may have run in part.
        """
        return await self._execute(command, args, timeout, None)

    async def execute_in_session(
        self,
        session_id: str,
        command: str,
        args: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Like ``execute``, on the worker that served ``session_id`` last when possible.

        The session is created on first use; ``args["session_id"]`` is set for the bridge.
        """
        try:
            session_id = validate_session_id(session_id)
        except SessionError:
            await self._checkpoint()
            raise
        return await self._execute(command, args, timeout, session_id)

    @asynccontextmanager
    async def stream(
        self,
        command: str,
        args: Mapping[str, Any] | None = None,
        *,
        session_id: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[ChunkStream]:
        """Run a streaming command; iterate the chunks inside the block.

        Leaving the block before the stream ends (break, exception, cancellation) closes it
        gracefully: the bridge is sent a cancel, closes the generator (its ``finally`` runs)
        and the worker returns to the pool. ``timeout`` bounds the stream: at its deadline the
        worker-side stream is cancelled and the next iteration raises ``WorkerTimeout``.
        """
        try:
            if session_id is not None:
                validate_session_id(session_id)
            if constants.FEATURE_STREAM not in self._features:
                raise UnsupportedCommand(
                    f"{self.adapter.name} does not support streaming over this transport "
                    f"(its bridge does not announce the {constants.FEATURE_STREAM!r} feature)"
                )
            if timeout is None:
                timeout = self.config.stream_timeout
            if timeout is not None:
                timeout = _checked_timeout(timeout, command)
        except Exception:
            await self._checkpoint()  # fail fast, after a checkpoint (module doc)
            raise
        if timeout is not None and timeout <= 0:
            await self._checkpoint()
            self._expired(None, command, timeout)
        deadline = anyio.current_time() + timeout if timeout is not None else float("inf")
        worker, call, frame, session = await self._dispatch(
            command, args, session_id, deadline, stream=True
        )
        credits = (
            self.config.stream_credits if constants.FEATURE_CREDIT in worker.features else None
        )
        chunks = ChunkStream._open(
            call, worker, credits, self.config.stream_window, self._new_event, self._checkpoint
        )
        outcome: tm.Outcome = "error"
        # The deadline is the pool's to enforce, never a cancel scope around the block: the
        # block may be an async generator's body (a web response), which cannot hold one
        # across its yields. At the deadline the watcher cancels the stream in the worker
        # and the next iteration raises WorkerTimeout.
        if deadline != math.inf:
            self._arm_deadline(call, deadline)
        try:
            await worker.send(frame)
            yield chunks
            outcome = (
                "timeout"
                if call.timed_out
                else "ok"
                if call.done
                and call.error is None
                and call.response is not None
                and call.response.success
                else "cancelled"
            )
        except BaseException:
            if call.timed_out:
                outcome = "timeout"
            elif not call.done:
                outcome = "cancelled"
            raise
        finally:
            if not call.done:
                worker.abandon(call, f"stream {command!r} closed early")
            self._record(call, worker, outcome, session)

    async def execute_stream(
        self,
        command: str,
        args: Mapping[str, Any] | None,
        callback: Callable[[Any], Awaitable[object] | object],
        *,
        timeout: float | None = None,
    ) -> Any:
        """Run a streaming command, calling ``callback`` (sync or async) on each chunk.

        Returns the stream's final value.
        """
        return await self._stream_to_callback(command, args, callback, None, timeout)

    async def execute_in_session_stream(
        self,
        session_id: str,
        command: str,
        args: Mapping[str, Any] | None,
        callback: Callable[[Any], Awaitable[object] | object],
        *,
        timeout: float | None = None,
    ) -> Any:
        """``execute_stream`` with session affinity."""
        return await self._stream_to_callback(command, args, callback, session_id, timeout)

    def stats(self) -> dict[str, int]:
        """Counters and gauges; see the README for each key."""
        live = [w for w in self._workers if w.alive]
        s = self._stats
        return {
            "workers": len(live),
            "available": sum(1 for w in live if w.state == "idle"),
            "busy": sum(1 for w in live if w.state == "busy"),
            "cancelling": sum(1 for w in live if w.state == "cancelling"),
            "starting": sum(1 for w in self._workers if w.state == "starting"),
            "requests": s.requests,
            "successes": s.requests - s.errors,
            "errors": s.errors,
            "timeouts": s.timeouts,
            "cancelled": s.cancelled,
            "queued": self._queued,
            "queue_timeouts": s.queue_timeouts,
            "pool_saturated": s.pool_saturated,
            "restarts": sum(w.restarts for w in self._workers),
            "sessions": len(self.sessions),
        }

    def workers(self) -> list[WorkerInfo]:
        """A snapshot of every worker slot."""
        return [w.info() for w in self._workers]

    @property
    def features(self) -> frozenset[str]:
        """The protocol features the pool's bridges announced."""
        return self._features

    @property
    def closed(self) -> bool:
        """The pool is closing or closed (the same as ``closing``)."""
        return self._closing

    @property
    def closing(self) -> bool:
        """The pool is closing or closed (slots do not restart)."""
        return self._closing

    async def aclose(self) -> None:
        """Close the pool now: queued calls get ``PoolClosed``, calls in flight may finish
        within ``drain_timeout``, then every worker goes down the ladder. Idempotent.

        A cancelled caller still closes the pool completely, then gets its ``Cancelled``.
        """
        with anyio.CancelScope(shield=True):
            await self._shutdown()
        await self._checkpoint()

    # ------------------------------------------------------------------ calls
    def _next_id(self) -> int:
        return next(self._ids)

    def _encode_request(
        self, codec: codecs.Codec, request_id: int, command: str, args: Any, stream: bool
    ) -> bytes:
        return encode_request(
            codec,
            request_id,
            command,
            args,
            stream=stream,
            credits=min(self.config.stream_credits, INITIAL_STREAM_CREDITS),
            max_frame_size=self.config.max_frame_size,
        )

    def _prepare(
        self, command: str, args: Mapping[str, Any] | None, session_id: str | None, stream: bool
    ) -> tuple[int, bytes, Slot | None, codecs.Codec]:
        """Validate and encode at the call site: the request id, its frame, the preferred
        worker (the session's last one), the codec the frame is in. A queued call keeps only
        its frame."""
        if self._closing:
            raise PoolClosed("the pool is closed")
        if not isinstance(command, str) or not command:
            raise TypeError(f"command must be a non-empty str, not {command!r}")
        adapter = self.adapter
        if args is None:
            call_args: dict[str, Any] = {}
        elif isinstance(args, Mapping):
            call_args = dict(args)
        else:
            raise TypeError(
                f"the arguments of {command!r} must be a mapping (a dict), not "
                f"{type(args).__name__}"
            )
        adapter.validate_command(command, call_args)
        call_args = adapter.prepare_args(command, call_args)
        prefer: Slot | None = None
        if session_id is not None:
            call_args["session_id"] = session_id
            session = self.sessions.get_session(session_id) or self.sessions.create_session(
                session_id
            )
            if session.last_worker_id is not None:
                prefer = self._workers[session.last_worker_id]
        request_id = next(self._ids)
        codec = self._codec  # _worker_ready may replace self._codec while the call is queued
        return (
            request_id,
            self._encode_request(codec, request_id, command, call_args, stream),
            prefer,
            codec,
        )

    async def _wait_for_worker(self, prefer: Slot | None, command: str, deadline: float) -> Slot:
        """Queue the caller (FIFO) until a worker is handed to it, or it times out."""
        try:
            waiter = self._enqueue(prefer, command, deadline)
        except Exception:  # rejected at once (a full queue, no worker left): still checkpoint
            await self._checkpoint()
            raise
        while True:
            try:
                await waiter.event.wait()
            except BaseException:
                self._leave_queue(waiter)
                raise
            worker = self._queue_outcome(waiter, command)
            if worker.alive:
                return worker
            # It died between the hand-off and this wake-up; nothing was sent. The caller
            # keeps its place (the front) and its queue deadline; a closing pool, which has
            # already failed its queue (_fail_waiters), does not take it back.
            if self._closing:
                raise PoolClosed("the pool closed before this request could run")
            if self.config.affinity == "fail" and prefer is not None and prefer.free <= 0:
                prefer = None  # it was queued, not rejected: its busy worker does not reject it now
            retry = self._take_now(prefer, command)
            if retry is not None:
                return retry
            waiter = self._enqueue(prefer, command, deadline, queued_since=waiter.started)

    def _begin(
        self,
        worker: Slot,
        request_id: int,
        command: str,
        frame: bytes,
        stream: bool,
        session_id: str | None,
        codec: codecs.Codec,
    ) -> tuple[Call, bytes]:
        """Register the call on the worker it was given; returns it and the frame to send."""
        if session_id is not None:
            current = self.sessions.get_session(session_id)
            if current is not None:
                current.last_worker_id = worker.id
        worker_codec = worker.codec
        if worker_codec is not codec and worker_codec.name != codec.name:
            # Rare: a worker that negotiated differently. What that codec cannot carry is the
            # caller's error, as at the call site, and the worker goes back to the pool.
            try:
                frame = encode_frame(
                    worker_codec.encode(codec.decode(frame[HEADER_SIZE:])),
                    self.config.max_frame_size,
                )
            except (TypeError, ValueError, OverflowError) as exc:
                self._slot_released(worker)
                raise TypeError(
                    f"the arguments of {command!r} cannot be sent as {worker_codec.name}: {exc}"
                ) from exc
            except WireProtocolError as exc:
                self._slot_released(worker)
                raise ProtocolError(f"request {command!r} is too large: {exc}") from None
        return worker.begin(request_id, command, frame, stream), frame

    async def _dispatch(
        self,
        command: str,
        args: Mapping[str, Any] | None,
        session_id: str | None,
        deadline: float,
        *,
        stream: bool,
    ) -> tuple[Slot, Call, bytes, str | None]:
        """Validate and encode at the call site, wait for a worker, register the call.

        Starts with a full checkpoint, where ``execute`` only checks for cancellation: a
        stream's enter may find a free worker and send without ever yielding, and a public
        async call must yield, whether it fails fast or not (one scheduler pass per stream)."""
        await self._checkpoint()
        request_id, frame, prefer, codec = self._prepare(command, args, session_id, stream)
        worker = self._take_now(prefer, command)
        if worker is None:
            worker = await self._wait_for_worker(prefer, command, deadline)
            if self._now() >= deadline:
                self._expired(worker, command, None)
        call, frame = self._begin(worker, request_id, command, frame, stream, session_id, codec)
        return worker, call, frame, session_id

    def _expired(self, worker: Slot | None, command: str, timeout: float | None) -> NoReturn:
        """The call's deadline passed before its request was sent: send nothing, hand the
        worker it was given to the next caller."""
        if worker is not None:
            self._slot_released(worker)
        # Nothing ran: a rejection, as a queue timeout is (stats, telemetry, the error).
        self._stats.queue_timeouts += 1
        self._reject(command, "queue_timeout", 0.0)
        after = "" if timeout is None else f" (timeout={timeout} s)"
        raise QueueTimeout(f"{command!r} was not sent: its deadline had passed{after}")

    async def _execute(
        self,
        command: str,
        args: Mapping[str, Any] | None,
        timeout: float | None,
        session_id: str | None,
    ) -> Any:
        # The hot path: _dispatch inlined (one coroutine less per request). A failure before
        # the first wait checkpoints, then raises (module doc); the try blocks cost nothing
        # when nothing is raised.
        adapter = self.adapter
        if timeout is None:
            try:
                timeout = adapter.command_timeout(command, args or {})
            except Exception:
                await self._checkpoint()
                raise
            if timeout is None:
                timeout = self.config.command_timeout
        if type(timeout) is not float or not timeout > 0:  # also catches NaN
            try:
                timeout = _checked_timeout(timeout, command)
            except Exception:
                await self._checkpoint()
                raise
            if timeout <= 0:
                await self._checkpoint()
                self._expired(None, command, timeout)
        deadline = self._now() + timeout
        await self._checkpoint_if_cancelled()
        try:
            request_id, frame, prefer, codec = self._prepare(command, args, session_id, False)
            worker = self._take_now(prefer, command)
        except Exception:
            await self._checkpoint()
            raise
        if worker is None:
            worker = await self._wait_for_worker(prefer, command, deadline)
            if self._now() >= deadline:
                self._expired(worker, command, timeout)
        try:
            call, frame = self._begin(worker, request_id, command, frame, False, session_id, codec)
        except Exception:  # a frame its worker's codec cannot carry (rare): still checkpoint
            await self._checkpoint()
            raise
        self._arm_deadline(call, deadline)
        try:
            if not worker.send_nowait(frame):
                await worker.send(frame)
            await call.event.wait()
        except BaseException:
            if not call.done and not call.timed_out:
                worker.abandon(call, f"request {command!r} was cancelled")
                self._record(call, worker, "cancelled", session_id)
                raise
            # Cancelled just as the answer arrived: the answer wins; the cancel stays pending
            # and is delivered at the caller's next checkpoint.
        response = call.response
        if response is not None and response.success and not call.timed_out:
            self._stats.requests += 1
            if self.telemetry._listeners:
                self._emit_completed(call, worker, "ok", session_id)
            return adapter.process_response(command, response.result)
        if call.timed_out:
            self._record(call, worker, "timeout", session_id)
            raise WorkerTimeout(f"{command!r} did not finish within {timeout} s")
        if call.error is not None:
            self._record(call, worker, "crashed", session_id)
            raise call.error
        assert response is not None
        self._record(call, worker, "error", session_id)
        raise _response_error(response)

    def _arm_deadline(self, entry: Call | _Waiter, deadline: float) -> None:
        """Have the watcher time ``entry`` out at ``deadline`` (no cancel scope per call)."""
        heap = self._deadlines
        # Calls finish roughly in deadline order, so finished ones are usually on top.
        while heap and heap[0][2].done:
            heapq.heappop(heap)
        heapq.heappush(heap, (deadline, next(self._seq), entry))
        if len(heap) > 4096 and len(heap) > 4 * (self._queued + sum(w.load for w in self._workers)):
            self._deadlines = heap = [entry for entry in heap if not entry[2].done]
            heapq.heapify(heap)
        if deadline < self._deadline_target:
            self._deadline_wakeup.set()

    async def _deadline_loop(self) -> None:
        while True:
            heap = self._deadlines
            now = anyio.current_time()
            while heap and (heap[0][2].done or heap[0][0] <= now):
                entry = heapq.heappop(heap)[2]
                if entry.done:
                    continue
                if isinstance(entry, _Waiter):  # still queued: a queue timeout
                    entry.done = True
                    self._queued -= 1
                    self._compact_waiters()
                    entry.event.set()
                elif not entry.timed_out and not entry.abandoned:
                    entry.timed_out = True
                    entry.worker.abandon(entry, f"request {entry.command!r} timed out")
                    entry.event.set()
                    if entry.chunk_event is not None:  # a stream's consumer waits on this
                        entry.chunk_event.set()
            self._deadline_target = heap[0][0] if heap else math.inf
            self._deadline_wakeup = wakeup = self._new_event()
            with anyio.move_on_at(self._deadline_target):
                await wakeup.wait()

    def _record(self, call: Call, worker: Slot, outcome: tm.Outcome, session: str | None) -> None:
        s = self._stats
        if outcome == "cancelled":
            s.cancelled += 1
        else:
            s.requests += 1
            if outcome != "ok":
                s.errors += 1
                if outcome == "timeout":
                    s.timeouts += 1
        if self.telemetry._listeners:
            self._emit_completed(call, worker, outcome, session)

    def _emit_completed(
        self, call: Call, worker: Slot, outcome: tm.Outcome, session: str | None
    ) -> None:
        self.telemetry.emit(
            tm.RequestCompleted(
                call.command, worker.id, time.monotonic() - call.started, outcome, session
            )
        )

    async def _stream_to_callback(
        self,
        command: str,
        args: Mapping[str, Any] | None,
        callback: Callable[[Any], Awaitable[object] | object],
        session_id: str | None,
        timeout: float | None,
    ) -> Any:
        async with self.stream(command, args, session_id=session_id, timeout=timeout) as chunks:
            async for chunk in chunks:
                result = callback(chunk)
                if inspect.isawaitable(result):
                    await result
        return chunks.result

    # ------------------------------------------------------------------ dispatch
    def _take(self, worker: Slot) -> None:
        worker.free -= 1
        if worker.free == 0:
            idle = self._idle
            if idle and idle[-1] is worker:
                idle.pop()
            else:
                idle.remove(worker)

    def _take_now(self, prefer: Slot | None, command: str) -> Slot | None:
        if prefer is not None and prefer.alive and not prefer.draining:
            if prefer.free > 0:
                self._take(prefer)
                return prefer
            mode = self.config.affinity
            if mode == "fail":
                self._stats.pool_saturated += 1
                self._reject(command, "saturated", 0.0)
                raise PoolSaturated(f"the session's worker {prefer.id} is busy (affinity='fail')")
            if mode == "strict":
                return None
        idle = self._idle
        if idle:
            worker = idle[-1]
            if worker.capacity > 1 and len(idle) > 1:
                # Several in flight per worker: spread the load (the least busy worker), or
                # one worker would take every request while the others sit idle. This is
                # max(idle, key=lambda w: w.free) (the first of equals) without a call per worker.
                worker = idle[0]
                most = worker.free
                for other in idle:
                    if other.free > most:
                        worker, most = other, other.free
            self._take(worker)
            return worker
        return None

    def _enqueue(
        self,
        prefer: Slot | None,
        command: str,
        deadline: float,
        *,
        queued_since: float | None = None,
    ) -> _Waiter:
        """Queue a caller (FIFO) or reject it at once; the deadline watcher times it out.

        ``queued_since``: a caller admitted then, whose worker died before it woke, goes
        back to the front, is never rejected as saturated, and keeps its queue deadline.
        """
        config = self.config
        if all(w.broken for w in self._workers):
            raise startup_failure(self._workers)
        if queued_since is None and self._queued >= config.max_queue:
            self._stats.pool_saturated += 1
            self._reject(command, "saturated", 0.0)
            raise PoolSaturated(
                f"all {self.size} workers are busy and {self._queued} requests are queued "
                f"(max_queue={config.max_queue})"
            )
        strict = (
            prefer
            if (config.affinity == "strict" and prefer is not None and prefer.alive)
            else None
        )
        if queued_since is None:
            waiter = _Waiter(strict, self._new_event(), self._now())
            self._waiters.append(waiter)
        else:
            waiter = _Waiter(strict, self._new_event(), queued_since)
            self._waiters.appendleft(waiter)
        self._queued += 1
        self._arm_deadline(waiter, min(deadline, waiter.started + config.queue_timeout))
        return waiter

    def _leave_queue(self, waiter: _Waiter) -> None:
        """The waiting caller was cancelled: take it out, or pass on a worker it was handed."""
        handed = waiter.worker
        if handed is not None:
            waiter.worker = None
            self._slot_released(handed)
        elif not waiter.done:
            waiter.done = True
            self._queued -= 1
            self._compact_waiters()

    def _queue_outcome(self, waiter: _Waiter, command: str) -> Slot:
        if waiter.worker is not None:
            return waiter.worker
        if waiter.error is not None:
            raise waiter.error
        waited = anyio.current_time() - waiter.started
        self._stats.queue_timeouts += 1
        self._reject(command, "queue_timeout", waited)
        raise QueueTimeout(
            f"no worker became free within {waited:.3f} s "
            f"({self._queued} still queued, {self.size} workers)"
        )

    def _compact_waiters(self) -> None:
        waiters = self._waiters
        if len(waiters) > 2 * self._queued + 64:
            self._waiters = deque(w for w in waiters if not w.done)

    def _reject(self, command: str, reason: tm.RejectReason, waited: float) -> None:
        if self.telemetry.active:
            self.telemetry.emit(tm.RequestRejected(command, reason, waited))

    def _slot_released(self, worker: Slot) -> None:
        """A request on ``worker`` ended: give its slot to the oldest waiter, or park it."""
        if not worker.alive:
            return
        if self._recycle_limits:
            config = self.config
            if (config.max_requests is not None and worker.requests >= config.max_requests) or (
                config.max_memory is not None
                and worker.load == 0
                and worker.needs_recycling(time.monotonic()) is not None
            ):
                worker.draining = True
        if worker.draining:
            if worker.load == 0:
                reason = worker.needs_recycling(time.monotonic()) or "recycling"
                if self.telemetry.active and worker.pid is not None:
                    self.telemetry.emit(tm.WorkerRecycled(worker.id, worker.pid, reason))
                worker.stop(f"recycled: {reason}", graceful=True)
            return
        waiters = self._waiters
        while waiters and waiters[0].done:
            waiters.popleft()
        if waiters:
            for index, waiter in enumerate(waiters):
                if waiter.done:
                    continue
                prefer = waiter.prefer
                if prefer is None or prefer is worker or not prefer.alive:
                    if index == 0:
                        waiters.popleft()
                    else:
                        del waiters[index]
                    waiter.done = True
                    waiter.worker = worker
                    self._queued -= 1
                    waiter.event.set()
                    return
        free = worker.free = worker.free + 1
        if free == 1:
            self._idle.append(worker)
        worker.settle()

    def _slot_ready(self, worker: Slot) -> None:
        if not self._features:
            self._features = worker.features
            codec = worker.codec  # a fresh instance for the pool, unless it is not a wire codec
            self._codec = codecs.get_codec(codec.name) if codec.name in codecs.CODECS else codec
        worker.free = 0
        for _ in range(worker.capacity):
            self._slot_released(worker)

    def _slot_unavailable(self, worker: Slot) -> None:
        if worker.free > 0:
            worker.free = 0
            if worker in self._idle:
                self._idle.remove(worker)

    def _slot_broken(self, worker: Slot) -> None:
        if all(w.broken for w in self._workers):
            self._fail_waiters(startup_failure(self._workers))

    def _fail_waiters(self, error: SnakepitError) -> None:
        """Every queued caller gets ``error`` (the queue is emptied)."""
        for waiter in self._waiters:
            if not waiter.done:
                waiter.done = True
                waiter.error = error
                self._queued -= 1
                waiter.event.set()
        self._waiters.clear()

    # ------------------------------------------------------------------ background
    async def _health_loop(self) -> None:
        interval = self.config.health_check_interval
        if interval is None:
            return
        while True:
            await anyio.sleep(interval)
            now = time.monotonic()
            for worker in self._workers:
                if (
                    not worker.alive
                    or worker.draining
                    or worker.load
                    or worker.free < worker.capacity
                ):
                    continue  # busy workers are not pinged: a long command is not a dead worker
                reason = worker.needs_recycling(now)
                if reason is not None:
                    self._slot_unavailable(worker)
                    if self.telemetry.active and worker.pid is not None:
                        self.telemetry.emit(tm.WorkerRecycled(worker.id, worker.pid, reason))
                    worker.stop(f"recycled: {reason}", graceful=True)
                    continue
                assert self._tg is not None
                self._tg.start_soon(self._health_check, worker)

    async def _health_check(self, worker: Slot) -> None:
        if not worker.alive or worker.free < 1:
            return
        self._take(worker)
        request_id = next(self._ids)
        frame = self._encode_request(worker.codec, request_id, "ping", {}, False)
        call = worker.begin(request_id, "ping", frame, False)
        call.probe = True  # counted neither as served nor toward max_requests
        await worker.send(frame)
        with anyio.move_on_after(self.config.health_check_timeout):
            await call.event.wait()
        if not call.done:
            worker.abandon(call, "health check timed out")
            worker.stop(f"no answer to a health check within {self.config.health_check_timeout} s")

    async def _session_cleanup_loop(self) -> None:
        while True:
            await anyio.sleep(self.config.session_cleanup_interval)
            self.sessions.cleanup_expired_sessions()

    # ------------------------------------------------------------------ lifecycle
    async def _start(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        backend = current_backend()
        self._new_event = backend.new_event
        self._now, self._checkpoint_if_cancelled = backend.now, backend.checkpoint_if_cancelled
        self._checkpoint = backend.checkpoint
        self._deadline_wakeup = self._new_event()
        make_transport = self.adapter.transport
        self._workers = [
            Slot(
                self._owner,
                i,
                self.config,
                make_transport,
                TransportContext(i, self.run_id, self.config, backend, self._next_id, self._shared),
            )
            for i in range(self.size)
        ]
        tg.start_soon(self._shielded, self._deadline_loop)
        for worker in self._workers:
            tg.start_soon(self._shielded, worker.run)
        tg.start_soon(self._health_loop)
        tg.start_soon(self._session_cleanup_loop)
        workers = self._workers
        with anyio.move_on_after(self.config.startup_timeout):
            for worker in workers:
                await worker.wait_first_attempt()
        # None ready yet, but some still starting: startup_timeout only decides how long to
        # wait for the others once one is up; each start is bounded by worker_init_timeout.
        while not any(w.alive for w in workers) and not all(w.first_attempt_over for w in workers):
            await anyio.sleep(0.02)
        if not any(w.alive for w in workers):
            raise startup_failure(workers)
        logger.info(
            "pool %s ready: %d of %d workers",
            self.run_id,
            sum(w.alive for w in self._workers),
            self.size,
        )

    async def _shielded(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run ``task`` out of reach of the caller's cancellation: the workers and the
        deadline watcher serve until the pool has drained, however the block was left
        (``_stop_tasks`` ends them)."""
        with anyio.CancelScope(shield=True) as scope:
            self._task_scopes.append(scope)
            await task()

    def _stop_tasks(self) -> None:
        for scope in self._task_scopes:
            scope.cancel()

    async def _shutdown(self) -> None:
        """Reject queued calls, let calls in flight finish (bounded), ladder every worker."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._fail_waiters(PoolClosed("the pool closed before this request could run"))
        with anyio.move_on_after(self.config.drain_timeout):
            while any(w.load for w in self._workers if w.alive):
                await anyio.sleep(0.01)
        for worker in self._workers:
            worker.stop("the pool is closing", graceful=True)
        bound = self.config.shutdown_grace + self.config.kill_grace + 5.0
        with anyio.move_on_after(bound):
            for worker in self._workers:
                while worker.state != "stopped":
                    await anyio.sleep(0.005)
        for release in self._shared.pop("closers", ()):  # what the transports shared
            with anyio.move_on_after(5.0):
                await release()
        # Whatever still carries this pool's run id escaped its worker's process group
        # (setsid, or a nanny killed from outside): this is the last chance to take it down.
        # A scan of /proc, ~1 ms: inline (a thread would outlive the pool).
        kill_run(self.run_id, wait=0.0)
        self._closed.set()


@final
class _SlotOwnerView:
    """The pool as its slots see it (``SlotOwner``).

    A separate object so that the slots' callbacks, which take a ``Slot``, stay off ``Pool``'s
    public surface. The callbacks are the pool's own bound methods, stored once: a slot's call
    costs what a call on the pool did (``slot_released`` runs once per request).
    """

    __slots__ = ("_pool", "slot_broken", "slot_ready", "slot_released", "slot_unavailable")

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self.slot_ready: Callable[[Slot], None] = pool._slot_ready
        self.slot_released: Callable[[Slot], None] = pool._slot_released
        self.slot_unavailable: Callable[[Slot], None] = pool._slot_unavailable
        self.slot_broken: Callable[[Slot], None] = pool._slot_broken

    @property
    def closing(self) -> bool:
        return self._pool._closing

    @property
    def telemetry(self) -> tm.Telemetry:
        return self._pool.telemetry


def _checked_timeout(timeout: object, command: str) -> float:
    """``timeout`` as a float, or ValueError/TypeError at the call site (never later, in the
    deadline watcher, where a NaN would take the whole pool down)."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout of {command!r} must be a number of seconds, not {timeout!r}")
    try:
        value = float(timeout)
    except OverflowError:
        raise ValueError(f"timeout of {command!r} is too large: {timeout!r}") from None
    if math.isnan(value):
        raise ValueError(f"timeout of {command!r} must be a number of seconds, not NaN")
    return value


def _unwrap_group(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception inside nested single-exception groups, or the group itself."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@asynccontextmanager
async def open_pool(
    adapter: Adapter | None = None,
    *,
    size: int | None = None,
    config: PoolConfig | None = None,
) -> AsyncIterator[Pool]:
    """Start a pool of ``size`` workers (default ``2 * os.cpu_count()``) and yield it.

    Returns once the workers that could start are ready (all of them, or those ready when
    ``startup_timeout`` passed); raises ``StartupError`` if none could. Leaving the block
    shuts every worker down through the ladder (graceful close, SIGTERM, SIGKILL), shielded
    and bounded, whether it is left normally, by an exception or by cancellation.
    """
    try:
        if adapter is None:
            from ._adapters import PythonAdapter

            adapter = PythonAdapter()
        if not isinstance(adapter, Adapter):
            raise TypeError(f"adapter must be an Adapter, not {type(adapter).__name__}")
        if size is None:
            size = min((os.cpu_count() or 1) * 2, MAX_POOL_SIZE)
        size = validate_size(size)
        if config is None:
            config = PoolConfig()
        elif not isinstance(config, PoolConfig):
            raise TypeError(f"config must be a PoolConfig, not {type(config).__name__}")
    except Exception:
        await anyio.lowlevel.checkpoint()  # a bad argument is raised after a checkpoint
        raise
    pool = Pool._create(adapter, size, config)
    # What the block (or the start) raised is kept out of the task group and re-raised as
    # it was, so the group's wrapping never touches a user's exception (its cause, its own
    # exception groups). Only the pool's own tasks' errors come out of the group.
    raised: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            try:
                try:
                    await pool._start(tg)
                except BaseException as exc:
                    raised = exc
                else:
                    try:
                        yield pool
                    except BaseException as exc:
                        raised = exc
            finally:
                with anyio.CancelScope(shield=True):
                    await pool._shutdown()
                pool._stop_tasks()
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        internal = group.split(anyio.get_cancelled_exc_class())[1]
        # Only cancellations, and the block raised: that is what leaves (raised below, out
        # of this handler, so that its __context__ is not rewritten).
        if internal is not None or raised is None:
            inner = _unwrap_group(group)
            if inner is group:
                raise
            raise inner from None
    if raised is not None:
        raise raised
