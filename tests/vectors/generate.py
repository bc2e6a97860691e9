#!/usr/bin/env python
"""Golden frames of the wire protocol: writes tests/vectors/messages.json and section 8 of
docs/protocol.md from the message classes and codecs of ``snakepit_trio_bridge.protocol``.

    python tests/vectors/generate.py            # write both files
    python tests/vectors/generate.py --check    # exit 1 if either is out of date
    python tests/vectors/generate.py --markdown # print the docs section

Deterministic: fixed ids and timestamps, map keys in the order the message classes write
them. Other implementations (the Node bridge) check that they decode and encode the same bytes.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bridges" / "python"))

from snakepit_trio_bridge.protocol import JSON, MSGPACK, encode_frame  # noqa: E402
from snakepit_trio_bridge.protocol.constants import ALL_FEATURES  # noqa: E402
from snakepit_trio_bridge.protocol.messages import (  # noqa: E402
    Cancel,
    Credit,
    Heartbeat,
    ProtocolNegotiation,
    ProtocolSelected,
    Request,
    Response,
    Shutdown,
    StreamChunk,
)

VECTORS_FILE = ROOT / "tests" / "vectors" / "messages.json"
# The Node bridge's tests read their own copy (a published package reads nothing outside it).
NODE_COPY = ROOT / "bridges" / "node" / "test" / "vectors" / "messages.json"
DOCS_FILE = ROOT / "docs" / "protocol.md"
DOCS_HEADING = "## 8. Golden frames"

TS = "2026-11-23T18:15:11.123Z"
BOTH = ("json", "msgpack")
JSON_ONLY = ("json",)  # negotiation frames are always JSON
POOL, BRIDGE = "pool_to_bridge", "bridge_to_pool"
CODECS = {"json": JSON, "msgpack": MSGPACK}

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "handler.py", line 12, in compute\n'
    "    return a / b\n"
    "ZeroDivisionError: division by zero\n"
)

# (name, direction, message, codecs). Floats are never integral (JavaScript has one number
# type and writes 2.0 as 2), and no map key looks like an integer (JavaScript objects put
# those first), so every implementation can reproduce these bytes.
CASES: list[tuple[str, str, Any, tuple[str, ...]]] = [
    (
        "negotiation",
        POOL,
        ProtocolNegotiation(("msgpack", "json"), "msgpack", 2.5, 67108864),
        JSON_ONLY,
    ),
    ("negotiation_v03", POOL, ProtocolNegotiation(), JSON_ONLY),
    (
        "protocol_selected",
        BRIDGE,
        ProtocolSelected(
            "msgpack",
            ALL_FEATURES,
            64,
            {
                "bridge": "snakepit_trio_bridge",
                "version": "0.1.0",
                "language": "python",
                "pid": 4242,
            },
        ),
        JSON_ONLY,
    ),
    ("protocol_selected_v03", BRIDGE, ProtocolSelected("json"), JSON_ONLY),
    ("request", POOL, Request(7, "compute", {"operation": "add", "a": 2, "b": 3.5}, TS), BOTH),
    (
        "request_stream",
        POOL,
        Request(8, "ping_stream", {"count": 5}, TS, stream=True, credits=16),
        BOTH,
    ),
    (
        "request_bytes",
        POOL,
        Request(
            9,
            "echo",
            {"data": b"\x00\x01\xfe\xffsnake", "text": "h\u00e9llo \u2603 \U0001f40d"},
            TS,
        ),
        BOTH,
    ),
    ("request_session", POOL, Request(12, "get_counter", {"session_id": "user-42"}, TS), BOTH),
    ("response_success", BRIDGE, Response(7, True, {"result": 5.5}, timestamp=TS), BOTH),
    (
        "response_bytes",
        BRIDGE,
        Response(9, True, {"data": b"\x00\x01\xfe\xffsnake", "size": 9}, timestamp=TS),
        BOTH,
    ),
    (
        "response_failure",
        BRIDGE,
        Response(
            10,
            False,
            error="division by zero",
            error_type="ZeroDivisionError",
            traceback=TRACEBACK,
            timestamp=TS,
        ),
        BOTH,
    ),
    (
        "response_null_id",
        BRIDGE,
        Response(None, False, error="could not parse the request", timestamp=TS),
        BOTH,
    ),
    (
        "response_cancelled",
        BRIDGE,
        Response(8, False, error="cancelled", error_type="Cancelled", timestamp=TS),
        BOTH,
    ),
    ("response_stream_end", BRIDGE, Response(8, True, None, timestamp=TS), BOTH),
    (
        "response_v03_status_error",
        BRIDGE,
        Response(11, True, {"status": "error", "error": "unknown operation: modulo"}, timestamp=TS),
        BOTH,
    ),
    ("chunk", BRIDGE, StreamChunk(8, 0, {"ping": 1, "message": "pong"}), BOTH),
    ("cancel", POOL, Cancel(8), BOTH),
    ("credit", POOL, Credit(8, 16), BOTH),
    ("shutdown", POOL, Shutdown(), BOTH),
    ("heartbeat", BRIDGE, Heartbeat(TS), BOTH),
]


def to_json_value(value: Any) -> Any:
    """A wire value as plain JSON: bytes become {"__bytes__": "<base64>"}."""
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {key: to_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(item) for item in value]
    return value


def from_json_value(value: Any) -> Any:
    """The inverse of :func:`to_json_value`."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("__bytes__"), str):
            return base64.b64decode(value["__bytes__"], validate=True)
        return {key: from_json_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json_value(item) for item in value]
    return value


def build() -> list[dict[str, Any]]:
    vectors = []
    for name, direction, message, codec_names in CASES:
        wire = message.to_wire()
        for codec_name in codec_names:
            frame = encode_frame(CODECS[codec_name].encode(wire))
            vectors.append(
                {
                    "name": name,
                    "codec": codec_name,
                    "direction": direction,
                    "message": to_json_value(wire),
                    "frame_hex": frame.hex(),
                }
            )
    return vectors


def render_json(vectors: list[dict[str, Any]]) -> str:
    return json.dumps({"vectors": vectors}, indent=2, ensure_ascii=False) + "\n"


def render_markdown(vectors: list[dict[str, Any]]) -> str:
    arrows = {POOL: "pool → bridge", BRIDGE: "bridge → pool"}
    lines = [
        DOCS_HEADING,
        "",
        "These are the test vectors: `tests/vectors/messages.json` holds the same frames, and both",
        "`tests/protocol/test_vectors.py` and the Node bridge's `test/vectors.test.js` check that each",
        "frame decodes to its message and that encoding the message gives exactly the frame. They are",
        "written by `tests/vectors/generate.py` (run it after changing a message class; `--check`",
        "says whether this section and the JSON file are current). Bytes appear here as",
        '`{"__bytes__": "<base64>"}`; in a MessagePack frame they are `bin`.',
        "",
        "What an encoder must do to reproduce them byte for byte:",
        "",
        "- Map keys in the order shown (the order the message classes write them).",
        "- JSON: no whitespace between tokens (`,` and `:` alone), non-ASCII text as raw UTF-8,",
        "  floats as the shortest text that reads back the same (`3.5`).",
        "- MessagePack: the smallest encoding of every integer, string length and map or array",
        "  size; strings as `str` (`fixstr`, `str8` and up), bytes as `bin`; floats always as",
        "  float64 (`0xcb`).",
        "- Timestamps are fixed (`" + TS + "`); real frames carry the current time.",
        "",
        "A decoder must not depend on these choices: ours accept any map key order, any valid",
        "integer width, float32, and (JSON) any whitespace.",
        "",
    ]
    for vector in vectors:
        message = json.dumps(vector["message"], ensure_ascii=False, separators=(", ", ": "))
        lines += [
            f"**`{vector['name']}`** ({vector['codec']}, {arrows[vector['direction']]})",
            "",
            "```",
            f"message {message}",
            f"frame   {vector['frame_hex']}",
            "```",
            "",
        ]
    return "\n".join(lines)


def docs_with_section(text: str, section: str) -> str:
    """``text`` with the golden-frames section (the last one) replaced or appended."""
    start = text.find("\n" + DOCS_HEADING + "\n")
    head = text if start < 0 else text[: start + 1]
    return head.rstrip("\n") + "\n\n" + section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the files are out of date")
    parser.add_argument("--markdown", action="store_true", help="print the docs section")
    args = parser.parse_args(argv)
    vectors = build()
    if args.markdown:
        sys.stdout.write(render_markdown(vectors))
        return 0
    wanted = {
        VECTORS_FILE: render_json(vectors),
        NODE_COPY: render_json(vectors),
        DOCS_FILE: docs_with_section(
            DOCS_FILE.read_text(encoding="utf-8"), render_markdown(vectors)
        ),
    }
    stale = [
        path
        for path, text in wanted.items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    if args.check:
        for path in stale:
            print(f"out of date: {path.relative_to(ROOT)} (run tests/vectors/generate.py)")
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path], encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
