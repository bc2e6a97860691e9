"""The asyncio side of the gRPC transport: one worker's grpclib channel and its calls.

Everything here runs on the event loop that carries the pool's gRPC traffic (a dedicated
thread under trio, the host loop under asyncio: see ``_grpc``). It reaches the host only
through the callbacks it is given. Importing this module imports grpclib and betterproto2,
so ``_grpc`` loads it only when a gRPC worker starts.

Every call carries the worker's token. The first call, ``Info``, also carries a random
challenge, and the worker must answer it with the proof only the token's holder can make
(``grpc_wire.proof``); the channel then never opens a second connection. Together these
mean that the pool talks to its worker only: if the worker dies and another process takes
its address (its Unix socket path, or its TCP port once the kernel lets it go), the pool's
next call fails instead of reaching that process (it would have sent it the token and the
call's arguments).
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections.abc import Callable, Coroutine
from typing import Any, Final

from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError
from grpclib.protocol import H2Protocol
from snakepit_trio_bridge._grpc_generated.snakepit.v1 import (
    ExecuteReply,
    ExecuteRequest,
    InfoReply,
    InfoRequest,
    StreamReply,
)
from snakepit_trio_bridge.grpc_wire import (
    CHALLENGE_KEY,
    EXECUTE,
    EXECUTE_STREAM,
    INFO,
    PROOF_KEY,
    SizeLimitedCodec,
    pack,
    proof,
    token_metadata,
)
from snakepit_trio_bridge.protocol import codecs
from snakepit_trio_bridge.protocol.messages import Response

__all__ = ["BadReply", "Client", "GRPCError", "RequestCodec", "StreamWindow", "to_response"]

_NO_ARGS: Final = b""


class BadReply(Exception):
    """The worker answered with something the contract does not allow."""


class RequestCodec(codecs.Codec):
    """Turns the pool's request message into a serialized ``ExecuteRequest``.

    The pool encodes at the call site (so bad arguments fail before anything is queued) and
    frames the result; the worker strips the 4-byte frame header and sends the rest as is.
    """

    name = "grpc"

    def encode(self, value: Any) -> bytes:
        args = value.get("args")
        session = args.get("session_id") if isinstance(args, dict) else None
        return bytes(
            ExecuteRequest(
                command=value["command"],
                args=pack(args) if args else _NO_ARGS,
                session_id=session if isinstance(session, str) else "",
                request_id=value["id"],
            )
        )

    def decode(self, payload: bytes) -> Any:
        return ExecuteRequest.parse(payload)


# Results and chunks decode through the same bounded codec as over stdio (max_containers,
# MAX_DEPTH, big payloads in slices): a worker's answer cannot blow up the pool's memory.
# Decoding keeps no state, so one instance serves every hub thread.
_decode = codecs.get_codec("msgpack").decode


def to_response(
    request_id: int, reply: ExecuteReply, decode: Callable[[bytes], Any] = _decode
) -> Response:
    """The pool's ``Response`` for an ``ExecuteReply`` (``BadReply`` if its result is unreadable)."""
    if reply.success:
        try:
            result = decode(reply.result) if reply.result else None
        except Exception as exc:
            raise BadReply(f"the result cannot be decoded: {exc}") from None
        return Response(request_id, True, result=result)
    error = reply.error
    if error is None:
        return Response(request_id, False, error="command failed")
    return Response(
        request_id,
        False,
        error=error.message,
        error_type=error.error_type or None,
        traceback=error.traceback or None,
    )


class StreamWindow:
    """Chunks the reader may still take before the consumer grants more (loop side only)."""

    __slots__ = ("_event", "credits")

    def __init__(self, credits: int) -> None:
        self.credits = credits
        self._event: asyncio.Event | None = None

    def grant(self, credits: int) -> None:
        self.credits += credits
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        while self.credits <= 0:
            self._event = asyncio.Event()
            await self._event.wait()
        self._event = None


class _OneConnection(Channel):
    """A grpclib channel that connects once: a lost connection is not reopened.

    grpclib reconnects on the next call by default; here that would reach whatever process
    holds the worker's address by then. The worker is being replaced anyway.
    """

    _connected_once = False

    async def _create_connection(self) -> H2Protocol:
        if self._connected_once:
            raise ConnectionResetError("the connection to the worker was lost")
        self._connected_once = True
        protocol: H2Protocol = await super()._create_connection()
        return protocol


class Client:
    """One worker's channel and the tasks of its calls."""

    def __init__(
        self,
        address: str,
        max_message_size: int,
        token: str,
        decode: Callable[[bytes], Any] = _decode,
    ) -> None:
        self.address = address
        self.max_message_size = max_message_size
        self.decode = decode
        self.tasks: set[asyncio.Task[Any]] = set()
        self._token = token
        self._metadata = token_metadata(token)
        self._channel: Channel | None = None

    def channel(self) -> Channel:
        """The channel, created on first use (grpclib binds it to the running loop)."""
        if self._channel is None:
            codec = SizeLimitedCodec(self.max_message_size)
            kind, _, where = self.address.partition(":")
            if kind == "unix":
                self._channel = _OneConnection(path=where, codec=codec)
            elif kind == "tcp":
                host, _, port = where.rpartition(":")
                self._channel = _OneConnection(host, int(port), codec=codec)
            else:
                raise ValueError(f"unsupported worker address {self.address!r}")
        return self._channel

    def start(
        self,
        coro: Coroutine[Any, Any, Any],
        on_done: Callable[[asyncio.Task[Any]], None],
    ) -> asyncio.Task[Any]:
        """Run ``coro`` as a tracked task; ``on_done(task)`` runs when it is over."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(on_done)
        return task

    async def info(self) -> InfoReply:
        """``Info``, the first call: the worker must prove it holds the token (``BadReply``)."""
        challenge = secrets.token_urlsafe(16)
        metadata = (*self._metadata, (CHALLENGE_KEY, challenge))
        async with self.channel().request(
            INFO, Cardinality.UNARY_UNARY, InfoRequest, InfoReply, metadata=metadata
        ) as stream:
            await stream.send_message(InfoRequest(), end=True)
            await stream.recv_initial_metadata()
            received = stream.initial_metadata
            answer = received.get(PROOF_KEY) if received is not None else None
            expected = proof(self._token, challenge)
            if not isinstance(answer, str) or not hmac.compare_digest(
                answer.encode("utf-8", "surrogatepass"), expected.encode()
            ):
                raise BadReply(
                    f"the server at {self.address} did not prove that it holds the worker's "
                    "token: another process may hold the worker's address"
                )
            reply = await stream.recv_message()
        if reply is None:
            raise BadReply("the worker sent no Info reply")
        return reply

    async def execute(self, payload: bytes) -> ExecuteReply:
        """One unary call; ``payload`` is a serialized ``ExecuteRequest``."""
        async with self.channel().request(
            EXECUTE, Cardinality.UNARY_UNARY, bytes, ExecuteReply, metadata=self._metadata
        ) as stream:
            await stream.send_message(payload, end=True)
            reply = await stream.recv_message()
        if reply is None:
            raise BadReply("the worker sent no reply")
        return reply

    async def stream(
        self,
        payload: bytes,
        window: StreamWindow,
        on_chunk: Callable[[Any], None],
    ) -> ExecuteReply:
        """One streaming call: ``on_chunk(value)`` per chunk; returns the terminal reply.

        Reads only while ``window`` has credit, so a slow consumer stops the reads, gRPC flow
        control stops the worker's sender, and the worker's generator waits.
        """
        async with self.channel().request(
            EXECUTE_STREAM, Cardinality.UNARY_STREAM, bytes, StreamReply, metadata=self._metadata
        ) as stream:
            await stream.send_message(payload, end=True)
            while True:
                if window.credits <= 0:
                    await window.wait()
                reply = await stream.recv_message()
                if reply is None:
                    raise BadReply("the stream ended without its final reply")
                window.credits -= len(reply.chunks)
                for data in reply.chunks:
                    try:
                        value = self.decode(data)
                    except Exception as exc:
                        raise BadReply(f"a chunk cannot be decoded: {exc}") from None
                    on_chunk(value)
                if reply.end is not None:
                    return reply.end
                if not reply.chunks:
                    raise BadReply("a stream message carries neither chunks nor the end")

    async def close(self) -> None:
        """Cancel the calls still running, wait for them, close the channel."""
        tasks = [t for t in self.tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        if self._channel is not None:
            self._channel.close()
            self._channel = None
