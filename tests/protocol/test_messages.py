"""Message classes: full-pipeline round trips, parsing rules, negotiation replies."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from snakepit_trio_bridge.protocol import (
    JSON,
    MSGPACK,
    Codec,
    FrameDecoder,
    ProtocolError,
    encode_frame,
)
from snakepit_trio_bridge.protocol.constants import ALL_FEATURES, CANCELLED_ERROR_TYPE
from snakepit_trio_bridge.protocol.messages import (
    Cancel,
    Credit,
    Heartbeat,
    ProtocolNegotiation,
    ProtocolSelected,
    Request,
    Response,
    Shutdown,
    StreamChunk,
    parse_bridge_message,
    parse_negotiation_reply,
    parse_pool_message,
)

from . import strategies as S
from .strategies import CODEC_LIST, assert_same, cut_points, feed_all, split_at

codec_params = pytest.mark.parametrize("codec", CODEC_LIST, ids=lambda c: c.name)
TS = "2026-11-23T18:15:11.123Z"


def through_the_wire(codec: Codec, messages: list[Any], data: st.DataObject) -> list[Any]:
    """to_wire -> codec.encode -> encode_frame, one stream, cut anywhere -> decode back."""
    stream = b"".join(encode_frame(codec.encode(m.to_wire())) for m in messages)
    decoder = FrameDecoder()
    payloads = feed_all(decoder, split_at(stream, cut_points(data, len(stream))))
    decoder.check_eof()
    return [codec.decode(p) for p in payloads]


def check_round_trip(codec: Codec, messages: list[Any], parse: Any, data: st.DataObject) -> None:
    decoded = through_the_wire(codec, messages, data)
    assert len(decoded) == len(messages)
    for message, wire in zip(messages, decoded, strict=True):
        parsed = parse(wire)
        assert type(parsed) is type(message)
        assert parsed == message
        # Field for field with types: 1 is not True, and bytes stay bytes.
        assert_same(parsed.to_wire(), message.to_wire())


# --------------------------------------------------------------------------- round trips


@codec_params
@pytest.mark.parametrize(
    ("messages", "parse"),
    [(S.pool_messages, parse_pool_message), (S.bridge_messages, parse_bridge_message)],
    ids=["pool-to-bridge", "bridge-to-pool"],
)
@settings(max_examples=80)
@given(data=st.data())
def test_mixed_message_streams_round_trip(
    codec: Codec, messages: Any, parse: Any, data: st.DataObject
) -> None:
    drawn = data.draw(st.lists(messages(codec), max_size=6), label="messages")
    check_round_trip(codec, drawn, parse, data)


@codec_params
@given(data=st.data())
def test_requests_round_trip(codec: Codec, data: st.DataObject) -> None:
    check_round_trip(codec, [data.draw(S.requests(codec))], parse_pool_message, data)


@codec_params
@given(data=st.data())
def test_responses_round_trip(codec: Codec, data: st.DataObject) -> None:
    check_round_trip(codec, [data.draw(S.responses(codec))], parse_bridge_message, data)


@codec_params
@given(data=st.data())
def test_chunks_round_trip(codec: Codec, data: st.DataObject) -> None:
    check_round_trip(codec, [data.draw(S.chunks(codec))], parse_bridge_message, data)


@codec_params
@given(st.lists(S.cancels | S.credits_frames | S.shutdowns, max_size=4), st.data())
def test_control_frames_round_trip(codec: Codec, messages: list[Any], data: st.DataObject) -> None:
    check_round_trip(codec, messages, parse_pool_message, data)


@codec_params
@given(S.heartbeats, st.data())
def test_heartbeats_round_trip(codec: Codec, message: Heartbeat, data: st.DataObject) -> None:
    check_round_trip(codec, [message], parse_bridge_message, data)


@codec_params
@given(S.negotiations, st.data())
def test_negotiation_round_trips(
    codec: Codec, message: ProtocolNegotiation, data: st.DataObject
) -> None:
    check_round_trip(codec, [message], parse_pool_message, data)


@given(S.selections(), st.data())
def test_protocol_selected_round_trips_through_json(
    message: ProtocolSelected, data: st.DataObject
) -> None:
    (wire,) = through_the_wire(JSON, [message], data)
    payload = JSON.encode(wire)
    parsed = parse_negotiation_reply(payload, ["json", "msgpack"])
    assert parsed == message
    assert_same(parsed.to_wire(), message.to_wire())


def test_request_wire_shape_is_v03_plus_optional_extensions() -> None:
    assert Request(7, "ping", {}, TS).to_wire() == {
        "id": 7,
        "command": "ping",
        "args": {},
        "timestamp": TS,
    }
    assert Request(8, "s", {"n": 1}, TS, stream=True, credits=16).to_wire() == {
        "id": 8,
        "command": "s",
        "args": {"n": 1},
        "timestamp": TS,
        "stream": True,
        "credits": 16,
    }


def test_response_wire_shapes() -> None:
    assert Response(1, True, {"r": 5}, timestamp=TS).to_wire() == {
        "id": 1,
        "success": True,
        "result": {"r": 5},
        "timestamp": TS,
    }
    # A failure always carries an error string; a success never carries error fields.
    assert Response(2, False, timestamp=TS).to_wire() == {
        "id": 2,
        "success": False,
        "error": "",
        "timestamp": TS,
    }
    assert "error" not in Response(3, True, None, error="x", error_type="T", timestamp=TS).to_wire()


def test_default_timestamps_are_filled_in_as_utc_iso8601() -> None:
    pattern = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.fullmatch(pattern, Request(1, "x").timestamp)
    assert re.fullmatch(pattern, Response(1, True).to_wire()["timestamp"])
    assert re.fullmatch(pattern, Heartbeat().to_wire()["timestamp"])


def test_cancelled_property() -> None:
    assert Response(1, False, error="c", error_type=CANCELLED_ERROR_TYPE).cancelled
    assert not Response(1, False, error="c", error_type="ValueError").cancelled
    assert not Response(1, True, error_type=CANCELLED_ERROR_TYPE).cancelled


# --------------------------------------------------------------------------- parse rules


@pytest.mark.parametrize("parse", [parse_bridge_message, parse_pool_message])
@pytest.mark.parametrize("value", [[], "x", 1, None, b"{}", [{"id": 1}]])
def test_a_message_that_is_not_a_map_is_a_protocol_error(parse: Any, value: Any) -> None:
    with pytest.raises(ProtocolError, match="not a map"):
        parse(value)


@given(st.text() | st.integers() | st.booleans() | st.lists(st.integers(), max_size=2))
def test_unknown_type_is_a_protocol_error(kind: Any) -> None:
    known_pool = ["cancel", "credit", "shutdown", "protocol_negotiation"]
    known_bridge = ["chunk", "heartbeat"]
    if kind not in known_pool:
        with pytest.raises(ProtocolError, match="unknown message type"):
            parse_pool_message({"type": kind, "id": 1, "credits": 1})
    if kind not in known_bridge:
        with pytest.raises(ProtocolError, match="unknown message type"):
            parse_bridge_message({"type": kind, "id": 1, "seq": 0})


# Field names no message uses: a future extension's, say.
extra_fields = st.dictionaries(
    st.text(max_size=10).map(lambda k: "x-" + k), S.json_values, max_size=4
)


@given(S.pool_messages(JSON), extra_fields)
def test_unknown_extra_fields_are_ignored_by_the_bridge_side(
    message: Any, extra: dict[str, Any]
) -> None:
    wire = message.to_wire()
    assert parse_pool_message({**wire, **extra}) == parse_pool_message(wire) == message


@given(S.bridge_messages(JSON), extra_fields)
def test_unknown_extra_fields_are_ignored_by_the_pool_side(
    message: Any, extra: dict[str, Any]
) -> None:
    wire = message.to_wire()
    assert parse_bridge_message({**wire, **extra}) == parse_bridge_message(wire) == message


REQUIRED_POOL = [
    ({"id": 1, "command": "c", "args": {}}, "id"),
    ({"id": 1, "command": "c", "args": {}}, "command"),
    ({"type": "cancel", "id": 1}, "id"),
    ({"type": "credit", "id": 1, "credits": 2}, "id"),
    ({"type": "credit", "id": 1, "credits": 2}, "credits"),
]
REQUIRED_BRIDGE = [
    ({"id": 1, "success": True, "result": 1}, "success"),
    ({"type": "chunk", "id": 1, "seq": 0, "data": 1}, "id"),
    ({"type": "chunk", "id": 1, "seq": 0, "data": 1}, "seq"),
]


@pytest.mark.parametrize(("wire", "field"), REQUIRED_POOL)
def test_missing_required_field_of_a_pool_message(wire: dict[str, Any], field: str) -> None:
    parse_pool_message(wire)  # complete, it parses
    with pytest.raises(ProtocolError):
        parse_pool_message({k: v for k, v in wire.items() if k != field})


@pytest.mark.parametrize(("wire", "field"), REQUIRED_BRIDGE)
def test_missing_required_field_of_a_bridge_message(wire: dict[str, Any], field: str) -> None:
    parse_bridge_message(wire)
    with pytest.raises(ProtocolError):
        parse_bridge_message({k: v for k, v in wire.items() if k != field})


not_ints = st.sampled_from([True, False, 1.0, "1", None, [1], {"id": 1}, b"\x01"])
not_strs = st.sampled_from([1, True, None, b"ping", ["ping"], {"c": 1}, 1.5])
not_bools = st.sampled_from([0, 1, "true", None, [], 1.0, b"\x01"])


@given(not_ints, st.sampled_from([(p, f) for p, f in REQUIRED_POOL if f in ("id", "credits")]))
def test_ill_typed_integer_fields_of_pool_messages(
    bad: Any, case: tuple[dict[str, Any], str]
) -> None:
    wire, field = case
    with pytest.raises(ProtocolError):
        parse_pool_message({**wire, field: bad})


@given(not_ints, st.sampled_from(["id", "seq"]))
def test_ill_typed_integer_fields_of_chunks(bad: Any, field: str) -> None:
    with pytest.raises(ProtocolError):
        parse_bridge_message({"type": "chunk", "id": 1, "seq": 0, "data": None, field: bad})


@given(not_ints.filter(lambda v: v is not None))
def test_ill_typed_response_id(bad: Any) -> None:
    with pytest.raises(ProtocolError, match="'id'"):
        parse_bridge_message({"id": bad, "success": True, "result": None})


@given(not_strs)
def test_ill_typed_request_command(bad: Any) -> None:
    with pytest.raises(ProtocolError, match="'command'"):
        parse_pool_message({"id": 1, "command": bad, "args": {}})


@given(st.sampled_from([[], "x", 1, True, b"", [["a", 1]]]))
def test_request_args_must_be_a_map(bad: Any) -> None:
    with pytest.raises(ProtocolError, match="'args'"):
        parse_pool_message({"id": 1, "command": "c", "args": bad})


def test_request_args_absent_or_null_mean_no_arguments() -> None:
    assert parse_pool_message({"id": 1, "command": "c"}).args == {}
    assert parse_pool_message({"id": 1, "command": "c", "args": None}).args == {}


@given(not_bools)
def test_response_success_must_be_a_boolean(bad: Any) -> None:
    with pytest.raises(ProtocolError, match="'success'"):
        parse_bridge_message({"id": 1, "success": bad})


@pytest.mark.parametrize("flag", [True, False])
def test_bools_are_not_ids(flag: bool) -> None:
    for wire in (
        {"id": flag, "command": "c", "args": {}},
        {"type": "cancel", "id": flag},
        {"type": "credit", "id": flag, "credits": 1},
    ):
        with pytest.raises(ProtocolError):
            parse_pool_message(wire)
    for wire in (
        {"id": flag, "success": True, "result": 1},
        {"type": "chunk", "id": flag, "seq": 0, "data": 1},
        {"type": "chunk", "id": 1, "seq": flag, "data": 1},
    ):
        with pytest.raises(ProtocolError):
            parse_bridge_message(wire)


def test_response_without_id_is_a_null_id_response() -> None:
    assert parse_bridge_message({"success": False, "error": "bad frame"}) == Response(
        None, False, error="bad frame"
    )


def test_v03_status_error_result_passes_through_as_a_success() -> None:
    wire = {
        "id": 3,
        "success": True,
        "result": {"status": "error", "message": "boom"},
        "timestamp": TS,
    }
    assert parse_bridge_message(wire) == Response(
        3, True, {"status": "error", "message": "boom"}, timestamp=TS
    )


def test_failure_fields_that_are_not_strings_are_turned_into_strings() -> None:
    wire = {
        "id": 1,
        "success": False,
        "error": {"m": 1},
        "error_type": 5,
        "traceback": ["a"],
        "timestamp": 0,
    }
    assert parse_bridge_message(wire) == Response(
        1, False, error="{'m': 1}", error_type="5", traceback="['a']", timestamp="0"
    )
    assert parse_bridge_message({"id": 1, "success": False, "error": None}).error == ""


def nested_error_payload(codec: Codec, depth: int) -> bytes:
    """A failure response whose ``error`` is ``depth`` nested arrays."""
    if codec is JSON:
        return b'{"id":1,"success":false,"error":' + b"[" * depth + b"]" * depth + b"}"
    return b"\x83\xa2id\x01\xa7success\xc2\xa5error" + b"\x91" * (depth - 1) + b"\x90"


@pytest.mark.parametrize("codec", CODEC_LIST, ids=lambda c: c.name)
@pytest.mark.parametrize("depth", [1, 900, 1000, 1020, 1023, 1024, 5000])
def test_deeply_nested_error_field_is_a_string_or_a_protocol_error(
    codec: Codec, depth: int
) -> None:
    # MessagePack nests up to 1023 levels, deeper than Python's default recursion limit:
    # turning such an ``error`` into a string must not escape as RecursionError.
    try:
        response = parse_bridge_message(codec.decode(nested_error_payload(codec, depth)))
    except ProtocolError:
        assert depth > 900
        return
    assert isinstance(response.error, str)
    assert response.error.count("[") == depth


def test_negotiation_defaults_when_fields_are_missing() -> None:
    assert parse_pool_message({"type": "protocol_negotiation"}) == ProtocolNegotiation(
        supported=(), preferred="json"
    )


def test_negotiation_keeps_grace_and_max_frame_size() -> None:
    wire = {
        "type": "protocol_negotiation",
        "supported": ["json"],
        "preferred": "json",
        "grace": 2.5,
        "max_frame_size": 1024,
    }
    assert parse_pool_message(wire) == ProtocolNegotiation(
        ("json",), "json", grace=2.5, max_frame_size=1024
    )
    # An integral grace (JavaScript writes 2.0 as 2) is still a number of seconds.
    assert parse_pool_message({**wire, "grace": 2}).grace == 2.0
    assert parse_pool_message({**wire, "grace": 10**400}).grace is None


@given(st.sampled_from(["2", None, True, [1]]))
def test_negotiation_ignores_ill_typed_grace_and_max_frame_size(bad: Any) -> None:
    parsed = parse_pool_message(
        {"type": "protocol_negotiation", "supported": ["json"], "grace": bad, "max_frame_size": bad}
    )
    assert parsed.grace is None
    assert parsed.max_frame_size is None


def test_negotiation_supported_must_be_a_list() -> None:
    with pytest.raises(ProtocolError, match="'supported'"):
        parse_pool_message({"type": "protocol_negotiation", "supported": "json"})


def test_shutdown_has_no_fields() -> None:
    assert parse_pool_message({"type": "shutdown", "id": 99}) == Shutdown()
    assert Shutdown().to_wire() == {"type": "shutdown"}


def test_control_frame_shapes() -> None:
    assert Cancel(8).to_wire() == {"type": "cancel", "id": 8}
    assert Credit(8, 16).to_wire() == {"type": "credit", "id": 8, "credits": 16}
    assert StreamChunk(8, 0, {"p": 1}).to_wire() == {
        "type": "chunk",
        "id": 8,
        "seq": 0,
        "data": {"p": 1},
    }


# --------------------------------------------------------------------------- negotiation reply


def reply(**fields: Any) -> bytes:
    return JSON.encode({"type": "protocol_selected", **fields})


def test_reply_of_a_v03_bridge_has_no_features() -> None:
    parsed = parse_negotiation_reply(reply(protocol="msgpack"), ["msgpack", "json"])
    assert parsed == ProtocolSelected("msgpack", frozenset(), 1, {})


def test_reply_of_our_bridge_lists_features() -> None:
    payload = reply(
        protocol="json",
        features=sorted(ALL_FEATURES),
        max_concurrency=64,
        info={"bridge": "snakepit_trio_bridge", "pid": 4242},
    )
    parsed = parse_negotiation_reply(payload, ("msgpack", "json"))
    assert parsed == ProtocolSelected(
        "json", ALL_FEATURES, 64, {"bridge": "snakepit_trio_bridge", "pid": 4242}
    )


@pytest.mark.parametrize(
    "wire",
    [
        {"success": False, "error": "Invalid request format", "timestamp": TS},
        {"id": None, "success": False, "error": "Unknown command: undefined"},
        {"type": "protocol_negotiation", "protocol": "json"},
        {"protocol": "json"},
        [],
        "protocol_selected",
        None,
    ],
    ids=[
        "error-without-id",
        "error-null-id",
        "echoed-negotiation",
        "no-type",
        "array",
        "string",
        "null",
    ],
)
def test_reply_of_another_shape_means_fallback(wire: Any) -> None:
    assert parse_negotiation_reply(JSON.encode(wire), ["msgpack", "json"]) is None


def test_reply_selecting_a_protocol_not_offered_means_fallback() -> None:
    assert parse_negotiation_reply(reply(protocol="msgpack"), ["json"]) is None
    assert parse_negotiation_reply(reply(protocol="cbor"), ["json", "msgpack"]) is None
    assert parse_negotiation_reply(reply(), ["json", "msgpack"]) is None


@pytest.mark.parametrize("protocol", [["json"], {"json": 1}, 1, True, None, b"json"])
def test_reply_with_an_ill_typed_protocol_means_fallback(protocol: Any) -> None:
    assert parse_negotiation_reply(reply(protocol=protocol), ["json", "msgpack"]) is None


@pytest.mark.parametrize(
    "payload",
    [MSGPACK.encode({"type": "protocol_selected", "protocol": "msgpack"}), b"", b"\xff", b"{"],
    ids=["msgpack", "empty", "not-utf8", "cut"],
)
def test_reply_that_is_not_json_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_negotiation_reply(payload, ["msgpack", "json"])


def test_reply_fields_of_the_wrong_type_fall_back_to_v03_defaults() -> None:
    payload = reply(protocol="json", features="stream", max_concurrency="64", info=[1])
    assert parse_negotiation_reply(payload, ["json"]) == ProtocolSelected(
        "json", frozenset(), 1, {}
    )
    payload = reply(protocol="json", features=["stream", 7, None], max_concurrency=True)
    assert parse_negotiation_reply(payload, ["json"]) == ProtocolSelected(
        "json", frozenset({"stream"}), 1, {}
    )
    assert (
        parse_negotiation_reply(
            reply(protocol="json", max_concurrency=-3), ["json"]
        ).max_concurrency
        == 1
    )


@given(S.json_values, st.lists(st.sampled_from(["json", "msgpack", "cbor"]), max_size=3))
def test_reply_of_any_json_value_never_raises(value: Any, supported: list[str]) -> None:
    result = parse_negotiation_reply(JSON.encode(value), supported)
    assert result is None or result.protocol in supported


@given(
    st.fixed_dictionaries(
        {"type": st.just("protocol_selected")},
        optional={
            "protocol": S.json_values | st.sampled_from(["json", "msgpack"]),
            "features": S.json_values,
            "max_concurrency": S.json_values,
            "info": S.json_values,
        },
    )
)
def test_reply_shaped_like_protocol_selected_never_raises(wire: dict[str, Any]) -> None:
    result = parse_negotiation_reply(JSON.encode(wire), ["json", "msgpack"])
    if result is not None:
        assert result.protocol == wire["protocol"]
        assert result.max_concurrency >= 1
        assert all(isinstance(f, str) for f in result.features)


# --------------------------------------------------------------------------- garbage


structured = st.recursive(
    S.msgpack_scalars
    | st.sampled_from(
        ["chunk", "heartbeat", "cancel", "credit", "shutdown", "protocol_negotiation"]
    ),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "id",
                    "type",
                    "success",
                    "seq",
                    "data",
                    "result",
                    "error",
                    "error_type",
                    "traceback",
                    "timestamp",
                    "command",
                    "args",
                    "stream",
                    "credits",
                    "supported",
                    "preferred",
                    "grace",
                    "max_frame_size",
                ]
            )
            | S.keys,
            children,
            max_size=6,
        )
    ),
    max_leaves=15,
)


def decode_everything(codec: Codec, stream: bytes, data: st.DataObject) -> None:
    decoder = FrameDecoder(max_frame_size=4096)
    for piece in split_at(stream, cut_points(data, len(stream))):
        for payload in decoder.feed(piece):
            assert len(payload) <= 4096
            # A bad payload or message spoils only itself here; a framing error ends the stream.
            for parse in (parse_bridge_message, parse_pool_message):
                try:
                    parse(codec.decode(payload))
                except ProtocolError:
                    pass
    decoder.check_eof()


@settings(max_examples=200)
@given(S.codecs, st.binary(max_size=600), st.data())
def test_random_bytes_raise_only_protocol_error(
    codec: Codec, stream: bytes, data: st.DataObject
) -> None:
    try:
        decode_everything(codec, stream, data)
    except ProtocolError:
        pass


@settings(max_examples=200)
@given(S.codecs, st.lists(st.binary(max_size=80), max_size=5), st.data())
def test_well_framed_garbage_payloads_raise_only_protocol_error(
    codec: Codec, payloads: list[bytes], data: st.DataObject
) -> None:
    try:
        decode_everything(codec, b"".join(map(encode_frame, payloads)), data)
    except ProtocolError:
        pass


@settings(max_examples=200)
@given(S.codecs, st.lists(structured, min_size=1, max_size=4), st.data())
def test_well_encoded_odd_messages_raise_only_protocol_error(
    codec: Codec, values: list[Any], data: st.DataObject
) -> None:
    try:
        payloads = [codec.encode(v) for v in values]
    except (TypeError, ValueError, OverflowError):
        return  # not representable in this codec (JSON map keys, NaN): not a wire value
    try:
        decode_everything(codec, b"".join(map(encode_frame, payloads)), data)
    except ProtocolError:
        pass
