"""The floor's worker: echo length-prefixed MessagePack frames from stdin to stdout.

Each frame is decoded and encoded again (the same work a bridge does with its payload).
The replies to all frames that arrived in one read leave in one write. Exits at stdin EOF.
"""

from __future__ import annotations

import os

import msgpack

_READ_SIZE = 1 << 20


def main() -> None:
    packer = msgpack.Packer(use_bin_type=True, autoreset=True)
    buffer = bytearray()
    while True:
        data = os.read(0, _READ_SIZE)
        if not data:
            return
        buffer += data
        pos = 0
        out: list[bytes] = []
        while len(buffer) - pos >= 4:
            size = int.from_bytes(buffer[pos : pos + 4], "big")
            if len(buffer) - pos - 4 < size:
                break
            value = msgpack.unpackb(buffer[pos + 4 : pos + 4 + size], raw=False)
            body = packer.pack(value)
            out.append(len(body).to_bytes(4, "big"))
            out.append(body)
            pos += 4 + size
        del buffer[:pos]
        if out:
            view = memoryview(b"".join(out))
            while view:
                view = view[os.write(1, view) :]


if __name__ == "__main__":
    main()
