"""FrameDecoder and encode_frame: chunking, truncation, size limits, bounded memory."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from snakepit_trio_bridge.protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    FrameDecoder,
    ProtocolError,
    encode_frame,
)

from .strategies import cut_points, feed_all, frame_stream, split_at

payload_lists = st.lists(st.binary(max_size=300), max_size=8)


def boundaries(payloads: list[bytes]) -> list[int]:
    """Offsets in the stream at which a frame ends (0 included: the empty stream)."""
    offsets = [0]
    for payload in payloads:
        offsets.append(offsets[-1] + HEADER_SIZE + len(payload))
    return offsets


# --------------------------------------------------------------------------- encode_frame


@given(st.binary(max_size=2000))
def test_encode_frame_is_big_endian_length_then_payload(payload: bytes) -> None:
    frame = encode_frame(payload)
    assert frame[:HEADER_SIZE] == struct.pack(">I", len(payload))
    assert frame[HEADER_SIZE:] == payload


def test_encode_frame_known_bytes() -> None:
    assert encode_frame(b"") == b"\x00\x00\x00\x00"
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"x" * 258)[:4] == b"\x00\x00\x01\x02"


@given(st.integers(min_value=0, max_value=64), st.integers(min_value=0, max_value=64))
def test_encode_frame_enforces_the_limit(size: int, limit: int) -> None:
    payload = b"p" * size
    if size > limit:
        with pytest.raises(ProtocolError):
            encode_frame(payload, limit)
    else:
        assert encode_frame(payload, limit) == struct.pack(">I", size) + payload


# --------------------------------------------------------------------------- chunking


@given(payload_lists, st.data())
def test_any_chunking_yields_the_same_payloads(payloads: list[bytes], data: st.DataObject) -> None:
    stream = frame_stream(payloads)
    pieces = list(split_at(stream, cut_points(data, len(stream))))
    decoder = FrameDecoder()
    assert feed_all(decoder, pieces) == payloads
    assert decoder.buffered == 0
    assert not decoder.in_frame
    decoder.check_eof()


@given(payload_lists)
@settings(max_examples=50)
def test_one_byte_chunks_yield_the_same_payloads(payloads: list[bytes]) -> None:
    stream = frame_stream(payloads)
    decoder = FrameDecoder()
    out: list[bytes] = []
    for i in range(len(stream)):
        out.extend(decoder.feed(stream[i : i + 1]))
        out.extend(decoder.feed(b""))
    assert out == payloads
    decoder.check_eof()


@given(payload_lists, st.data())
def test_payloads_come_out_as_soon_as_their_last_byte_arrives(
    payloads: list[bytes], data: st.DataObject
) -> None:
    stream = frame_stream(payloads)
    ends = boundaries(payloads)
    decoder = FrameDecoder()
    fed = 0
    received = 0
    for piece in split_at(stream, cut_points(data, len(stream))):
        received += len(decoder.feed(piece))
        fed += len(piece)
        # Exactly the frames that end within what was fed so far are out.
        assert received == sum(1 for end in ends[1:] if end <= fed)


@given(payload_lists)
def test_feed_accepts_bytearray_and_memoryview(payloads: list[bytes]) -> None:
    stream = frame_stream(payloads)
    half = len(stream) // 2
    decoder = FrameDecoder()
    out = decoder.feed(bytearray(stream[:half])) + decoder.feed(memoryview(stream)[half:])
    assert out == payloads
    assert all(type(p) is bytes for p in out)


def test_returned_payloads_do_not_alias_the_decoder_buffer() -> None:
    decoder = FrameDecoder()
    (first,) = decoder.feed(encode_frame(b"abc") + b"\x00\x00")
    decoder.feed(b"\x00\x03xyz")
    assert first == b"abc"


# --------------------------------------------------------------------------- truncation


@given(st.lists(st.binary(max_size=40), max_size=5), st.data())
@settings(max_examples=60)
def test_every_proper_prefix_is_truncated_unless_it_ends_at_a_frame_boundary(
    payloads: list[bytes], data: st.DataObject
) -> None:
    stream = frame_stream(payloads)
    ends = boundaries(payloads)
    for cut in range(len(stream)):
        prefix = stream[:cut]
        decoder = FrameDecoder()
        pieces = split_at(prefix, cut_points(data, len(prefix), label=f"cuts of {cut}"))
        got = feed_all(decoder, pieces)
        assert got == payloads[: sum(1 for end in ends[1:] if end <= cut)]
        if cut in ends:
            assert not decoder.in_frame
            decoder.check_eof()
        else:
            assert decoder.in_frame
            with pytest.raises(ProtocolError, match="inside a frame"):
                decoder.check_eof()


@pytest.mark.parametrize("size", [1, 5, 1000])
def test_stream_ending_right_after_a_complete_header_is_truncated(size: int) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(struct.pack(">I", size)) == []
    assert decoder.in_frame
    with pytest.raises(ProtocolError, match=f"0 of {size} body bytes"):
        decoder.check_eof()


def test_truncation_message_counts_body_and_header_bytes() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x00\x00\x00\x05ab")
    with pytest.raises(ProtocolError, match="2 of 5 body bytes"):
        decoder.check_eof()
    decoder = FrameDecoder()
    decoder.feed(b"\x00\x00")
    with pytest.raises(ProtocolError, match="2 of 4 header bytes"):
        decoder.check_eof()


def test_empty_payload_frames_complete_without_a_body() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\x00\x00\x00\x00" * 3) == [b"", b"", b""]
    decoder.check_eof()


# --------------------------------------------------------------------------- size limit


@given(
    st.integers(min_value=0, max_value=1000),
    st.integers(min_value=1, max_value=2**32 - 1),
    payload_lists,
    st.data(),
)
def test_oversize_header_fails_before_any_body_byte(
    limit: int, excess: int, before: list[bytes], data: st.DataObject
) -> None:
    size = min(limit + excess, 2**32 - 1)
    before = [p for p in before if len(p) <= limit]
    good = frame_stream(before)
    header = struct.pack(">I", size)
    decoder = FrameDecoder(max_frame_size=limit)
    assert feed_all(decoder, split_at(good, cut_points(data, len(good)))) == before
    split = data.draw(st.integers(min_value=0, max_value=HEADER_SIZE - 1), label="header split")
    assert decoder.feed(header[:split]) == []
    with pytest.raises(ProtocolError, match="over the limit"):
        decoder.feed(header[split:])
    # Broken for good: nothing fed later is trusted, and end of stream reports the error.
    assert decoder.buffered == 0
    with pytest.raises(ProtocolError, match="over the limit"):
        decoder.feed(b"")
    with pytest.raises(ProtocolError, match="over the limit"):
        decoder.feed(encode_frame(b"ok"))
    with pytest.raises(ProtocolError, match="over the limit"):
        decoder.check_eof()


@given(st.integers(min_value=0, max_value=300))
def test_frame_of_exactly_the_limit_passes_and_one_more_byte_fails(limit: int) -> None:
    decoder = FrameDecoder(max_frame_size=limit)
    assert decoder.feed(encode_frame(b"a" * limit)) == [b"a" * limit]
    with pytest.raises(ProtocolError):
        decoder.feed(struct.pack(">I", limit + 1))


def test_default_limit_is_64_mib_and_checked_from_the_header_alone() -> None:
    assert DEFAULT_MAX_FRAME_SIZE == 64 * 1024 * 1024
    decoder = FrameDecoder()
    assert decoder.max_frame_size == DEFAULT_MAX_FRAME_SIZE
    decoder.feed(struct.pack(">I", DEFAULT_MAX_FRAME_SIZE))  # allowed: waits for the body
    assert decoder.in_frame
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(struct.pack(">I", DEFAULT_MAX_FRAME_SIZE + 1))
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(b"\xff\xff\xff\xff")


@pytest.mark.parametrize("limit", [-1, 2**32])
def test_decoder_rejects_an_impossible_limit(limit: int) -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_size=limit)


@given(
    st.integers(min_value=0, max_value=64),
    st.lists(st.binary(max_size=100), max_size=20),
)
def test_garbage_never_makes_the_decoder_hold_more_than_one_frame(
    limit: int, pieces: list[bytes]
) -> None:
    decoder = FrameDecoder(max_frame_size=limit)
    for piece in pieces:
        try:
            payloads = decoder.feed(piece)
        except ProtocolError:
            assert decoder.buffered == 0
            with pytest.raises(ProtocolError):
                decoder.feed(b"")
            return
        assert all(len(p) <= limit for p in payloads)
        assert decoder.buffered <= limit + HEADER_SIZE


def test_an_oversize_header_keeps_the_frames_completed_before_it() -> None:
    decoder = FrameDecoder(max_frame_size=16)
    data = encode_frame(b"ok") + (1000).to_bytes(4, "big")
    with pytest.raises(ProtocolError, match="over the limit") as info:
        decoder.feed(data)
    assert info.value.events == (b"ok",)
    with pytest.raises(ProtocolError) as again:
        decoder.feed(b"")
    assert again.value.events == ()
