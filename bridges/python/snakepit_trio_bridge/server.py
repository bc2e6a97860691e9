"""The stdio server: frames in on stdin, frames out on stdout (see docs/protocol.md).

Single-threaded. Requests are pipelined: the pool may send many, they are queued and run one
at a time in arrival order, in the main thread. While a handler runs, stdin is still read
(between the chunks of a stream, whenever the handler asks ``ctx.cancelled``, and all along
for async handlers), so ``cancel``, ``credit`` and ``shutdown`` frames take effect and new
requests join the queue. Responses of quick requests that arrived together leave in one write.

Start-up order: the negotiation frame is read and answered first, and only then is the
command handler imported and built. So a slow constructor (a model load) is bounded by the
pool's ``worker_init_timeout``, which covers the init ping, and never by its short
``negotiation_timeout``. A handler that cannot be loaded is reported on stderr (the whole
traceback) and to the pool: the first request (the init ping) is answered with an error that
names the exception and where it was raised; then the bridge exits with status 1.

A response that cannot be sent (over ``max_frame_size``, or holding a value the codec cannot
encode) is replaced at once by a short error response that says why; an error's traceback is
cut first, then its message. A stream chunk that cannot be sent ends its stream that way. A
handler that overrides ``default`` is asked about each value the codec cannot encode first
(see ``BaseCommandHandler.default``): the codec calls it, so it costs nothing where no value
needs it.

Exit status: 0 after stdin EOF or a ``shutdown`` frame (once the queued work is done), or when
stdout is closed; 1 when the handler could not be loaded; 2 when the input breaks the framing
(a frame over the size limit, or EOF inside a frame); 143 after SIGTERM (raised as
``SystemExit`` in the handler so its ``finally`` blocks run).
"""

from __future__ import annotations

import _thread
import os
import sys
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Generator
from select import select

from . import _jsonlite, _lifeline
from .context import Cancelled, RequestContext, bind_context, unbind_context
from .protocol.codecs import MSGPACK_AVAILABLE, get_codec
from .protocol.constants import (
    ALL_FEATURES,
    CANCEL,
    CHUNK,
    CREDIT,
    ENV_HEARTBEAT_INTERVAL,
    FEATURE_HEARTBEAT,
    HEARTBEAT,
    PROTOCOL_NEGOTIATION,
    PROTOCOL_SELECTED,
    SHUTDOWN,
    utc_timestamp,
)
from .protocol.framing import (
    DEFAULT_MAX_FRAME_SIZE,
    FrameDecoder,
    ProtocolError,
    encode_frame,
    encode_frame_parts,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from collections.abc import Callable, Iterator, Mapping
    from types import FrameType
    from typing import Any, TypeAlias, TypeGuard

    from ._async import AsyncRunner
    from .handler import BaseCommandHandler
    from .protocol.codecs import Codec

    HandlerSource: TypeAlias = BaseCommandHandler | str | Callable[[], BaseCommandHandler] | None
else:  # ``signal`` wraps ``_signal`` in enums, which cost ~3 ms of start-up
    import _signal

__all__ = ["DEFAULT_MAX_CONCURRENCY", "FEATURES", "ProtocolHandler"]

# Heartbeats are announced only when the pool asks for them (``ENV_HEARTBEAT_INTERVAL``).
FEATURES = sorted(ALL_FEATURES - {FEATURE_HEARTBEAT})
DEFAULT_MAX_CONCURRENCY = 64
SHUTTING_DOWN_ERROR_TYPE = "ShuttingDown"
EXIT_OK = 0
EXIT_HANDLER = 1
EXIT_FRAMING = 2
EXIT_SIGTERM = 143

# Below glibc's mmap threshold (128 KiB): a larger os.read buffer costs an mmap and a munmap
# per call, which here is ~60 us, several times the rest of a request's cost.
_READ_SIZE = 64 * 1024
# Payloads at least this big go out by writev instead of being copied behind their header.
_GATHER_ABOVE = 64 * 1024
_IOV_MAX = 1024
# Results of these types are returned as they are: no generator or awaitable checks needed.
_PLAIN_RESULTS = frozenset({dict, list, str, int, float, bool, bytes, type(None)})
# A command whose last run took less than this is "quick": its response may wait (briefly) to
# leave in one write with the responses of the requests queued behind it.
_QUICK = 0.001
# ctx.cancelled polls stdin at most this often (a select() each time otherwise).
_POLL_INTERVAL = 0.001
# After stdin EOF, how long to look for the lifeline closing too (the pool died, not closed).
_LIFELINE_CHECK = 0.05
# A handler that failed to load: how long to wait for a request (the pool's init ping, sent
# right after negotiation) to answer with the reason before exiting anyway.
_LOAD_FAILURE_WAIT = 10.0


class _StdoutClosed(SystemExit):
    """Stdout is gone: nothing can be answered any more. Unwinds the handler (and asyncio)."""


class _Terminated(SystemExit):
    """Raised by the SIGTERM handler."""


class _Unsendable(Exception):
    """A result or stream chunk cannot be sent: a short error of its request (no traceback)."""

    def __init__(self, message: str, error_type: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class _Job:
    """The request being run."""

    __slots__ = ("credits", "ctx", "seq")

    def __init__(self, ctx: RequestContext, credits: int | None) -> None:
        self.ctx = ctx
        self.credits = credits  # None: no limit
        self.seq = 0


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


class ProtocolHandler:
    """Serves a command handler over stdin/stdout. ``run()`` returns the exit status.

    ``command_handler`` is a handler instance, or what to build one from once negotiation is
    answered: a ``"package.module:Class"`` spec, a class or another callable returning an
    instance, or None for the generic handler. ``protocol`` is ``"auto"`` (the first frame
    negotiates the codec), ``"json"`` or ``"msgpack"`` (no negotiation frame is expected).
    """

    def __init__(
        self,
        command_handler: HandlerSource = None,
        protocol: str = "auto",
        *,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    ) -> None:
        if protocol not in ("auto", "json", "msgpack"):
            raise ValueError(f"protocol must be 'auto', 'json' or 'msgpack', not {protocol!r}")
        if protocol == "msgpack" and not MSGPACK_AVAILABLE:
            raise ValueError("protocol 'msgpack' needs the msgpack package")
        from .handler import BaseCommandHandler

        self._factory: Callable[[], BaseCommandHandler] | None = None
        if isinstance(command_handler, BaseCommandHandler):
            self.command_handler: BaseCommandHandler = command_handler
            self._handler_name = _qualified_name(type(command_handler))
        elif command_handler is None or isinstance(command_handler, str):
            spec = command_handler or None
            self._handler_name = spec or "snakepit_trio_bridge.generic:GenericCommandHandler"
            self._factory = lambda: _load(spec)
        elif callable(command_handler):
            self._handler_name = _qualified_name(command_handler)
            self._factory = command_handler
        else:
            raise TypeError(
                "command_handler must be a BaseCommandHandler, a 'package.module:Class' spec "
                f"or a callable that builds one, not {type(command_handler).__name__}"
            )
        self.protocol = protocol
        self.max_concurrency = max(1, int(max_concurrency))
        self._codec: Codec | None = None if protocol == "auto" else get_codec(protocol)
        self._max_frame_size = DEFAULT_MAX_FRAME_SIZE
        self._decoder = FrameDecoder(self._max_frame_size)
        self._in = 0
        self._out = 1
        self._queue: deque[dict[str, Any]] = deque()
        self._outbox: list[bytes] = []
        self._job: _Job | None = None
        self._async: AsyncRunner | None = None
        self._durations: dict[str, float] = {}
        self._last_poll = 0.0
        self._eof = False
        self._shutdown = False
        self._exit_code = EXIT_OK
        # Heartbeats: a thread writes one every interval while a request runs, so the pool can
        # tell a stopped or wedged worker from a busy one. Writes then share a lock.
        self._heartbeat_interval = _heartbeat_interval(os.environ)
        self._write_lock: Any = None

    # ------------------------------------------------------------------ the main loop

    def run(self) -> int:
        """Serve until stdin EOF, a shutdown frame or SIGTERM; return the exit status."""
        self._in, self._out = _claim_stdio()
        _lifeline.start(os.environ)
        previous = _signal.signal(_signal.SIGTERM, _on_sigterm)
        try:
            try:
                # Negotiation first: a slow handler constructor must not hold its answer back.
                while self._codec is None and not self._eof:
                    self._read(block=True)
                self._flush()
                if self._factory is not None and not (self._eof and not self._queue):
                    failure = self._build_handler(self._factory)
                    if failure is not None:
                        self._exit_code = EXIT_HANDLER
                        self._refuse_requests(*failure)
                        return EXIT_HANDLER
                self._serve()
            except _StdoutClosed:
                self._eof = True
            if self._eof and _lifeline.pool_gone(_LIFELINE_CHECK):
                # Stdin and the lifeline both closed: the pool died rather than closed us.
                # Take down what our handlers left in the process group (us included).
                _lifeline.kill_group("stdin and the lifeline closed")
        except _Terminated:
            return EXIT_SIGTERM
        finally:
            _signal.signal(_signal.SIGTERM, previous)
            if self._async is not None:
                self._async.close()
        return self._exit_code

    def _build_handler(self, factory: Callable[[], BaseCommandHandler]) -> tuple[str, str] | None:
        """Build the handler; on failure print the traceback and return (message, type)."""
        from .handler import BaseCommandHandler

        try:
            handler = factory()
            if not isinstance(handler, BaseCommandHandler):
                raise TypeError(
                    f"{self._handler_name} built a {type(handler).__name__}, "
                    "not a snakepit_trio_bridge.BaseCommandHandler"
                )
        except (_Terminated, _StdoutClosed):
            raise
        except (Exception, SystemExit) as exc:
            import traceback

            from .handler import load_failure_message

            message = load_failure_message(self._handler_name, exc)
            try:
                traceback.print_exception(exc, file=sys.stderr)
                sys.stderr.flush()
            except Exception:  # stderr itself is broken: the pool still gets the message
                pass
            _log(message)
            return message, type(exc).__name__
        self.command_handler = handler
        return None

    def _use_default(self) -> None:
        """Have the codec ask the handler's ``default`` about values it cannot encode, if the
        handler overrides it (the base method refuses everything, as the codec alone does).
        Done as the serving loop starts (whoever enters it: ``run()``, or the in-process test
        harness), once the handler and the codec are both known."""
        from .handler import BaseCommandHandler

        handler = getattr(self, "command_handler", None)  # None: stdin closed before the build
        if (
            handler is None
            or self._codec is None
            or type(handler).default is BaseCommandHandler.default
        ):
            return
        from ._responses import DefaultingCodec

        if not isinstance(self._codec, DefaultingCodec):
            self._codec = DefaultingCodec(self._codec, handler.default)

    def _refuse_requests(self, message: str, error_type: str) -> None:
        """Answer the requests that arrive soon (the init ping) with why the handler failed."""
        deadline = time.monotonic() + _LOAD_FAILURE_WAIT
        while not self._queue and not self._eof and self._codec is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select([self._in], [], [], left)[0]:
                break
            self._read(block=False)
        while self._queue:
            self._send(_failure(self._queue.popleft()["id"], message, error_type))
        self._flush()

    def _serve(self) -> None:
        self._use_default()
        while True:
            if self._queue:
                self._poll_input()  # a cancel for a queued request may be waiting
                if self._queue:
                    self._run_next()
            elif self._eof or self._shutdown:
                break
            else:
                self._flush()
                self._read(block=True)
        self._flush()

    # ------------------------------------------------------------------ input

    def _read(self, block: bool) -> bool:
        """Read what stdin has and handle its frames; False once stdin is at its end."""
        if self._eof:
            return False
        if not block and not select([self._in], [], [], 0)[0]:
            return True
        try:
            data = os.read(self._in, _READ_SIZE)
        except OSError:
            data = b""
        if not data:
            self._eof = True
            try:
                self._decoder.check_eof()
            except ProtocolError as exc:
                self._broken(exc)
            return False
        try:
            payloads = self._decoder.feed(data)
        except ProtocolError as exc:
            self._broken(exc)
            return False
        for payload in payloads:
            self._on_payload(payload)
        return True

    def _poll_input(self) -> None:
        """Handle the input that is waiting, if any; rate-limited to one select() per ms."""
        now = time.monotonic()
        if now - self._last_poll >= _POLL_INTERVAL:
            self._last_poll = now
            self._read(block=False)
            self._flush()

    def _poll_running(self) -> bool:
        """What ``ctx.cancelled`` asks: handle waiting input, then say if the running request
        was cancelled."""
        self._poll_input()
        job = self._job
        return job is not None and job.ctx._cancelled

    def _on_readable(self) -> bool:
        """The async loop saw stdin readable."""
        alive = self._read(block=False)
        self._flush()
        return alive

    def _broken(self, exc: ProtocolError) -> None:
        _log(f"broken input framing, exiting: {exc}")
        self._eof = True
        self._exit_code = EXIT_FRAMING
        self._queue.clear()
        if self._job is not None:
            self._cancel_job()

    def _on_payload(self, payload: bytes) -> None:
        codec = self._codec
        if codec is None:
            self._negotiate(payload)
            return
        try:
            message = codec.decode(payload)
        except ProtocolError as exc:
            self._send(_failure(None, str(exc), "ProtocolError"))
            return
        if not isinstance(message, dict):
            self._send(
                _failure(None, f"message is a {type(message).__name__}, not a map", "ProtocolError")
            )
            return
        kind = message.get("type")
        if kind is None:
            if type(message.get("id")) is int and not self._shutdown:
                self._queue.append(message)  # _on_request's common case
            else:
                self._on_request(message)
        elif kind == CANCEL:
            self._on_cancel(message.get("id"))
        elif kind == CREDIT:
            self._on_credit(message.get("id"), message.get("credits"))
        elif kind == SHUTDOWN:
            self._shutdown = True
        else:
            _log(f"ignoring a frame of unknown type {kind!r}")

    def _on_request(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        if not _is_int(request_id):
            self._send(_failure(None, "request has no integer 'id'", "ProtocolError"))
        elif self._shutdown:
            self._send(
                _failure(request_id, "the worker is shutting down", SHUTTING_DOWN_ERROR_TYPE)
            )
        else:
            self._queue.append(message)

    def _on_cancel(self, request_id: object) -> None:
        job = self._job
        if job is not None and job.ctx.id == request_id:
            self._cancel_job()
            return
        for message in self._queue:
            if message["id"] == request_id:
                self._queue.remove(message)
                self._send(_cancelled(request_id))
                return
        # Not in flight (already answered, or never seen): nothing to do.

    def _cancel_job(self) -> None:
        assert self._job is not None
        self._job.ctx.cancel()
        if self._async is not None:
            self._async.cancel()

    def _on_credit(self, request_id: object, credits: object) -> None:
        if not _is_int(credits):
            return
        job = self._job
        if job is not None and job.ctx.id == request_id:
            if job.credits is not None:
                job.credits += credits
            return
        for message in self._queue:
            if message["id"] == request_id and _is_int(message.get("credits")):
                message["credits"] += credits
                return

    # ------------------------------------------------------------------ negotiation

    def _negotiate(self, payload: bytes) -> None:
        message = _jsonlite.loads(payload)
        if not isinstance(message, dict) or message.get("type") != PROTOCOL_NEGOTIATION:
            # Not a negotiation: be lenient and take the peer for a plain JSON client.
            self._codec = get_codec("json")
            self._on_payload(payload)
            return
        protocol = _choose_protocol(message.get("supported"), message.get("preferred"))
        grace = message.get("grace")
        if isinstance(grace, (int, float)) and not isinstance(grace, bool):
            _lifeline.set_grace(float(grace))
        max_frame_size = message.get("max_frame_size")
        if (
            _is_int(max_frame_size)
            and 0 < max_frame_size <= 0xFFFFFFFF
            and not self._decoder.buffered
        ):
            self._max_frame_size = max_frame_size
            self._decoder = FrameDecoder(max_frame_size)
        reply: dict[str, Any] = {
            "type": PROTOCOL_SELECTED,
            "protocol": protocol,
            "features": sorted([*FEATURES, FEATURE_HEARTBEAT])
            if self._heartbeat_interval
            else FEATURES,
            "max_concurrency": self.max_concurrency,
            "info": self._info(),
        }
        # The handler may not exist yet (it is built after this answer), so ``info`` names it
        # but does not list its commands. A pool with a tiny frame limit gets a smaller reply.
        frame = None
        for drop in ((), ("info",), ("info", "features", "max_concurrency")):
            short = {k: v for k, v in reply.items() if k not in drop}
            try:
                frame = encode_frame(_jsonlite.dumps(short), self._max_frame_size)
                break
            except ProtocolError:
                continue
        if frame is None:  # not even the bare answer fits: send it, the pool will say why
            _log(f"the negotiation reply does not fit in {self._max_frame_size} bytes")
            frame = encode_frame(_jsonlite.dumps(short), 0xFFFFFFFF)
        self._outbox.append(frame)
        self._flush()
        self._codec = get_codec(protocol)
        if self._heartbeat_interval:
            self._write_lock = _thread.allocate_lock()
            _thread.start_new_thread(self._heartbeats, (self._heartbeat_interval,))

    def _heartbeats(self, interval: float) -> None:
        """The heartbeat thread: one frame per ``interval`` while a request runs. A handler
        that holds the GIL (a long C call) starves it: the pool then takes the worker for
        wedged once ``heartbeat_timeout`` passes."""
        codec = self._codec
        assert codec is not None and self._write_lock is not None
        while not self._eof:
            time.sleep(interval)
            if self._job is None:
                continue
            payload = codec.encode({"type": HEARTBEAT, "timestamp": utc_timestamp()})
            frame = len(payload).to_bytes(4, "big") + payload
            with self._write_lock:
                try:
                    os.write(self._out, frame)
                except OSError:
                    return

    def _info(self) -> dict[str, Any]:
        from . import __version__

        return {
            "bridge": "snakepit_trio_bridge",
            "version": __version__,
            "language": "python",
            "pid": os.getpid(),
            "python": sys.version.split()[0],
            "handler": self._handler_name,
        }

    # ------------------------------------------------------------------ running requests

    def _run_next(self) -> None:
        message = self._queue.popleft()
        request_id: int = message["id"]
        command = message.get("command")
        args = message.get("args")
        if args is None:
            args = {}
        function = self.command_handler.get_command(command) if isinstance(command, str) else None
        if not isinstance(command, str):
            self._send(_failure(request_id, "request has no 'command' string", "ProtocolError"))
        elif not isinstance(args, dict):
            self._send(_failure(request_id, "request 'args' is not a map", "ProtocolError"))
        elif function is None:
            self._send(_unknown_command(request_id, self.command_handler, command))
        else:
            stream = message.get("stream") is True
            if self._outbox and (stream or self._durations.get(command, 1.0) >= _QUICK):
                self._flush()  # do not hold finished responses back behind a slow request
            credits = message.get("credits") if stream and _is_int(message.get("credits")) else None
            self._send(self._execute(request_id, command, args, function, stream, credits))

    def _execute(
        self,
        request_id: int,
        command: str,
        args: dict[str, Any],
        function: Callable[[dict[str, Any]], Any],
        stream: bool,
        credits: int | None,
    ) -> dict[str, Any]:
        """Run one request; return its terminal response."""
        ctx = RequestContext(request_id, command, args, stream=stream, poll=self._poll_running)
        job = self._job = _Job(ctx, credits)
        token = bind_context(ctx)
        started = time.monotonic()
        self.command_handler.request_count += 1
        try:
            result = function(args)
            if stream or type(result) not in _PLAIN_RESULTS:  # else the common case: as it is
                result = self._complete(job, result)
        except Cancelled:
            return _cancelled(request_id)
        except _Unsendable as exc:
            return _failure(request_id, str(exc), exc.error_type)
        except Exception as exc:
            return _error(request_id, exc)
        finally:
            unbind_context(token)
            self._job = None
            self._durations[command] = time.monotonic() - started
        return {"id": request_id, "success": True, "result": result, "timestamp": utc_timestamp()}

    def _complete(self, job: _Job, value: Any) -> Any:
        """What a handler returned, turned into the result: generators drained (or streamed),
        awaitables run."""
        if isinstance(value, (Generator, AsyncGenerator)):
            if job.ctx.stream:
                return self._drain(job, value, lambda item: self._send_chunk(job, item))
            items: list[Any] = []
            self._drain(job, value, items.append)
            return items
        if isinstance(value, Awaitable):
            value = self._runner().run(value)
        if job.ctx.stream:
            self._before_item(job)
            self._send_chunk(job, value)
            return None
        return value

    def _drain(
        self,
        job: _Job,
        source: Generator[Any, Any, Any] | AsyncGenerator[Any, Any],
        emit: Callable[[Any], object],
    ) -> Any:
        """Pass each value of a (sync or async) generator to ``emit``; return its return value.

        Waits for credit before asking for each value, so a stream never runs ahead of its
        credit; on any exit but exhaustion the generator is closed (its ``finally`` runs).
        """
        try:
            while True:
                self._before_item(job)
                if isinstance(source, Generator):
                    try:
                        item = next(source)
                    except StopIteration as stop:
                        return stop.value
                else:
                    try:
                        item = self._runner().anext(source)
                    except StopAsyncIteration:
                        return None
                emit(item)
        except BaseException:
            self._close(source)
            raise

    def _close(self, source: Generator[Any, Any, Any] | AsyncGenerator[Any, Any]) -> None:
        try:
            if isinstance(source, Generator):
                source.close()
            else:
                self._runner().aclose(source)
        except (Exception, Cancelled) as exc:
            _log(f"error while closing the generator of a stream: {exc!r}")

    def _before_item(self, job: _Job) -> None:
        """Raise Cancelled if the request was cancelled; wait while the stream has no credit."""
        job.ctx.check_cancelled()
        while job.credits is not None and job.credits <= 0:
            if self._eof:
                raise Cancelled("stdin closed while the stream waited for credit")
            self._flush()
            self._read(block=True)
            if job.ctx._cancelled:
                raise Cancelled(f"request {job.ctx.id} was cancelled")

    def _runner(self) -> AsyncRunner:
        if self._async is None:
            from ._async import AsyncRunner

            self._async = AsyncRunner(self._in, self._on_readable)
        return self._async

    # ------------------------------------------------------------------ output

    def _send_chunk(self, job: _Job, item: Any) -> None:
        codec = self._codec
        assert codec is not None
        chunk = {"type": CHUNK, "id": job.ctx.id, "seq": job.seq, "data": item}
        limit = self._max_frame_size
        try:
            payload = codec.encode(chunk)
        except Exception as exc:
            raise _cannot_send_chunk(job.seq, exc, item, codec, limit) from None
        if len(payload) > limit:
            raise _cannot_send_chunk(job.seq, len(payload), item, codec, limit)
        self._queue_frame(encode_frame_parts(payload, self._max_frame_size))
        job.seq += 1
        if job.credits is not None:
            job.credits -= 1
        self._flush()

    def _send(self, message: dict[str, Any]) -> None:
        """Queue a response for the next write (replaced by a short error if it cannot be sent)."""
        codec = self._codec
        assert codec is not None
        limit = self._max_frame_size
        problem: BaseException | int  # what the codec raised, or the size over the limit
        try:
            payload = codec.encode(message)
        except Exception as exc:
            problem = exc
        else:
            if len(payload) <= limit:
                self._queue_frame(encode_frame_parts(payload, limit))
                return
            problem = len(payload)
        for candidate in _replacements(message, problem, codec, limit):
            try:
                payload = codec.encode(candidate)
            except Exception:
                continue
            if len(payload) <= limit:
                self._queue_frame(encode_frame_parts(payload, limit))
                return
        # Only a limit of a few dozen bytes gets here; the caller's deadline will fire.
        _log(f"a response to request {message.get('id')!r} fits in no {limit}-byte frame")

    def _queue_frame(self, parts: tuple[bytes, bytes]) -> None:
        header, payload = parts
        if len(payload) < _GATHER_ABOVE:
            self._outbox.append(header + payload)
        else:  # big: written with writev, never copied into one buffer
            self._outbox.append(header)
            self._outbox.append(payload)

    def _flush(self) -> None:
        outbox = self._outbox
        if not outbox:
            return
        lock = self._write_lock
        if lock is None:
            self._write_out(outbox)
        else:
            with lock:  # a heartbeat never lands inside a frame
                self._write_out(outbox)

    def _write_out(self, outbox: list[bytes]) -> None:
        buffers: list[bytes | memoryview] = list(outbox)
        outbox.clear()
        try:
            while buffers:
                written = os.writev(self._out, buffers[:_IOV_MAX])
                while buffers and written >= len(buffers[0]):
                    written -= len(buffers.pop(0))
                if written:
                    buffers[0] = memoryview(buffers[0])[written:]
        except OSError:
            self._eof = True
            self._queue.clear()
            raise _StdoutClosed() from None


# ---------------------------------------------------------------------- helpers


def _heartbeat_interval(environ: Mapping[str, str]) -> float:
    """The interval the pool asked for (0: no heartbeats)."""
    try:
        value = float(environ.get(ENV_HEARTBEAT_INTERVAL, "0"))
    except ValueError:
        return 0.0
    return value if 0.01 <= value <= 3600 else 0.0


def _claim_stdio() -> tuple[int, int]:
    """Move stdin and stdout aside for frames; point fd 0 at /dev/null and fd 1 at stderr.

    Then ``print()`` and child processes cannot write into the frame stream, nor read from it.
    """
    frames_in = os.dup(0)
    frames_out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return frames_in, frames_out


def _choose_protocol(supported: object, preferred: object) -> str:
    offered = [p for p in supported if isinstance(p, str)] if isinstance(supported, list) else []
    usable = {"json", "msgpack"} if MSGPACK_AVAILABLE else {"json"}
    if preferred in offered and preferred in usable:
        return str(preferred)
    if "msgpack" in offered and "msgpack" in usable:
        return "msgpack"
    return "json"


def _load(spec: str | None) -> BaseCommandHandler:
    from .handler import load_handler

    return load_handler(spec)


def _qualified_name(obj: object) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}:{name}" if module else str(name)


# ---------------------------------------------------------------------- responses
# The helpers of the error paths live in ``_responses`` (shared with the gRPC server). It is
# imported on the first error: the success path never needs it, and importing it at start-up
# would cost ~0.2 ms (measured with ``python -X importtime``).


def _failure(request_id: object, error: str, error_type: str) -> dict[str, Any]:
    from ._responses import failure

    return failure(request_id, error, error_type)


def _cancelled(request_id: object) -> dict[str, Any]:
    from ._responses import cancelled

    return cancelled(request_id)


def _error(request_id: object, exc: BaseException) -> dict[str, Any]:
    """The failure response for an exception a handler raised (without this file's frames)."""
    from ._responses import error_response

    return error_response(request_id, exc, __file__)


def _unknown_command(
    request_id: object, handler: BaseCommandHandler, command: str
) -> dict[str, Any]:
    from ._responses import unknown_command

    return _failure(request_id, *unknown_command(handler, command))


def _cannot_send_chunk(
    seq: int, problem: BaseException | int, item: object, codec: Codec, limit: int
) -> _Unsendable:
    from ._responses import cannot_send, hook_of

    why = cannot_send(f"chunk {seq}", problem, item, "data", codec.name, limit, hook_of(codec))
    return _Unsendable(*why)


def _replacements(
    message: dict[str, Any], problem: BaseException | int, codec: Codec, limit: int
) -> Iterator[dict[str, Any]]:
    from ._responses import hook_of, replacements

    return replacements(message, problem, codec.name, limit, hook_of(codec))


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)  # a second SIGTERM kills at once
    raise _Terminated(EXIT_SIGTERM)


def _log(message: str) -> None:
    try:
        os.write(2, f"snakepit_trio_bridge[{os.getpid()}]: {message}\n".encode())
    except OSError:
        pass
