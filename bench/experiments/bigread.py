"""Reading 1 MiB frames from a pipe: the pool's way today vs a reused buffer.

    python bench/experiments/bigread.py [frames]

A child writes MessagePack frames ({"data": <1 MiB bytes>}) into a pipe as fast as it can;
this process reads them two ways, each in a fresh child run:

- stock: ``os.read(fd, 256 KiB)`` and ``FrameDecoder.feed`` (what ClientConnection does),
  then ``msgpack.unpackb(payload)``
- reuse: ``os.readv`` into one preallocated bytearray (grown to the largest frame), then
  ``msgpack.unpackb`` on a memoryview of it (no copy of the payload)

Reports wall and CPU time and minor page faults per frame (resource.getrusage).
"""

from __future__ import annotations

import fcntl
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import msgpack
from snakepit_bridge.protocol.framing import FrameDecoder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WRITER = """
import os, sys, msgpack
sys.path.insert(0, {bench!r})
from workloads import big_payload
body = msgpack.packb(big_payload(), use_bin_type=True)
frame = len(body).to_bytes(4, "big") + body
for _ in range({n}):
    view = memoryview(frame)
    while view:
        view = view[os.write(1, view):]
"""


def stock(fd: int, n: int) -> None:
    decoder = FrameDecoder()
    got = 0
    while got < n:
        data = os.read(fd, 1 << 18)
        for payload in decoder.feed(data):
            msgpack.unpackb(payload, raw=False)
            got += 1


def reuse(fd: int, n: int) -> None:
    buf = bytearray(1 << 16)
    filled = 0
    got = 0
    while got < n:
        if filled == len(buf):
            buf.extend(bytes(len(buf)))
        with memoryview(buf) as view:
            filled += os.readv(fd, [view[filled:]])
            pos = 0
            while filled - pos >= 4:
                need = int.from_bytes(view[pos : pos + 4], "big")
                if filled - pos - 4 < need:
                    if 4 + need > len(buf):  # make room for the whole frame: read it in place
                        buf_needed = 4 + need
                        break
                    break
                msgpack.unpackb(view[pos + 4 : pos + 4 + need], raw=False)
                got += 1
                pos += 4 + need
            else:
                buf_needed = 0
            rest = filled - pos
            if pos:
                view[:rest] = view[pos:filled]
        filled = rest
        if buf_needed > len(buf):
            buf.extend(bytes(buf_needed - len(buf)))


def run(method: str, n: int) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER.format(bench=str(Path(__file__).parent.parent), n=n)],
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None
    fd = child.stdout.fileno()
    fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    (stock if method == "stock" else reuse)(fd, n)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    child.wait()
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    faults = after.ru_minflt - before.ru_minflt
    print(
        f"{method:6} {wall / n * 1e3:6.3f} ms wall  {cpu / n * 1e3:6.3f} ms CPU  "
        f"{faults / n:7.1f} page faults per 1 MiB frame (reader side)"
    )


if __name__ == "__main__":
    if len(sys.argv) > 2:
        run(sys.argv[2], int(sys.argv[1]))
    else:
        count = int(sys.argv[1]) if len(sys.argv) > 1 else 300
        for _ in range(2):
            for method in ("stock", "reuse"):
                subprocess.run([sys.executable, __file__, str(count), method], check=True)
