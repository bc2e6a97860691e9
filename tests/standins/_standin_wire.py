"""What the Python stand-in bridges share: framing, v0.3 decoding, the v0.3 generic commands.

Stand-ins reproduce the behaviour of Snakepit v0.3.0's bridges (``priv/python/generic_bridge.py``,
``generic_bridge_v2.py`` with ``snakepit_bridge/core.py``), quirks included, so that the pool can
be tested against them without the Elixir project. Standard library and msgpack only; no trio,
no snakepit_trio_bridge. The facts they reproduce:

- Blocking reads of a 4-byte big-endian length, then the payload; a short read (EOF) ends the
  bridge with exit code 0.
- A frame that does not decode is logged to stderr and gets no reply at all.
- Responses are ``{"id", "success", "result" | "error", "timestamp"}``; ``id`` is echoed as it
  came, so a frame without one is answered with ``"id": null``.
- MessagePack is unpacked with ``raw=True`` and every bin that is valid UTF-8 is turned into a
  str (bin that is not UTF-8 stays bytes); a MessagePack failure falls back to JSON.
- ``compute`` reports its own failures as ``success: true, result: {"status": "error"}``, and so
  does an unknown command.
- SIGTERM: exit 0 at once.

Test hooks (not in v0.3): ``STANDIN_RECORD`` names a file that gets one JSON line per frame
received; the command ``unparseable`` is handled exactly like a frame that failed to decode (the
pool only ever sends well-formed frames); ``sleep`` and ``whoami`` help the tests.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
import time
from datetime import datetime
from typing import Any

try:
    import msgpack
except ImportError:  # pragma: no cover - v0.3 ran without it too
    msgpack = None

# Frames are built by hand on purpose: a v0.3 stand-in must not share the code it tests.
HEADER = struct.Struct(">I")
UNPARSEABLE_COMMAND = "unparseable"


def log(message: str) -> None:
    try:
        print(message, file=sys.stderr, flush=True)
    except OSError:
        pass


def record(**fields: Any) -> None:
    """Append one JSON line to the file named by ``STANDIN_RECORD`` (if set)."""
    path = os.environ.get("STANDIN_RECORD")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(fields, default=repr) + "\n")


def read_frame() -> bytes | None:
    """The next payload, or None at end of input (v0.3 treats a short read as the end)."""
    stdin = sys.stdin.buffer
    header = stdin.read(HEADER.size)
    if len(header) != HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    payload = stdin.read(size)
    if len(payload) != size:
        return None
    return payload


def write_frame(payload: bytes) -> bool:
    try:
        out = sys.stdout.buffer
        out.write(HEADER.pack(len(payload)))
        out.write(payload)
        out.flush()
        return True
    except OSError:
        return False


def _bin_to_text(value: Any) -> Any:
    """v0.3's ``_convert_msgpack_strings``: bin that is valid UTF-8 becomes str."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    if isinstance(value, dict):
        return {_bin_to_text(k): _bin_to_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_bin_to_text(v) for v in value]
    return value


def decode(payload: bytes, protocol: str) -> Any:
    """Decode as v0.3 does; raises when the frame cannot be parsed."""
    if protocol == "msgpack" and msgpack is not None:
        try:
            return _bin_to_text(msgpack.unpackb(payload, raw=True, strict_map_key=False))
        except Exception as exc:
            log(f"MessagePack unpack failed: {exc}, falling back to JSON")
    return json.loads(payload.decode("utf-8"))


def encode(message: Any, protocol: str) -> bytes:
    if protocol == "msgpack" and msgpack is not None:
        return msgpack.packb(message, use_bin_type=True)
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


def summary(message: Any) -> dict[str, Any]:
    """The fields of a received frame worth recording."""
    if not isinstance(message, dict):
        return {"shape": type(message).__name__}
    return {
        "type": message.get("type"),
        "command": message.get("command"),
        "id": message.get("id"),
        "keys": sorted(str(k) for k in message),
    }


def exit_on_sigterm() -> None:
    def handler(_signum: int, _frame: Any) -> None:
        os._exit(0)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)


class GenericHandler:
    """The v0.3 ``GenericCommandHandler``: ping, echo, compute, info (plus test hooks)."""

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self.start_time = time.time()
        self.request_count = 0
        self.commands = {
            "ping": self.ping,
            "echo": self.echo,
            "compute": self.compute,
            "info": self.info,
            "sleep": self.sleep,
            "whoami": self.whoami,
        }

    def process(self, command: Any, args: Any) -> Any:
        self.request_count += 1
        handler = self.commands.get(command)
        if handler is None:
            return {
                "status": "error",
                "error": f"Unknown command: {command}",
                "supported_commands": list(self.commands),
                "timestamp": time.time(),
            }
        return handler(args)

    def ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "status": "ok",
            "bridge_type": "generic",
            "uptime": time.time() - self.start_time,
            "requests_handled": self.request_count,
            "timestamp": time.time(),
            "python_version": sys.version,
            "worker_id": args.get("worker_id", "unknown"),
            "echo": args,
        }

    def echo(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"status": "ok", "echoed": args, "timestamp": time.time()}

    def compute(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            operation = args.get("operation", "add")
            a = args.get("a", 0)
            b = args.get("b", 0)
            if operation == "add":
                result = a + b
            elif operation == "subtract":
                result = a - b
            elif operation == "multiply":
                result = a * b
            elif operation == "divide":
                if b == 0:
                    raise ValueError("Division by zero")
                result = a / b
            else:
                raise ValueError(f"Unsupported operation: {operation}")
            return {
                "status": "ok",
                "operation": operation,
                "inputs": {"a": a, "b": b},
                "result": result,
                "timestamp": time.time(),
            }
        except Exception as exc:  # v0.3 reports it inside a successful response
            return {"status": "error", "error": str(exc), "timestamp": time.time()}

    def info(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "status": "ok",
            "bridge_info": {
                "name": self.name,
                "version": self.version,
                "supported_commands": list(self.commands),
                "uptime": time.time() - self.start_time,
                "total_requests": self.request_count,
            },
            "system_info": {"python_version": sys.version, "platform": sys.platform},
            "timestamp": time.time(),
        }

    # -- test hooks
    def sleep(self, args: dict[str, Any]) -> dict[str, Any]:
        seconds = float(args.get("seconds", 1.0))
        time.sleep(seconds)
        return {"status": "ok", "slept": seconds}

    def whoami(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "argv": sys.argv,
            "worker_id": os.environ.get("SNAKEPIT_WORKER_ID"),
        }


def negotiate(protocol: str) -> str:
    """v0.3 auto mode: the first frame must be a JSON negotiation; anything else is swallowed."""
    payload = read_frame()
    message: Any = None
    if payload is not None:
        try:
            message = json.loads(payload.decode("utf-8"))
        except Exception as exc:
            log(f"Error reading message: {exc}")
    record(phase="negotiation", **summary(message))
    if not isinstance(message, dict) or message.get("type") != "protocol_negotiation":
        log("Protocol negotiation failed, defaulting to JSON")
        return "json"
    supported = message.get("supported", ["json"])
    selected = "msgpack" if msgpack is not None and "msgpack" in supported else "json"
    reply = {
        "type": "protocol_selected",
        "protocol": selected,
        "timestamp": datetime.now().isoformat(),
    }
    write_frame(encode(reply, "json"))
    return selected


def serve(handler: GenericHandler, protocol: str) -> None:
    """The v0.3 ``ProtocolHandler.run`` loop: one request at a time until EOF."""
    log(f"Snakepit Bridge started in pool-worker mode (protocol: {protocol.upper()})")
    while True:
        payload = read_frame()
        if payload is None:
            break
        try:
            message = decode(payload, protocol)
            if isinstance(message, dict) and message.get("command") == UNPARSEABLE_COMMAND:
                raise ValueError("the stand-in treats this frame as unparseable")
        except Exception as exc:
            log(f"Error reading message: {exc}")
            record(phase="serve", unparseable=True)
            continue
        record(phase="serve", codec=protocol, **summary(message))
        if not message:
            break  # v0.3 takes an empty message for end of input
        request_id = message.get("id")
        try:
            result = handler.process(message.get("command"), message.get("args", {}))
            response = {
                "id": request_id,
                "success": True,
                "result": result,
                "timestamp": datetime.now().isoformat(),
            }
        except Exception as exc:
            response = {
                "id": request_id,
                "success": False,
                "error": str(exc),
                "timestamp": datetime.now().isoformat(),
            }
        try:
            data = encode(response, protocol)
        except Exception as exc:
            log(f"Error writing message: {exc}")
            break
        if not write_frame(data):
            break
    sys.exit(0)
