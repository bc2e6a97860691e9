"""The gRPC worker: ``python -m snakepit_trio_bridge --transport grpc [--listen unix|tcp]``.

It serves the same :class:`~snakepit_trio_bridge.handler.BaseCommandHandler` commands as the stdio
server, over grpclib on an asyncio loop (the contract is ``proto/snakepit.proto``):

- Plain ``def`` handlers run on a thread pool (``max_concurrency`` threads), ``async def`` ones
  on the loop. Generators stream: a sync generator runs on its thread at most a few chunks
  ahead of what gRPC has sent, so flow control reaches it (a slow pool pauses it).
- Cancellation: the pool resets the stream (RST_STREAM) and grpclib cancels the request's task.
  An async handler is cancelled like any task. For a sync handler the request's
  ``RequestContext`` is marked cancelled (``check_cancelled()`` raises) and a generator is
  closed on its own thread before it would produce another value, so its ``finally`` runs. A
  cancelled handler that has not returned within ``SNAKEPIT_CANCEL_GRACE`` seconds makes the
  worker exit, so that the pool replaces it rather than share it with a stuck thread.
- Listening: by default a Unix socket in a new private directory (mode 0700), removed on exit;
  ``--listen tcp`` binds 127.0.0.1 on a free port. Nothing listens on a network interface.
  Once listening, the worker prints exactly one line, ``READY unix:/path`` or
  ``READY tcp:127.0.0.1:PORT`` (its stdout is pointed at stderr from the start), and only then
  builds the handler: calls wait in the socket's backlog until it is built, so a slow
  constructor is bounded by the pool's ``worker_init_timeout`` (the pool's ``Info`` call waits
  for it), and the pool can tell a slow start of the process from a slow handler.
- The token: with ``SNAKEPIT_GRPC_TOKEN`` set (the pool always sets it; TCP refuses to start
  without one), every call must carry ``authorization: Bearer <token>``, checked in constant
  time before anything else; any other call gets ``UNAUTHENTICATED`` and nothing else (the
  handler never runs, the request is not even decoded). The variable is removed from the
  environment before the handler is built, so the handler's children do not inherit it.
  ``Info`` answers the pool's challenge with a proof (see ``grpc_wire``).
- Lifecycle: stdin EOF stops it gracefully (no new requests, the running ones finish, exit 0);
  SIGTERM stops it at once (running requests are cancelled, exit 143). The lifeline of
  docs/protocol.md section 7 works as for the stdio server.
- Messages over ``SNAKEPIT_MAX_MESSAGE_SIZE`` bytes (default 64 MiB) are refused both ways;
  a result too large to send becomes a ``MessageTooLarge`` error. An error reply is always
  sendable: text protobuf cannot carry is escaped, and one over the limit keeps the innermost
  end of its traceback, then a cut message.
- Exit status: 0 after stdin EOF; 1 when the handler could not be built (the traceback and
  a summary naming file, line and cause go to stderr); 2 when ``--listen tcp`` has no token;
  70 when a cancelled handler would not stop; 143 after SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import grpclib.server
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from . import _lifeline
from ._grpc_generated.grpc.health.v1 import (
    HealthBase,
    HealthCheckRequest,
    HealthCheckResponse,
    HealthCheckResponseServingStatus,
)
from ._grpc_generated.snakepit.v1 import (
    Error,
    ExecuteReply,
    ExecuteRequest,
    HealthReply,
    HealthRequest,
    InfoReply,
    InfoRequest,
    SnakepitBridgeBase,
    StreamReply,
)
from ._responses import (
    CANCELLED_MESSAGE,
    cannot_send,
    clean,
    encoder,
    error_fields,
    shorter_errors,
    unknown_command,
)
from .context import Cancelled, RequestContext, bind_context, unbind_context
from .grpc_wire import (
    CHALLENGE_KEY,
    DEFAULT_MAX_MESSAGE_SIZE,
    ENV_CANCEL_GRACE,
    ENV_MAX_MESSAGE_SIZE,
    ENV_TOKEN,
    EXECUTE_STREAM,
    INFO,
    MIN_TOKEN_LENGTH,
    PROOF_KEY,
    SERVICE,
    SHUTTING_DOWN_ERROR_TYPE,
    TOKEN_KEY,
    TOO_LARGE_ERROR_TYPE,
    SizeLimitedCodec,
    pack,
    proof,
    token_matches,
    unpack,
)
from .protocol.constants import (
    CANCELLED_ERROR_TYPE,
    FEATURE_CANCEL,
    FEATURE_CREDIT,
    FEATURE_LIFELINE,
    FEATURE_MULTIPLEX,
    FEATURE_STREAM,
)
from .server import _claim_stdio, _Unsendable

if TYPE_CHECKING:
    from .handler import BaseCommandHandler

    HandlerSource: TypeAlias = BaseCommandHandler | str | Callable[[], BaseCommandHandler] | None

__all__ = ["FEATURES", "GrpcWorkerServer", "serve"]

Emit: TypeAlias = Callable[[list[bytes]], Awaitable[None]]  # sends packed chunks, in one message
Command: TypeAlias = Callable[[dict[str, Any]], Any]  # a registered handler function

FEATURES: Final = (
    FEATURE_CANCEL,
    FEATURE_CREDIT,
    FEATURE_LIFELINE,
    FEATURE_MULTIPLEX,
    FEATURE_STREAM,
)
DEFAULT_CANCEL_GRACE: Final = 2.0
EXIT_OK: Final = 0
EXIT_HANDLER: Final = 1  # the handler could not be built
EXIT_USAGE: Final = 2  # TCP without a token
EXIT_STUCK: Final = 70  # a cancelled handler would not stop
EXIT_SIGTERM: Final = 143
#: Chunks a sync generator may produce ahead of the gRPC sender.
STREAM_WINDOW: Final = 32
#: Room for the protobuf envelope around a payload.
_ENVELOPE: Final = 64
_UNIX_PATH_MAX: Final = 100
_BACKLOG: Final = 100  # asyncio's default: connections wait here while the handler is built
# Left out of the top of a handler's traceback: this server's frames, asyncio's, the executor's.
_SKIP_IN_TRACEBACKS: Final = (
    __file__,
    os.path.dirname(asyncio.__file__) + os.sep,
    os.path.dirname(inspect.getfile(ThreadPoolExecutor)) + os.sep,
)


class _OnLoop:
    """A sync handler returned an awaitable or an async generator: finish it on the loop."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class _Window:
    """Bounds how far a sync generator's thread runs ahead of the sender; closing it stops it."""

    def __init__(self, size: int) -> None:
        self._condition = threading.Condition()
        self._free = size
        self._closed = False

    def take(self) -> None:
        """Wait for room for one more chunk (thread side); ``Cancelled`` once closed."""
        with self._condition:
            while self._free <= 0 and not self._closed:
                self._condition.wait()
            if self._closed:
                raise Cancelled("the stream was cancelled")
            self._free -= 1

    def give(self, count: int) -> None:
        with self._condition:
            self._free += count
            self._condition.notify()

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()


class _Job:
    """A request served by a sync handler on a pool thread."""

    __slots__ = ("ctx", "event", "items", "loop", "wake_pending", "window")

    def __init__(self, ctx: RequestContext, loop: asyncio.AbstractEventLoop) -> None:
        self.ctx = ctx
        self.loop = loop
        self.window = _Window(STREAM_WINDOW)
        self.items: deque[bytes] = deque()  # packed chunks, appended by the thread
        self.event = asyncio.Event()
        self.wake_pending = False

    def push(self, payload: bytes) -> None:
        """Hand a packed chunk to the loop (thread side); wakes the loop once per batch."""
        self.items.append(payload)
        if not self.wake_pending:
            self.wake_pending = True
            self.loop.call_soon_threadsafe(self.event.set)

    def cancel(self) -> None:
        self.ctx.cancel()
        self.window.close()


class BridgeService(SnakepitBridgeBase):  # type: ignore[misc]
    """The ``snakepit.v1.SnakepitBridge`` service over one command handler."""

    def __init__(
        self,
        handler: BaseCommandHandler,
        *,
        max_concurrency: int,
        max_message_size: int,
        cancel_grace: float,
        on_stuck: Callable[[RequestContext], None],
        token: str | None = None,
    ) -> None:
        self.handler = handler
        self.max_concurrency = max_concurrency
        self.max_message_size = max_message_size
        self.cancel_grace = cancel_grace
        self.on_stuck = on_stuck
        self.token = token
        self.executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="snakepit-handler")
        self.started = time.monotonic()
        self.in_flight = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        # Results and chunks are packed as grpc_wire.pack packs them; with the handler's
        # ``default`` when it overrides the base one (which refuses all, as msgpack alone does).
        from .handler import BaseCommandHandler

        overridden = type(handler).default is not BaseCommandHandler.default
        self._default = handler.default if overridden else None
        self._encode = encoder("msgpack", handler.default) if overridden else pack

    def __mapping__(self) -> dict[str, Any]:
        # The streaming route is served here at the stream level (not through the generated
        # async-generator wrapper), so that leaving it always closes the handler's generator;
        # Info too, to answer the pool's challenge in its initial metadata.
        mapping: dict[str, Any] = super().__mapping__()
        mapping[EXECUTE_STREAM] = mapping[EXECUTE_STREAM]._replace(func=self._rpc_execute_stream)
        mapping[INFO] = mapping[INFO]._replace(func=self._rpc_info)
        return mapping

    async def wait_idle(self) -> None:
        await self._idle.wait()

    # ------------------------------------------------------------------ RPCs

    async def execute(self, message: ExecuteRequest) -> ExecuteReply:
        return await self._run(message, None)

    async def _rpc_execute_stream(
        self, stream: grpclib.server.Stream[ExecuteRequest, StreamReply]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None

        async def emit(payloads: list[bytes]) -> None:
            await stream.send_message(StreamReply(chunks=payloads))

        end = await self._run(request, emit)
        await stream.send_message(StreamReply(end=end))

    async def _rpc_info(self, stream: grpclib.server.Stream[InfoRequest, InfoReply]) -> None:
        """``Info``, proving to the pool that this process holds the worker's token."""
        request = await stream.recv_message()
        metadata = stream.metadata
        challenge = metadata.get(CHALLENGE_KEY) if metadata is not None else None
        if self.token is not None and isinstance(challenge, str) and len(challenge) <= 256:
            await stream.send_initial_metadata(
                metadata=((PROOF_KEY, proof(self.token, challenge)),)
            )
        await stream.send_message(await self.info(request or InfoRequest()))

    async def health(self, message: HealthRequest) -> HealthReply:
        return HealthReply(
            serving=not self.draining,
            uptime=time.monotonic() - self.started,
            requests=self.handler.request_count,
            in_flight=self.in_flight,
        )

    async def info(self, message: InfoRequest) -> InfoReply:
        from . import __version__

        handler = type(self.handler)
        return InfoReply(
            bridge="snakepit_trio_bridge",
            version=__version__,
            language="python",
            pid=os.getpid(),
            runtime_version=sys.version.split()[0],
            handler=f"{handler.__module__}:{handler.__qualname__}",
            commands=self.handler.get_supported_commands(),
            features=list(FEATURES),
            max_concurrency=self.max_concurrency,
            max_message_size=self.max_message_size,
        )

    # ------------------------------------------------------------------ running a command

    async def _run(self, request: ExecuteRequest, emit: Emit | None) -> ExecuteReply:
        """Run one request to its terminal reply; chunks go to ``emit`` (None: unary)."""
        if self.draining:
            return _failure("the worker is shutting down", SHUTTING_DOWN_ERROR_TYPE)
        command = request.command
        function = self.handler.get_command(command)
        if function is None:
            return _failure(*unknown_command(self.handler, command))
        try:
            args = unpack(request.args) if request.args else {}
        except Exception as exc:
            return _failure(f"the arguments are not MessagePack: {exc!r}", "ProtocolError")
        if not isinstance(args, dict):
            return _failure("the arguments are not a map", "ProtocolError")
        if request.session_id and "session_id" not in args:
            args["session_id"] = request.session_id
        ctx = RequestContext(request.request_id, command, args, stream=emit is not None)
        self.in_flight += 1
        self._idle.clear()
        self.handler.request_count += 1
        try:
            result = await self._call(ctx, function, args, emit)
            payload = self._pack(result, "the result", "result")
        except Cancelled:
            return _failure(CANCELLED_MESSAGE, CANCELLED_ERROR_TYPE)
        except _Unsendable as exc:
            return _failure(str(exc), exc.error_type, "", self.max_message_size)
        except Exception as exc:
            return _failure(*error_fields(exc, _SKIP_IN_TRACEBACKS), self.max_message_size)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
        return ExecuteReply(success=True, result=payload)

    def _pack(self, value: Any, what: str, root: str) -> bytes:
        """Pack the result or a chunk (``what``, named ``root`` in the path of a culprit);
        one that cannot be sent is an error of the request (``_Unsendable``)."""
        limit = self.max_message_size
        try:
            payload = self._encode(value)
        except Exception as exc:  # TypeError, ValueError, OverflowError, or a __len__ failing
            why = cannot_send(what, exc, value, root, "msgpack", limit, self._default)
            raise _Unsendable(*why) from None
        if len(payload) + _ENVELOPE > limit:
            size = len(payload) + _ENVELOPE
            message, _ = cannot_send(what, size, value, root, "msgpack", limit)
            raise _Unsendable(message, TOO_LARGE_ERROR_TYPE)
        return payload

    async def _call(
        self,
        ctx: RequestContext,
        function: Command,
        args: dict[str, Any],
        emit: Emit | None,
    ) -> Any:
        pending: _OnLoop | None = None
        if not (inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)):
            value = await self._in_thread(ctx, function, args, emit)
            if not isinstance(value, _OnLoop):
                return value
            pending = value  # it returned an awaitable or an async generator
        token = bind_context(ctx)
        try:
            awaitable = function(args) if pending is None else pending.value
            return await self._finish_on_loop(awaitable, emit)
        finally:
            unbind_context(token)

    async def _finish_on_loop(self, value: Any, emit: Emit | None) -> Any:
        """Await a coroutine's result, or drain an async generator (closing it on any exit)."""
        if isinstance(value, AsyncGenerator):
            items: list[Any] = []
            try:
                seq = 0
                async for item in value:
                    if emit is None:
                        items.append(item)
                    else:
                        await emit([self._pack(item, f"chunk {seq}", "data")])
                        seq += 1
            finally:
                await value.aclose()
            return items if emit is None else None
        if inspect.isawaitable(value):
            value = await value
        if emit is not None:  # a plain command asked for as a stream: its result is one chunk
            await emit([self._pack(value, "chunk 0", "data")])
            return None
        return value

    async def _in_thread(
        self,
        ctx: RequestContext,
        function: Command,
        args: dict[str, Any],
        emit: Emit | None,
    ) -> Any:
        loop = asyncio.get_running_loop()
        job = _Job(ctx, loop)
        run = contextvars.copy_context().run
        future = loop.run_in_executor(
            self.executor, run, self._thread_main, job, function, args, emit is not None
        )
        future.add_done_callback(lambda _: job.event.set())
        try:
            if emit is not None:
                await self._pump(job, future, emit)
            # Shielded: cancelling the wait must not mark the future done while its thread runs.
            return await asyncio.shield(future)
        except BaseException:
            # Cancelled (the client reset the stream, or SIGTERM), or sending failed: stop the
            # thread's work and wait until it has (the generator's finally has run).
            if not future.done():
                job.cancel()
                await self._wait_stopped(job, future)
            raise

    async def _pump(self, job: _Job, future: asyncio.Future[Any], emit: Emit) -> None:
        """Send the chunks a sync generator's thread produces until the thread is done.

        What is ready leaves in one message (bounded by the message size), so a fast
        generator costs one gRPC message per batch rather than per chunk.
        """
        items = job.items
        budget = self.max_message_size - _ENVELOPE
        while True:
            while items:
                batch = [items.popleft()]
                size = len(batch[0])
                while items and size + len(items[0]) + _ENVELOPE <= budget:
                    size += len(items[0]) + _ENVELOPE
                    batch.append(items.popleft())
                await emit(batch)
                job.window.give(len(batch))
            job.event.clear()
            job.wake_pending = False  # after the clear: a later push wakes us again
            if items:
                continue
            if future.done():
                return
            await job.event.wait()

    async def _wait_stopped(self, job: _Job, future: asyncio.Future[Any]) -> None:
        """Wait until the thread has stopped, at most ``cancel_grace`` (then exit the worker).

        grpclib cancels a reset stream's task twice, so a second cancellation must not cut
        the wait short; it is passed on once the thread has stopped.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cancel_grace
        cancelled = False
        while not future.done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                self.on_stuck(job.ctx)
                break
            try:
                await asyncio.wait([future], timeout=remaining)
            except asyncio.CancelledError:
                cancelled = True
        if future.done() and not future.cancelled():
            future.exception()  # its own error, or Cancelled: it stopped, which is all we need
        if cancelled:
            raise asyncio.CancelledError

    def _thread_main(
        self,
        job: _Job,
        function: Command,
        args: dict[str, Any],
        stream: bool,
    ) -> Any:
        """Run a sync handler (on a pool thread, in a context of its own)."""
        bind_context(job.ctx)
        value = function(args)
        if isinstance(value, Generator):
            return self._produce(job, value) if stream else self._collect(job, value)
        if isinstance(value, AsyncGenerator) or inspect.isawaitable(value):
            return _OnLoop(value)
        if stream:
            job.window.take()
            job.push(self._pack(value, "chunk 0", "data"))
            return None
        return value

    def _produce(self, job: _Job, generator: Generator[Any, Any, Any]) -> Any:
        """Stream a sync generator's values; returns its return value."""
        ctx = job.ctx
        seq = 0
        try:
            while True:
                ctx.check_cancelled()
                job.window.take()
                try:
                    item = next(generator)
                except StopIteration as stop:
                    return stop.value
                job.push(self._pack(item, f"chunk {seq}", "data"))
                seq += 1
        except BaseException:
            _close(generator)
            raise

    def _collect(self, job: _Job, generator: Generator[Any, Any, Any]) -> list[Any]:
        """A generator command asked for without a stream: the list of its values."""
        items: list[Any] = []
        try:
            for item in generator:
                items.append(item)
                job.ctx.check_cancelled()
        except BaseException:
            _close(generator)
            raise
        return items


class HealthService(HealthBase):  # type: ignore[misc]
    """The standard ``grpc.health.v1.Health/Check`` for generic probes."""

    def __init__(self, service: BridgeService) -> None:
        self.service = service

    async def check(self, message: HealthCheckRequest) -> HealthCheckResponse:
        if message.service not in ("", SERVICE):
            raise GRPCError(Status.NOT_FOUND, f"unknown service {message.service!r}")
        serving = not self.service.draining
        return HealthCheckResponse(
            status=HealthCheckResponseServingStatus.SERVING
            if serving
            else HealthCheckResponseServingStatus.NOT_SERVING
        )


class _Guard:
    """Every route of some services, each refusing a call that lacks the worker's token.

    The check runs before the route's function, so a refused call is not even decoded: the
    caller gets ``UNAUTHENTICATED`` and nothing else.
    """

    def __init__(self, services: list[Any], token: str) -> None:
        self._services = services
        self._expected = token.encode()

    def __mapping__(self) -> dict[str, Any]:
        mapping: dict[str, Any] = {}
        for service in self._services:
            for name, route in service.__mapping__().items():
                mapping[name] = route._replace(func=self._guarded(route.func))
        return mapping

    def _guarded(
        self, func: Callable[[grpclib.server.Stream[Any, Any]], Awaitable[None]]
    ) -> Callable[[grpclib.server.Stream[Any, Any]], Awaitable[None]]:
        expected = self._expected

        async def guarded(stream: grpclib.server.Stream[Any, Any]) -> None:
            metadata = stream.metadata
            values = metadata.getall(TOKEN_KEY, []) if metadata is not None else []
            if not token_matches(values, expected):
                raise GRPCError(Status.UNAUTHENTICATED, "this worker answers its pool only")
            await func(stream)

        return guarded


class GrpcWorkerServer:
    """One worker process's gRPC server, from bind to clean-up.

    ``bind()`` listens and ``announce()`` writes the READY line, both at once, so that the
    handler can be built in between while connections wait in the backlog; ``run()`` serves
    until stdin EOF or SIGTERM (binding and announcing first if that is not done yet) and
    returns the exit code; ``close()`` removes what ``bind()`` made.
    """

    def __init__(
        self,
        handler: BaseCommandHandler | None = None,
        *,
        listen: str = "unix",
        max_concurrency: int = 64,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        cancel_grace: float = DEFAULT_CANCEL_GRACE,
        stdin_fd: int | None = None,
        ready_fd: int | None = None,
        token: str | None = None,
    ) -> None:
        if listen not in ("unix", "tcp"):
            raise ValueError(f"listen must be 'unix' or 'tcp', not {listen!r}")
        if token is not None and len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"the token {ENV_TOKEN} needs {MIN_TOKEN_LENGTH} characters or more")
        if listen == "tcp" and token is None:
            raise ValueError(
                f"refusing to listen on TCP without a token in {ENV_TOKEN}: any local user "
                "could call this worker"
            )
        self.handler = handler
        self.listen = listen
        self.max_concurrency = max(1, max_concurrency)
        self.max_message_size = max_message_size
        self.cancel_grace = cancel_grace
        self.stdin_fd = stdin_fd
        self.ready_fd = ready_fd
        self.token = token
        self.address = ""
        self.socket_dir: str | None = None
        self.stdin_closed = False
        self._sock: socket.socket | None = None
        self._exit_code = EXIT_OK
        self._stop: asyncio.Event | None = None  # stdin EOF or SIGTERM
        self._terminated: asyncio.Event | None = None  # SIGTERM

    async def run(self, handler: BaseCommandHandler | None = None) -> int:
        if handler is None:
            handler = self.handler
        if handler is None:
            raise ValueError("no command handler to serve")
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._terminated = asyncio.Event()
        service = BridgeService(
            handler,
            max_concurrency=self.max_concurrency,
            max_message_size=self.max_message_size,
            cancel_grace=self.cancel_grace,
            on_stuck=self._stuck,
            token=self.token,
        )
        services: list[Any] = [service, HealthService(service)]
        server = grpclib.server.Server(
            [_Guard(services, self.token)] if self.token is not None else services,
            codec=SizeLimitedCodec(self.max_message_size),
        )
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)  # before serving anything
        try:
            if self._sock is None:
                self.bind()
                self.announce()
            assert self._sock is not None
            await server.start(sock=self._sock)
            if self.stdin_fd is not None:
                loop.add_reader(self.stdin_fd, self._on_stdin)
            await self._stop.wait()
            service.draining = True
            await self._until_idle_or_terminated(service)
            server.close()
            try:
                await asyncio.wait_for(server.wait_closed(), self.cancel_grace + 1.0)
            except TimeoutError:
                _log("some requests did not finish after the server closed")
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            if self.stdin_fd is not None:
                loop.remove_reader(self.stdin_fd)
            service.executor.shutdown(wait=False, cancel_futures=True)
            self.close()
        return self._exit_code

    async def _until_idle_or_terminated(self, service: BridgeService) -> None:
        """The graceful stop: running requests finish, unless SIGTERM cuts it short."""
        assert self._terminated is not None
        waits = {
            asyncio.ensure_future(service.wait_idle()),
            asyncio.ensure_future(self._terminated.wait()),
        }
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def bind(self) -> None:
        """Make the listening socket (connections queue in its backlog until ``run()``)."""
        if self.listen == "tcp":
            # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP
            # (accepted sockets inherit it); without it each call waits ~40 ms on delayed ACKs.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            try:
                sock.bind(("127.0.0.1", 0))
                sock.listen(_BACKLOG)
            except BaseException:
                sock.close()
                raise
            self._sock = sock
            self.address = f"tcp:127.0.0.1:{sock.getsockname()[1]}"
            return
        directory = tempfile.mkdtemp(prefix="snakepit-grpc-")  # mode 0700
        if len(directory) + len("/worker.sock") > _UNIX_PATH_MAX:
            os.rmdir(directory)
            directory = tempfile.mkdtemp(prefix="snakepit-grpc-", dir="/tmp")
        self.socket_dir = directory
        path = os.path.join(directory, "worker.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            os.chmod(path, 0o600)
            sock.listen(_BACKLOG)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self.address = f"unix:{path}"

    def announce(self) -> None:
        line = f"READY {self.address}\n".encode()
        if self.ready_fd is None:
            os.write(1, line)
            return
        try:
            os.write(self.ready_fd, line)
        finally:
            os.close(self.ready_fd)
            self.ready_fd = None

    def close(self) -> None:
        """Close the listening socket and remove its directory (idempotent)."""
        if self._sock is not None:
            self._sock.close()
        self.remove_socket()

    def remove_socket(self) -> None:
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            self.socket_dir = None

    def _on_stdin(self) -> None:
        assert self.stdin_fd is not None
        try:
            data = os.read(self.stdin_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # end of file: the pool closed us; anything else is ignored
            asyncio.get_running_loop().remove_reader(self.stdin_fd)
            self.stdin_closed = True
            self._request_stop()

    def _on_sigterm(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
        self._exit_code = EXIT_SIGTERM
        if self._terminated is not None:
            self._terminated.set()
        self._request_stop()

    def _request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def _stuck(self, ctx: RequestContext) -> None:
        _log(
            f"request {ctx.id} ({ctx.command}) did not stop within {self.cancel_grace} s of its "
            "cancellation; exiting so that the pool starts a fresh worker"
        )
        self.remove_socket()
        sys.stderr.flush()
        os._exit(EXIT_STUCK)


class _Terminated(SystemExit):
    """SIGTERM while the handler is being built (raised in the main thread)."""


def serve(handler: HandlerSource = None, *, listen: str = "unix", max_concurrency: int = 64) -> int:
    """Run the gRPC worker until stdin EOF or SIGTERM; return the exit status.

    ``handler`` is a handler instance, or what to build one from once the socket listens: a
    ``"package.module:Class"`` spec (or ``"path/file.py:Class"``), a callable returning one,
    or None for the generic handler.
    """
    # First of all, before any code that could start a process: the handler's children must
    # not inherit the token (os.environ.pop also unsets it in the C environment).
    token = os.environ.pop(ENV_TOKEN, None) or None
    try:
        server = GrpcWorkerServer(
            listen=listen,
            max_concurrency=max_concurrency,
            max_message_size=_env_number(ENV_MAX_MESSAGE_SIZE, DEFAULT_MAX_MESSAGE_SIZE, int),
            cancel_grace=_env_number(ENV_CANCEL_GRACE, DEFAULT_CANCEL_GRACE, float),
            token=token,
        )
    except ValueError as exc:
        _log(str(exc))
        return EXIT_USAGE
    server.stdin_fd, server.ready_fd = _claim_stdio()
    os.set_blocking(server.stdin_fd, False)
    _lifeline.start(os.environ)
    code = EXIT_HANDLER
    # Until the event loop takes SIGTERM over, it raises _Terminated (a SystemExit) in the
    # main thread: in the handler's constructor, its ``finally`` blocks run; either way the
    # socket is removed and the exit status is 143.
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        server.bind()
        server.announce()
        built = _build_handler(handler)
        if built is not None:
            loop = asyncio.new_event_loop()
            try:
                code = loop.run_until_complete(server.run(built))
            finally:
                try:
                    _cancel_leftovers(loop)
                finally:
                    loop.close()
    except _Terminated:
        code = EXIT_SIGTERM
    finally:
        server.close()
    if server.stdin_closed and _lifeline.pool_gone(0.05):
        # Stdin and the lifeline both closed: the pool died rather than closed us.
        _lifeline.kill_group("stdin and the lifeline closed")
    return code


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated(EXIT_SIGTERM)


def _build_handler(source: HandlerSource) -> BaseCommandHandler | None:
    """The handler ``source`` names or builds; None after printing why it could not be built."""
    from .handler import BaseCommandHandler

    if isinstance(source, BaseCommandHandler):
        return source
    name = source if isinstance(source, str) else getattr(source, "__qualname__", repr(source))
    try:
        if source is None or isinstance(source, str):
            from .handler import load_handler

            handler = load_handler(source or None)
        else:
            handler = source()
        if not isinstance(handler, BaseCommandHandler):
            raise TypeError(f"{name} built a {type(handler).__name__}, not a BaseCommandHandler")
    except _Terminated:
        raise
    except (Exception, SystemExit) as exc:
        import traceback

        from .handler import load_failure_message

        try:
            traceback.print_exception(exc, file=sys.stderr)
        except Exception:  # stderr itself is broken: nothing more to say
            pass
        _log(
            load_failure_message(name or "snakepit_trio_bridge.generic:GenericCommandHandler", exc)
        )
        return None
    return handler


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
    loop.run_until_complete(loop.shutdown_asyncgens())


def _env_number(name: str, default: Any, kind: Callable[[str], Any]) -> Any:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        _log(f"ignoring {name}={text!r}")
        return default
    return value if value > 0 else default


def _close(generator: Generator[Any, Any, Any]) -> None:
    try:
        generator.close()
    except (Exception, Cancelled) as exc:
        _log(f"error while closing the generator of a stream: {exc!r}")


def _failure(
    message: str,
    error_type: str,
    traceback: str = "",
    limit: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> ExecuteReply:
    """An error reply that can always be sent (see ``_sendable_error``)."""
    message, error_type, traceback = _sendable_error(message, error_type, traceback, limit)
    return ExecuteReply(
        success=False, error=Error(message=message, error_type=error_type, traceback=traceback)
    )


def _sendable_error(
    message: str, error_type: str, traceback: str, limit: int
) -> tuple[str, str, str]:
    """The error's fields, cut to fit in a message of ``limit`` bytes: the first version of
    ``shorter_errors`` that fits, else a message cut to what is left of the room."""
    room = limit - _ENVELOPE
    for version in shorter_errors(message, error_type, traceback, room):
        if sum(len(field.encode("utf-8")) for field in version) <= room:
            return version
    # A limit below a few hundred bytes: what is left of the room, four bytes a character.
    error_type = clean(error_type)[: max(0, room) // 4]
    share = max(0, (room - len(error_type.encode("utf-8"))) // 4)
    return clean(message)[:share], error_type, ""


def _log(message: str) -> None:
    try:
        os.write(2, f"snakepit_trio_bridge[{os.getpid()}] grpc: {message}\n".encode())
    except OSError:
        pass
