"""Unit-test a handler in the test process: the bridge's own server in a thread, no worker.

::

    from snakepit_trio_bridge.harness import CommandFailed, HandlerHarness

    def test_my_handler():
        with HandlerHarness(MyHandler) as harness:
            assert harness.call("add", {"a": 1, "b": 2}) == {"sum": 3}
            with harness.stream("count", {"n": 2}) as chunks:
                assert list(chunks) == [{"i": 0}, {"i": 1}]
            assert chunks.result == {"done": True}

What runs is what a worker runs. The harness starts the bridge's :class:`ProtocolHandler` (the
stdio server of ``server.py``) in a thread of the test process, with two pipes in place of a
worker's stdin and stdout, and talks to it as the pool does: requests, cancels and credits go
in as frames in the pool's codec, answers come back as frames. So these are the worker's own:

- dispatch: sync and async handlers, generators and async generators (streamed when asked for
  a stream, returned as a list otherwise), requests run one at a time in arrival order;
- the request context: ``current_context()`` (or ``self.context``) gives the request's id,
  command, ``session_id`` and cancellation; a cancel from the test reaches ``ctx.cancelled``,
  ``check_cancelled()``, a running async handler, and a stream between two chunks (its
  generator is closed, so its ``finally`` runs);
- the codec's round trip: results come back as a pool gets them (a tuple as a list, bytes as
  bytes), and a value the codec cannot carry (a ``datetime``, a ``Decimal``) fails the request
  with the bridge's message naming where it is;
- errors as the bridge reports them: :class:`CommandFailed` carries the error type name, the
  message and the traceback the pool's ``CommandError`` would carry; an unknown command has
  the type ``UnsupportedCommand`` (the pool raises ``snakepit_trio.UnsupportedCommand``).

What is not a worker's: there is no process (``os._exit``, crashes, memory limits, signals and
start-up are a pool's to test: see docs/testing.md), no protocol negotiation, no lifeline and
no heartbeats; handlers run in a thread of the test process, not in its main thread, so they
share its modules (``monkeypatch`` reaches them) and cannot install signal handlers. A handler
that ignores cancellation cannot be stopped: :meth:`HandlerHarness.close` gives up on it after
``timeout`` and says so.

Every wait is bounded by ``timeout`` (30 s by default): a command that takes longer is sent a
cancel, as the pool does at a call's deadline, and the call raises ``TimeoutError``.

Import-light like the rest of the package: no trio, anyio or attrs.
"""

from __future__ import annotations

import itertools
import os
import threading
from queue import Empty, SimpleQueue
from typing import Generic, TypeVar, cast, overload

from .handler import BaseCommandHandler, load_handler
from .protocol.codecs import MSGPACK_AVAILABLE, get_codec
from .protocol.constants import (
    CANCEL,
    CANCELLED_ERROR_TYPE,
    CHUNK,
    CREDIT,
    utc_timestamp,
)
from .protocol.framing import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, encode_frame
from .server import ProtocolHandler

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType
    from typing import Any, Self, TypeAlias

    HandlerSource: TypeAlias = (
        BaseCommandHandler
        | type[BaseCommandHandler]
        | Callable[[], BaseCommandHandler]
        | str
        | None
    )

#: The handler class a harness serves (``harness.handler`` is one).
H = TypeVar("H", bound=BaseCommandHandler)

__all__ = [
    "CommandCancelled",
    "CommandFailed",
    "CommandStream",
    "HandlerHarness",
    "RunningCommand",
]

_READ_SIZE = 64 * 1024
_FOREVER = float("inf")


class CommandFailed(Exception):
    """A command failed, as the bridge reported it: what the pool raises as ``CommandError``.

    ``error_type`` is the exception's type name (``"ValueError"``), or the bridge's own kind
    (``"UnsupportedCommand"``, ``"Cancelled"``); ``message`` its message; ``traceback`` the
    worker-side traceback, when the bridge sent one.
    """

    def __init__(self, message: str, error_type: str | None, traceback: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        self.traceback = traceback

    def __str__(self) -> str:
        return f"{self.error_type}: {self.message}" if self.error_type else self.message


class CommandCancelled(CommandFailed):
    """The bridge confirmed a cancel: the command stopped before it finished."""


class _Call:
    """One request in flight: what the reader thread hands to the waiting test."""

    __slots__ = ("command", "events", "finished", "id", "send", "timeout")

    def __init__(
        self,
        request_id: int,
        command: str,
        send: Callable[[dict[str, Any]], None],
        timeout: float | None,
    ) -> None:
        self.id = request_id
        self.command = command
        self.send = send  # sends a cancel or a credit (nothing once the server has stopped)
        self.timeout = timeout  # the harness's bound on each wait
        # ("chunk", data) for each chunk, then ("response", message) or ("gone", exception).
        self.events: SimpleQueue[tuple[str, Any]] = SimpleQueue()
        self.finished = threading.Event()


class HandlerHarness(Generic[H]):
    """The bridge's server for one handler, in a thread of this process; see the module doc.

    ``handler`` is a handler instance, a ``BaseCommandHandler`` subclass (or another callable
    that builds one), a ``"package.module:Class"`` spec, or None for the generic handler.
    ``wire`` is the codec: ``"auto"`` picks MessagePack when it is installed, as a pool does.
    ``timeout`` bounds every wait, in seconds (None: no bound).

    Use it as a context manager, or call :meth:`close`. The handler instance is ``handler``.
    """

    @overload
    def __init__(
        self,
        handler: H | Callable[[], H],
        *,
        wire: str = ...,
        timeout: float | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: HandlerHarness[BaseCommandHandler],
        handler: str | None = ...,
        *,
        wire: str = ...,
        timeout: float | None = ...,
    ) -> None: ...
    def __init__(
        self, handler: HandlerSource = None, *, wire: str = "auto", timeout: float | None = 30.0
    ) -> None:
        if wire not in ("auto", "json", "msgpack"):
            raise ValueError(f"wire must be 'auto', 'json' or 'msgpack', not {wire!r}")
        if timeout is not None and not timeout > 0:
            raise ValueError(
                f"timeout must be a positive number of seconds or None, not {timeout!r}"
            )
        if timeout == _FOREVER:
            timeout = None
        if wire == "auto":
            wire = "msgpack" if MSGPACK_AVAILABLE else "json"
        # The overloads tie H to the handler given; a spec or None gives a BaseCommandHandler.
        self.handler = cast("H", _instance(handler))
        #: The codec in use: ``"msgpack"`` or ``"json"``.
        self.wire = wire
        self.timeout = timeout
        self._codec = get_codec(wire)
        self._server = ProtocolHandler(self.handler, protocol=wire)
        self._ids = itertools.count(1)
        self._calls: dict[int, _Call] = {}
        self._calls_lock = threading.Lock()
        # Writes take their own lock: a big request may block in os.write until the server
        # reads, and the reader thread must stay free to drain answers meanwhile.
        self._write_lock = threading.Lock()
        self._closed = False
        self._stopped: BaseException | None = None  # why the server thread ended early
        server_in, self._requests = os.pipe()
        self._responses, server_out = os.pipe()
        self._server_thread = threading.Thread(
            target=self._serve, args=(server_in, server_out), name="snakepit-harness", daemon=True
        )
        self._reader_thread = threading.Thread(
            target=self._read, name="snakepit-harness-reader", daemon=True
        )
        self._server_thread.start()
        self._reader_thread.start()

    # ------------------------------------------------------------------ running commands

    def call(
        self,
        command: str,
        args: Mapping[str, Any] | None = None,
        *,
        session_id: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Run ``command`` and return its result, as ``pool.execute`` would.

        Raises :class:`CommandFailed` when the command fails. Past ``timeout`` (None: the
        harness's; ``math.inf``: no bound) the command is sent a cancel and ``TimeoutError`` is
        raised.
        ``session_id`` is put in the arguments, as ``pool.execute_in_session`` does, where
        ``current_context().session_id`` finds it.
        """
        running = self.start(command, args, session_id=session_id)
        try:
            return running.result(timeout)
        except TimeoutError:
            running.cancel()
            raise

    def start(
        self, command: str, args: Mapping[str, Any] | None = None, *, session_id: str | None = None
    ) -> RunningCommand:
        """Send ``command`` and return at once: cancel it, or wait for its result, later.

        Commands run one at a time in the order they were sent; one sent while another runs
        waits its turn (and a cancel of it answers at once that it was cancelled).
        """
        return RunningCommand(self._begin(command, args, session_id, False, None))

    def stream(
        self,
        command: str,
        args: Mapping[str, Any] | None = None,
        *,
        session_id: str | None = None,
        credits: int | None = 1,
    ) -> CommandStream:
        """Run ``command`` as a stream: iterate its chunks; ``result`` then holds its final value.

        ``credits`` is how many chunks the handler may produce ahead of the loop that takes
        them (the pool's flow control); the default, 1, keeps them in step, so after ``n``
        chunks were taken the generator has produced exactly ``n``. None: no limit. Use the
        stream as a context manager: leaving the block early cancels the command and waits
        until the bridge confirms it (the generator is closed by then).
        """
        if credits is not None and (
            not isinstance(credits, int) or isinstance(credits, bool) or credits < 1
        ):
            raise ValueError(f"credits must be an int >= 1 or None, not {credits!r}")
        return CommandStream(self._begin(command, args, session_id, True, credits), credits)

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Cancel what is still running, stop the server thread and release the pipes.

        Raises ``RuntimeError`` if a command is still running ``timeout`` seconds after it was
        cancelled (a handler that ignores cancellation; its thread is left behind).
        """
        if self._closed:
            return
        self._closed = True
        with self._calls_lock:
            pending = list(self._calls)
        for request_id in pending:
            self._send_quietly({"type": CANCEL, "id": request_id})
        with self._write_lock:
            os.close(self._requests)  # stdin EOF: the server finishes what it has, then returns
        self._server_thread.join(self.timeout)
        if self._server_thread.is_alive():
            raise RuntimeError(
                f"a command of {type(self.handler).__name__} is still running "
                f"{self.timeout} s after it was cancelled: it ignores cancellation (in a pool, "
                "the worker would be killed); its thread is left running"
            )
        self._reader_thread.join()  # the server's end of the answers is closed: EOF

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ the pool's side

    def _begin(
        self,
        command: str,
        args: Mapping[str, Any] | None,
        session_id: str | None,
        stream: bool,
        credits: int | None,
    ) -> _Call:
        """Register a call and send its request, shaped as the pool's ``Request.to_wire``."""
        if self._closed:
            raise RuntimeError("the harness is closed")
        if not isinstance(command, str) or not command:
            raise TypeError(f"command must be a non-empty str, not {command!r}")
        call_args: dict[str, Any] = {} if args is None else dict(args)
        if session_id is not None:
            call_args["session_id"] = session_id
        call = _Call(next(self._ids), command, self._send_quietly, self.timeout)
        request: dict[str, Any] = {
            "id": call.id,
            "command": command,
            "args": call_args,
            "timestamp": utc_timestamp(),
        }
        if stream:
            request["stream"] = True
        if credits is not None:
            request["credits"] = credits
        frame = self._frame(request)  # the arguments fail to encode here, as at a pool's call
        with self._calls_lock:
            self._calls[call.id] = call
        try:
            self._write(frame)
        except BaseException:
            with self._calls_lock:
                self._calls.pop(call.id, None)
            raise
        return call

    def _frame(self, message: dict[str, Any]) -> bytes:
        return encode_frame(self._codec.encode(message), DEFAULT_MAX_FRAME_SIZE)

    def _send_quietly(self, message: dict[str, Any]) -> None:
        """Send a cancel or a credit; nothing to do if the server has already stopped."""
        try:
            self._write(self._frame(message))
        except RuntimeError:
            pass

    def _write(self, frame: bytes) -> None:
        with self._write_lock:
            view = memoryview(frame)
            try:
                while view:
                    view = view[os.write(self._requests, view) :]
            except OSError as exc:  # the server thread ended and closed its end
                raise RuntimeError(
                    f"the harness's server has stopped{_why(self._stopped)}"
                ) from exc

    # ------------------------------------------------------------------ threads

    def _serve(self, requests: int, responses: int) -> None:
        """The server thread: the bridge's serving loop, over the pipes instead of stdio.

        ``ProtocolHandler.run()`` is this loop plus what belongs to a process (it takes over
        fds 0 and 1, starts the lifeline, handles SIGTERM), and has no public entry point for
        other descriptors; so the loop is entered here the way ``run()`` enters it.
        """
        server = self._server
        server._in, server._out = requests, responses
        try:
            server._serve()
        except BaseException as exc:  # SystemExit from a handler: a worker would have exited
            self._stopped = exc
        finally:
            if server._async is not None:
                server._async.close()
            os.close(responses)  # the reader sees EOF and fails what is still waiting
            os.close(requests)  # further writes fail (EPIPE) instead of blocking

    def _read(self) -> None:
        """The reader thread: decode answers and hand each to its call, until EOF (then
        close the pipe: a harness given up on is released when its handler ends)."""
        decoder = FrameDecoder(DEFAULT_MAX_FRAME_SIZE)
        broken: BaseException | None = None
        while True:
            data = os.read(self._responses, _READ_SIZE)
            if not data:
                break
            if broken is not None:
                continue  # keep draining, so the server never blocks on a full pipe
            try:
                for payload in decoder.feed(data):
                    self._route(self._codec.decode(payload))
            except Exception as exc:  # a frame the pool's side cannot read: a bug to report
                broken = exc
                self._fail_all(RuntimeError(f"the bridge sent an unreadable answer: {exc!r}"))
        os.close(self._responses)
        reason = broken or self._stopped
        self._fail_all(
            RuntimeError(f"the harness's server stopped before the command answered{_why(reason)}")
        )

    def _route(self, message: Any) -> None:
        if not isinstance(message, dict):
            raise ValueError(f"an answer that is a {type(message).__name__}, not a map")
        kind = message.get("type")
        request_id: Any = message.get("id")
        if kind == CHUNK:
            with self._calls_lock:
                call = self._calls.get(request_id)
            if call is not None:
                call.events.put(("chunk", message.get("data")))
        elif kind is None:
            if request_id is None:  # the server could not read a request of ours
                self._fail_all(RuntimeError(f"the bridge refused a request: {message!r}"))
                return
            with self._calls_lock:
                call = self._calls.pop(request_id, None)
            if call is not None:
                call.events.put(("response", message))
                call.finished.set()
        # Other frames (heartbeats) carry nothing for a test.

    def _fail_all(self, error: BaseException) -> None:
        with self._calls_lock:
            calls = list(self._calls.values())
            self._calls.clear()
        for call in calls:
            call.events.put(("gone", error))
            call.finished.set()


class RunningCommand:
    """A command sent with :meth:`HandlerHarness.start`."""

    def __init__(self, call: _Call) -> None:
        self._call = call
        self._outcome: tuple[bool, Any] | None = None  # (succeeded, result or error)

    @property
    def id(self) -> int:
        """The request id (``current_context().id`` in the handler)."""
        return self._call.id

    @property
    def command(self) -> str:
        """The command's name."""
        return self._call.command

    def done(self) -> bool:
        """Whether the bridge has answered."""
        return self._call.finished.is_set()

    def cancel(self) -> None:
        """Ask the bridge to cancel the command, as the pool does (a no-op once answered)."""
        if not self.done():
            self._call.send({"type": CANCEL, "id": self._call.id})

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the answer and return the result, or raise :class:`CommandFailed`
        (:class:`CommandCancelled` if it was cancelled).

        ``timeout``: None waits as long as the harness's ``timeout``, ``math.inf`` without
        bound. Past it, ``TimeoutError`` is raised and the command keeps running.
        """
        if self._outcome is None:
            kind, value = _next_event(self._call, timeout)
            if kind == "chunk":  # not a stream: the bridge sends none
                raise RuntimeError(f"a chunk arrived for {self.command!r}, which is no stream")
            self._outcome = _outcome(kind, value)
        succeeded, value = self._outcome
        if not succeeded:
            raise value
        return value


class CommandStream:
    """The chunks of a command run with :meth:`HandlerHarness.stream`, as an iterator.

    After the last chunk, ``result`` holds the stream's final value (the generator's return
    value) and ``count`` the number of chunks taken. A failure raises :class:`CommandFailed`
    from the iteration.
    """

    def __init__(self, call: _Call, credits: int | None) -> None:
        self._call = call
        self._flow = credits is not None
        self._owed = 0  # chunks taken whose credit is not yet given back
        self._cancelled = False
        self._outcome: tuple[bool, Any] | None = None
        self._chunk: Any = None
        #: The final value, once the stream has ended.
        self.result: Any = None
        #: Chunks taken so far.
        self.count = 0

    @property
    def id(self) -> int:
        """The request id (``current_context().id`` in the handler)."""
        return self._call.id

    @property
    def command(self) -> str:
        """The command's name."""
        return self._call.command

    def done(self) -> bool:
        """Whether the bridge has sent the stream's final answer."""
        return self._call.finished.is_set()

    def cancel(self) -> None:
        """Cancel the stream: chunks not yet taken are dropped, and the next iteration raises
        :class:`CommandCancelled` (or ends normally, if the stream had finished first)."""
        self._cancelled = True
        if not self.done():
            self._call.send({"type": CANCEL, "id": self._call.id})

    def __iter__(self) -> CommandStream:
        return self

    def __next__(self) -> Any:
        if self._outcome is None:
            self._outcome = self._next()
        if self._outcome is None:
            self.count += 1
            self._owed += 1
            return self._chunk
        succeeded, value = self._outcome
        if not succeeded:
            raise value
        self.result = value
        raise StopIteration

    def _next(self) -> tuple[bool, Any] | None:
        """The next chunk (None, the chunk in ``_chunk``) or the stream's outcome."""
        call = self._call
        if self._owed and self._flow and not self._cancelled:
            # The pool grants credit as its consumer takes chunks; giving it back only when
            # the next one is asked for keeps the generator from running ahead.
            call.send({"type": CREDIT, "id": call.id, "credits": self._owed})
            self._owed = 0
        while True:
            try:
                kind, value = _next_event(call, None)
            except TimeoutError:
                self.cancel()
                raise
            if kind != "chunk":
                return _outcome(kind, value)
            if not self._cancelled:
                self._chunk = value
                return None

    def close(self) -> None:
        """Cancel the stream if it is still running, and wait until the bridge confirms it."""
        if self._outcome is not None:
            return
        self.cancel()
        while self._outcome is None:
            kind, value = _next_event(self._call, None)
            if kind != "chunk":
                self._outcome = _outcome(kind, value)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except Exception:  # the block's own exception is the one to see
            pass


def _next_event(call: _Call, timeout: float | None) -> tuple[str, Any]:
    """The call's next event, waiting at most ``timeout`` (None: the harness's)."""
    if timeout is None:
        timeout = call.timeout
    try:
        return call.events.get(timeout=None if timeout is None or timeout == _FOREVER else timeout)
    except Empty:
        raise TimeoutError(
            f"{call.command!r} (request {call.id}) did not answer within {timeout} s"
        ) from None


def _outcome(kind: str, value: Any) -> tuple[bool, Any]:
    """(True, result) or (False, the exception to raise), from a terminal event."""
    if kind == "gone":
        return False, value
    response: dict[str, Any] = value
    if response.get("success"):
        return True, response.get("result")
    error_type = response.get("error_type")
    message = str(response.get("error") or "command failed")
    traceback = response.get("traceback")
    cls = CommandCancelled if error_type == CANCELLED_ERROR_TYPE else CommandFailed
    return False, cls(message, error_type, traceback if isinstance(traceback, str) else None)


def _instance(handler: HandlerSource) -> BaseCommandHandler:
    if isinstance(handler, BaseCommandHandler):
        return handler
    if handler is None or isinstance(handler, str):
        return load_handler(handler)
    if callable(handler):
        built = handler()
        if not isinstance(built, BaseCommandHandler):
            raise TypeError(f"{handler!r} built a {type(built).__name__}, not a BaseCommandHandler")
        return built
    raise TypeError(
        "handler must be a BaseCommandHandler, a subclass of it, a 'package.module:Class' spec "
        f"or None, not {type(handler).__name__}"
    )


def _why(reason: BaseException | None) -> str:
    return f" ({type(reason).__name__}: {reason})" if reason is not None else ""
