"""Decode limits: a legal frame cannot make the pool build more maps and arrays than
``max_containers`` or nest them deeper than ``MAX_DEPTH``, and the checked path that enforces
this decodes exactly what the plain C decoders decode (issue 14, defect 12)."""

from __future__ import annotations

import json
import threading
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from snakepit_trio_bridge.protocol import JSON, MSGPACK, Codec, ProtocolError, get_codec
from snakepit_trio_bridge.protocol.codecs import (
    CHECKED_OVER,
    DEFAULT_MAX_CONTAINERS,
    MAX_DEPTH,
    JsonCodec,
    MsgpackCodec,
    _few_items,
)

from .strategies import _containers, assert_same, json_values, msgpack_scalars, msgpack_values

MIB = 1024 * 1024
codec_names = pytest.mark.parametrize("name", ["json", "msgpack"])


def array32(count: int) -> bytes:
    """A MessagePack array header for ``count`` members."""
    return b"\xdd" + count.to_bytes(4, "big")


def peak_bytes(run: Callable[[], object]) -> int:
    """The most memory Python objects took while ``run`` ran (tracemalloc)."""
    tracemalloc.start()
    try:
        run()
    except ProtocolError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def checked(name: str, max_containers: int = DEFAULT_MAX_CONTAINERS, step: int = 7) -> Codec:
    """A codec that takes the checked path for every payload, in slices of ``step`` bytes
    (MessagePack) or runs of ``step`` characters at most (JSON)."""
    codec = get_codec(name, max_containers)
    codec._checked_over = -1  # type: ignore[attr-defined]
    if isinstance(codec, JsonCodec):
        codec._window = step
    else:
        assert isinstance(codec, MsgpackCodec)
        codec._slice = step
        codec._few = 0  # not even a value of one item takes unpackb
    return codec


def outcome(codec: Codec, payload: bytes) -> tuple[str, Any]:
    try:
        return "value", codec.decode(payload)
    except ProtocolError:
        return "error", None


def assert_same_outcome(a: tuple[str, Any], b: tuple[str, Any]) -> None:
    assert a[0] == b[0]
    assert_same(a[1], b[1])


# --------------------------------------------------------------------------- the frame


@pytest.mark.parametrize("mib", [16, 64])
def test_megabytes_of_empty_msgpack_arrays_are_refused(mib: int) -> None:
    # The frame: one legal frame of empty arrays cost ~1.1 GB (16 MB) or 4.7 GB
    # (64 MiB) of pool memory. It is refused once it passes max_containers.
    count = mib * MIB - 5
    payload = array32(count) + b"\x90" * count
    with pytest.raises(ProtocolError, match="more than 1048576 maps, arrays and ext values"):
        MSGPACK.decode(payload)


def test_megabytes_of_empty_json_arrays_are_refused() -> None:
    payload = b"[" + b"[]," * (16 * MIB // 3) + b"[]]"
    with pytest.raises(ProtocolError, match="more than 1048576 maps and arrays"):
        JSON.decode(payload)


@codec_names
def test_refusing_a_frame_of_containers_costs_no_more_than_the_limit_allows(name: str) -> None:
    limit = 50_000
    codec = get_codec(name, limit)
    if name == "msgpack":
        count = 4 * MIB // 3
        payload = array32(count) + b"\x81\xc0\xc0" * count  # {nil: nil}: the worst shape
    else:
        payload = b"[" + b'{"":0},' * (12 * MIB // 7) + b"0]"
    without_limit = get_codec(name, 1 << 40)
    assert peak_bytes(lambda: without_limit.decode(payload)) > 200 * MIB
    # Up to the limit: about 250 bytes a map, plus the payload's own copies.
    assert peak_bytes(lambda: codec.decode(payload)) < limit * 300 + 3 * len(payload)


# --------------------------------------------------------------------------- max_containers


def nested(kind: str, count: int) -> Any:
    """``count`` containers in all: half in a row, the rest nested in the last one."""
    value: Any = [] if kind == "list" else {}
    for _ in range(count // 2):
        value = [value] if kind == "list" else {"k": value}
    return [value, *([[]] * (count - count // 2 - 2))] if count > 2 else value


@codec_names
@pytest.mark.parametrize("kind", ["list", "map"])
@pytest.mark.parametrize("limit", [1, 2, 3, 40, 1000])
@pytest.mark.parametrize("step", [1, 5, 64, 1 << 20])
def test_max_containers_is_exact_on_every_path(name: str, kind: str, limit: int, step: int) -> None:
    for count in (limit, limit + 1):
        value = nested(kind, count) if count > 1 else ([] if kind == "list" else {})
        payload = get_codec(name).encode(value)
        for codec in (get_codec(name, limit), checked(name, limit, step)):
            if count <= limit:
                assert_same(codec.decode(payload), value)
            else:
                with pytest.raises(ProtocolError, match=f"more than {limit} maps"):
                    codec.decode(payload)


@pytest.mark.parametrize("step", [2, 64, 1 << 20])
def test_msgpack_ext_values_count_like_containers(step: int) -> None:
    # An ext value is a tuple the garbage collector tracks, built by Python code: a flood of
    # 3-byte fixext values costs more time than empty arrays do, so it counts the same.
    def payload(count: int) -> bytes:
        return b"\xdd" + count.to_bytes(4, "big") + b"\xd4\x05\x01" * count

    for codec in (get_codec("msgpack", 100), checked("msgpack", 100, step)):
        assert codec.decode(payload(99)) == [msgpack.ExtType(5, b"\x01")] * 99
        with pytest.raises(ProtocolError, match="more than 100 maps, arrays and ext values"):
            codec.decode(payload(100))
    # Timestamps (ext type -1) are decoded by msgpack itself, into small objects.
    stamps = MSGPACK.encode([msgpack.Timestamp(1, 2)] * 500)
    assert get_codec("msgpack", 100).decode(stamps) == [msgpack.Timestamp(1, 2)] * 500


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_max_containers_must_be_a_positive_integer(bad: Any) -> None:
    for name in ("json", "msgpack"):
        with pytest.raises(ValueError, match="max_containers"):
            get_codec(name, bad)


def test_payloads_too_short_to_break_the_limit_take_the_plain_path() -> None:
    assert MsgpackCodec()._checked_over == CHECKED_OVER
    assert MsgpackCodec(1000)._checked_over == 1000
    assert JsonCodec(1000)._checked_over == 2000  # "[]" is two bytes


# --------------------------------------------------------------------------- depth


def msgpack_depth(depth: int) -> bytes:
    return b"\x91" * (depth - 1) + b"\x90"


@pytest.mark.parametrize("step", [3, 1 << 20])
def test_msgpack_nests_1024_deep_and_no_deeper(step: int) -> None:
    for codec in (MSGPACK, checked("msgpack", step=step)):
        value = codec.decode(msgpack_depth(MAX_DEPTH))
        for _ in range(MAX_DEPTH - 1):
            (value,) = value
        assert value == []
        with pytest.raises(ProtocolError, match="nested deeper than 1024 levels"):
            codec.decode(msgpack_depth(MAX_DEPTH + 1))


@pytest.mark.parametrize("shape", ["arrays", "maps", "mixed"])
@pytest.mark.parametrize("step", [3, 64, 1 << 20])
def test_checked_json_nests_1024_deep_and_no_deeper(shape: str, step: int) -> None:
    def text(depth: int) -> bytes:
        opens = {"arrays": ["[1,"], "maps": ['{"a":1,"b":'], "mixed": ["[1,", '{"a":1,"b":']}
        closers = {"[1,": "]", '{"a":1,"b":': "}"}
        kinds = opens[shape]
        chain = [kinds[i % len(kinds)] for i in range(depth)]
        return ("".join(chain) + "0" + "".join(closers[k] for k in reversed(chain))).encode()

    codec = checked("json", step=step)
    value = codec.decode(text(MAX_DEPTH))
    for i in range(MAX_DEPTH):  # compared level by level: == itself would recurse too deep
        kind = {"arrays": "[", "maps": "{", "mixed": "[{"[i % 2]}[shape]
        if kind == "[":
            assert type(value) is list and value[0] == 1 and len(value) == 2
            value = value[1]
        else:
            assert type(value) is dict and list(value) == ["a", "b"] and value["a"] == 1
            value = value["b"]
    assert value == 0
    with pytest.raises(ProtocolError, match="nested deeper than 1024 levels"):
        codec.decode(text(MAX_DEPTH + 1))


def test_a_deep_json_frame_decoded_in_a_thread_is_a_protocol_error() -> None:
    # A thread has its own recursion depth: the C decoder's RecursionError must still come
    # out as a ProtocolError (never a crash of the reader).
    results: list[BaseException | None] = []

    def run() -> None:
        for payload in (b"[" * 100_000, b"[" * 5000 + b"]" * 5000):
            try:
                JSON.decode(payload)
                results.append(None)
            except BaseException as exc:
                results.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert [type(r) for r in results] == [ProtocolError, ProtocolError]


# --------------------------------------------------------------------------- same values


@settings(max_examples=300, deadline=None)
@given(value=json_values, step=st.sampled_from([1, 2, 5, 16, 64, 4096]))
def test_checked_json_decodes_what_the_plain_decoder_decodes(value: Any, step: int) -> None:
    payload = JSON.encode(value)
    assert_same(checked("json", step=step).decode(payload), JSON.decode(payload))


ext_values = st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=20)) | st.builds(
    msgpack.Timestamp, st.integers(-(2**34), 2**34), st.integers(0, 999_999_999)
)
msgpack_values_with_ext = st.recursive(msgpack_scalars | ext_values, _containers, max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(value=msgpack_values_with_ext, step=st.sampled_from([1, 2, 5, 16, 64, 4096]))
def test_checked_msgpack_decodes_what_unpackb_decodes(value: Any, step: int) -> None:
    payload = MSGPACK.encode(value)
    assert_same(checked("msgpack", step=step).decode(payload), MSGPACK.decode(payload))


# Strings full of the characters the JSON runs cut at and count, and any whitespace.
tricky_text = st.text(alphabet='[]{},:"\\ aé\n\t', max_size=8)
tricky_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | tricky_text,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(tricky_text, children, max_size=6)
    ),
    max_leaves=40,
)


@settings(max_examples=500, deadline=None)
@given(
    value=tricky_json,
    indent=st.sampled_from([None, 0, 1, "\t", " \n "]),
    separators=st.sampled_from([(",", ":"), (", ", ": "), (" ,\r\n", " : ")]),
    step=st.sampled_from([1, 3, 8, 32, 4096]),
)
def test_checked_json_agrees_on_brackets_in_strings_and_any_whitespace(
    value: Any, indent: Any, separators: tuple[str, str], step: int
) -> None:
    payload = json.dumps(value, indent=indent, separators=separators).encode()
    assert_same(checked("json", step=step).decode(payload), JSON.decode(payload))


def corrupt(data: st.DataObject, payload: bytes) -> bytes:
    mutable = bytearray(payload)
    if mutable:
        edits = st.tuples(st.integers(0, len(mutable) - 1), st.integers(0, 255))
        for index, byte in data.draw(st.lists(edits, max_size=4), label="edits"):
            mutable[index] = byte
    cut = data.draw(st.integers(0, len(mutable)), label="cut")
    return bytes(mutable[:cut]) + data.draw(st.binary(max_size=3), label="tail")


@settings(max_examples=500, deadline=None)
@given(data=st.data(), step=st.sampled_from([1, 3, 8, 64]))
def test_checked_json_and_plain_agree_on_damaged_payloads(data: st.DataObject, step: int) -> None:
    value = data.draw(tricky_json, label="value")
    text = json.dumps(value, separators=data.draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    payload = corrupt(data, text.encode())
    assert_same_outcome(outcome(checked("json", step=step), payload), outcome(JSON, payload))


@settings(max_examples=500, deadline=None)
@given(data=st.data(), step=st.sampled_from([1, 3, 8, 64]))
def test_checked_msgpack_and_unpackb_agree_on_damaged_payloads(
    data: st.DataObject, step: int
) -> None:
    payload = corrupt(data, MSGPACK.encode(data.draw(msgpack_values, label="value")))
    assert_same_outcome(outcome(checked("msgpack", step=step), payload), outcome(MSGPACK, payload))


@codec_names
def test_a_big_realistic_frame_takes_the_checked_path_and_decodes_the_same(name: str) -> None:
    rows = [
        {"id": i, "name": f"row {i}, [ok]", "score": i / 7, "tags": ["a", "b"], "blob": b"\x00"}
        for i in range(20_000)
    ]
    value = {"id": 1, "success": True, "result": {"rows": rows, "embedding": [0.5] * 50_000}}
    codec = get_codec(name)
    payload = codec.encode(value)
    assert len(payload) > CHECKED_OVER
    plain = get_codec(name, 1 << 40)
    plain._checked_over = 1 << 40  # type: ignore[attr-defined]
    assert_same(codec.decode(payload), plain.decode(payload))
    assert_same(codec.decode(payload), value)


def test_checked_msgpack_refuses_what_unpackb_refuses() -> None:
    codec = checked("msgpack", step=2)
    for payload in (b"\x92\x01", b"\x92\x01\x02\x03", b"", b"\xc1", b"\xa1\xff"):
        with pytest.raises(ProtocolError):
            codec.decode(payload)
        with pytest.raises((ValueError, msgpack.ExtraData)):
            msgpack.unpackb(payload, raw=False)


# --------------------------------------------------------------------------- few items


def items(value: Any) -> int:
    """How many MessagePack items ``value`` packs to (containers, keys and values)."""
    if isinstance(value, list):
        return 1 + sum(items(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(items(k) + items(v) for k, v in value.items())
    return 1


@settings(max_examples=500, deadline=None)
@given(value=msgpack_values, most=st.integers(0, 30))
def test_few_items_counts_the_items_of_a_msgpack_value(value: Any, most: int) -> None:
    assert _few_items(MSGPACK.encode(value), most) == (items(value) <= most)


@settings(max_examples=500, deadline=None)
@given(payload=st.binary(max_size=64) | msgpack_values.map(MSGPACK.encode), data=st.data())
def test_unpackb_builds_few_containers_when_few_items_says_so(
    payload: bytes, data: st.DataObject
) -> None:
    # _few_items only reads type bytes and lengths; whatever the bytes, when it says yes,
    # unpackb cannot build more containers than that (it fails first, or finishes).
    payload = corrupt(data, payload)
    most = data.draw(st.integers(0, 12), label="most")
    built = 0

    def count(value: Any) -> Any:
        nonlocal built
        built += 1
        return value

    if _few_items(payload, most):
        try:
            msgpack.unpackb(
                payload, raw=False, strict_map_key=False, list_hook=count, object_hook=count
            )
        except Exception:
            pass
        assert built <= most


def test_a_big_bin_takes_unpackb_and_many_small_items_the_checked_path() -> None:
    assert MsgpackCodec()._few == 64
    one_bin = MSGPACK.encode({"id": 1, "success": True, "result": b"x" * MIB, "timestamp": "t"})
    assert _few_items(one_bin, 64)
    assert MSGPACK.decode(one_bin)["result"] == b"x" * MIB
    many = MSGPACK.encode({"id": 1, "success": True, "result": [b"x"] * 100_000})
    assert not _few_items(many, 64)
