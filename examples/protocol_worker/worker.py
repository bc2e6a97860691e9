"""A worker written from scratch against docs/protocol.md: standard library only, no bridge.

It shows what any language needs to join a pool: read 4-byte big-endian length-prefixed JSON
frames from stdin, answer each request with one response frame on stdout, exit on stdin EOF.
It answers a negotiation frame too (choosing JSON), so it works with wire="auto" and "json".
run.py beside this file drives it; started by hand it just waits for frames on stdin.
"""

import json
import struct
import sys
from datetime import UTC, datetime


def read_frame(stream):
    header = stream.read(4)
    if len(header) < 4:
        return None  # EOF: the pool is done with us
    (length,) = struct.unpack(">I", header)
    return json.loads(stream.read(length))


def write_frame(stream, message):
    payload = json.dumps(message).encode()
    stream.write(struct.pack(">I", len(payload)) + payload)
    stream.flush()


COMMANDS = {
    "ping": lambda args: {"status": "ok", "worker": "protocol_worker.py"},
    "reverse": lambda args: {"text": args["text"][::-1]},
    "add": lambda args: {"sum": sum(args["numbers"])},
}


def main():
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while (message := read_frame(stdin)) is not None:
        if message.get("type") == "protocol_negotiation":
            write_frame(stdout, {"type": "protocol_selected", "protocol": "json"})
            continue
        reply = {"id": message.get("id"), "timestamp": datetime.now(UTC).isoformat()}
        command = COMMANDS.get(message.get("command"))
        try:
            if command is None:
                raise KeyError(f"Unknown command: {message.get('command')}")
            reply.update(success=True, result=command(message.get("args", {})))
        except Exception as exc:
            reply.update(success=False, error=str(exc).strip("'\""))
        write_frame(stdout, reply)


if __name__ == "__main__":
    main()
