"""The gRPC transport: ``GrpcPythonAdapter`` and the worker slot that speaks to it.

A gRPC worker is our Python bridge started with ``--transport grpc``: it binds a private Unix
socket (or 127.0.0.1 on request), prints ``READY <address>``, builds its handler and serves
``proto/snakepit.proto``. Each worker process gets a fresh secret token in its environment
(never in argv); every call carries it, and the worker proves it holds it in its ``Info``
answer (see ``_grpc_client``), so a TCP worker answers its pool only and the pool talks to
its worker only.
``GrpcWorker`` replaces the stdio parts of ``Worker`` (the READY line instead of negotiation,
a gRPC call per request instead of frames, RST_STREAM instead of cancel frames, gRPC flow
control instead of credit frames) and keeps the rest, so the pool's dispatch, queueing,
sessions, stats, timeouts, recycling and streams work unchanged.

grpclib runs on asyncio only. Under trio, each pool runs one asyncio loop on a thread of its
own, shared by its workers: requests hop to it with ``call_soon_threadsafe`` and results hop
back with the trio token's ``run_sync_soon``. Under asyncio (anyio's asyncio backend) grpclib
runs on the host loop itself. A cancelled request's asyncio task is cancelled (grpclib sends
RST_STREAM, and the worker closes the handler's generator); the worker slot is "cancelling"
until that task has finished, or is replaced if it has not within ``cancel_grace``. The loop
thread ends with the pool's last worker, so nothing is left behind.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import anyio
import anyio.abc
from snakepit_trio_bridge.protocol import codecs, constants
from snakepit_trio_bridge.protocol.framing import ProtocolError as WireProtocolError
from snakepit_trio_bridge.protocol.messages import Response

from ._adapters import PythonAdapter
from ._backend import read_some
from ._local import LocalProcessTransport
from ._process import WorkerProcess
from ._slot import Call
from ._transport import EventSink, Handshake, StartFailed, Transport, TransportContext

if TYPE_CHECKING:
    import asyncio

    from . import _grpc_client

__all__ = ["GrpcPythonAdapter", "GrpcTransport"]

logger = logging.getLogger("snakepit_trio.grpc")

T = TypeVar("T")
Listen = Literal["unix", "tcp"]

_KNOWN_FEATURES: Final = frozenset(
    {
        constants.FEATURE_STREAM,
        constants.FEATURE_CANCEL,
        constants.FEATURE_CREDIT,
        constants.FEATURE_MULTIPLEX,
        constants.FEATURE_LIFELINE,
    }
)
_READY_LIMIT: Final = 4096
_HUB_CLOSE_TIMEOUT: Final = 5.0


# ---------------------------------------------------------------------- the gRPC event loop


class _Hub:
    """Where one pool's grpclib code runs, and the way back to the host loop."""

    loop: asyncio.AbstractEventLoop

    def call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on the gRPC loop (called from the host)."""
        raise NotImplementedError

    def to_host(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on the host loop (called from the gRPC loop)."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Stop the gRPC loop (if it is ours) once every worker is done with it."""

    async def run(self, factory: Callable[[], Coroutine[Any, Any, T]], grace: float) -> T:
        """Run ``factory()`` on the gRPC loop and return its result, from the host.

        If the host is cancelled meanwhile, the asyncio task is cancelled and waited for
        (shielded, at most ``grace`` seconds) before the cancellation goes on.
        """
        done = anyio.Event()
        holder: list[asyncio.Task[T]] = []

        def finished(task: asyncio.Task[T]) -> None:
            if not task.cancelled():
                task.exception()  # mark it retrieved: the host reads the outcome
            self.to_host(done.set)

        def start() -> None:
            task = self.loop.create_task(factory())
            holder.append(task)
            task.add_done_callback(finished)

        def cancel() -> None:
            if holder:
                holder[0].cancel()

        self.call_soon(start)
        try:
            await done.wait()
        except BaseException:
            self.call_soon(cancel)
            with anyio.CancelScope(shield=True), anyio.move_on_after(grace):
                await done.wait()
            raise
        task = holder[0]
        if task.cancelled():
            raise StartFailed("the gRPC event loop stopped")
        return task.result()


class _DirectHub(_Hub):
    """asyncio host: grpclib runs on the host loop; nothing hops."""

    def __init__(self) -> None:
        import asyncio

        self.loop = asyncio.get_running_loop()

    def call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        fn(*args)

    def to_host(self, fn: Callable[..., object], *args: Any) -> None:
        fn(*args)


class _ThreadHub(_Hub):
    """trio host: one asyncio loop on a dedicated thread, results sent back via the trio token."""

    def __init__(self) -> None:
        import asyncio

        import trio

        self._run_sync_soon = trio.lowlevel.current_trio_token().run_sync_soon
        self._run_finished = trio.RunFinishedError
        self.loop = asyncio.new_event_loop()
        self._exited: Callable[[], object] | None = None
        self._thread = threading.Thread(target=self._main, name="snakepit-grpc-loop", daemon=True)
        self._thread.start()

    def call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def to_host(self, fn: Callable[..., object], *args: Any) -> None:
        try:
            self._run_sync_soon(fn, *args)
        except self._run_finished:  # pragma: no cover - the host run is over; nobody listens
            pass

    def _main(self) -> None:
        import asyncio

        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.wait(leftovers, timeout=_HUB_CLOSE_TIMEOUT))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
            if self._exited is not None:
                self.to_host(self._exited)

    async def aclose(self) -> None:
        exited = anyio.Event()
        self._exited = exited.set
        self.loop.call_soon_threadsafe(self.loop.stop)
        with anyio.CancelScope(shield=True), anyio.move_on_after(_HUB_CLOSE_TIMEOUT):
            await exited.wait()
        self._thread.join(1.0)  # it has sent its last word: it ends at once


def _new_hub(backend: str) -> _Hub:
    if backend == "trio":
        return _ThreadHub()
    if backend == "asyncio":
        return _DirectHub()
    raise RuntimeError(f"the gRPC transport runs under trio or asyncio, not {backend}")


def _pool_hub(context: TransportContext) -> _Hub:
    """The pool's hub, made by its first gRPC transport and closed with the pool."""
    hub = context.shared.get("grpc_hub")
    if hub is None:
        hub = context.shared["grpc_hub"] = _new_hub(context.backend.name)
        context.shared.setdefault("closers", []).append(hub.aclose)
    assert isinstance(hub, _Hub)
    return hub


# ---------------------------------------------------------------------- the transport


class _Remote:
    """One call's asyncio side, as the host sees it."""

    __slots__ = ("chunks", "flush_pending", "task", "window")

    def __init__(self, window: _grpc_client.StreamWindow | None) -> None:
        self.task: asyncio.Task[Any] | None = None  # set on the gRPC loop
        self.window = window
        self.chunks: deque[Any] = deque()  # filled on the gRPC loop, drained on the host
        self.flush_pending = False


class GrpcTransport(LocalProcessTransport):
    """A local gRPC bridge process: a gRPC call per request (see the module doc)."""

    def __init__(self, adapter: PythonAdapter, context: TransportContext) -> None:
        super().__init__(adapter, context)
        from . import _grpc_client  # grpclib and betterproto2: only when gRPC is used

        self._wire = _grpc_client
        self._codec = _grpc_client.RequestCodec()
        # What the worker sends decodes within the pool's bounds (max_containers), as over stdio.
        self._decode = codecs.get_codec("msgpack", context.config.max_containers).decode
        self._hub: _Hub | None = None
        self._client: _grpc_client.Client | None = None
        self._remotes: dict[int, _Remote] = {}
        self._sink: EventSink | None = None
        self._token = ""
        self.address: str | None = None

    @property
    def codec(self) -> codecs.Codec:
        return self._codec

    def _environment(self) -> dict[str, str]:
        from snakepit_trio_bridge.grpc_wire import (
            ENV_CANCEL_GRACE,
            ENV_MAX_MESSAGE_SIZE,
            ENV_TOKEN,
            new_token,
        )

        env = super()._environment()
        env[ENV_MAX_MESSAGE_SIZE] = str(self._config.max_frame_size)
        env[ENV_CANCEL_GRACE] = str(self._config.cancel_grace)
        # A new token for every process (called once per spawn): the environment, unlike
        # argv, is readable only by the worker's own user; the worker removes it at once.
        self._token = env[ENV_TOKEN] = new_token()
        return env

    async def start(self) -> None:
        self._hub = _pool_hub(self._context)
        await super().start()

    # ------------------------------------------------------------------ start-up
    async def handshake(self) -> Handshake:
        # Each phase names itself in ``phase``: when worker_init_timeout runs out, the
        # message says which one did not finish.
        proc = self._proc
        hub = self._hub
        assert proc is not None and hub is not None
        config = self._config
        self.phase = "the worker's start (its READY line: Python starting, the bridge loading)"
        address = await self._read_ready_line(proc)
        client = self._wire.Client(address, config.max_frame_size, self._token, self._decode)
        self.address = address
        self._client = client
        grace = config.cancel_grace
        self.phase = (
            "building the handler (the worker is listening; the handler's constructor has not "
            "returned)"
        )
        try:
            info = await hub.run(client.info, grace)
        except (StartFailed, TimeoutError):
            raise
        except Exception as exc:
            raise StartFailed(await self._no_info(proc, address, exc)) from None
        features = frozenset(info.features) & _KNOWN_FEATURES
        command = self._adapter.init_command
        if command is not None:
            self.phase = f"the init command {command!r}"
            request = self._codec.encode({"id": self._context.next_id(), "command": command})
            try:
                reply = await hub.run(lambda: client.execute(request), grace)
            except (StartFailed, TimeoutError):
                raise
            except Exception as exc:
                raise StartFailed(f"init command {command!r} failed: {exc!r}") from None
            if not reply.success:
                message = reply.error.message if reply.error is not None else "failed"
                raise StartFailed(f"init command {command!r} failed: {message}")
        return Handshake("grpc", features, max(1, info.max_concurrency))

    async def _no_info(self, proc: WorkerProcess, address: str, exc: Exception) -> str:
        """Why ``Info`` failed: most often the worker exited while building its handler."""
        if isinstance(exc, self._wire.BadReply):
            return str(exc)
        with anyio.move_on_after(0.5):
            await proc.wait()  # a broken connection: it is probably exiting; learn its status
        if proc.poll() is not None:
            return (
                f"the worker exited (status {proc.returncode}) while building its handler; "
                "its stderr below says why"
            )
        return f"no answer from the worker's gRPC server at {address}: {exc!r}"

    async def _read_ready_line(self, proc: WorkerProcess) -> str:
        """The worker's first stdout line, ``READY unix:/path`` or ``READY tcp:host:port``."""
        buffer = bytearray()
        while b"\n" not in buffer:
            data = await read_some(proc.stdout_fd, _READY_LIMIT)
            if not data:
                raise StartFailed("the worker exited before announcing its gRPC address")
            buffer += data
            if len(buffer) > _READY_LIMIT:
                raise StartFailed("the worker wrote more than one READY line on stdout")
        line = bytes(buffer).split(b"\n", 1)[0].decode("utf-8", "replace").strip()
        word, _, address = line.partition(" ")
        if word != "READY" or not address.startswith(("unix:", "tcp:")):
            raise StartFailed(f"expected 'READY <address>' on stdout, got {line[:200]!r}")
        return address

    # ------------------------------------------------------------------ serving
    async def serve(self, sink: EventSink, capacity: int) -> None:
        """Each call carries its own reply; the process exit is watched by ``watch``."""
        self._sink = sink
        await anyio.sleep_forever()

    def open_call(self, call: Any, frame: bytes) -> None:
        """Start the call's gRPC call (the frame is a framed ExecuteRequest)."""
        hub, client = self._hub, self._client
        assert hub is not None and client is not None
        remote = _Remote(
            self._wire.StreamWindow(self._config.stream_credits) if call.stream else None
        )
        self._remotes[call.id] = remote
        hub.call_soon(self._launch, client, call, remote, frame[4:])

    def send_nowait(self, frame: bytes) -> bool:
        return True  # open_call has started the gRPC call

    async def send(self, frame: bytes) -> None:
        """Nothing to send: ``open_call`` has started the gRPC call."""

    def grant(self, call: Any, credits: int) -> None:
        remote = self._remotes.get(call.id)
        if remote is not None and remote.window is not None and self._hub is not None:
            self._hub.call_soon(remote.window.grant, credits)

    async def cancel(self, call: Any) -> bool:
        remote = self._remotes.get(call.id)
        hub = self._hub
        if remote is None or hub is None:
            return False
        hub.call_soon(_cancel_task, remote)  # grpclib then sends RST_STREAM
        return True

    async def _after_close(self) -> None:
        client, self._client = self._client, None
        hub = self._hub
        if client is not None and hub is not None:
            try:
                await hub.run(client.close, _HUB_CLOSE_TIMEOUT)
            except Exception as exc:  # pragma: no cover - closing is best effort
                logger.debug("closing a worker's channel failed: %r", exc)
        self._remotes.clear()
        proc = self._proc
        if self.address is not None and proc is not None and proc.poll() is not None:
            _remove_socket_dir(self.address)

    # -- on the gRPC loop
    def _launch(
        self, client: _grpc_client.Client, call: Call, remote: _Remote, payload: bytes
    ) -> None:
        coro: Coroutine[Any, Any, Any]
        if remote.window is None:
            coro = client.execute(payload)
        else:
            coro = client.stream(
                payload, remote.window, lambda value: self._push(call, remote, value)
            )
        remote.task = client.start(coro, lambda task: self._report(call, task))

    def _push(self, call: Call, remote: _Remote, value: Any) -> None:
        remote.chunks.append(value)
        if not remote.flush_pending:
            remote.flush_pending = True
            hub = self._hub
            if hub is not None:
                hub.to_host(self._flush, call, remote)

    def _report(self, call: Call, task: asyncio.Task[Any]) -> None:
        """The call's task ended: turn its outcome into the pool's terms, hand it to the host."""
        hub = self._hub
        if hub is None:
            return
        wire = self._wire
        if task.cancelled():
            cancelled = Response(
                call.id, False, error="cancelled", error_type=constants.CANCELLED_ERROR_TYPE
            )
            hub.to_host(self._finish, call, cancelled, None, False)
            return
        exc = task.exception()
        if exc is None:
            try:
                response = wire.to_response(call.id, task.result(), self._decode)
            except wire.BadReply as bad:
                exc = bad
            else:
                hub.to_host(self._finish, call, response, None, False)
                return
        if isinstance(exc, wire.GRPCError):
            failure = f"gRPC status {exc.status.name}: {exc.message}"
            hub.to_host(self._finish, call, None, failure, True)
        elif isinstance(exc, wire.BadReply):
            hub.to_host(self._finish, call, None, f"it broke the gRPC contract: {exc}", True)
        else:
            hub.to_host(self._finish, call, None, f"its gRPC connection failed: {exc!r}", False)

    # -- on the host loop
    def _flush(self, call: Call, remote: _Remote) -> None:
        """Move the chunks that arrived into the call."""
        remote.flush_pending = False  # first: a chunk pushed from now on schedules a flush
        chunks = remote.chunks
        if call.done or call.chunks is None:
            chunks.clear()
            return
        target = call.chunks
        while chunks:
            target.append(chunks.popleft())
        if call.chunk_event is not None:
            call.chunk_event.set()

    def _finish(
        self, call: Call, response: Response | None, failure: str | None, protocol: bool
    ) -> None:
        """A call's outcome arrived: route its response, or replace the worker on a failure."""
        remote = self._remotes.pop(call.id, None)
        sink = self._sink
        if call.done or remote is None or sink is None:
            return  # already failed by the take-down
        if response is None:
            # A broken connection (most likely the process died) or a broken contract: as
            # over stdio, the worker is replaced and its calls fail with the cause
            # (WorkerCrashed with exit code and stderr, or ProtocolError).
            if protocol:
                sink.protocol_error(WireProtocolError(failure or "gRPC contract broken"), [])
            else:
                self._eof = True
                sink.ended(failure or "the gRPC call failed")
            return
        self._flush(call, remote)
        sink.response(response)


def _remove_socket_dir(address: str) -> None:
    """Remove a dead worker's socket and its private directory, which it removes itself on
    any exit but SIGKILL. Only what the bridge makes: ``.../snakepit-grpc-*/worker.sock``,
    ours, nothing else in it (``rmdir`` fails on anything more)."""
    kind, _, path = address.partition(":")
    directory, name = os.path.split(path)
    if kind != "unix" or name != "worker.sock":
        return
    if not os.path.basename(directory).startswith("snakepit-grpc-"):
        return
    try:
        if os.lstat(directory).st_uid != os.getuid():
            return
        os.unlink(path)
        os.rmdir(directory)
    except OSError:
        pass  # already gone (it exited cleanly), or not ours to remove


def _cancel_task(remote: _Remote) -> None:
    if remote.task is not None:
        remote.task.cancel()


# ---------------------------------------------------------------------- the adapter


class GrpcPythonAdapter(PythonAdapter):
    """Our Python bridge over gRPC (``python -m snakepit_trio_bridge --transport grpc``).

    ``handler`` is ``"package.module:HandlerClass"`` as for ``PythonAdapter`` (None: the
    built-in generic commands). ``listen="unix"`` (the default) serves on a Unix socket in a
    private directory; ``"tcp"`` on 127.0.0.1 and a free port. Needs ``grpclib`` and
    ``betterproto2`` (the ``grpc`` extra). Streams, cancellation (RST_STREAM), backpressure
    (gRPC flow control) and several requests per worker (``PoolConfig.max_in_flight``) work
    as over stdio.
    """

    def __init__(
        self,
        handler: str | None = None,
        *,
        python: str | os.PathLike[str] = sys.executable,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        listen: Listen = "unix",
        inherit_env: bool = True,
        max_concurrency: int | None = None,
    ) -> None:
        if listen not in ("unix", "tcp"):
            raise ValueError(f"listen must be 'unix' or 'tcp', not {listen!r}")
        missing = [m for m in ("grpclib", "betterproto2") if importlib.util.find_spec(m) is None]
        if missing:  # say so now, not as a worker's internal error at open_pool
            raise ImportError(
                f"GrpcPythonAdapter needs {' and '.join(missing)}: "
                "pip install 'snakepit-trio[grpc]' (or, in a checkout, pip install -e '.[grpc]')"
            )
        super().__init__(
            handler,
            python=python,
            env=env,
            cwd=cwd,
            inherit_env=inherit_env,
            max_concurrency=max_concurrency,
        )
        self.script_args: tuple[str, ...] = (
            *self.script_args,
            "--transport",
            "grpc",
            "--listen",
            listen,
        )
        self.name: str = f"python gRPC bridge ({self.handler or 'generic'})"
        self.listen = listen

    def __repr__(self) -> str:
        return f"GrpcPythonAdapter({self.handler!r}, listen={self.listen!r})"

    def transport(self, context: TransportContext) -> Transport:
        return GrpcTransport(self, context)

    @property
    def negotiate(self) -> bool:
        return False  # the READY line replaces negotiation
