#!/usr/bin/env python
"""Throughput of the sans-IO wire protocol: FrameDecoder + codec decode, and encode.

    python bench/bench_protocol.py [--quick] [--rounds N] [--out PATH]

Streams are built in memory and fed in 64 KiB chunks, as a pipe read would hand them over.
Each row is the best of several rounds (the least disturbed by the rest of the machine).
MB/s counts stream bytes, frame headers included (1 MB = 10**6 bytes). Prints a markdown
table and writes JSON to bench/results/protocol.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bridges" / "python"))

import msgpack  # noqa: E402
from snakepit_trio_bridge.protocol import JSON, MSGPACK, Codec, FrameDecoder, encode_frame  # noqa: E402
from snakepit_trio_bridge.protocol.messages import ClientConnection, Response  # noqa: E402

CHUNK = 64 * 1024
MIB = 1024 * 1024
TS = "2026-11-23T18:15:11.123Z"


def small_message(i: int) -> dict[str, Any]:
    """A typical small response, about 100 bytes on the wire."""
    return Response(
        i, True, {"result": i * 3, "operation": "add", "ok": True}, timestamp=TS
    ).to_wire()


def big_message(i: int) -> dict[str, Any]:
    return Response(i, True, b"\xa5" * MIB, timestamp=TS).to_wire()


def chunked(stream: bytes) -> list[bytes]:
    return [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]


def best_of(rounds: int, run: Callable[[], int]) -> tuple[float, int]:
    """Smallest wall time of ``rounds`` runs; ``run`` returns how many frames it handled."""
    best = float("inf")
    count = 0
    for _ in range(rounds):
        started = time.perf_counter()
        count = run()
        best = min(best, time.perf_counter() - started)
    return best, count


def decode_only(chunks: list[bytes]) -> int:
    decoder = FrameDecoder()
    count = 0
    for chunk in chunks:
        count += len(decoder.feed(chunk))
    decoder.check_eof()
    return count


def decode_with(codec: Codec, chunks: list[bytes]) -> int:
    decoder = FrameDecoder()
    decode = codec.decode
    count = 0
    for chunk in chunks:
        for payload in decoder.feed(chunk):
            decode(payload)
            count += 1
    decoder.check_eof()
    return count


def connection_receive(codec: Codec, chunks: list[bytes], ids: range) -> int:
    conn = ClientConnection(codec)
    for i in ids:
        conn.start_request(i, stream=False)
    count = 0
    for chunk in chunks:
        count += len(conn.receive_data(chunk))
    assert conn.receive_eof() == []
    return count


def encode_all(codec: Codec, messages: list[dict[str, Any]]) -> int:
    encode = codec.encode
    for message in messages:
        encode_frame(encode(message))
    return len(messages)


def measure(
    results: list[dict[str, Any]],
    name: str,
    codec: str,
    frames_bytes: int,
    rounds: int,
    run: Callable[[], int],
) -> None:
    seconds, count = best_of(rounds, run)
    results.append(
        {
            "case": name,
            "codec": codec,
            "frames": count,
            "bytes": frames_bytes,
            "frame_bytes": frames_bytes / count,
            "seconds": seconds,
            "frames_per_s": count / seconds,
            "mb_per_s": frames_bytes / seconds / 1e6,
        }
    )


def run(quick: bool, rounds: int) -> dict[str, Any]:
    small_n = 20_000 if quick else 200_000
    big_n = 16 if quick else 128
    results: list[dict[str, Any]] = []

    small = [small_message(i) for i in range(small_n)]
    for codec in (MSGPACK, JSON):
        stream = b"".join(encode_frame(codec.encode(m)) for m in small)
        chunks = chunked(stream)
        ids = range(small_n)
        measure(
            results,
            "small: framing only",
            codec.name,
            len(stream),
            rounds,
            lambda c=chunks: decode_only(c),
        )
        measure(
            results,
            "small: framing + decode",
            codec.name,
            len(stream),
            rounds,
            lambda codec=codec, c=chunks: decode_with(codec, c),
        )
        measure(
            results,
            "small: ClientConnection.receive_data",
            codec.name,
            len(stream),
            rounds,
            lambda codec=codec, c=chunks, ids=ids: connection_receive(codec, c, ids),
        )
        measure(
            results,
            "small: encode (to_wire dict -> frame)",
            codec.name,
            len(stream),
            rounds,
            lambda codec=codec: encode_all(codec, small),
        )

    big = [big_message(i) for i in range(big_n)]
    stream = b"".join(encode_frame(MSGPACK.encode(m)) for m in big)
    chunks = chunked(stream)
    measure(
        results,
        "1 MiB bin: framing only",
        "msgpack",
        len(stream),
        rounds,
        lambda: decode_only(chunks),
    )
    measure(
        results,
        "1 MiB bin: framing + decode",
        "msgpack",
        len(stream),
        rounds,
        lambda: decode_with(MSGPACK, chunks),
    )
    measure(
        results,
        "1 MiB bin: encode (to_wire dict -> frame)",
        "msgpack",
        len(stream),
        rounds,
        lambda: encode_all(MSGPACK, big),
    )
    return {
        "benchmark": "protocol",
        "mode": "quick" if quick else "full",
        "rounds": rounds,
        "chunk_bytes": CHUNK,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "msgpack": ".".join(map(str, msgpack.version)),
        "machine": platform.machine(),
        "results": results,
    }


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Wire protocol throughput ({report['mode']}, best of {report['rounds']}, "
        f"Python {report['python']}, msgpack {report['msgpack']}, fed in {report['chunk_bytes'] // 1024} KiB chunks)",
        "",
        "| case | codec | frame size (B) | frames/s | MB/s |",
        "|---|---|---:|---:|---:|",
    ]
    for row in report["results"]:
        size = row["frame_bytes"]
        size_text = f"{size:,.0f}" if size < 10_000 else f"{size / MIB:.2f} MiB"
        lines.append(
            f"| {row['case']} | {row['codec']} | {size_text} | {row['frames_per_s']:,.0f} | {row['mb_per_s']:,.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller streams (a few seconds)")
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds per case (default 3, quick 2)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "protocol.json")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 3)
    report = run(args.quick, rounds)
    sys.stdout.write(render_markdown(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
