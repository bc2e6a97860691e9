"""CPU cost of each piece of one small request, measured in-process without any I/O.

    python bench/experiments/costs.py

Each number is the best of several repeats of a tight loop (CPU-bound, so it holds up on a
noisy machine). Reaches into private names of snakepit_trio and snakepit_bridge on purpose:
this is a profiler's probe, not an API user. Pieces it cannot find (the code moves) are
reported as skipped.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack
import trio
from bench_handler import BenchHandler
from snakepit_bridge.protocol import codecs, constants
from snakepit_bridge.protocol.framing import encode_frame
from snakepit_bridge.protocol.messages import ClientConnection
from snakepit_bridge.server import ProtocolHandler
from workloads import SMALL

import snakepit_trio as sp

REPEATS = 7


def best_us(fn: Callable[[], object], n: int = 20_000) -> float:
    """Best-of-REPEATS microseconds per call of ``fn``."""
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - started) / n)
    return best * 1e6


def response_frame(request_id: int) -> bytes:
    message = {
        "id": request_id,
        "success": True,
        "result": SMALL,
        "timestamp": constants.utc_timestamp(),
    }
    return encode_frame(codecs.MSGPACK.encode(message))


def pool_side() -> dict[str, float]:
    out: dict[str, float] = {}
    pool = sp.Pool(sp.PythonAdapter(), 1, sp.PoolConfig())
    codec = codecs.get_codec("msgpack")
    ids = iter(range(1, 1 << 40))
    out["utc_timestamp()"] = best_us(constants.utc_timestamp)
    out["Pool._encode_request (timestamp + msgpack + frame)"] = best_us(
        lambda: pool._encode_request(codec, next(ids), "bench_echo", dict(SMALL), False)
    )
    out["msgpack.packb(request) alone"] = best_us(
        lambda: msgpack.packb({"id": 1, "command": "bench_echo", "args": SMALL, "timestamp": "x"})
    )
    conn = ClientConnection(codec)
    frame = response_frame(1)

    def receive() -> None:
        conn.start_request(1, False)
        conn.receive_data(frame)

    out["ClientConnection.start_request + receive_data (decode, parse, attrs Response)"] = best_us(
        receive
    )
    out["msgpack.unpackb(response) alone"] = best_us(
        lambda: msgpack.unpackb(frame[4:], raw=False, strict_map_key=False)
    )
    return out


def trio_side() -> dict[str, float]:
    """What trio itself costs per checkpoint, per task hop and per fd wait."""
    out: dict[str, float] = {}

    async def checkpoints(n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            await trio.lowlevel.checkpoint()
        return (time.perf_counter() - started) / n * 1e6

    async def hops(n: int) -> float:
        """Two tasks handing control back and forth through Events: cost per hand-over."""
        ping, pong = [trio.Event()], [trio.Event()]

        async def other() -> None:
            for _ in range(n):
                await ping[0].wait()
                ping[0] = trio.Event()
                pong[0].set()

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            for _ in range(n):
                ping[0].set()
                await pong[0].wait()
                pong[0] = trio.Event()
        return (time.perf_counter() - started) / (2 * n) * 1e6

    async def ready_fd_waits(n: int) -> float:
        r, w = os.pipe()
        os.write(w, b"x")
        started = time.perf_counter()
        for _ in range(n):
            await trio.lowlevel.wait_readable(r)
        elapsed = (time.perf_counter() - started) / n * 1e6
        os.close(r)
        os.close(w)
        return elapsed

    for name, fn in (
        ("trio checkpoint (one scheduler pass)", checkpoints),
        ("trio task hop (Event.set -> other task runs)", hops),
        ("trio wait_readable on a ready fd (epoll_ctl + epoll_wait + pass)", ready_fd_waits),
    ):
        out[name] = min(trio.run(fn, 20_000) for _ in range(REPEATS))
    return out


def bridge_side() -> dict[str, float]:
    """The bridge's work per request, from frame in to frame out (written to /dev/null)."""
    out: dict[str, float] = {}
    server = ProtocolHandler(BenchHandler(), "msgpack")
    devnull = os.open(os.devnull, os.O_WRONLY)
    server._out = devnull
    ids = iter(range(1, 1 << 40))
    template = {"command": "bench_echo", "args": SMALL, "timestamp": constants.utc_timestamp()}

    def request() -> bytes:
        return encode_frame(msgpack.packb({"id": next(ids), **template}))

    frames = [request() for _ in range(200_000)]
    feed = iter(frames)

    def serve_one() -> None:
        for payload in server._decoder.feed(next(feed)):
            server._on_payload(payload)
        server._run_next()
        server._flush()

    out["ProtocolHandler: feed + _on_payload + _run_next + _flush (one write)"] = best_us(
        serve_one, 20_000
    )
    packer = msgpack.Packer(use_bin_type=True, autoreset=True)
    raw = iter(frames)

    def raw_echo() -> None:
        frame = next(raw)
        body = packer.pack(msgpack.unpackb(frame[4:], raw=False))
        os.write(devnull, len(body).to_bytes(4, "big") + body)

    out["raw echo child: unpackb + pack + one write"] = best_us(raw_echo, 20_000)
    os.close(devnull)
    return out


def main() -> None:
    sections: list[tuple[str, Callable[[], dict[str, float]]]] = [
        ("pool side (no I/O)", pool_side),
        ("trio", trio_side),
        ("bridge side (no reads; writes to /dev/null)", bridge_side),
    ]
    for title, fn in sections:
        print(f"\n## {title}")
        try:
            results: dict[str, Any] = fn()
        except (AttributeError, TypeError) as exc:
            print(f"skipped: the internals moved ({exc!r})")
            continue
        for name, value in results.items():
            print(f"{value:8.2f} µs  {name}")


if __name__ == "__main__":
    main()
