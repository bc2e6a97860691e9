"""The stock Python bridge with experimental tweaks, for A/B measurements only.

Takes the same options as ``python -m snakepit_bridge``; the tweaks come from the environment
variable ``SNAKEPIT_BENCH_TWEAKS`` (comma-separated, ``name`` or ``name=value``):

- ``read_size=N``: read stdin ``N`` bytes at a time (stock: 256 KiB).
- ``chunk_batch=K``: a stream's chunks leave in one write per ``K`` chunks (or 256 KiB, or
  when the credit runs out, or when the generator is slow: more than 200 µs between two
  items) instead of one write per chunk.
- ``copyless``: one copy per received payload and no header+payload concatenation (see
  copyless.py).
- ``lean``: a short path for plain (non-generator, non-async) handlers called without a
  stream: no per-request closure and job object, no ABC ``isinstance`` checks on the result.

The patches replace methods of ``snakepit_bridge.server.ProtocolHandler`` in this worker
process only; the library is not touched. Start it through ``ab.py``'s ``TunedAdapter``.
"""

from __future__ import annotations

import inspect
import os
import time
from typing import Any

from snakepit_bridge import server
from snakepit_bridge.__main__ import main
from snakepit_bridge.context import Cancelled, RequestContext, bind_context, unbind_context
from snakepit_bridge.protocol.constants import CHUNK, utc_timestamp
from snakepit_bridge.protocol.framing import encode_frame

ProtocolHandler = server.ProtocolHandler

_BATCH_BYTES = 256 * 1024
_SLOW_ITEM = 0.0002


def parse_tweaks(text: str) -> dict[str, str]:
    tweaks: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        tweaks[name] = value
    return tweaks


def install_chunk_batching(batch: int) -> None:
    def send_chunk(self: Any, job: Any, item: Any) -> None:
        chunk = {"type": CHUNK, "id": job.ctx.id, "seq": job.seq, "data": item}
        frame = encode_frame(self._codec.encode(chunk), self._max_frame_size)
        outbox = self._outbox
        outbox.append(frame)
        job.seq += 1
        if job.credits is not None:
            job.credits -= 1
        now = time.monotonic()
        last = getattr(job, "_bench_last", 0.0)
        pending = getattr(job, "_bench_bytes", 0) + len(frame)
        if (
            len(outbox) >= batch
            or pending >= _BATCH_BYTES
            or (job.credits is not None and job.credits <= 0)
            or now - last > _SLOW_ITEM
        ):
            self._flush()
            pending = 0
        job._bench_last = now
        job._bench_bytes = pending

    server._Job = type("_Job", (server._Job,), {})  # a subclass without __slots__
    ProtocolHandler._send_chunk = send_chunk


def _plain(function: Any) -> bool:
    target = getattr(function, "__func__", function)
    return (
        inspect.isfunction(target)
        and not inspect.isgeneratorfunction(target)
        and not inspect.iscoroutinefunction(target)
        and not inspect.isasyncgenfunction(target)
    )


def install_lean() -> None:
    stock_run_next = ProtocolHandler._run_next
    plain_cache: dict[Any, bool] = {}

    def run_next(self: Any) -> None:
        message = self._queue[0]
        command = message.get("command")
        args = message.get("args")
        function = self.command_handler._commands.get(command) if type(command) is str else None
        if function is None or type(args) is not dict or message.get("stream") is True:
            stock_run_next(self)
            return
        plain = plain_cache.get(function)
        if plain is None:
            plain = plain_cache[function] = _plain(function)
        if not plain:
            stock_run_next(self)
            return
        self._queue.popleft()
        request_id = message["id"]
        if self._outbox and self._durations.get(command, 1.0) >= server._QUICK:
            self._flush()
        ctx = RequestContext(request_id, command, args, poll=self._poll_current)
        job = self._job = server._Job(ctx, None)
        token = bind_context(ctx)
        started = time.monotonic()
        self.command_handler.request_count += 1
        try:
            result = function(args)
            response = {
                "id": request_id,
                "success": True,
                "result": result,
                "timestamp": utc_timestamp(),
            }
        except Cancelled:
            response = server._cancelled(request_id)
        except Exception as exc:
            response = server._error(request_id, exc)
        finally:
            unbind_context(token)
            self._job = None
            self._durations[command] = time.monotonic() - started
        del job
        self._send(response)

    def poll_current(self: Any) -> bool:
        job = self._job
        return self._poll(job.ctx) if job is not None else False

    ProtocolHandler._run_next = run_next
    ProtocolHandler._poll_current = poll_current


def install(tweaks: dict[str, str]) -> None:
    if "read_size" in tweaks:
        server._READ_SIZE = int(tweaks["read_size"])
    if "chunk_batch" in tweaks:
        install_chunk_batching(int(tweaks["chunk_batch"] or 64))
    if "lean" in tweaks:
        install_lean()
    if "copyless" in tweaks:
        import copyless

        copyless.install_bridge()


if __name__ == "__main__":
    install(parse_tweaks(os.environ.get("SNAKEPIT_BENCH_TWEAKS", "")))
    main()
