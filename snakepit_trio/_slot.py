"""One worker slot: supervision, the calls in flight and the slot's state, for any transport.

A slot keeps one worker running at a time and restarts it when it dies: with backoff after a
crash, at once after a healthy run, never while its crash breaker is open. How the worker is
reached (a local process over pipes, a gRPC server, ...) is its ``Transport``'s business
(``_transport.py``); what the pool sees is the narrow interface of this class, and the slot
sees its pool only through ``SlotOwner``.

Every change of state goes through ``Slot._move`` and the table ``_MOVES`` below.

What each await does when cancelled:
- the supervisor (``run``) belongs to the pool's task group, shielded from the caller's
  cancellation; the pool's close ends it. The take-down always runs shielded and bounded.
- a caller's wait for its answer is the pool's; a caller that gives up calls ``abandon``,
  which never blocks: a cancel through the transport, and a watchdog that replaces the worker
  if the cancel is not confirmed within ``cancel_grace``.
- a caller's slow-path send: if part of a frame went out, the stream is broken and the worker
  is replaced (the transport stops the slot).
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, TypeAlias

import anyio
import anyio.abc
import attrs
from snakepit_trio_bridge.protocol import codecs, constants
from snakepit_trio_bridge.protocol.framing import ProtocolError as WireProtocolError
from snakepit_trio_bridge.protocol.messages import Response, StreamChunk

from . import _telemetry as tm
from ._errors import ProtocolError, SnakepitError, StartupError, WorkerCrashed
from ._transport import INITIAL_STREAM_CREDITS, StartFailed, Transport, TransportContext

if TYPE_CHECKING:
    from ._backend import Backend, Waitable
    from ._config import PoolConfig

__all__ = ["Call", "Slot", "SlotOwner", "WorkerInfo", "WorkerState", "startup_failure"]

logger = logging.getLogger("snakepit_trio.worker")

WorkerState: TypeAlias = Literal["starting", "idle", "busy", "cancelling", "stopping", "stopped"]
"""A worker slot's state (``WorkerInfo.state``). ``cancelling``: a call was abandoned (timeout
or cancellation) and its cancel is not confirmed yet; ``stopped`` while the pool runs: the
slot's crash breaker is open."""

# Every move a slot's state may make (h11 style: the whole machine in one place).
# "stopped" is reachable from anywhere: the supervisor ends when the pool closes, whatever
# its worker was doing.
_MOVES: Final[dict[WorkerState, frozenset[WorkerState]]] = {
    "starting": frozenset({"idle", "stopping", "stopped"}),
    "idle": frozenset({"idle", "busy", "cancelling", "stopping", "stopped"}),
    "busy": frozenset({"idle", "busy", "cancelling", "stopping", "stopped"}),
    "cancelling": frozenset({"idle", "busy", "cancelling", "stopping", "stopped"}),
    "stopping": frozenset({"starting", "stopping", "stopped"}),
    "stopped": frozenset({"starting", "stopped"}),
}

# A worker that served this long before it died was not crash-looping: restart it at once.
_HEALTHY_RUN: Final = 1.0
_THIS_HOST: Final = socket.gethostname()


@attrs.frozen
class WorkerInfo:
    """A snapshot of one worker slot, as ``pool.workers()`` returns it."""

    id: int
    pid: int | None
    """The process the pool started (in hardened mode: the nanny)."""
    state: WorkerState
    requests: int
    """Requests completed by the current process."""
    total_requests: int
    """Requests completed by this slot, across restarts."""
    restarts: int
    rss: int | None
    protocol: str | None
    features: frozenset[str]
    in_flight: int
    uptime: float | None
    worker_pid: int | None = None
    """The process that runs the handler (the same as ``pid`` unless hardened)."""
    node: str = _THIS_HOST
    """Where the worker runs."""


class SlotOwner(Protocol):
    """What a slot needs of its pool."""

    @property
    def closing(self) -> bool: ...

    @property
    def telemetry(self) -> tm.Telemetry: ...

    def slot_ready(self, slot: Slot) -> None:
        """The slot's worker is ready to serve ``slot.capacity`` calls at once."""

    def slot_released(self, slot: Slot) -> None:
        """A call on the slot ended: its place may go to the next caller."""

    def slot_unavailable(self, slot: Slot) -> None:
        """The slot is going down: hand it out no more."""

    def slot_broken(self, slot: Slot) -> None:
        """The slot's crash breaker opened."""


class Call:
    """One request in flight: what the caller waits on and the transport's answers fill in."""

    __slots__ = (
        "abandoned",
        "bytes_in",
        "chunk_event",
        "chunks",
        "chunks_in",
        "command",
        "credits",
        "done",
        "error",
        "event",
        "id",
        "probe",
        "response",
        "started",
        "stream",
        "timed_out",
        "worker",
    )

    def __init__(
        self, request_id: int, command: str, worker: Slot, stream: bool, event: Waitable
    ) -> None:
        self.id = request_id
        self.command = command
        self.worker = worker
        self.stream = stream
        self.event = event
        self.done = False
        self.timed_out = False
        self.abandoned = False
        self.probe = False  # a health ping: not a request served
        self.response: Response | None = None
        self.error: SnakepitError | None = None
        self.started = 0.0
        self.chunks: deque[Any] | None = deque() if stream else None
        self.chunk_event: Waitable | None = None
        self.bytes_in = 0.0  # stream bytes received (estimated per read) and chunks received
        self.chunks_in = 0
        self.credits: int | None = None  # chunks the worker may send in all (credit feature)

    def finish(self, response: Response | None, error: SnakepitError | None) -> None:
        self.done = True
        self.response = response
        self.error = error
        self.event.set()
        if self.chunk_event is not None:
            self.chunk_event.set()


class Slot:
    """One slot of the pool; ``run()`` is its supervising task.

    The pool reads ``alive``, ``capacity``, ``load``, ``features`` and ``codec``, owns
    ``free`` and ``draining``, and calls ``begin``, ``send``, ``abandon``, ``grant_credit``,
    ``stop`` and ``settle``. The transport calls the ``EventSink`` methods (``response``,
    ``chunk``, ``heartbeat``, ``ended``, ``protocol_error``).
    """

    def __init__(
        self,
        owner: SlotOwner,
        slot_id: int,
        config: PoolConfig,
        make_transport: Callable[[TransportContext], Transport],
        context: TransportContext,
    ) -> None:
        self.owner = owner
        self.id = slot_id
        self.config = config
        self._make_transport = make_transport
        self._context = context
        self._backend: Backend = context.backend
        self.state: WorkerState = "starting"
        self.transport: Transport | None = None
        self.features: frozenset[str] = frozenset()
        self.protocol: str | None = None
        self.capacity = 1
        self.free = 0  # places the pool may hand out now (owned by the pool's dispatcher)
        self.load = 0  # requests in flight
        self.ready = False
        self.draining = False  # recycling: take no new work, stop when idle
        self.broken = False  # the crash breaker is open: no start until restart_window passed
        self.breaker_reason = ""
        self.requests = 0
        self.total_requests = 0
        self.restarts = 0
        self.last_error = ""
        self.last_heartbeat = 0.0
        self.ready_at = 0.0
        self._calls: dict[int, Call] = {}
        self._abandoned = 0
        self._tg: anyio.abc.TaskGroup | None = None
        self._stop_reason: str | None = None
        self._stop_graceful = False
        self._stop_scope: anyio.CancelScope | None = None
        self._protocol_error: WireProtocolError | None = None
        self._first_attempt_done = anyio.Event()
        # A stream without credits has no backpressure: bound what it may buffer all the same.
        self._unpaced_stream_bytes = 4 * config.stream_window + 2 * config.max_frame_size

    # ------------------------------------------------------------------ state
    def _move(self, to: WorkerState) -> None:
        """The one place the state changes."""
        if to not in _MOVES[self.state]:  # pragma: no cover - a bug of ours
            raise AssertionError(f"worker {self.id}: no move from {self.state!r} to {to!r}")
        self.state = to

    def settle(self) -> None:
        """A live slot's state from its load: idle, busy, or cancelling an abandoned call."""
        if self.ready and self._stop_reason is None:
            self._move("cancelling" if self._abandoned else "busy" if self.load else "idle")

    @property
    def alive(self) -> bool:
        """Ready and not going down: the pool may hand it calls."""
        return self.ready and self._stop_reason is None

    @property
    def codec(self) -> codecs.Codec:
        """The codec the pool encodes this worker's requests with."""
        assert self.transport is not None
        return self.transport.codec

    @property
    def pid(self) -> int | None:
        transport = self.transport
        return transport.pid if transport is not None else None

    @property
    def first_attempt_over(self) -> bool:
        """The first worker of this slot became ready or failed."""
        return self._first_attempt_done.is_set()

    async def wait_first_attempt(self) -> None:
        await self._first_attempt_done.wait()

    def info(self) -> WorkerInfo:
        transport = self.transport
        live = transport is not None and self.state != "stopped"
        return WorkerInfo(
            id=self.id,
            pid=transport.pid if transport is not None else None,
            state=self.state,
            requests=self.requests,
            total_requests=self.total_requests,
            restarts=self.restarts,
            rss=transport.rss() if live and transport is not None else None,
            protocol=self.protocol,
            features=self.features,
            in_flight=self.load,
            uptime=time.monotonic() - transport.started_at
            if live and transport is not None
            else None,
            worker_pid=transport.worker_pid if transport is not None else None,
            node=transport.node if transport is not None else _THIS_HOST,
        )

    def stderr_tail(self) -> str:
        transport = self.transport
        return transport.stderr_tail() if transport is not None else self.last_error

    # ------------------------------------------------------------------ caller side
    def begin(self, request_id: int, command: str, frame: bytes, stream: bool) -> Call:
        """Register a call whose frame the caller sends next (no await)."""
        transport = self.transport
        assert transport is not None
        call = Call(request_id, command, self, stream, self._backend.new_event())
        call.started = now = time.monotonic()
        if stream and constants.FEATURE_CREDIT in self.features:
            # What the request frame allows (encode_request); the pool grants more later.
            call.credits = min(self.config.stream_credits, INITIAL_STREAM_CREDITS)
        transport.open_call(call, frame)
        self._calls[request_id] = call
        self.load += 1
        if self.load == 1:
            self.last_heartbeat = now  # a busy worker's heartbeats are due from here
            if not self._abandoned:
                self._move("busy")
        return call

    def send_nowait(self, frame: bytes) -> bool:
        """Send without a wait if the transport can; False: ``await send(frame)``."""
        transport = self.transport
        return transport is not None and transport.send_nowait(frame)

    async def send(self, frame: bytes) -> None:
        transport = self.transport
        if transport is not None:
            await transport.send(frame)

    def abandon(self, call: Call, reason: str) -> None:
        """The caller gave up on ``call`` (timeout or cancellation). Never blocks."""
        if call.done or call.abandoned:
            return
        call.abandoned = True
        self._abandoned += 1
        if self.ready and self._stop_reason is None:
            self._move("cancelling")
        if constants.FEATURE_CANCEL not in self.features:
            self.stop(f"{reason}; the bridge cannot cancel, so the worker is replaced")
        elif not self._spawn(self._cancel_and_watch, call, reason):
            self.stop(reason)  # the worker is already going down; make sure of it

    def grant_credit(self, call: Call, credits: int) -> None:
        transport = self.transport
        if transport is not None and not call.done and self._tg is not None:
            if call.credits is not None:
                call.credits += credits
            transport.grant(call, credits)

    def spawn_send(self, frame: bytes) -> None:
        """Send ``frame`` from the slot's own task group (for transports: a credit frame
        that could not go out at once)."""
        self._spawn(self.send, frame)

    def stop(self, reason: str, *, graceful: bool = False) -> None:
        """Ask the supervisor to take this worker down (through the ladder) and restart it."""
        if self._stop_reason is not None:
            return
        self._stop_reason = reason
        self._stop_graceful = graceful
        if self.ready:
            logger.info("worker %d (pid %s): stopping: %s", self.id, self.pid, reason)
        self.ready = False
        self._move("stopping")
        self.owner.slot_unavailable(self)
        if self._stop_scope is not None:
            self._stop_scope.cancel()

    def _spawn(self, func: Callable[..., Coroutine[Any, Any, object]], *args: object) -> bool:
        """Start ``func`` in the slot's task group; False if that group has closed.

        The group closes to new tasks a scheduling step before ``_tg`` is cleared, so a
        caller that wakes in between (a cancelled request) must not assume it is open.
        """
        tg = self._tg
        if tg is None:
            return False
        try:
            tg.start_soon(func, *args)
        except RuntimeError:
            return False
        return True

    async def _cancel_and_watch(self, call: Call, reason: str) -> None:
        """Ask the worker to cancel ``call``; replace the worker if it does not end in time."""
        if call.done:
            return
        grace = self.config.cancel_grace
        if call.event.is_set():
            # The deadline watcher set it to wake the caller; wait for the real answer.
            call.event = self._backend.new_event()
        with anyio.move_on_after(grace):
            transport = self.transport
            if transport is None or not await transport.cancel(call):
                return
            await call.event.wait()
        if not call.done:
            self.stop(f"{reason}; the request did not end within {grace} s of its cancel")

    # ------------------------------------------------------------------ the event sink
    @property
    def serving(self) -> bool:
        return self.ready

    def response(self, event: Response) -> None:
        assert event.id is not None
        call = self._calls.pop(event.id)
        self.load -= 1
        if not call.probe:
            self.requests += 1
            self.total_requests += 1
        if call.abandoned:
            self._abandoned -= 1
        call.finish(event, None)
        self.owner.slot_released(self)

    def chunk(self, event: StreamChunk, size: float) -> None:
        call = self._calls[event.id]
        call.bytes_in += size
        chunks_in = call.chunks_in = call.chunks_in + 1
        chunks = call.chunks
        assert chunks is not None
        chunks.append(event.data)
        if call.chunk_event is not None:
            call.chunk_event.set()
        # What a worker sends must not outgrow the pool's memory: past its credits (or, with
        # no credit feature, past a generous byte bound) a stream is a protocol violation.
        credits = call.credits
        if credits is not None:
            if chunks_in > credits:
                self.protocol_error(
                    WireProtocolError(
                        f"stream {event.id} sent chunk {chunks_in} with only {credits} credits"
                    ),
                    [],
                )
        elif len(chunks) * (call.bytes_in / chunks_in) > self._unpaced_stream_bytes:
            self.protocol_error(
                WireProtocolError(
                    f"stream {event.id} ran over {self._unpaced_stream_bytes} bytes ahead of "
                    "its consumer, with no credits to pace it"
                ),
                [],
            )

    def heartbeat(self) -> None:
        self.last_heartbeat = time.monotonic()

    def ended(self, reason: str) -> None:
        self.stop(reason)

    def protocol_error(self, error: WireProtocolError, delivered: list[Any]) -> None:
        for event in delivered:  # completed before the violation: deliver them
            if isinstance(event, Response):
                self.response(event)
            elif isinstance(event, StreamChunk):
                self.chunk(event, 0.0)
        self._protocol_error = error
        self.stop(f"protocol error: {error}")

    # ------------------------------------------------------------------ supervision
    async def run(self) -> None:
        """Keep a worker running in this slot until the pool closes."""
        crashes: deque[float] = deque()
        config = self.config
        backoff = config.restart_backoff
        try:
            while not self.owner.closing:
                try:
                    crashed = await self._run_once()
                except Exception as exc:
                    # A bug of ours must not take the caller's whole pool down: log it loudly,
                    # count it as a crash, and let the breaker decide.
                    logger.exception("worker %d: internal error", self.id)
                    self.last_error = f"internal error: {exc!r}"
                    self._first_attempt_done.set()
                    crashed = True
                if self.owner.closing:
                    break
                now = time.monotonic()
                healthy = self.ready_at and (
                    self.requests > 0 or now - self.ready_at >= _HEALTHY_RUN
                )
                if not crashed or healthy:
                    # A planned stop, or death after a healthy run (it served requests or
                    # lived a while; say it was killed from outside): not a crash loop.
                    # Restart at once, and forget earlier crashes.
                    backoff = config.restart_backoff
                    crashes.clear()
                    if crashed:
                        self.restarts += 1
                    continue
                crashes.append(now)
                while crashes and now - crashes[0] > config.restart_window:
                    crashes.popleft()
                if len(crashes) > config.max_restarts:
                    await self._breaker_open(len(crashes))
                    crashes.clear()
                    backoff = config.restart_backoff
                    continue
                delay = backoff * (0.5 + random.random())
                backoff = min(backoff * 2, config.restart_backoff_max)
                await anyio.sleep(delay)
                self.restarts += 1
        finally:
            self.ready = False
            self._move("stopped")
            self._first_attempt_done.set()

    async def _breaker_open(self, crashes: int) -> None:
        """Callers fail fast with the reason; after ``restart_window`` the slot tries again
        (a dependency may have come back). The pool's close cancels the wait."""
        window = self.config.restart_window
        self.broken = True
        self.breaker_reason = (
            f"worker slot {self.id}: crash breaker open after {crashes} crashes within "
            f"{window} s (max_restarts={self.config.max_restarts}); retried {window} s after "
            f"it opened; last error: {self.last_error}"
        )
        logger.error("%s", self.breaker_reason)
        self._move("stopped")
        self.owner.slot_broken(self)
        await anyio.sleep(window)
        self.broken = False
        self.restarts += 1
        logger.info("worker slot %d: crash breaker closed; starting again", self.id)

    async def _run_once(self) -> bool:
        """Run one worker from start to take-down. Returns True if it crashed."""
        self._reset()
        transport = self._make_transport(self._context)
        self.transport = transport
        try:
            await transport.start()
        except StartFailed as exc:
            self.last_error = str(exc)
            self._first_attempt_done.set()
            return True
        telemetry = self.owner.telemetry
        if telemetry.active:
            telemetry.emit(tm.WorkerStarted(self.id, transport.pid or 0, self.restarts))
        crashed = True
        exit_reason = ""
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(transport.watch, self)
                try:
                    exit_reason = await self._serve(transport)
                finally:
                    with anyio.CancelScope(shield=True):
                        crashed = await self._take_down(transport, exit_reason)
                        outer.cancel_scope.cancel()
        finally:
            self._first_attempt_done.set()
        return crashed

    def _reset(self) -> None:
        if self.state != "starting":
            self._move("starting")
        self.ready = False
        self.draining = False
        self.free = 0
        self.load = 0
        self.requests = 0
        self._calls = {}
        self._abandoned = 0
        self._stop_reason = None
        self._stop_graceful = False
        self.ready_at = 0.0
        self._protocol_error = None
        self.features = frozenset()
        self.protocol = None
        self.last_heartbeat = 0.0

    async def _serve(self, transport: Transport) -> str:
        """Handshake, then serve until stopped. Returns why it stopped."""
        config = self.config
        started = time.monotonic()
        with anyio.CancelScope() as stop_scope:
            self._stop_scope = stop_scope
            if self.owner.closing:
                self.stop("the pool is closing")
            try:
                with anyio.fail_after(config.worker_init_timeout):
                    handshake = await transport.handshake()
            except TimeoutError:
                self.stop(
                    f"{transport.phase} did not finish within "
                    f"worker_init_timeout={config.worker_init_timeout} s; raise "
                    "worker_init_timeout if the handler needs longer to start"
                )
            except StartFailed as exc:
                self.stop(str(exc))
            except WireProtocolError as exc:
                self._protocol_error = exc
                self.stop(f"protocol error during start-up: {exc}")
            if self._stop_reason is not None:
                return self._stop_reason
            self.protocol, self.features = handshake.protocol, handshake.features
            if constants.FEATURE_MULTIPLEX in self.features:
                self.capacity = max(1, min(config.max_in_flight, handshake.max_concurrency))
            else:
                self.capacity = 1
            try:
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    try:
                        tg.start_soon(transport.serve, self, self.capacity)
                        if constants.FEATURE_HEARTBEAT in self.features:
                            tg.start_soon(self._watch_heartbeats)
                        self.ready = True
                        self._move("idle")
                        self._announce_ready(transport, time.monotonic() - started)
                        await anyio.sleep_forever()
                    finally:
                        # Nothing new starts here once the body ends (see _spawn).
                        self._tg = None
            finally:
                self._tg = None
                self._stop_scope = None
        return self._stop_reason or "stopped"

    def _announce_ready(self, transport: Transport, init_time: float) -> None:
        logger.debug(
            "worker %d ready: pid %s, %s, %.3f s", self.id, transport.pid, self.protocol, init_time
        )
        telemetry = self.owner.telemetry
        if telemetry.active:
            telemetry.emit(
                tm.WorkerReady(
                    self.id, transport.pid or 0, init_time, self.protocol or "", self.features
                )
            )
        self._first_attempt_done.set()
        self.ready_at = time.monotonic()
        self.owner.slot_ready(self)

    async def _watch_heartbeats(self) -> None:
        """A busy worker whose heartbeats stop for ``heartbeat_timeout`` is replaced (a
        stopped process, a handler wedged with the bridge's heartbeat thread dead); an idle
        one is left to the health checks."""
        timeout = self.config.heartbeat_timeout
        if timeout is None:
            return
        while True:
            await anyio.sleep(min(timeout / 4, 1.0))
            if self.load and time.monotonic() - self.last_heartbeat > timeout:
                self.stop(f"no heartbeat for {timeout} s while busy (heartbeat_timeout)")
                return

    async def _take_down(self, transport: Transport, reason: str) -> bool:
        """Ladder the worker down, fail what it held. Runs shielded. True if it crashed."""
        self.ready = False
        if self.state != "stopping":
            self._move("stopping")
        if self._stop_reason is None:
            self._stop_reason = reason or "stopped"
        self.owner.slot_unavailable(self)
        planned = self.owner.closing or self._stop_graceful
        # A worker that never became ready has nothing to finish gracefully (it may still be
        # building its handler): straight to SIGTERM, not a wait of shutdown_grace.
        step = await transport.close(planned=planned and self.ready_at > 0)
        crashed = not planned
        failure = self._failure_for_calls(transport)
        for call in list(self._calls.values()):
            call.finish(None, failure)
        self._calls.clear()
        self.load = 0
        self._abandoned = 0
        exit_code, signal = transport.exit_status()
        if crashed:
            self.last_error = f"{self._stop_reason} (exit code {exit_code}, signal {signal})"
        logger.log(
            logging.WARNING if crashed else logging.DEBUG,
            "worker %d (pid %s) exited (%s, exit code %s, signal %s, via %s)",
            self.id,
            transport.pid,
            self._stop_reason,
            exit_code,
            signal,
            step,
        )
        telemetry = self.owner.telemetry
        if telemetry.active:
            telemetry.emit(
                tm.WorkerExited(
                    self.id,
                    transport.pid or 0,
                    exit_code,
                    signal,
                    crashed,
                    self._stop_reason or "",
                )
            )
        return crashed

    def _failure_for_calls(self, transport: Transport) -> SnakepitError:
        if self._protocol_error is not None:
            return ProtocolError(
                f"worker {self.id} (pid {transport.pid}) broke the protocol: {self._protocol_error}"
            )
        exit_code, signal = transport.exit_status()
        return WorkerCrashed(
            f"worker {self.id} (pid {transport.pid}) went away: {self._stop_reason}",
            exit_code=exit_code,
            signal=signal,
            stderr_tail=transport.stderr_tail(),
        )

    # ------------------------------------------------------------------ health
    def needs_recycling(self, now: float) -> str | None:
        """Why this worker should be replaced now, or None."""
        config = self.config
        transport = self.transport
        if transport is None or not self.ready:
            return None
        if config.max_requests is not None and self.requests >= config.max_requests:
            return f"served {self.requests} requests (max_requests={config.max_requests})"
        lived = now - transport.started_at
        if config.max_lifetime is not None and lived >= config.max_lifetime:
            return f"alive for {lived:.1f} s (max_lifetime={config.max_lifetime})"
        if config.max_memory is not None:
            rss = transport.rss()
            if rss is not None and rss > config.max_memory:
                return f"RSS {rss} bytes over max_memory={config.max_memory}"
        return None


def startup_failure(slots: list[Slot]) -> StartupError:
    """The error for a pool none of whose slots can serve."""
    if slots and all(s.broken for s in slots):
        reasons = "; ".join(s.breaker_reason for s in slots[:3])
        more = f" (and {len(slots) - 3} more)" if len(slots) > 3 else ""
        tails = [f"[worker {s.id}]\n{s.stderr_tail()}".rstrip() for s in slots]
        return StartupError(
            f"every worker slot's crash breaker is open: {reasons}{more}",
            stderr_tail="\n".join(tails),
        )
    tails = [f"[worker {s.id}] {s.last_error}\n{s.stderr_tail()}".rstrip() for s in slots]
    return StartupError(
        f"no worker could be started ({len(slots)} tried)", stderr_tail="\n".join(tails)
    )
