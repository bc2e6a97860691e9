"""The golden frames in tests/vectors/messages.json, shared with the Node bridge's tests."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from snakepit_trio_bridge.protocol import CODECS, FrameDecoder, encode_frame
from snakepit_trio_bridge.protocol.messages import (
    parse_bridge_message,
    parse_negotiation_reply,
    parse_pool_message,
)

from .strategies import assert_same

VECTOR_DIR = Path(__file__).resolve().parents[1] / "vectors"
VECTOR_FILE = VECTOR_DIR / "messages.json"
DOCS_FILE = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vector_generator", VECTOR_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = load_generator()
VECTORS: list[dict[str, Any]] = json.loads(VECTOR_FILE.read_text(encoding="utf-8"))["vectors"]


def vector_id(vector: dict[str, Any]) -> str:
    return f"{vector['name']}-{vector['codec']}"


each_vector = pytest.mark.parametrize("vector", VECTORS, ids=vector_id)


def parse(vector: dict[str, Any], value: Any) -> Any:
    if vector["direction"] == "pool_to_bridge":
        return parse_pool_message(value)
    if value.get("type") == "protocol_selected":
        payload = CODECS[vector["codec"]].encode(value)
        return parse_negotiation_reply(payload, ["msgpack", "json"])
    return parse_bridge_message(value)


# --------------------------------------------------------------------------- the file itself


def test_schema_is_exactly_what_the_node_tests_read() -> None:
    document = json.loads(VECTOR_FILE.read_text(encoding="utf-8"))
    assert list(document) == ["vectors"]
    seen = set()
    for vector in document["vectors"]:
        assert list(vector) == ["name", "codec", "direction", "message", "frame_hex"]
        assert isinstance(vector["name"], str)
        assert vector["codec"] in ("json", "msgpack")
        assert vector["direction"] in ("pool_to_bridge", "bridge_to_pool")
        assert isinstance(vector["message"], dict)
        assert vector["frame_hex"] == bytes.fromhex(vector["frame_hex"]).hex()  # lowercase, even
        assert (vector["name"], vector["codec"]) not in seen
        seen.add((vector["name"], vector["codec"]))


def test_every_message_kind_has_a_vector_in_each_codec_it_travels_in() -> None:
    names = {(v["name"], v["codec"]) for v in VECTORS}
    for name in (
        "request",
        "request_stream",
        "request_bytes",
        "response_success",
        "response_failure",
        "response_null_id",
        "response_v03_status_error",
        "chunk",
        "cancel",
        "credit",
        "shutdown",
        "heartbeat",
    ):
        assert {(name, "json"), (name, "msgpack")} <= names, name
    for name in ("negotiation", "protocol_selected"):
        assert (name, "json") in names
        assert (name, "msgpack") not in names  # negotiation is always JSON


def test_vector_file_is_what_the_generator_writes() -> None:
    assert VECTOR_FILE.read_text(encoding="utf-8") == generate.render_json(generate.build())


def test_docs_section_is_what_the_generator_writes() -> None:
    docs = DOCS_FILE.read_text(encoding="utf-8")
    assert docs.endswith("\n" + generate.render_markdown(generate.build()))
    assert docs.count(generate.DOCS_HEADING) == 1


def test_vectors_use_no_value_another_language_would_write_differently() -> None:
    def walk(value: Any) -> None:
        if isinstance(value, float):
            assert not value.is_integer(), value  # JavaScript writes 2.0 as 2
        elif isinstance(value, dict):
            for key, item in value.items():
                assert not key.isdigit(), key  # JavaScript objects put integer keys first
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for vector in VECTORS:
        walk(vector["message"])


# --------------------------------------------------------------------------- both ways


@each_vector
def test_frame_decodes_to_the_message(vector: dict[str, Any]) -> None:
    codec = CODECS[vector["codec"]]
    decoder = FrameDecoder()
    (payload,) = decoder.feed(bytes.fromhex(vector["frame_hex"]))
    decoder.check_eof()
    decoded = codec.decode(payload)
    assert_same(decoded, generate.from_json_value(vector["message"]))


@each_vector
def test_message_encodes_to_exactly_the_frame(vector: dict[str, Any]) -> None:
    codec = CODECS[vector["codec"]]
    frame = encode_frame(codec.encode(generate.from_json_value(vector["message"])))
    assert frame.hex() == vector["frame_hex"]


@each_vector
def test_message_parses_and_writes_itself_back_unchanged(vector: dict[str, Any]) -> None:
    wire = generate.from_json_value(vector["message"])
    message = parse(vector, wire)
    assert message is not None
    assert_same(message.to_wire(), wire)


def test_bytes_travel_as_bin_in_msgpack_and_base64_in_json() -> None:
    frames = {
        v["codec"]: bytes.fromhex(v["frame_hex"]) for v in VECTORS if v["name"] == "request_bytes"
    }
    assert b"\xc4\x09\x00\x01\xfe\xffsnake" in frames["msgpack"]
    assert b'{"__bytes__":"AAH+/3NuYWtl"}' in frames["json"]
