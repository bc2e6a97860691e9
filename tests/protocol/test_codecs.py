"""JSON and MessagePack codecs: round trips, bytes handling, hostile payloads."""

from __future__ import annotations

import base64
import math
import time
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from snakepit_trio_bridge.protocol import CODECS, JSON, MSGPACK, Codec, ProtocolError, get_codec
from snakepit_trio_bridge.protocol.codecs import MsgpackCodec

from .strategies import CODEC_LIST, assert_same, json_values, msgpack_values, values_for

codec_params = pytest.mark.parametrize("codec", CODEC_LIST, ids=lambda c: c.name)

DEPTH = 100_000


# --------------------------------------------------------------------------- round trips


@given(json_values)
def test_json_round_trip_keeps_values_and_types(value: Any) -> None:
    assert_same(JSON.decode(JSON.encode(value)), value)


@given(msgpack_values)
def test_msgpack_round_trip_keeps_values_and_types(value: Any) -> None:
    assert_same(MSGPACK.decode(MSGPACK.encode(value)), value)


@settings(max_examples=50)
@given(
    st.dictionaries(
        st.integers(min_value=-(2**63), max_value=2**63 - 1), msgpack_values, max_size=5
    )
)
def test_msgpack_keeps_integer_map_keys(value: dict[int, Any]) -> None:
    assert_same(MSGPACK.decode(MSGPACK.encode(value)), value)


@codec_params
def test_codec_registry_and_fresh_instances(codec: Codec) -> None:
    assert CODECS[codec.name] is codec
    fresh = get_codec(codec.name)
    assert type(fresh) is type(codec)
    assert fresh is not codec
    assert fresh is not get_codec(codec.name)


def test_unknown_codec_name_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="unknown codec"):
        get_codec("cbor")


# --------------------------------------------------------------------------- JSON specifics


@given(st.binary())
def test_json_carries_bytes_as_a_base64_object(data: bytes) -> None:
    wire = JSON.encode({"blob": data})
    assert wire == b'{"blob":{"__bytes__":"' + base64.b64encode(data) + b'"}}'
    assert JSON.decode(wire) == {"blob": data}


def test_json_bytes_inside_lists_and_bytes_like_types() -> None:
    wire = JSON.encode([b"\x00\xff", bytearray(b"ab"), memoryview(b"cd")])
    assert wire == b'[{"__bytes__":"AP8="},{"__bytes__":"YWI="},{"__bytes__":"Y2Q="}]'
    assert_same(JSON.decode(wire), [b"\x00\xff", b"ab", b"cd"])


def test_json_bytes_marker_needs_exactly_one_string_key() -> None:
    assert JSON.decode(b'{"__bytes__":"aGk="}') == b"hi"
    # Anything else of that shape stays a plain map.
    assert JSON.decode(b'{"__bytes__":"aGk=","x":1}') == {"__bytes__": "aGk=", "x": 1}
    assert JSON.decode(b'{"__bytes__":5}') == {"__bytes__": 5}
    assert JSON.decode(b'{"__bytes__":null}') == {"__bytes__": None}


@pytest.mark.parametrize(
    "bad", [b'{"__bytes__":"a"}', b'{"__bytes__":"!!!!"}', b'{"__bytes__":"aGk"}']
)
def test_json_invalid_base64_in_bytes_marker_is_a_protocol_error(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        JSON.decode(bad)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, [1.0, math.nan], {"a": math.inf}])
def test_json_refuses_nan_and_infinities_at_encode(value: Any) -> None:
    with pytest.raises(ValueError):
        JSON.encode(value)


def test_json_turns_tuples_and_sets_into_arrays() -> None:
    assert JSON.encode((1, (2, "x"))) == b'[1,[2,"x"]]'
    assert JSON.encode({"s": frozenset({3})}) == b'{"s":[3]}'
    assert JSON.decode(JSON.encode({"t": (1, 2)})) == {"t": [1, 2]}


def test_json_is_compact_and_keeps_non_ascii_text() -> None:
    assert JSON.encode({"a": [1, 2], "é": "☃ snake 🐍"}) == '{"a":[1,2],"é":"☃ snake 🐍"}'.encode()


def test_json_refuses_what_it_cannot_carry_at_encode() -> None:
    with pytest.raises(TypeError):
        JSON.encode({"o": object()})


@pytest.mark.parametrize(
    "payload",
    [b'"\xff"', b'{"a":"\xc3"}', b'"\xed\xa0\x80"', b"\x80", b'{"\xfe":1}'],
    ids=["ff", "cut-2-byte", "encoded-surrogate", "continuation", "bad-key"],
)
def test_json_invalid_utf8_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        JSON.decode(payload)


@pytest.mark.parametrize(
    "payload", [b"", b" ", b"{", b"[1,]", b"{'a':1}", b"1 2", b"\xef\xbb\xbf{}"]
)
def test_json_malformed_documents_are_protocol_errors(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        JSON.decode(payload)


def test_json_huge_integer_literal_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        JSON.decode(b"1" * 10_000)


# --------------------------------------------------------------------------- MessagePack specifics


def test_msgpack_bytes_are_bin_and_text_is_str() -> None:
    assert MSGPACK.encode(b"ab") == b"\xc4\x02ab"
    assert MSGPACK.encode("ab") == b"\xa2ab"
    assert MSGPACK.decode(b"\xc4\x02ab") == b"ab"
    assert MSGPACK.decode(b"\xa2ab") == "ab"


def test_msgpack_tuples_become_arrays() -> None:
    assert MSGPACK.decode(MSGPACK.encode({"t": (1, (2,))})) == {"t": [1, [2]]}


@pytest.mark.parametrize(
    "payload",
    [b"\xa1\xff", b"\xa2\xc3\x28", b"\x81\xa1\xfe\x01", b"\xd9\x03\xed\xa0\x80"],
    ids=["str-ff", "str-bad-continuation", "map-key", "encoded-surrogate"],
)
def test_msgpack_invalid_utf8_in_str_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        MSGPACK.decode(payload)


@pytest.mark.parametrize(
    "payload",
    [
        b"\xdd\xff\xff\xff\xff",  # array 32 with 2**32 - 1 elements
        b"\xdf\xff\xff\xff\xff",  # map 32 with 2**32 - 1 pairs
        b"\xdb\xff\xff\xff\xff",  # str 32 of 4 GiB
        b"\xc6\xff\xff\xff\xff",  # bin 32 of 4 GiB
        b"\xc9\xff\xff\xff\xff\x01",  # ext 32 of 4 GiB
        b"\xdc\xff\xff",  # array 16 with 65535 elements
    ],
    ids=["array32", "map32", "str32", "bin32", "ext32", "array16"],
)
def test_msgpack_hostile_sizes_fail_fast_without_allocating(payload: bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(ProtocolError):
        MSGPACK.decode(payload)
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("payload", [b"", b"\xc1", b"\x01\x02", b"\x92\x01", b"\xa5abc"])
def test_msgpack_malformed_payloads_are_protocol_errors(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        MSGPACK.decode(payload)


@codec_params
@given(payload=st.binary())
def test_decode_of_arbitrary_bytes_raises_only_protocol_error(codec: Codec, payload: bytes) -> None:
    try:
        codec.decode(payload)
    except ProtocolError:
        pass


@codec_params
@given(data=st.data())
def test_decode_of_corrupted_payloads_raises_only_protocol_error(
    codec: Codec, data: st.DataObject
) -> None:
    payload = bytearray(codec.encode(data.draw(values_for(codec), label="value")))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(payload) - 1), st.integers(0, 255))))
    for index, byte in flips:
        payload[index] = byte
    cut = data.draw(st.integers(0, len(payload)), label="cut")
    try:
        codec.decode(bytes(payload[:cut]))
    except ProtocolError:
        pass


def test_msgpack_encoder_recovers_after_a_failed_encode() -> None:
    codec = MsgpackCodec()
    with pytest.raises(TypeError):
        codec.encode({"a": [1, 2, object()]})
    with pytest.raises(OverflowError):
        codec.encode([1, 2**64])
    assert codec.encode({"b": 1}) == b"\x81\xa1b\x01"


def test_msgpack_output_is_canonical_for_a_given_dict_order() -> None:
    value = {"id": 1, "f": 0.5, "n": -1, "big": 2**40}
    expected = msgpack.packb(value, use_bin_type=True)
    assert MSGPACK.encode(value) == expected
    assert MSGPACK.encode(value) == expected  # the packer resets between calls
    assert MSGPACK.encode(0.5) == b"\xcb\x3f\xe0\x00\x00\x00\x00\x00\x00"  # always float64


# --------------------------------------------------------------------------- nesting


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * DEPTH + b"]" * DEPTH,
        b'{"a":' * DEPTH + b"1" + b"}" * DEPTH,
        b"[" * DEPTH,
    ],
    ids=["arrays", "objects", "unterminated"],
)
def test_json_nesting_100k_deep_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        JSON.decode(payload)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x91" * DEPTH + b"\xc0",
        b"\x81\xa1a" * DEPTH + b"\xc0",
        b"\x91" * DEPTH,
    ],
    ids=["arrays", "maps", "unterminated"],
)
def test_msgpack_nesting_100k_deep_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        MSGPACK.decode(payload)


@settings(max_examples=25)
@given(st.integers(min_value=1, max_value=3000), st.sampled_from(CODEC_LIST))
def test_nesting_of_any_depth_decodes_or_raises_protocol_error(depth: int, codec: Codec) -> None:
    # ``depth`` one-element arrays around an empty one, in either codec.
    if codec is JSON:
        payload = b"[" * (depth + 1) + b"]" * (depth + 1)
    else:
        payload = b"\x91" * depth + b"\x90"
    try:
        value = codec.decode(payload)
    except ProtocolError:
        return
    for _ in range(depth):
        (value,) = value
    assert value == []
