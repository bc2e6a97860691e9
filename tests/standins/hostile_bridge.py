#!/usr/bin/env python3
"""A broken or hostile bridge for the reliability suite (tests/faults/).

It serves like a v0.3 bridge (one request at a time, blocking stdio, ``ping``, ``echo``,
``sleep``, ``whoami``) until it misbehaves in the way ``--fault`` names, at the moment ``--at``
names:

- ``--at start``: as soon as it runs (before reading anything);
- ``--at negotiation``: instead of answering the negotiation frame (needs ``--protocol auto``);
- ``--at command`` (default): when it receives the command ``hostile`` (so the pool's init
  ping passes and the pool is up before the fault).

Only the workers whose ``SNAKEPIT_WORKER_ID`` is listed in ``--workers`` misbehave (default:
all); the others are healthy, so a pool can keep serving beside a hostile worker.

``--protocol auto`` answers negotiation with ``protocol_selected`` (plus ``--features``, which
it announces without honouring: a lying bridge); ``json`` or ``msgpack`` fix the codec.
``STANDIN_RECORD`` names a file that gets a JSON line per start (to count restarts) and per
frame received. Standard library and msgpack only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
from _standin_wire import HEADER, exit_on_sigterm, log, read_frame, record, summary, write_frame

FAULTS = (
    "none",
    "exit",  # exit 3 at once
    "silent",  # never answer (at command: keep reading, never reply to that request)
    "mute",  # read everything, answer nothing, ever
    "garbage",  # a stray line of text on stdout (its first 4 bytes read as a huge length)
    "bad_payload",  # a well-framed payload that is not JSON / MessagePack
    "huge_header",  # a header announcing 0xFFFFFFFF bytes, then a little of the body
    "half_frame_exit",  # half a frame, then exit 0
    "unknown_id",  # answer with an id that was never sent
    # answer the request twice, both frames in one write (after args["delay"], and once the
    # file args["gate"] is gone)
    "answer_twice",
    "answer_twice_apart",  # answer the request twice, 50 ms apart
    "slow",  # answer after args["seconds"] (default 5 s)
    "close_stdout",  # close stdout, ignore SIGTERM and stdin EOF, keep running
    "flood_stderr",  # write args["mb"] MiB to stderr from a thread while serving
    "deep_json",  # a JSON response nested 100 000 levels deep
    "deep_msgpack",  # a MessagePack response nested 100 000 levels deep
    "huge_msgpack",  # a MessagePack response declaring an array of 2**32 - 1 items
    "poison",  # exit 3, and make every process of this bridge exit at start from then on
)


class Bridge:
    def __init__(self, options: argparse.Namespace) -> None:
        self.fault: str = options.fault
        self.at: str = options.at
        self.protocol: str = options.protocol
        self.features: list[str] = [f for f in options.features.split(",") if f]
        self.marker = Path(options.marker) if options.marker else None
        worker = os.environ.get("SNAKEPIT_WORKER_ID", "")
        targets = [w for w in options.workers.split(",") if w]
        self.hostile = self.fault != "none" and (not targets or worker in targets)
        self.flood: threading.Thread | None = None
        self.flooded = 0

    # -- codec (the pool's rules: msgpack str/bin, JSON)
    def encode(self, message: Any) -> bytes:
        if self.protocol == "msgpack":
            return msgpack.packb(message, use_bin_type=True)
        return json.dumps(message, separators=(",", ":")).encode()

    def decode(self, payload: bytes) -> Any:
        if self.protocol == "msgpack":
            return msgpack.unpackb(payload, raw=False, strict_map_key=False)
        return json.loads(payload)

    def respond(self, request_id: Any, result: Any) -> None:
        write_frame(self.encode({"id": request_id, "success": True, "result": result}))

    # -- misbehaviour
    def misbehave(self, request_id: Any, args: dict[str, Any]) -> None:
        fault = self.fault
        log(f"hostile bridge: fault {fault!r} now")
        out = sys.stdout.buffer
        if fault == "exit":
            os._exit(3)
        elif fault == "poison":
            assert self.marker is not None, "--fault poison needs --marker"
            self.marker.touch()
            os._exit(3)
        elif fault == "silent":
            return
        elif fault == "mute":
            while read_frame() is not None:
                pass
            os._exit(0)
        elif fault == "garbage":
            out.write(b"stray print from a handler: hello\n")
            out.flush()
        elif fault == "bad_payload":
            write_frame(b"\xc1 this is neither JSON nor MessagePack \xff")
        elif fault == "huge_header":
            out.write(b"\xff\xff\xff\xff" + b"\0" * 4096)
            out.flush()
        elif fault == "half_frame_exit":
            out.write(HEADER.pack(100) + b"x" * 40)
            out.flush()
            os._exit(0)
        elif fault == "unknown_id":
            self.respond(987654321, "for nobody")
        elif fault == "answer_twice":
            time.sleep(float(args.get("delay", 0.0)))
            wait_while_exists(args.get("gate"))
            frames = [
                self.encode({"id": request_id, "success": True, "result": r})
                for r in ("first", "second")
            ]
            out.write(b"".join(HEADER.pack(len(f)) + f for f in frames))
            out.flush()
        elif fault == "answer_twice_apart":
            self.respond(request_id, "first")
            time.sleep(0.05)
            self.respond(request_id, "second")
        elif fault == "slow":
            time.sleep(float(args.get("seconds", 5.0)))
            self.respond(request_id, "late")
        elif fault == "close_stdout":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            sys.stdout.flush()
            os.close(1)
            while True:
                time.sleep(3600)
        elif fault == "flood_stderr":
            self.flood = threading.Thread(target=self._flood, args=(int(args.get("mb", 100)),))
            self.flood.start()
            self.respond(request_id, "flooding")
        elif fault == "deep_json":
            depth = 100_000
            body = b'{"id":%d,"success":true,"result":' % request_id
            write_frame(body + b"[" * depth + b"]" * depth + b"}")
        elif fault == "deep_msgpack":
            head = msgpack.packb({"id": request_id, "success": True})
            # fixmap of 3 instead of 2, then "result": [[[ ... ]]]
            body = b"\x83" + head[1:] + msgpack.packb("result") + b"\x91" * 100_000 + b"\xc0"
            write_frame(body)
        elif fault == "huge_msgpack":
            head = msgpack.packb({"id": request_id, "success": True})
            body = b"\x83" + head[1:] + msgpack.packb("result") + b"\xdd\xff\xff\xff\xff"
            write_frame(body)
        else:  # pragma: no cover - argparse restricts the names
            raise SystemExit(f"unknown fault {fault}")

    def _flood(self, megabytes: int) -> None:
        line = b"stderr flood " * 9 + b"\n"
        chunk = line * ((1 << 20) // len(line))
        for _ in range(megabytes):
            view = memoryview(chunk)
            while view:
                view = view[os.write(2, view) :]
            self.flooded += len(chunk)

    # -- the loop
    def negotiate(self) -> None:
        payload = read_frame()
        message = json.loads(payload) if payload is not None else None
        record(phase="negotiation", **summary(message))
        if self.hostile and self.at == "negotiation":
            self.misbehave(None, {})
            self.protocol = "json"  # the pool falls back to JSON after silence
            return
        offered = message.get("supported", ["json"]) if isinstance(message, dict) else ["json"]
        self.protocol = "msgpack" if "msgpack" in offered else "json"
        reply: dict[str, Any] = {"type": "protocol_selected", "protocol": self.protocol}
        if self.features:
            reply["features"] = self.features
        write_frame(json.dumps(reply).encode())

    def run(self) -> None:
        record(phase="start", pid=os.getpid(), worker=os.environ.get("SNAKEPIT_WORKER_ID"))
        if self.marker is not None and self.marker.exists():
            log("hostile bridge: poisoned, exiting at start")
            os._exit(3)
        wait_while_exists(os.environ.get("STANDIN_HOLD"))  # a test holding this start back
        if self.hostile and self.at == "start":
            self.misbehave(None, {})
        if self.protocol == "auto":
            self.negotiate()
        while (payload := read_frame()) is not None:
            message = self.decode(payload)
            record(phase="serve", **summary(message))
            kind = message.get("type")
            if kind == "shutdown":
                break
            if kind is not None:
                continue  # cancel / credit: announced, never honoured
            request_id = message["id"]
            command = message.get("command")
            args = message.get("args") or {}
            if self.marker is not None and self.marker.exists():
                log("hostile bridge: poisoned, exiting")
                os._exit(3)
            if command == "hostile" and self.hostile and self.at == "command":
                self.misbehave(request_id, args)
            elif command == "sleep":
                time.sleep(float(args.get("seconds", 1.0)))
                self.respond(request_id, "slept")
            elif command == "flood_wait":
                if self.flood is not None:
                    self.flood.join()
                self.respond(request_id, self.flooded)
            elif command == "whoami":
                self.respond(request_id, whoami())
            else:
                self.respond(request_id, {"status": "ok", "command": command, "args": args})


def wait_while_exists(path: str | None) -> None:
    while path and os.path.exists(path):
        time.sleep(0.005)


def whoami() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "argv": sys.argv,
        "worker": os.environ.get("SNAKEPIT_WORKER_ID"),
        "lifeline_fd": os.environ.get("SNAKEPIT_LIFELINE_FD"),
        "fds": open_fds(),
    }


def open_fds() -> list[int]:
    """The file descriptors open in this process (without the one listing them)."""
    listed = [int(name) for name in os.listdir("/proc/self/fd")]
    still_open = []
    for fd in listed:
        try:
            os.fstat(fd)
        except OSError:
            continue
        still_open.append(fd)
    return sorted(still_open)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fault", default="none", choices=FAULTS)
    parser.add_argument("--at", default="command", choices=["start", "negotiation", "command"])
    parser.add_argument("--workers", default="", help="comma-separated SNAKEPIT_WORKER_IDs")
    parser.add_argument("--protocol", default="json", choices=["auto", "json", "msgpack"])
    parser.add_argument("--features", default="", help="comma-separated features to announce")
    parser.add_argument("--marker", default="", help="file that poisons every later start")
    exit_on_sigterm()
    Bridge(parser.parse_args()).run()


if __name__ == "__main__":
    main()
