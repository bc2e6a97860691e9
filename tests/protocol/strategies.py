"""Hypothesis strategies and helpers shared by the protocol tests."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

from hypothesis import strategies as st
from snakepit_trio_bridge.protocol import JSON, MSGPACK, Codec, FrameDecoder, encode_frame
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
)

CODEC_LIST: list[Codec] = [JSON, MSGPACK]
codecs = st.sampled_from(CODEC_LIST)

MSGPACK_INT_MIN = -(2**63)
MSGPACK_INT_MAX = 2**64 - 1

# --------------------------------------------------------------------------- values

# Map keys: JSON has string keys only, and the one-key object {"__bytes__": ...} is how JSON
# carries bytes, so generated maps never use that key (a dedicated test covers it).
keys = st.text(max_size=12).filter(lambda k: k != "__bytes__")
finite_floats = st.floats(allow_nan=False, allow_infinity=False)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=5)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**100), max_value=2**100)
    | finite_floats
    | st.text()
    | st.binary(max_size=40)
)
msgpack_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=MSGPACK_INT_MIN, max_value=MSGPACK_INT_MAX)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(max_size=40)
)

json_values = st.recursive(json_scalars, _containers, max_leaves=20)
msgpack_values = st.recursive(msgpack_scalars, _containers, max_leaves=20)
json_maps = st.dictionaries(keys, json_values, max_size=5)
msgpack_maps = st.dictionaries(keys, msgpack_values, max_size=5)


def values_for(codec: Codec) -> st.SearchStrategy[Any]:
    return json_values if codec is JSON else msgpack_values


def maps_for(codec: Codec) -> st.SearchStrategy[dict[str, Any]]:
    return json_maps if codec is JSON else msgpack_maps


def assert_same(actual: Any, expected: Any, path: str = "$") -> None:
    """Deep equality that also checks types (so True != 1, 1.0 != 1, bytes != str)."""
    assert type(actual) is type(expected), (
        f"{path}: {type(actual).__name__} != {type(expected).__name__}"
    )
    if isinstance(expected, dict):
        assert list(actual) == list(expected), f"{path}: keys {list(actual)} != {list(expected)}"
        for key in expected:
            assert_same(actual[key], expected[key], f"{path}[{key!r}]")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{path}: length {len(actual)} != {len(expected)}"
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{path}[{index}]")
    elif isinstance(expected, float):
        assert actual == expected or (math.isnan(actual) and math.isnan(expected)), path
        assert math.copysign(1.0, actual) == math.copysign(1.0, expected), f"{path}: sign of zero"
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


# --------------------------------------------------------------------------- messages

# Ids are whatever both codecs can carry; the pool itself counts up from 1.
request_ids = st.integers(min_value=MSGPACK_INT_MIN, max_value=2**63 - 1)
small_ints = st.integers(min_value=MSGPACK_INT_MIN, max_value=2**63 - 1)
timestamps = st.text(min_size=1, max_size=30)
commands = st.text(max_size=30)
feature_sets = st.frozensets(st.text(max_size=12), max_size=8)


@st.composite
def requests(draw: st.DrawFn, codec: Codec) -> Request:
    stream = draw(st.booleans())
    return Request(
        id=draw(request_ids),
        command=draw(commands),
        args=draw(maps_for(codec)),
        timestamp=draw(timestamps),
        stream=stream,
        credits=draw(st.none() | st.integers(min_value=0, max_value=2**31)),
    )


@st.composite
def responses(draw: st.DrawFn, codec: Codec) -> Response:
    response_id = draw(st.none() | request_ids)
    if draw(st.booleans()):
        return Response(response_id, True, draw(values_for(codec)), timestamp=draw(timestamps))
    return Response(
        response_id,
        False,
        None,
        error=draw(st.text()),
        error_type=draw(st.none() | st.text(max_size=30)),
        traceback=draw(st.none() | st.text()),
        timestamp=draw(timestamps),
    )


def chunks(codec: Codec) -> st.SearchStrategy[StreamChunk]:
    return st.builds(StreamChunk, id=request_ids, seq=small_ints, data=values_for(codec))


cancels = st.builds(Cancel, id=request_ids)
credits_frames = st.builds(Credit, id=request_ids, credits=small_ints)
shutdowns = st.just(Shutdown())
heartbeats = st.builds(Heartbeat, timestamp=timestamps)
negotiations = st.builds(
    ProtocolNegotiation,
    supported=st.lists(st.text(max_size=10), max_size=4).map(tuple),
    preferred=st.text(max_size=10),
    grace=st.none() | finite_floats,
    max_frame_size=st.none() | st.integers(min_value=0, max_value=2**32 - 1),
)


@st.composite
def selections(draw: st.DrawFn) -> ProtocolSelected:
    features = draw(feature_sets)
    return ProtocolSelected(
        protocol=draw(st.sampled_from(["json", "msgpack"])),
        features=features,
        # Without features the wire carries no max_concurrency: a v0.3 bridge runs one request.
        max_concurrency=draw(st.integers(min_value=1, max_value=2**40)) if features else 1,
        info=draw(json_maps),
    )


def pool_messages(codec: Codec) -> st.SearchStrategy[Any]:
    return requests(codec) | cancels | credits_frames | shutdowns | negotiations


def bridge_messages(codec: Codec) -> st.SearchStrategy[Any]:
    return responses(codec) | chunks(codec) | heartbeats


# --------------------------------------------------------------------------- streams


def frame_stream(payloads: Iterable[bytes]) -> bytes:
    return b"".join(encode_frame(p) for p in payloads)


def split_at(data: bytes, cuts: Iterable[int]) -> Iterator[bytes]:
    """Split ``data`` at the given offsets (repeated offsets give empty chunks)."""
    start = 0
    for cut in sorted(cuts):
        yield data[start:cut]
        start = cut
    yield data[start:]


def cut_points(data: st.DataObject, length: int, label: str = "cuts") -> list[int]:
    return data.draw(st.lists(st.integers(min_value=0, max_value=length), max_size=12), label=label)


def feed_all(decoder: FrameDecoder, pieces: Iterable[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for piece in pieces:
        out.extend(decoder.feed(piece))
    return out
