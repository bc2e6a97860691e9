"""One worker slot: a task that owns one process at a time and restarts it when it dies.

The hot path has one task hop: a caller writes its request frame to the worker's stdin
itself (non-blocking ``os.write``), then waits on its ``_Call``; the worker's reader task
reads stdout, decodes with the sans-IO ``ClientConnection`` and wakes exactly that caller.

What each await does when cancelled:
- the caller's wait for its response: the call is abandoned (``Worker.abandon``): a cancel
  frame if the bridge supports it, and a watchdog that replaces the worker if the bridge does
  not confirm within ``cancel_grace``; without cancel support the worker is replaced at once.
- a caller's slow-path write: if part of a frame went out, the stream is broken and the worker
  is replaced.
- the reader, the stderr drain, the watchdogs: they belong to the worker's task groups and
  end with them; the ladder that stops the process always runs shielded and bounded.
"""

from __future__ import annotations

import logging
import os
import random
import select
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, cast

import anyio
import anyio.abc
import attrs
import sniffio
from snakepit_bridge.protocol import codecs, constants
from snakepit_bridge.protocol.framing import ProtocolError as WireProtocolError
from snakepit_bridge.protocol.framing import encode_frame
from snakepit_bridge.protocol.messages import (
    ClientConnection,
    Heartbeat,
    ProtocolNegotiation,
    Response,
    StreamChunk,
    parse_negotiation_reply,
)

from . import _telemetry as tm
from ._errors import ProtocolError, SnakepitError, StartupError, WorkerCrashed
from ._process import WorkerProcess, read_rss, spawn_worker

if TYPE_CHECKING:
    from ._pool import Pool

__all__ = ["WorkerInfo", "WorkerState"]

logger = logging.getLogger("snakepit_trio.worker")

WorkerState = Literal["starting", "idle", "busy", "cancelling", "stopping", "stopped"]
# Stay below glibc's mmap threshold (128 KiB): a larger os.read buffer costs an mmap and a
# munmap per call, ~60 us here, more than the whole round trip.
_READ_SIZE: Final = 1 << 16
# A worker that served this long before it died was not crash-looping: restart it at once.
_HEALTHY_RUN: Final = 1.0


class Waitable(Protocol):
    """What the hot path needs of an event: trio's, asyncio's or anyio's all fit."""

    def set(self) -> object: ...

    def is_set(self) -> bool: ...

    async def wait(self) -> object: ...


def native_event_class() -> Callable[[], Waitable]:
    """The running backend's own event class.

    ``anyio.Event`` wraps these with a few microseconds of overhead per request; waiting on a
    native event inside anyio cancel scopes works on both backends.
    """
    backend = sniffio.current_async_library()
    if backend == "trio":
        return _trio_signal_class()
    if backend == "asyncio":
        import asyncio

        return asyncio.Event
    return anyio.Event  # pragma: no cover - another backend


_TRIO_SIGNAL: Callable[[], Waitable] | None = None


def _trio_signal_class() -> Callable[[], Waitable]:
    """A one-shot event for trio, lighter than ``trio.Event`` (one per request).

    ``trio.Event`` builds an attrs object with a parking lot (an ``OrderedDict``) and parks
    each waiter through it; this one keeps its waiting tasks in a list made on first wait and
    reschedules them directly. Same semantics: ``wait()`` is a checkpoint, waiters wake in
    order, and a cancelled waiter leaves the list.
    """
    global _TRIO_SIGNAL
    if _TRIO_SIGNAL is not None:
        return _TRIO_SIGNAL
    from trio.lowlevel import (
        Abort,
        checkpoint,
        current_task,
        enable_ki_protection,
        reschedule,
        wait_task_rescheduled,
    )

    class TrioSignal:
        __slots__ = ("_flag", "_waiters")

        def __init__(self) -> None:
            self._flag = False
            self._waiters: list[Any] | None = None

        def is_set(self) -> bool:
            return self._flag

        @enable_ki_protection  # as trio.Event.set: a KeyboardInterrupt cannot strand a waiter
        def set(self) -> None:
            if self._flag:
                return
            self._flag = True
            waiters = self._waiters
            if waiters:
                self._waiters = None
                for task in waiters:
                    reschedule(task)

        async def wait(self) -> None:
            if self._flag:
                await checkpoint()
                return
            task = current_task()
            waiters = self._waiters
            if waiters is None:
                self._waiters = waiters = []
            waiters.append(task)

            def abort(_: object) -> Abort:
                waiters.remove(task)
                return Abort.SUCCEEDED

            await wait_task_rescheduled(abort)

    _TRIO_SIGNAL = TrioSignal
    return TrioSignal


@attrs.frozen
class WorkerInfo:
    """A snapshot of one worker slot, as ``pool.workers()`` returns it."""

    id: int
    pid: int | None
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


class _Call:
    """One request in flight: what the caller waits on and the reader fills in."""

    __slots__ = (
        "abandoned",
        "bytes_in",
        "chunk_event",
        "chunks",
        "chunks_in",
        "command",
        "consumed",
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
        self,
        request_id: int,
        command: str,
        worker: Worker,
        stream: bool,
        event: Waitable,
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
        self.consumed = 0

    def finish(self, response: Response | None, error: SnakepitError | None) -> None:
        self.done = True
        self.response = response
        self.error = error
        self.event.set()
        if self.chunk_event is not None:
            self.chunk_event.set()


class _StopWorker(Exception):
    pass


class Worker:
    """One slot of the pool; ``run()`` is its supervising task."""

    def __init__(self, pool: Pool, slot_id: int) -> None:
        self.pool = pool
        self.id = slot_id
        self.config = pool.config
        self.adapter = pool.adapter
        self.state: WorkerState = "starting"
        self.proc: WorkerProcess | None = None
        self.conn: ClientConnection | None = None
        self.features: frozenset[str] = frozenset()
        self.protocol: str | None = None
        self.capacity = 1
        self.free = 0  # slots the pool may hand out now (owned by the pool's dispatcher)
        self.load = 0  # requests in flight
        self.ready = False
        self.draining = False  # recycling: take no new work, stop when idle
        self.broken = False  # the crash breaker is open: no start until restart_window passed
        self.breaker_reason = ""
        self.requests = 0
        self.total_requests = 0
        self.restarts = 0
        self.last_error: str = ""
        self._calls: dict[int, _Call] = {}
        self._abandoned = 0
        self._tg: anyio.abc.TaskGroup | None = None
        self._stop_reason: str | None = None
        self._stop_graceful = False
        self._stop_scope: anyio.CancelScope | None = None
        self._protocol_error: WireProtocolError | None = None
        self._eof = False
        self._unattributed = 0
        self._ready_at = 0.0
        self._writing = False
        self._write_lock = anyio.Lock()
        self._outbox: list[bytes] = []
        self._flush_pending = False
        self._flush_wakeup: Waitable | None = None  # set while a flusher task runs
        self._stderr_tail = bytearray()
        self._phase = "start-up"
        self._first_attempt_done = anyio.Event()
        self.last_heartbeat = 0.0

    # ------------------------------------------------------------------ info
    @property
    def alive(self) -> bool:
        return self.ready and self._stop_reason is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def info(self) -> WorkerInfo:
        proc = self.proc
        live = proc is not None and self.state not in ("stopped",)
        return WorkerInfo(
            id=self.id,
            pid=proc.pid if proc is not None else None,
            state=self.state,
            requests=self.requests,
            total_requests=self.total_requests,
            restarts=self.restarts,
            rss=read_rss(proc.pid) if live and proc is not None else None,
            protocol=self.protocol,
            features=self.features,
            in_flight=self.load,
            uptime=time.monotonic() - proc.started_at if live and proc is not None else None,
        )

    def stderr_tail(self) -> str:
        return self._stderr_tail.decode("utf-8", "replace")

    def _update_state(self) -> None:
        if not self.ready or self._stop_reason is not None:
            return
        if self._abandoned:
            self.state = "cancelling"
        elif self.load:
            self.state = "busy"
        else:
            self.state = "idle"

    # ------------------------------------------------------------------ caller side
    def begin(self, request_id: int, command: str, frame: bytes, stream: bool) -> _Call:
        """Register a call whose frame the caller is about to write (no await)."""
        conn = self.conn
        assert conn is not None
        call = _Call(request_id, command, self, stream, self.pool._new_event())
        conn.start_request(request_id, stream)
        self._calls[request_id] = call
        self.load += 1
        if self.load == 1 and not self._abandoned:
            self.state = "busy"
        call.started = time.monotonic()
        return call

    async def write(self, data: bytes) -> None:
        """Write a whole frame to the worker's stdin.

        The fast path is one non-blocking ``os.write``. With several requests in flight per
        worker, frames are queued instead and the flusher task writes all the frames of a
        scheduler turn with one syscall (each write wakes the worker: ~10 us here). A broken
        pipe is not an error here: the worker died, and the reader fails the calls in flight
        with the real cause.
        """
        wakeup = self._flush_wakeup
        if wakeup is not None:
            self._outbox.append(data)
            if not self._flush_pending:
                self._flush_pending = True
                wakeup.set()
            return
        await self._write_now(data)

    def queue_frame(self, data: bytes) -> bool:
        """``write`` without a coroutine when a flusher writes for this worker: queue the frame
        for its next write and return True. False: the caller must ``await write(data)``."""
        wakeup = self._flush_wakeup
        if wakeup is None:
            return False
        self._outbox.append(data)
        if not self._flush_pending:
            self._flush_pending = True
            wakeup.set()
        return True

    async def _flusher(self) -> None:
        """Multiplexed workers: write the queued frames, in order, one write per turn."""
        while True:
            wakeup = self._flush_wakeup
            assert wakeup is not None
            await wakeup.wait()
            self._flush_wakeup = self.pool._new_event()
            self._flush_pending = False
            await self._flush_outbox()

    async def _flush_outbox(self) -> None:
        outbox = self._outbox
        if outbox:
            data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
            outbox.clear()
            await self._write_now(data)

    async def _write_now(self, data: bytes) -> None:
        proc = self.proc
        if proc is None or proc.stdin_closed:
            return
        fd = proc.stdin_fd
        view: memoryview | bytes = data
        lock = self._write_lock
        # The lock may be held, or handed to a waiter that has not run yet: then queue behind it.
        if not self._writing and not lock.locked():
            try:
                written = os.write(fd, data)
            except BlockingIOError:
                written = 0
            except OSError:
                return
            if written == len(data):
                return
            view = memoryview(data)[written:]
            if written:
                # Part of the frame is out: the rest must follow before any other write, so
                # take the lock (free: no checkpoint since it was checked) while it goes out.
                lock.acquire_nowait()
                self._writing = True
                try:
                    await self._write_rest(fd, view, started=True)
                finally:
                    self._writing = False
                    lock.release()
                return
        async with lock:
            if proc.stdin_closed or self.proc is not proc:
                return  # its stdin closed while this write waited for the lock
            self._writing = True
            try:
                await self._write_rest(fd, view)
            finally:
                self._writing = False

    def _write_nowait(self, data: bytes) -> bool:
        """Write a small frame (at most PIPE_BUF, so all or nothing) if that can be done now."""
        proc = self.proc
        if proc is None or proc.stdin_closed or self._writing or self._write_lock.locked():
            return False
        try:
            return os.write(proc.stdin_fd, data) == len(data)
        except BlockingIOError:
            return False
        except OSError:
            return True  # the worker is gone; the reader reports it

    async def _write_rest(
        self, fd: int, view: memoryview | bytes, *, started: bool = False
    ) -> None:
        """Write ``view``; ``started``: the frame's first bytes already went out."""
        total = len(view)
        sent = 0
        try:
            while sent < total:
                try:
                    await anyio.wait_writable(fd)
                except anyio.ClosedResourceError:
                    return  # its stdin was closed under this write: the worker is going down
                try:
                    sent += os.write(fd, view[sent:])
                except BlockingIOError:
                    continue
                except OSError:
                    return
        except BaseException:
            if sent < total and (sent or started):
                self.stop("a write was interrupted in the middle of a frame")
            raise

    def abandon(self, call: _Call, reason: str) -> None:
        """The caller gave up on ``call`` (timeout or cancellation). Never blocks."""
        if call.done or call.abandoned:
            return
        call.abandoned = True
        self._abandoned += 1
        if self.ready and self._stop_reason is None:
            self.state = "cancelling"
        if constants.FEATURE_CANCEL not in self.features:
            self.stop(f"{reason}; the bridge cannot cancel, so the worker is replaced")
        elif not self._spawn(self._cancel_and_watch, call, reason):
            self.stop(reason)  # the worker is already going down; make sure of it

    def _spawn(self, func: Callable[..., Coroutine[Any, Any, object]], *args: object) -> bool:
        """Start ``func`` in the worker's task group; False if that group has closed.

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

    async def _cancel_and_watch(self, call: _Call, reason: str) -> None:
        """Ask the bridge to cancel ``call``; replace the worker if it does not end in time."""
        if call.done:
            return
        grace = self.config.cancel_grace
        if call.event.is_set():
            # The deadline watcher set it to wake the caller; wait for the real answer.
            call.event = self.pool._new_event()
        with anyio.move_on_after(grace):
            if not await self._send_cancel(call):
                return
            await call.event.wait()
        if not call.done:
            self.stop(f"{reason}; the request did not end within {grace} s of its cancel")

    async def _send_cancel(self, call: _Call) -> bool:
        """Transport hook: deliver the cancel of ``call``. False if there is nothing to cancel."""
        conn = self.conn
        if conn is None:
            return False
        frame = conn.send_cancel(call.id)
        if frame:
            await self.write(frame)
        return True

    def grant_credit(self, call: _Call, credits: int) -> None:
        conn = self.conn
        if conn is None or call.done or self._tg is None:
            return
        frame = conn.send_credit(call.id, credits)
        if frame and not self._write_nowait(frame):
            self._spawn(self.write, frame)

    def stop(self, reason: str, *, graceful: bool = False) -> None:
        """Ask the supervisor to take this process down (through the ladder) and restart it."""
        if self._stop_reason is not None:
            return
        self._stop_reason = reason
        self._stop_graceful = graceful
        if self.ready:
            logger.info("worker %d (pid %s): stopping: %s", self.id, self.pid, reason)
        self.ready = False
        self.state = "stopping"
        self.pool._worker_unavailable(self)
        if self._stop_scope is not None:
            self._stop_scope.cancel()

    # ------------------------------------------------------------------ reader
    def _route(self, event: Response | StreamChunk | Heartbeat) -> None:
        if type(event) is Response:
            assert event.id is not None
            call = self._calls.pop(event.id)
            self.load -= 1
            if not call.probe:
                self.requests += 1
                self.total_requests += 1
            if call.abandoned:
                self._abandoned -= 1
            call.finish(event, None)
            self.pool._release(self)
            return
        if type(event) is StreamChunk:
            call = self._calls[event.id]
            assert call.chunks is not None
            call.chunks.append(event.data)
            if call.chunk_event is not None:
                call.chunk_event.set()
            return
        self.last_heartbeat = time.monotonic()

    def _on_data(self, conn: ClientConnection, data: bytes) -> bool:
        """Route what the worker wrote. Returns False once the stream is over or broken."""
        if not data:
            self._eof = True
            try:
                conn.receive_eof()
            except WireProtocolError as exc:  # it stopped in the middle of a frame
                self._protocol_error = exc
                self.stop(f"protocol error: {exc}")
                return False
            self.stop("the worker closed its stdout")
            return False
        self._unattributed += len(data)
        try:
            events = conn.receive_data(data)
            if events:
                share = self._unattributed / len(events)
                self._unattributed = 0
                route = self._route
                for event in events:
                    if type(event) is StreamChunk:
                        self._count_chunk(event.id, share)
                    route(event)
        except WireProtocolError as exc:
            for answered in exc.events:  # completed before the violation: deliver them
                self._route(cast("Response | StreamChunk | Heartbeat", answered))
            self._protocol_error = exc
            self.stop(f"protocol error: {exc}")
            return False
        except (KeyError, AssertionError) as exc:  # pragma: no cover - defensive
            self._protocol_error = WireProtocolError(f"internal routing error: {exc!r}")
            self.stop(str(self._protocol_error))
            return False
        return True

    async def _watch_process(self, proc: WorkerProcess) -> None:
        """Notice the process's exit directly (its pidfd), not by EOF on stdout: a
        descendant (a forked child) may hold stdout open long after the worker died."""
        await proc.wait()
        if self._stop_reason is not None:
            return
        conn = self.conn
        if not self.ready:
            if _hung_up(proc.stdout_fd):
                return  # the start-up reads what it wrote, then the end of the stream
        elif conn is not None:
            # Answers it wrote before it exited may still be in the pipe: route them first.
            while True:
                try:
                    data = os.read(proc.stdout_fd, _READ_SIZE)
                except BlockingIOError:
                    break  # still open (a descendant holds it), and empty
                except OSError:
                    data = b""
                if not self._on_data(conn, data):
                    return  # end of stream: it has stopped the worker
        self.stop("the worker process exited")

    def _count_chunk(self, request_id: int, size: float) -> None:
        call = self._calls.get(request_id)
        if call is not None:
            call.bytes_in += size
            call.chunks_in += 1

    async def _read_loop(self, proc: WorkerProcess, conn: ClientConnection) -> None:
        """The reader on trio: one ``wait_readable`` and one ``os.read`` per batch of frames."""
        fd = proc.stdout_fd
        read = os.read
        on_data = self._on_data
        while True:
            await anyio.wait_readable(fd)
            try:
                data = read(fd, _READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not on_data(conn, data):
                return

    async def _read_loop_asyncio(self, proc: WorkerProcess, conn: ClientConnection) -> None:
        """The reader on asyncio: one persistent ``add_reader`` callback routes each batch.

        This saves a task switch and a reader registration per read; the task only keeps
        the callback's lifetime inside the worker's task group.
        """
        import asyncio

        loop = asyncio.get_running_loop()
        fd = proc.stdout_fd
        over = asyncio.Event()

        def on_readable() -> None:
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not self._on_data(conn, data):
                loop.remove_reader(fd)
                over.set()

        loop.add_reader(fd, on_readable)
        try:
            await over.wait()
        finally:
            loop.remove_reader(fd)

    async def _drain_stderr(self, proc: WorkerProcess, done: anyio.Event) -> None:
        """Always read stderr (a full pipe would block the worker); keep a bounded tail."""
        fd = proc.stderr_fd
        limit = self.config.stderr_tail_bytes
        pending = b""
        try:
            while True:
                await anyio.wait_readable(fd)
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                tail = self._stderr_tail
                tail += data
                if len(tail) > limit:
                    del tail[: len(tail) - limit]
                if _stderr_hint_pending and not logger.isEnabledFor(logging.INFO):
                    _stderr_hint(self.id, proc.pid, data)
                if logger.isEnabledFor(logging.INFO):
                    lines = (pending + data).split(b"\n")
                    pending = lines.pop()[-limit:]
                    for line in lines:
                        logger.info(
                            "worker %d (pid %d): %s",
                            self.id,
                            proc.pid,
                            line.decode("utf-8", "replace"),
                        )
            if pending and logger.isEnabledFor(logging.INFO):
                logger.info(
                    "worker %d (pid %d): %s", self.id, proc.pid, pending.decode("utf-8", "replace")
                )
        finally:
            done.set()

    # ------------------------------------------------------------------ start-up
    async def _read_exact(self, proc: WorkerProcess, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            await anyio.wait_readable(proc.stdout_fd)
            try:
                data = os.read(proc.stdout_fd, n - len(buf))
            except BlockingIOError:
                continue
            if not data:
                raise _StopWorker("the worker exited during protocol negotiation")
            buf += data
        return bytes(buf)

    async def _negotiate(self, proc: WorkerProcess) -> tuple[str, frozenset[str], int]:
        adapter = self.adapter
        if not adapter.negotiate:
            return adapter.wire, frozenset(), 1
        self._phase = "protocol negotiation"
        offered = adapter.offered_protocols()
        hello = ProtocolNegotiation(
            supported=tuple(offered),
            preferred=offered[0],
            grace=self.config.shutdown_grace,
            max_frame_size=self.config.max_frame_size,
        )
        await self.write(encode_frame(codecs.JSON.encode(hello.to_wire())))
        got_header = False
        payload = b""
        with anyio.move_on_after(self.config.negotiation_timeout) as scope:
            header = await self._read_exact(proc, 4)
            got_header = True
            size = int.from_bytes(header, "big")
            if size > self.config.max_frame_size:
                raise _StopWorker(_not_a_frame(header + _read_available(proc.stdout_fd)))
            payload = await self._read_exact(proc, size)
        if scope.cancelled_caught:
            if got_header:
                raise _StopWorker("the worker sent half a negotiation reply")
            logger.info(
                "worker %d: no answer to negotiation within %s s; using JSON",
                self.id,
                self.config.negotiation_timeout,
            )
            return "json", frozenset(), 1
        try:
            selected = parse_negotiation_reply(payload, offered)
        except WireProtocolError as exc:
            raise _StopWorker(f"unreadable negotiation reply: {exc}") from None
        if selected is None:
            return "json", frozenset(), 1
        return selected.protocol, selected.features, selected.max_concurrency

    async def _init_ping(self, proc: WorkerProcess, conn: ClientConnection) -> None:
        """Send the adapter's init command and read its answer inline (no reader task yet)."""
        command = self.adapter.init_command
        if command is None:
            return
        self._phase = f"the init command {command!r} (the handler's start-up)"
        request_id = self.pool._next_id()
        frame = self.pool._encode_request(conn.codec, request_id, command, {}, False)
        conn.start_request(request_id, False)
        await self.write(frame)
        first = True
        while True:
            await anyio.wait_readable(proc.stdout_fd)
            try:
                data = os.read(proc.stdout_fd, _READ_SIZE)
            except BlockingIOError:
                continue
            if not data:
                raise _StopWorker(f"the worker exited before answering {command!r}")
            try:
                events = conn.receive_data(data)
            except WireProtocolError as exc:
                if constants.PROTOCOL_SELECTED in str(exc):
                    raise _StopWorker(
                        "the answer to protocol negotiation arrived after negotiation_timeout "
                        f"({self.config.negotiation_timeout} s); raise that timeout"
                    ) from None
                if first and not exc.events:
                    raise _StopWorker(_not_a_frame(data)) from None
                raise
            first = False
            for event in events:
                if isinstance(event, Response):
                    if not event.success:
                        raise _StopWorker(f"init command {command!r} failed: {event.error}")
                    return

    # ------------------------------------------------------------------ supervision
    async def run(self) -> None:
        """Keep a process running in this slot until the pool closes or the breaker trips."""
        crashes: deque[float] = deque()
        backoff = self.config.restart_backoff
        try:
            while not self.pool._closing:
                try:
                    crashed = await self._run_once()
                except Exception as exc:
                    # A bug of ours must not take the caller's whole pool down: log it loudly,
                    # count it as a crash, and let the breaker decide.
                    logger.exception("worker %d: internal error", self.id)
                    self.last_error = f"internal error: {exc!r}"
                    self._first_attempt_done.set()
                    crashed = True
                if self.pool._closing:
                    break
                now = time.monotonic()
                healthy = self._ready_at and (
                    self.requests > 0 or now - self._ready_at >= _HEALTHY_RUN
                )
                if not crashed or healthy:
                    # A planned stop, or death after a healthy run (it served requests or
                    # lived a while; say it was killed from outside): not a crash loop.
                    # Restart at once, and forget earlier crashes.
                    backoff = self.config.restart_backoff
                    crashes.clear()
                    if crashed:
                        self.restarts += 1
                    continue
                crashes.append(now)
                while crashes and now - crashes[0] > self.config.restart_window:
                    crashes.popleft()
                if len(crashes) > self.config.max_restarts:
                    # The breaker opens: callers fail fast with the reason; the slot tries
                    # again after restart_window (a dependency may have come back).
                    window = self.config.restart_window
                    self.broken = True
                    self.breaker_reason = (
                        f"worker slot {self.id}: crash breaker open after {len(crashes)} "
                        f"crashes within {window} s (max_restarts="
                        f"{self.config.max_restarts}); retried {window} s after it opened; "
                        f"last error: {self.last_error}"
                    )
                    logger.error("%s", self.breaker_reason)
                    self.state = "stopped"
                    self.pool._worker_broken(self)
                    await anyio.sleep(window)  # the pool's close cancels it
                    crashes.clear()
                    backoff = self.config.restart_backoff
                    self.broken = False
                    self.restarts += 1
                    logger.info("worker slot %d: crash breaker closed; starting again", self.id)
                    continue
                delay = backoff * (0.5 + random.random())
                backoff = min(backoff * 2, self.config.restart_backoff_max)
                await anyio.sleep(delay)
                self.restarts += 1
        finally:
            self.state = "stopped"
            self.ready = False
            self._first_attempt_done.set()

    async def _run_once(self) -> bool:
        """Run one process from spawn to reap. Returns True if it crashed."""
        adapter = self.adapter
        config = self.config
        self._reset()
        env = self._environment()
        argv = adapter.argv()
        if config.hardened:
            argv = [*_nanny_argv(config.shutdown_grace, config.kill_grace), "--", *argv]
        try:
            proc = spawn_worker(argv, env=env, cwd=adapter.cwd)
        except OSError as exc:
            self.last_error = f"could not start {adapter.argv()[0]!r}: {exc}"
            self._stderr_tail[:] = self.last_error.encode()
            self._first_attempt_done.set()
            return True
        self.proc = proc
        if self.pool.telemetry.active:
            self.pool.telemetry.emit(tm.WorkerStarted(self.id, proc.pid, self.restarts))
        stderr_done = anyio.Event()
        crashed = True
        exit_reason = ""
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self._drain_stderr, proc, stderr_done)
                outer.start_soon(self._watch_process, proc)
                try:
                    exit_reason = await self._serve(proc)
                finally:
                    with anyio.CancelScope(shield=True):
                        crashed = await self._take_down(proc, exit_reason, stderr_done)
                        outer.cancel_scope.cancel()
        finally:
            proc.kill_now()
            proc.close()
            self.conn = None
            self._first_attempt_done.set()
        return crashed

    def _reset(self) -> None:
        self.state = "starting"
        self.ready = False
        self.draining = False
        self.free = 0
        self.load = 0
        self.requests = 0
        self._calls = {}
        self._abandoned = 0
        self._stop_reason = None
        self._stop_graceful = False
        self._ready_at = 0.0
        self._protocol_error = None
        self._eof = False
        self._unattributed = 0
        self._writing = False
        self._outbox = []
        self._flush_pending = False
        self._flush_wakeup = None
        self._stderr_tail = bytearray()
        self.features = frozenset()
        self.protocol = None
        self.last_heartbeat = 0.0

    async def _serve(self, proc: WorkerProcess) -> str:
        """Negotiate, ping, then serve until stopped. Returns why it stopped."""
        config = self.config
        started = time.monotonic()
        with anyio.CancelScope() as stop_scope:
            self._stop_scope = stop_scope
            if self.pool._closing:
                self.stop("the pool is closing")
            self._phase = "start-up"
            try:
                with anyio.fail_after(config.worker_init_timeout):
                    max_concurrency = await self._handshake(proc)
            except TimeoutError:
                self.stop(
                    f"{self._phase} did not finish within worker_init_timeout="
                    f"{config.worker_init_timeout} s; raise worker_init_timeout if the "
                    "handler needs longer to start"
                )
            except _StopWorker as exc:
                self.stop(str(exc))
            except WireProtocolError as exc:
                self._protocol_error = exc
                self.stop(f"protocol error during start-up: {exc}")
            if self._stop_reason is not None:
                return self._stop_reason
            protocol, features = self.protocol or "", self.features
            if constants.FEATURE_MULTIPLEX in features:
                self.capacity = max(1, min(config.max_in_flight, max_concurrency))
            else:
                self.capacity = 1
            try:
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    try:
                        self._start_io(tg, proc)
                        self.ready = True
                        self.state = "idle"
                        init_time = time.monotonic() - started
                        logger.debug(
                            "worker %d ready: pid %d, %s, %.3f s",
                            self.id,
                            proc.pid,
                            protocol,
                            init_time,
                        )
                        if self.pool.telemetry.active:
                            self.pool.telemetry.emit(
                                tm.WorkerReady(self.id, proc.pid, init_time, protocol, features)
                            )
                        self._first_attempt_done.set()
                        self._ready_at = time.monotonic()
                        self.pool._worker_ready(self)
                        await anyio.sleep_forever()
                    finally:
                        # Nothing new starts here once the body ends (see _spawn).
                        self._tg = None
            finally:
                self._tg = None
                self._stop_scope = None
                self._flush_wakeup = None  # the flusher is gone: write directly from now on
        return self._stop_reason or "stopped"

    # Transport hooks: a worker speaking another transport (gRPC) overrides these four.
    def _environment(self) -> dict[str, str]:
        """The process environment: the adapter's, plus the pool's ``SNAKEPIT_*`` variables."""
        env = self.adapter.environment()
        env[constants.ENV_RUN_ID] = self.pool.run_id
        env[constants.ENV_WORKER_ID] = str(self.id)
        env[constants.ENV_LIFELINE_GRACE] = str(self.config.shutdown_grace)
        env[constants.ENV_SESSION_TTL] = str(self.config.session_ttl)
        return env

    async def _handshake(self, proc: WorkerProcess) -> int:
        """Negotiate and run the init command; set ``conn``, ``protocol`` and ``features``.

        Returns the bridge's ``max_concurrency``. Runs under ``worker_init_timeout``.
        """
        protocol, features, max_concurrency = await self._negotiate(proc)
        conn = ClientConnection(codecs.get_codec(protocol), self.config.max_frame_size)
        self.conn = conn
        self.protocol = protocol
        self.features = features
        await self._init_ping(proc, conn)
        return max_concurrency

    def _start_io(self, tg: anyio.abc.TaskGroup, proc: WorkerProcess) -> None:
        """Start the tasks that carry responses back (for stdio: the stdout reader)."""
        assert self.conn is not None
        if sniffio.current_async_library() == "asyncio":
            tg.start_soon(self._read_loop_asyncio, proc, self.conn)
        else:
            tg.start_soon(self._read_loop, proc, self.conn)
        if self.capacity > 1:
            self._flush_wakeup = self.pool._new_event()
            tg.start_soon(self._flusher)

    @property
    def codec(self) -> codecs.Codec:
        """The codec the pool encodes this worker's requests with (at the call site)."""
        assert self.conn is not None
        return self.conn.codec

    async def _take_down(self, proc: WorkerProcess, reason: str, stderr_done: anyio.Event) -> bool:
        """Ladder the process down, fail what it held. Runs shielded. True if it crashed."""
        config = self.config
        self.ready = False
        self.state = "stopping"
        if self._stop_reason is None:
            self._stop_reason = reason or "stopped"
        self.pool._worker_unavailable(self)
        planned = self.pool._closing or self._stop_graceful
        graceful_step: Callable[[], Any] | None = None
        if self._eof and not planned:
            # It closed its stdout: most likely it is exiting. Let it, to learn its exit code.
            await proc.wait(min(0.5, config.kill_grace))
        if proc.poll() is None:
            if planned and constants.FEATURE_SHUTDOWN in self.features and self.conn is not None:
                conn = self.conn

                async def graceful_step_fn() -> None:
                    await self._flush_outbox()  # in order: what callers queued, then shutdown
                    await self._write_now(conn.send_shutdown())
                    proc.close_stdin()

                graceful_step = graceful_step_fn
            elif planned:

                async def close_stdin() -> None:
                    proc.close_stdin()

                graceful_step = close_stdin
        step = await proc.terminate_ladder(
            graceful=graceful_step,
            shutdown_grace=config.shutdown_grace,
            # A nanny runs its own ladder on SIGTERM: give it the time to finish it.
            kill_grace=config.kill_grace + (1.0 if config.hardened else 0.0),
        )
        with anyio.move_on_after(0.5):
            await stderr_done.wait()
        crashed = not planned
        for call in list(self._calls.values()):
            call.finish(None, self._failure_for_calls(proc))
        self._calls.clear()
        self.load = 0
        self._abandoned = 0
        if crashed:
            self.last_error = (
                f"{self._stop_reason} (exit code {proc.exit_code}, signal {proc.exit_signal})"
            )
        logger.log(
            logging.WARNING if crashed else logging.DEBUG,
            "worker %d (pid %d) exited (%s, rc=%s, via %s)",
            self.id,
            proc.pid,
            self._stop_reason,
            proc.returncode,
            step,
        )
        if self.pool.telemetry.active:
            self.pool.telemetry.emit(
                tm.WorkerExited(
                    self.id,
                    proc.pid,
                    proc.exit_code,
                    proc.exit_signal,
                    crashed,
                    self._stop_reason or "",
                )
            )
        return crashed

    def _failure_for_calls(self, proc: WorkerProcess) -> SnakepitError:
        tail = self.stderr_tail()
        if self._protocol_error is not None:
            return ProtocolError(
                f"worker {self.id} (pid {proc.pid}) broke the protocol: {self._protocol_error}"
            )
        return WorkerCrashed(
            f"worker {self.id} (pid {proc.pid}) went away: {self._stop_reason}",
            exit_code=proc.exit_code,
            signal=proc.exit_signal,
            stderr_tail=tail,
        )

    # ------------------------------------------------------------------ health
    def needs_recycling(self, now: float) -> str | None:
        """Why this worker should be replaced now, or None."""
        config = self.config
        proc = self.proc
        if proc is None or not self.ready:
            return None
        if config.max_requests is not None and self.requests >= config.max_requests:
            return f"served {self.requests} requests (max_requests={config.max_requests})"
        if config.max_lifetime is not None and now - proc.started_at >= config.max_lifetime:
            return f"alive for {now - proc.started_at:.1f} s (max_lifetime={config.max_lifetime})"
        if config.max_memory is not None:
            rss = read_rss(proc.pid)
            if rss is not None and rss > config.max_memory:
                return f"RSS {rss} bytes over max_memory={config.max_memory}"
        return None

    async def wait_first_attempt(self) -> None:
        await self._first_attempt_done.wait()

    @property
    def first_attempt_over(self) -> bool:
        """The first process of this slot became ready or failed."""
        return self._first_attempt_done.is_set()


_stderr_hint_pending = True


def _stderr_hint(worker_id: int, pid: int, data: bytes) -> None:
    """The first time a worker writes on stderr in this program and nothing shows the
    workers' output, say so once at WARNING (print() in a handler is not lost silently)."""
    global _stderr_hint_pending
    _stderr_hint_pending = False
    first = data.split(b"\n", 1)[0][:200].decode("utf-8", "replace")
    logger.warning(
        "worker %d (pid %d) wrote on stderr: %s\n(workers' stderr is logged at INFO on the "
        "%r logger; shown once: call logging.basicConfig(level=logging.INFO) to see all of it)",
        worker_id,
        pid,
        first,
        logger.name,
    )


def _hung_up(fd: int) -> bool:
    """True when no process holds the write end of the pipe ``fd`` any more."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return any(mask & (select.POLLHUP | select.POLLERR) for _, mask in poller.poll(0))


def _read_available(fd: int, limit: int = 200) -> bytes:
    """Up to ``limit`` bytes that can be read from ``fd`` now (no waiting)."""
    try:
        return os.read(fd, limit)
    except OSError:
        return b""


def _not_a_frame(data: bytes) -> str:
    """The error for a worker whose first output is not a protocol frame."""
    return (
        "the worker wrote something on stdout that is not a protocol frame: "
        f"{bytes(data[:80])!r}; a worker must speak the wire protocol on stdout "
        "(docs/protocol.md) and write its diagnostics to stderr"
    )


def _nanny_argv(grace: float, kill_grace: float) -> list[str]:
    """Start the nanny by file path with ``-I -S``: no site, no environment, standard library
    only, so it starts fast and whatever PYTHONPATH the worker needs does not affect it."""
    import snakepit_bridge.nanny as nanny

    return [
        sys.executable,
        "-I",
        "-S",
        nanny.__file__,
        "--grace",
        str(grace),
        "--kill-grace",
        str(kill_grace),
    ]


def startup_failure(workers: list[Worker]) -> StartupError:
    if workers and all(w.broken for w in workers):
        reasons = "; ".join(w.breaker_reason for w in workers[:3])
        more = f" (and {len(workers) - 3} more)" if len(workers) > 3 else ""
        tails = [f"[worker {w.id}]\n{w.stderr_tail()}".rstrip() for w in workers]
        return StartupError(
            f"every worker slot's crash breaker is open: {reasons}{more}",
            stderr_tail="\n".join(tails),
        )
    tails = [f"[worker {w.id}] {w.last_error}\n{w.stderr_tail()}".rstrip() for w in workers]
    return StartupError(
        f"no worker could be started ({len(workers)} tried)",
        stderr_tail="\n".join(tails),
    )
