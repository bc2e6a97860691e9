"""The hot-path shortcuts agree with the general code they bypass, on any input.

* ``ClientConnection.receive_data`` turns a plain successful response into a ``Response``
  without ``parse_bridge_message``: a twin connection whose decoded maps are a dict subclass
  never takes the shortcut, and both must see the same events, errors and state.
* ``FrameDecoder.feed`` slices payloads straight out of a ``bytes`` read when nothing is
  buffered: fed the same stream as ``bytearray`` pieces (the general path), it must agree.
* ``utc_timestamp`` reuses its string while the clock stays in the same millisecond: it must
  always equal the stamp formatted from scratch.
"""

from __future__ import annotations

import math
import time
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from snakepit_trio_bridge.protocol import (
    JSON,
    MSGPACK,
    Codec,
    FrameDecoder,
    ProtocolError,
    constants,
)
from snakepit_trio_bridge.protocol.framing import encode_frame
from snakepit_trio_bridge.protocol.messages import ClientConnection, Response

from . import strategies as S
from .strategies import split_at

# --------------------------------------------------------------------------- connection


class _Map(dict):  # type: ignore[type-arg]
    """A decoded map the fast path does not recognise (it wants exactly ``dict``)."""


def _general(conn: ClientConnection) -> ClientConnection:
    decode = conn.codec.decode

    def decode_as_subclass(payload: bytes) -> Any:
        msg = decode(payload)
        return _Map(msg) if type(msg) is dict else msg

    conn._decode = decode_as_subclass  # type: ignore[method-assign]
    return conn


_absent = object()
# Values both codecs carry, odd ones included (the fast path must hand them all over).
plain_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=6,
)
odd_ids = st.sampled_from([None, True, False, "1", 1.5, [1], _absent])
successes = st.sampled_from([True, True, True, False, 1, 0, None, "true", _absent])
stamps = st.sampled_from(
    ["2026-11-23T18:15:11.123Z", "", None, 5, 1.5, True, ["x"], {"a": 1}, _absent]
)
kinds = st.sampled_from([_absent, _absent, _absent, "chunk", "heartbeat", "bogus", None, 3])


@st.composite
def odd_messages(draw: st.DrawFn, known_ids: st.SearchStrategy[int]) -> Any:
    """A decoded bridge message, often subtly malformed or out of place."""
    shape = draw(st.sampled_from(["response", "response", "response", "chunk", "other"]))
    if shape == "other":
        return draw(st.sampled_from([[], 5, "x", None, {}, {"type": "heartbeat"}]))
    fields: dict[str, Any] = {
        "type": draw(kinds) if shape == "response" else "chunk",
        "id": draw(known_ids | odd_ids),
        "timestamp": draw(stamps),
    }
    if shape == "response":
        fields["success"] = draw(successes)
        fields["result"] = draw(plain_values | st.just(_absent))
        fields["error"] = draw(st.sampled_from([_absent, None, "boom", 7]))
        fields["error_type"] = draw(st.sampled_from([_absent, None, "Cancelled", "ValueError"]))
    else:
        fields["seq"] = draw(st.sampled_from([0, 0, 1, 2, -1, True, "0", _absent]))
        fields["data"] = draw(plain_values)
    return {k: v for k, v in fields.items() if v is not _absent}


def _run(conn: ClientConnection, steps: list[tuple[str, Any]]) -> list[Any]:
    """Apply ``steps`` and record every observable outcome."""
    seen: list[Any] = []
    for op, arg in steps:
        try:
            if op == "start":
                request_id, stream = arg
                conn.start_request(request_id, stream)
                seen.append(("started", request_id))
            elif op == "cancel":
                seen.append(("cancel", conn.send_cancel(arg)))
            elif op == "credit":
                seen.append(("credit", conn.send_credit(arg, 3)))
            elif op == "data":
                seen.append(("events", conn.receive_data(arg)))
            else:
                seen.append(("eof", conn.receive_eof()))
        except ProtocolError as exc:
            seen.append(("protocol error", str(exc), exc.events))
        except ValueError as exc:
            seen.append(("value error", str(exc)))
        seen.append(("in flight", conn.in_flight))
    return seen


def _one_in(draw: st.DrawFn, n: int) -> bool:
    # sampled_from is about uniform; Hypothesis favours small integers from st.integers.
    return draw(st.sampled_from([False] * (n - 1) + [True]))


@st.composite
def good_message(draw: st.DrawFn, live: dict[int, int]) -> Any:
    """What a behaving bridge sends next for a request in flight (updates ``live``)."""
    request_id = draw(st.sampled_from(sorted(live)))
    seq = live[request_id]
    if seq >= 0 and draw(st.booleans()):
        live[request_id] += 1
        return {"type": "chunk", "id": request_id, "seq": seq, "data": draw(plain_values)}
    del live[request_id]
    msg: dict[str, Any] = {"id": request_id, "success": True, "result": draw(plain_values)}
    if _one_in(draw, 5):
        msg = {"id": request_id, "success": False, "error": "boom", "error_type": "Cancelled"}
    stamp = draw(st.sampled_from(["2026-11-23T18:15:11.123Z", "", _absent]) | stamps)
    if stamp is not _absent:
        msg["timestamp"] = stamp
    if _one_in(draw, 6):
        msg["type"] = draw(kinds)  # a response whatever its type, as it has "success"
    return {k: v for k, v in msg.items() if v is not _absent}


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Codec, list[tuple[str, Any]]]:
    """Requests started, cancelled, credited and answered in a random order, mostly by the
    book, with now and then a message out of place or malformed."""
    codec = draw(st.sampled_from([JSON, MSGPACK]))
    steps: list[tuple[str, Any]] = []
    next_id = 0
    live: dict[int, int] = {}  # id -> next chunk seq (-1: not a stream), as the bridge sees it
    for _ in range(draw(st.integers(1, 12))):
        op = draw(st.sampled_from(["start"] * 3 + ["cancel", "credit"] + ["data"] * 3 + ["eof"]))
        known = st.integers(0, next_id + 1)
        if op == "data" and not live and not _one_in(draw, 4):
            op = "start"  # nothing to answer yet: mostly start something instead
        if op == "start":
            if next_id and _one_in(draw, 10):
                request_id = draw(known)  # maybe already in flight: a ValueError
            else:
                request_id, next_id = next_id, next_id + 1
            stream = draw(st.booleans())
            live[request_id] = 0 if stream else -1
            steps.append((op, (request_id, stream)))
        elif op in ("cancel", "credit"):
            steps.append((op, draw(known)))
        elif op == "data":
            messages = []
            for _ in range(draw(st.integers(1, 8))):
                if live and not _one_in(draw, 12):
                    messages.append(draw(good_message(live)))
                else:
                    messages.append(draw(odd_messages(known)))
            payloads = [codec.encode(m) for m in messages]
            if _one_in(draw, 6):
                payloads.append(draw(st.sampled_from([b"", b"\xc1", b"{", b"\x81"])))
            stream = b"".join(encode_frame(p) for p in payloads)
            cuts = draw(st.lists(st.integers(0, len(stream)), max_size=3))
            steps.extend(("data", piece) for piece in split_at(stream, cuts))
        else:
            steps.append((op, None))
            live.clear()
    return codec, steps


@settings(max_examples=500, deadline=None)
@given(scenarios())
def test_the_response_fast_path_agrees_with_the_general_path(
    scenario: tuple[Codec, list[tuple[str, Any]]],
) -> None:
    codec, steps = scenario
    fast = _run(ClientConnection(codec), steps)
    general = _run(_general(ClientConnection(codec)), steps)
    assert fast == general
    for a, b in zip(fast, general, strict=True):  # same classes too, not just equal fields
        if a[0] == "events":
            assert [type(e) for e in a[1]] == [type(e) for e in b[1]]


def test_the_fast_path_is_taken_for_a_plain_success() -> None:
    conn = ClientConnection(MSGPACK)
    conn.start_request(7, False)
    msg = {"id": 7, "success": True, "result": [1], "timestamp": "t"}
    data = encode_frame(MSGPACK.encode(msg))

    def no_general_path(*args: Any) -> Any:
        raise AssertionError("took the general path")

    conn._track = no_general_path  # type: ignore[method-assign]
    assert conn.receive_data(data) == [Response(7, True, [1], timestamp="t")]
    assert conn.in_flight == frozenset()


@pytest.mark.parametrize(
    ("msg", "error"),
    [
        ({"id": 8, "success": True}, "response for request id 8, which is not in flight"),
        ({"id": True, "success": True}, "response frame has an 'id' of type bool"),
        ({"id": "7", "success": True}, "response frame has an 'id' of type str"),
        ({"id": 7, "success": 1}, "response frame has no boolean 'success' field"),
        ({"id": None, "success": True}, "response with a null id while 2 requests are in flight"),
    ],
)
def test_what_the_fast_path_declines_fails_as_before(msg: dict[str, Any], error: str) -> None:
    conn = ClientConnection(MSGPACK)
    conn.start_request(7, False)
    conn.start_request(9, True)
    conn.start_request(11, False)
    good = encode_frame(MSGPACK.encode({"id": 9, "success": True, "result": None}))
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(good + encode_frame(MSGPACK.encode(msg)))
    assert str(info.value) == error
    assert info.value.events == (Response(9, True),)
    assert conn.in_flight == {7, 11}


def test_a_plain_request_being_cancelled_is_tracked() -> None:
    conn = ClientConnection(MSGPACK)
    conn.start_request(1, False)
    assert conn.send_cancel(1)
    assert conn.send_cancel(1) == b""  # once only
    assert conn.is_in_flight(1)
    with pytest.raises(ProtocolError, match="not a stream"):
        conn.receive_data(encode_frame(MSGPACK.encode({"type": "chunk", "id": 1, "seq": 0})))


# --------------------------------------------------------------------------- framing


def _observe(decoder: FrameDecoder, pieces: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for piece in [*pieces, None]:
        try:
            if piece is None:
                decoder.check_eof()
                seen.append("eof ok")
            else:
                seen.append(decoder.feed(piece))
        except ProtocolError as exc:
            seen.append(("error", str(exc), exc.events))
        seen.append((decoder.buffered, decoder.in_frame))
    return seen


@settings(max_examples=300, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=40), max_size=6),
    oversize=st.booleans(),
    data=st.data(),
)
def test_feeding_bytes_agrees_with_feeding_bytearrays(
    payloads: list[bytes], oversize: bool, data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    if oversize:
        stream += (33).to_bytes(4, "big") + b"x" * 33
    pieces = list(split_at(stream, S.cut_points(data, len(stream))))
    fast = _observe(FrameDecoder(32), pieces)
    general = _observe(FrameDecoder(32), [bytearray(p) for p in pieces])
    assert fast == general
    for a in fast:
        if isinstance(a, list):
            assert all(type(frame) is bytes for frame in a)


# --------------------------------------------------------------------------- timestamps


def _stamp_from_scratch(now: float) -> str:
    ms = int(now * 1000)
    second, fraction = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + f".{fraction:03d}Z"


_EPOCH_NOW = 1_796_000_000.0  # late 2026
clock_readings = st.one_of(
    st.floats(_EPOCH_NOW, _EPOCH_NOW + 3.0),
    # Next to millisecond and second boundaries, where a cached stamp would go stale.
    st.builds(
        lambda ms, ulps: (_EPOCH_NOW * 1000 + ms) / 1000 + ulps * 2.4e-7,
        st.integers(0, 3000),
        st.integers(-3, 3),
    ),
    st.floats(0.0, 4e9),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(clock_readings, min_size=1, max_size=30))
def test_utc_timestamp_equals_the_stamp_formatted_from_scratch(readings: list[float]) -> None:
    it = iter(readings)
    with mock.patch("time.time", lambda: next(it)):
        for now in readings:
            assert constants.utc_timestamp() == _stamp_from_scratch(now)


@settings(max_examples=300, deadline=None)
@given(st.integers(2**34 * 1000, 2**39 * 1000))
def test_the_reuse_window_never_outlasts_its_millisecond(ms: int) -> None:
    first = ms / 1000
    last = math.nextafter((ms + 0.999) / 1000, -math.inf)  # the latest reading a window could take
    with mock.patch("time.time", lambda: first):
        constants.utc_timestamp()
    with mock.patch("time.time", lambda: last):
        assert constants.utc_timestamp() == _stamp_from_scratch(last)


def test_utc_timestamp_follows_a_patched_clock() -> None:
    with mock.patch("time.time", return_value=0.0):
        assert constants.utc_timestamp() == "1970-01-01T00:00:00.000Z"


def test_utc_timestamp_follows_the_real_clock() -> None:
    before = _stamp_from_scratch(time.time())
    stamp = constants.utc_timestamp()
    after = _stamp_from_scratch(time.time())
    assert before <= stamp <= after
