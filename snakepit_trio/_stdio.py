"""The stdio transport: a local worker process, frames over its stdin and stdout.

The hot path has one task hop: a caller writes its request frame to the worker's stdin itself
(non-blocking ``os.write``), then waits on its call; the reader reads stdout, decodes with the
sans-IO ``ClientConnection`` and wakes exactly that caller through the slot. With several
requests in flight per worker, a flusher writes all the frames of a scheduler turn with one
syscall (each write wakes the worker: ~10 us here).

Liveness comes from the process itself (its pidfd), not from EOF on stdout: a forked
descendant may hold stdout open long after the worker died.

What each await does when cancelled:
- ``send``: if part of a frame went out, the stream is broken and the slot replaces the worker.
- ``watch``, ``serve`` (reader, flusher, stderr drain): they end with their task groups.
- ``close`` runs shielded (by the slot); every wait in the ladder is bounded.
"""

from __future__ import annotations

import functools
import logging
import os
import select
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
from snakepit_trio_bridge.protocol import codecs, constants
from snakepit_trio_bridge.protocol.framing import ProtocolError as WireProtocolError
from snakepit_trio_bridge.protocol.framing import encode_frame
from snakepit_trio_bridge.protocol.messages import (
    ClientConnection,
    PendingFrame,
    ProtocolNegotiation,
    Response,
    StreamChunk,
    parse_negotiation_reply,
)

from ._backend import READ_SIZE, Waitable, read_some
from ._local import LocalProcessTransport
from ._process import WorkerProcess
from ._transport import EventSink, Handshake, StartFailed, TransportContext, encode_request

if TYPE_CHECKING:
    from ._adapters import Adapter

__all__ = ["DEFER_OVER", "StdioTransport"]

# Frames bigger than this are decoded in a thread, so that one big frame does not stall every
# other worker's calls: a megabyte of small containers costs 0.4-0.7 s to decode on a loaded
# 2-vCPU machine. A frame of a few items (one big bin: a bytes echo) decodes at the speed of a
# copy and is never deferred (``Codec.decodes_quickly``), so it pays no thread hop.
DEFER_OVER: Final = 256 * 1024

logger = logging.getLogger("snakepit_trio.worker")


class StdioTransport(LocalProcessTransport):
    """A local worker process speaking the stdio protocol (docs/protocol.md)."""

    def __init__(self, adapter: Adapter, context: TransportContext) -> None:
        super().__init__(adapter, context)
        self._conn: ClientConnection | None = None
        self._features: frozenset[str] = frozenset()
        self._sink: EventSink | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._unattributed = 0
        self._pending: PendingFrame | None = None  # a big frame, decoded off the event loop
        self._writing = False
        self._write_lock = anyio.Lock()
        self._outbox: list[bytes] = []
        self._flush_pending = False
        self._flush_wakeup: Waitable | None = None  # set while a flusher task runs
        self._max_frame_size = context.config.max_frame_size

    @property
    def codec(self) -> codecs.Codec:
        assert self._conn is not None
        return self._conn.codec

    def _on_exit(self, proc: WorkerProcess, sink: EventSink) -> bool:
        """Route the answers still in the pipe first; at the end of the stream the reader
        has told the slot already."""
        conn = self._conn
        if not sink.serving:
            # During start-up the handshake reads what it wrote, then the end of the stream.
            return not _hung_up(proc.stdout_fd)
        if conn is None or self._pending is not None:
            return True  # (a big frame is being decoded: the calls behind it fail)
        while True:
            try:
                data = os.read(proc.stdout_fd, READ_SIZE)
            except BlockingIOError:
                return True  # still open (a descendant holds it), and empty
            except OSError:
                data = b""
            if not self._on_data(conn, sink, data):
                return False

    # ------------------------------------------------------------------ handshake
    async def handshake(self) -> Handshake:
        proc = self._proc
        assert proc is not None
        protocol, features, max_concurrency = await self._negotiate(proc)
        codec = codecs.get_codec(protocol, self._config.max_containers)
        conn = ClientConnection(codec, self._max_frame_size)
        self._conn = conn
        self._features = features
        await self._init_command(proc, conn)
        return Handshake(protocol, features, max_concurrency)

    async def _read_exact(self, proc: WorkerProcess, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            data = await read_some(proc.stdout_fd, n - len(buf))
            if not data:
                raise StartFailed("the worker exited during protocol negotiation")
            buf += data
        return bytes(buf)

    async def _negotiate(self, proc: WorkerProcess) -> tuple[str, frozenset[str], int]:
        adapter = self._adapter
        config = self._config
        if not adapter.negotiate:
            return adapter.wire, frozenset(), 1
        self.phase = "protocol negotiation"
        offered = adapter.offered_protocols()
        hello = ProtocolNegotiation(
            supported=tuple(offered),
            preferred=offered[0],
            grace=config.shutdown_grace,
            max_frame_size=config.max_frame_size,
        )
        await self.send(encode_frame(codecs.JSON.encode(hello.to_wire())))
        got_header = False
        payload = b""
        with anyio.move_on_after(config.negotiation_timeout) as scope:
            header = await self._read_exact(proc, 4)
            got_header = True
            size = int.from_bytes(header, "big")
            if size > config.max_frame_size:
                raise StartFailed(_not_a_frame(header + _read_available(proc.stdout_fd)))
            payload = await self._read_exact(proc, size)
        if scope.cancelled_caught:
            if got_header:
                raise StartFailed("the worker sent half a negotiation reply")
            logger.info(
                "worker %d: no answer to negotiation within %s s; using JSON",
                self._context.slot_id,
                config.negotiation_timeout,
            )
            return "json", frozenset(), 1
        try:
            selected = parse_negotiation_reply(payload, offered)
        except WireProtocolError as exc:
            raise StartFailed(f"unreadable negotiation reply: {exc}") from None
        if selected is None:
            return "json", frozenset(), 1
        return selected.protocol, selected.features, selected.max_concurrency

    async def _init_command(self, proc: WorkerProcess, conn: ClientConnection) -> None:
        """Send the adapter's init command and read its answer inline (no reader task yet)."""
        command = self._adapter.init_command
        if command is None:
            return
        self.phase = f"the init command {command!r} (the handler's start-up)"
        request_id = self._context.next_id()
        frame = encode_request(
            conn.codec, request_id, command, {}, max_frame_size=self._max_frame_size
        )
        conn.start_request(request_id, False)
        await self.send(frame)
        first = True
        while True:
            data = await read_some(proc.stdout_fd)
            if not data:
                raise StartFailed(f"the worker exited before answering {command!r}")
            try:
                events = conn.receive_data(data)
            except WireProtocolError as exc:
                if constants.PROTOCOL_SELECTED in str(exc):
                    raise StartFailed(
                        "the answer to protocol negotiation arrived after negotiation_timeout "
                        f"({self._config.negotiation_timeout} s); raise that timeout"
                    ) from None
                if first and not exc.events:
                    raise StartFailed(_not_a_frame(data)) from None
                raise
            first = False
            for event in events:
                if isinstance(event, Response):
                    if not event.success:
                        raise StartFailed(f"init command {command!r} failed: {event.error}")
                    return

    # ------------------------------------------------------------------ serving
    async def serve(self, sink: EventSink, capacity: int) -> None:
        """The reader (and, with several calls in flight, the flusher).

        A frame over ``DEFER_OVER`` bytes is decoded in a thread, so one big frame of tiny
        containers does not stall every other worker's calls; the reader reads on once it is
        routed (the frames behind it wait in the connection, in order).
        """
        proc, conn = self._proc, self._conn
        assert proc is not None and conn is not None
        self._sink = sink
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                if capacity > 1:
                    self._flush_wakeup = self._context.backend.new_event()
                    tg.start_soon(self._flusher)

                def on_data(data: bytes) -> bool:
                    return self._on_data(conn, sink, data, DEFER_OVER)

                pump = self._context.backend.pump
                while True:
                    await pump(proc.stdout_fd, on_data)
                    pending = self._pending
                    if pending is None:
                        break  # the end of the stream, or a violation: the slot was told
                    await anyio.to_thread.run_sync(pending.decode, abandon_on_cancel=True)
                    self._pending = None
                    if not self._route(sink, functools.partial(conn.resume, pending)):
                        break
                tg.cancel_scope.cancel()
        finally:
            self._tg = None
            self._flush_wakeup = None  # the flusher is gone: write directly from now on

    def _on_data(
        self, conn: ClientConnection, sink: EventSink, data: bytes, defer_over: int | None = None
    ) -> bool:
        """Route what the worker wrote. Returns False once the stream is over or broken, or
        when a big frame waits in ``_pending`` to be decoded off the event loop."""
        if not data:
            self._eof = True
            try:
                conn.receive_eof()
            except WireProtocolError as exc:  # it stopped in the middle of a frame
                sink.protocol_error(exc, [])
                return False
            sink.ended("the worker closed its stdout")
            return False
        self._unattributed += len(data)
        return self._route(sink, lambda: conn.receive_data(data, defer_over))

    def _route(self, sink: EventSink, receive: Callable[[], list[Any]]) -> bool:
        """Route the events ``receive()`` completes; False when reading must pause (a
        PendingFrame) or stop (a violation)."""
        try:
            events = receive()
            if events:
                pending = events[-1]
                if isinstance(pending, PendingFrame):
                    events.pop()
                    self._pending = pending
                if events:
                    share = self._unattributed / len(events)
                    self._unattributed = 0
                    response = sink.response
                    for event in events:
                        if isinstance(event, Response):
                            response(event)
                        elif isinstance(event, StreamChunk):
                            sink.chunk(event, share)
                        else:
                            sink.heartbeat()
        except WireProtocolError as exc:
            sink.protocol_error(exc, list(exc.events))
            return False
        except (KeyError, AssertionError) as exc:  # pragma: no cover - defensive
            sink.protocol_error(WireProtocolError(f"internal routing error: {exc!r}"), [])
            return False
        return self._pending is None

    def open_call(self, call: Any, frame: bytes) -> None:
        conn = self._conn
        assert conn is not None
        conn.start_request(call.id, call.stream)

    def send_nowait(self, frame: bytes) -> bool:
        """With a flusher: queue ``frame`` for its next write (True). Else False."""
        wakeup = self._flush_wakeup
        if wakeup is None:
            return False
        self._outbox.append(frame)
        if not self._flush_pending:
            self._flush_pending = True
            wakeup.set()
        return True

    async def send(self, frame: bytes) -> None:
        """Write a whole frame to the worker's stdin.

        The fast path is one non-blocking ``os.write``. A broken pipe is not an error here:
        the worker died, and ``watch`` reports it with the real cause.
        """
        if not self.send_nowait(frame):
            await self._write_now(frame)

    async def _flusher(self) -> None:
        """Several calls in flight: write the queued frames, in order, one write per turn."""
        while True:
            wakeup = self._flush_wakeup
            assert wakeup is not None
            await wakeup.wait()
            self._flush_wakeup = self._context.backend.new_event()
            self._flush_pending = False
            await self._flush_outbox()

    async def _flush_outbox(self) -> None:
        outbox = self._outbox
        if outbox:
            data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
            outbox.clear()
            await self._write_now(data)

    async def _write_now(self, data: bytes) -> None:
        proc = self._proc
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
            if proc.stdin_closed or self._proc is not proc:
                return  # its stdin closed while this write waited for the lock
            self._writing = True
            try:
                await self._write_rest(fd, view)
            finally:
                self._writing = False

    def _write_nowait(self, data: bytes) -> bool:
        """Write a small frame (at most PIPE_BUF, so all or nothing) if that can be done now."""
        proc = self._proc
        if proc is None or proc.stdin_closed or self._writing or self._write_lock.locked():
            return False
        try:
            return os.write(proc.stdin_fd, data) == len(data)
        except BlockingIOError:
            return False
        except OSError:
            return True  # the worker is gone; watch reports it

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
            if sent < total and (sent or started) and self._sink is not None:
                self._sink.ended("a write was interrupted in the middle of a frame")
            raise

    async def cancel(self, call: Any) -> bool:
        conn = self._conn
        if conn is None:
            return False
        frame = conn.send_cancel(call.id)
        if frame:
            await self.send(frame)
        return True

    def grant(self, call: Any, credits: int) -> None:
        conn = self._conn
        if conn is None:
            return
        frame = conn.send_credit(call.id, credits)
        if frame and not self._write_nowait(frame):
            tg = self._tg
            if tg is not None:
                try:
                    tg.start_soon(self.send, frame)
                except RuntimeError:  # pragma: no cover - the reader's group just closed
                    pass

    # ------------------------------------------------------------------ take-down
    def _graceful_step(self, proc: WorkerProcess) -> Callable[[], Awaitable[None]]:
        """A bridge that announces ``shutdown`` gets the frame after what callers queued."""
        conn = self._conn
        if constants.FEATURE_SHUTDOWN not in self._features or conn is None:
            return super()._graceful_step(proc)
        shutdown = conn.send_shutdown()

        async def send_shutdown() -> None:
            await self._flush_outbox()  # in order: what callers queued, then shutdown
            await self._write_now(shutdown)
            proc.close_stdin()

        return send_shutdown

    async def _after_close(self) -> None:
        self._conn = None


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
        "the worker wrote something on stdout that is not a response frame: "
        f"{bytes(data[:80])!r}; a worker must speak the wire protocol on stdout "
        "(docs/protocol.md) and write its diagnostics to stderr"
    )
