"""A stand-in worker that misbehaves on purpose, chosen by its first argument.

- ``mixed``: worker ids that are odd answer negotiation late and choose JSON, even ones choose
  MessagePack: a pool whose workers speak different codecs.
- ``flood FEATURES``: announce FEATURES (comma separated) and answer a stream with as many
  1 KiB chunks as ``args["n"]`` says, ignoring credits.

Standard library and msgpack only; frames are built by hand on purpose (it is a hostile peer).
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time

import msgpack

inp, out = sys.stdin.buffer, sys.stdout.buffer


def read() -> bytes:
    header = inp.read(4)
    if len(header) < 4:
        sys.exit(0)
    return inp.read(struct.unpack(">I", header)[0])


def write(payload: bytes) -> None:
    out.write(struct.pack(">I", len(payload)) + payload)
    out.flush()


def main() -> None:
    mode = sys.argv[1]
    json.loads(read())  # the negotiation frame
    if mode == "mixed":
        odd = int(os.environ.get("SNAKEPIT_WORKER_ID", "0")) % 2
        if odd:
            time.sleep(0.5)  # the pool's codec is the first ready worker's: MessagePack
        protocol, features = ("json" if odd else "msgpack"), ["cancel", "shutdown"]
    else:
        protocol, features = "json", sys.argv[2].split(",")
    write(
        json.dumps(
            {"type": "protocol_selected", "protocol": protocol, "features": features}
        ).encode()
    )
    decode = msgpack.unpackb if protocol == "msgpack" else json.loads
    encode = msgpack.packb if protocol == "msgpack" else (lambda o: json.dumps(o).encode())
    pad = "x" * 1024
    while True:
        message = decode(read())
        kind = message.get("type")
        if kind == "shutdown":
            sys.exit(0)
        if kind == "cancel":
            write(
                encode(
                    {
                        "id": message["id"],
                        "success": False,
                        "error": "cancelled",
                        "error_type": "Cancelled",
                    }
                )
            )
            continue
        if kind is not None:
            continue  # credits: ignored
        request_id = message["id"]
        if message.get("stream"):
            for seq in range(int(message["args"].get("n", 1000))):
                write(encode({"type": "chunk", "id": request_id, "seq": seq, "data": pad}))
        write(encode({"id": request_id, "success": True, "result": {"worker": protocol}}))


if __name__ == "__main__":
    main()
