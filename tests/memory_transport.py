"""A transport whose worker is a handler object in this process: proof that a transport is
one module, with no change to the slot or the pool. Each request runs in a thread; a cancel
marks its context, as the bridges do; ``kill`` plays a SIGKILL of the "process"."""

from __future__ import annotations

import itertools
from typing import Any

import anyio
import anyio.abc
from snakepit_trio_bridge.context import Cancelled, RequestContext, bind_context, unbind_context
from snakepit_trio_bridge.generic import GenericCommandHandler
from snakepit_trio_bridge.protocol import codecs, constants
from snakepit_trio_bridge.protocol.framing import HEADER_SIZE
from snakepit_trio_bridge.protocol.messages import Response, StreamChunk

import snakepit_trio as sp
from snakepit_trio._transport import EventSink, Handshake, TransportContext

_pids = itertools.count(1 << 30)  # never a real pid here (pid_max is at most 2**22)
_live: dict[int, MemoryTransport] = {}


class MemoryAdapter(sp.Adapter):
    def __init__(self) -> None:
        super().__init__("memory", name="memory")

    def transport(self, context: TransportContext) -> MemoryTransport:
        return MemoryTransport(context)


def kill(pid: int) -> None:  # what SIGKILL is to a process
    _live[pid].killed.set()


class MemoryTransport:
    codec = codecs.JSON
    node = "memory"
    phase = "start-up"

    def __init__(self, context: TransportContext) -> None:
        self.pid = next(_pids)
        self.worker_pid = self.pid
        self.started_at = anyio.current_time()
        self.killed = anyio.Event()
        self._running = anyio.Event()
        self._handler = GenericCommandHandler()
        self._requests: dict[int, tuple[dict[str, Any], RequestContext]] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._sink: EventSink | None = None
        self._dead = False

    rss = stderr_tail = staticmethod(lambda: None)  # nothing to measure, nothing written

    def exit_status(self) -> tuple[int | None, int | None]:
        return (None, 9) if self._dead else (None, None)

    async def start(self) -> None:
        _live[self.pid] = self

    async def watch(self, sink: EventSink) -> None:
        self._sink = sink
        async with anyio.create_task_group() as tg:  # the "process": where requests run
            self._tg = tg
            self._running.set()
            await self.killed.wait()
            self._dead = True
            sink.ended("the worker process exited")
            tg.cancel_scope.cancel()

    async def handshake(self) -> Handshake:
        await self._running.wait()
        features = {constants.FEATURE_STREAM, constants.FEATURE_CANCEL}
        return Handshake("json", frozenset(features), 1)

    async def serve(self, sink: EventSink, capacity: int) -> None:
        await anyio.sleep_forever()  # answers come from the request tasks

    def open_call(self, call: Any, frame: bytes) -> None:
        request = self.codec.decode(frame[HEADER_SIZE:])
        context = RequestContext(call.id, request["command"], request["args"], stream=call.stream)
        self._requests[call.id] = (request, context)

    def send_nowait(self, frame: bytes) -> bool:
        request_id = self.codec.decode(frame[HEADER_SIZE:])["id"]
        assert self._tg is not None
        self._tg.start_soon(self._run, request_id)
        return True

    async def send(self, frame: bytes) -> None:
        self.send_nowait(frame)

    async def _run(self, request_id: int) -> None:
        request, context = self._requests[request_id]
        function = self._handler.get_command(request["command"])
        sink = self._sink
        assert sink is not None

        def run() -> Any:
            token = bind_context(context)
            try:
                if function is None:
                    raise LookupError(f"Unknown command: {request['command']!r}")
                result = function(request["args"])
                if request.get("stream"):
                    iterator = iter(result)
                    for seq in itertools.count():
                        try:
                            chunk = next(iterator)
                        except StopIteration as stop:
                            return stop.value
                        anyio.from_thread.run_sync(
                            sink.chunk, StreamChunk(request_id, seq, chunk), 0.0
                        )
                        context.check_cancelled()
                if request["command"] == "info":  # a worker reports its own pid
                    result["system_info"]["pid"] = self.pid
                return result
            finally:
                unbind_context(token)

        try:
            result = await anyio.to_thread.run_sync(run, abandon_on_cancel=True)
            response = Response(request_id, True, result=result)
        except (Exception, Cancelled) as exc:
            kind = {Cancelled: constants.CANCELLED_ERROR_TYPE, LookupError: "UnsupportedCommand"}
            error_type = kind.get(type(exc), type(exc).__name__)
            response = Response(request_id, False, error=str(exc), error_type=error_type)
        del self._requests[request_id]
        if not self._dead:
            sink.response(response)

    async def cancel(self, call: Any) -> bool:
        entry = self._requests.get(call.id)
        if entry is None:
            return False
        entry[1].cancel()
        return True

    def grant(self, call: Any, credits: int) -> None:
        pass

    async def close(self, *, planned: bool) -> str:
        self._dead = True
        for _, context in self._requests.values():
            context.cancel()
        _live.pop(self.pid, None)
        return "graceful" if planned else "sigkill"
