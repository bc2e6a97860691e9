"""ClientConnection, the pool's side of one worker connection: examples and a state machine."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from snakepit_trio_bridge.protocol import JSON, Codec, ProtocolError, encode_frame
from snakepit_trio_bridge.protocol.constants import CANCELLED_ERROR_TYPE
from snakepit_trio_bridge.protocol.messages import (
    Cancel,
    ClientConnection,
    Credit,
    Heartbeat,
    Request,
    Response,
    Shutdown,
    StreamChunk,
    parse_pool_message,
)

from . import strategies as S
from .strategies import CODEC_LIST, split_at

codec_params = pytest.mark.parametrize("codec", CODEC_LIST, ids=lambda c: c.name)
TS = "2026-11-23T18:15:11.123Z"


def frame(codec: Codec, message: Any) -> bytes:
    return encode_frame(codec.encode(message.to_wire()))


def sent(codec: Codec, data: bytes) -> Any:
    """Parse a frame the connection produced."""
    assert data[:4] == len(data[4:]).to_bytes(4, "big")
    return parse_pool_message(codec.decode(data[4:]))


# --------------------------------------------------------------------------- outgoing


@codec_params
def test_send_request_registers_it_and_returns_its_frame(codec: Codec) -> None:
    conn = ClientConnection(codec)
    request = Request(1, "ping", {"x": b"\x00"}, TS)
    data = conn.send_request(request)
    assert sent(codec, data) == request
    assert conn.in_flight == {1}
    assert conn.is_in_flight(1)
    assert not conn.is_in_flight(2)


def test_send_request_uses_a_pre_encoded_frame_as_given() -> None:
    conn = ClientConnection(JSON)
    assert conn.send_request(Request(1, "x"), frame=b"pre-encoded") == b"pre-encoded"
    assert conn.in_flight == {1}


def test_start_request_registers_without_encoding() -> None:
    conn = ClientConnection(JSON)
    conn.start_request(5, stream=True)
    assert conn.in_flight == {5}
    (chunk,) = conn.receive_data(frame(JSON, StreamChunk(5, 0, "a")))
    assert chunk == StreamChunk(5, 0, "a")


def test_an_id_in_flight_cannot_be_sent_again() -> None:
    conn = ClientConnection(JSON)
    conn.send_request(Request(1, "x"))
    with pytest.raises(ValueError):
        conn.send_request(Request(1, "y"))
    with pytest.raises(ValueError):
        conn.start_request(1, stream=False)
    # Once answered, the id is free again (the pool never reuses one, but may).
    conn.receive_data(frame(JSON, Response(1, True, timestamp=TS)))
    conn.send_request(Request(1, "z"))


def test_encode_leaves_state_alone_and_oversize_requests_are_not_registered() -> None:
    conn = ClientConnection(JSON, max_frame_size=100)
    assert conn.encode(Request(1, "x", {}, TS)) == frame(JSON, Request(1, "x", {}, TS))
    assert conn.in_flight == frozenset()
    with pytest.raises(ProtocolError):
        conn.send_request(Request(2, "x", {"big": "a" * 100}, TS))
    assert conn.in_flight == frozenset()
    conn.send_request(Request(3, "x", {}, TS))  # a refused send does not break the connection


@codec_params
def test_cancel_is_sent_once_and_only_for_a_request_in_flight(codec: Codec) -> None:
    conn = ClientConnection(codec)
    assert conn.send_cancel(1) == b""
    conn.send_request(Request(1, "x"))
    assert sent(codec, conn.send_cancel(1)) == Cancel(1)
    assert conn.send_cancel(1) == b""
    assert conn.in_flight == {1}  # still waiting for its confirmation
    conn.receive_data(frame(codec, Response(1, False, error="c", error_type=CANCELLED_ERROR_TYPE)))
    assert conn.send_cancel(1) == b""


@codec_params
def test_credit_and_shutdown_frames(codec: Codec) -> None:
    conn = ClientConnection(codec)
    assert conn.send_credit(1, 8) == b""
    conn.send_request(Request(1, "s", stream=True))
    assert sent(codec, conn.send_credit(1, 8)) == Credit(1, 8)
    assert sent(codec, conn.send_shutdown()) == Shutdown()


# --------------------------------------------------------------------------- incoming


@codec_params
def test_responses_are_routed_by_id_in_any_order(codec: Codec) -> None:
    conn = ClientConnection(codec)
    for i in (1, 2, 3):
        conn.send_request(Request(i, "x"))
    data = b"".join(frame(codec, Response(i, True, i * 10, timestamp=TS)) for i in (3, 1, 2))
    assert [(e.id, e.result) for e in conn.receive_data(data)] == [(3, 30), (1, 10), (2, 20)]
    assert conn.in_flight == frozenset()


def test_null_id_response_goes_to_the_single_request_in_flight() -> None:
    conn = ClientConnection(JSON)
    conn.send_request(Request(41, "x"))
    (event,) = conn.receive_data(
        frame(JSON, Response(None, False, error="bad request", timestamp=TS))
    )
    assert event == Response(41, False, error="bad request", timestamp=TS)
    assert conn.in_flight == frozenset()


@pytest.mark.parametrize("count", [0, 2, 3])
def test_null_id_response_is_a_protocol_error_unless_exactly_one_is_in_flight(count: int) -> None:
    conn = ClientConnection(JSON)
    for i in range(count):
        conn.send_request(Request(i, "x"))
    with pytest.raises(ProtocolError, match="null id"):
        conn.receive_data(frame(JSON, Response(None, False, error="?", timestamp=TS)))


@pytest.mark.parametrize(
    "bad",
    [
        Response(9, True, timestamp=TS),
        StreamChunk(9, 0, None),
        StreamChunk(1, 0, None),  # request 1 did not ask for a stream
        StreamChunk(2, 1, None),  # stream 2 expects seq 0
        StreamChunk(2, -1, None),
    ],
    ids=[
        "response-unknown-id",
        "chunk-unknown-id",
        "chunk-not-a-stream",
        "chunk-skips",
        "chunk-negative",
    ],
)
def test_frames_that_break_the_promises_are_protocol_errors(bad: Any) -> None:
    conn = ClientConnection(JSON)
    conn.send_request(Request(1, "x"))
    conn.send_request(Request(2, "s", stream=True))
    with pytest.raises(ProtocolError):
        conn.receive_data(frame(JSON, bad))


def test_a_second_response_is_a_protocol_error_and_the_connection_stays_broken() -> None:
    conn = ClientConnection(JSON)
    conn.send_request(Request(1, "x"))
    conn.send_request(Request(2, "x"))
    conn.receive_data(frame(JSON, Response(1, True, timestamp=TS)))
    with pytest.raises(ProtocolError, match="not in flight") as info:
        conn.receive_data(frame(JSON, Response(1, True, timestamp=TS)))
    for action in (
        lambda: conn.receive_data(b""),
        lambda: conn.receive_data(frame(JSON, Response(2, True, timestamp=TS))),
        lambda: conn.send_request(Request(3, "x")),
        lambda: conn.start_request(4, stream=False),
    ):
        with pytest.raises(ProtocolError) as again:
            action()
        assert str(again.value) == str(info.value)
        assert again.value.events == ()


def test_a_chunk_after_the_final_response_is_a_protocol_error() -> None:
    conn = ClientConnection(JSON)
    conn.send_request(Request(1, "s", stream=True))
    events = conn.receive_data(
        frame(JSON, StreamChunk(1, 0, "a")) + frame(JSON, Response(1, True, timestamp=TS))
    )
    assert [type(e) for e in events] == [StreamChunk, Response]
    with pytest.raises(ProtocolError):
        conn.receive_data(frame(JSON, StreamChunk(1, 1, "b")))


def test_an_error_in_a_batch_delivers_the_events_before_it() -> None:
    # The events completed before the bad frame ride on the exception: those requests were
    # answered; only the others stay in flight and fail with the error.
    conn = ClientConnection(JSON)
    for i in (1, 2, 3):
        conn.send_request(Request(i, "s", stream=i == 3))
    data = (
        frame(JSON, Response(1, True, timestamp=TS))
        + frame(JSON, StreamChunk(3, 0, "a"))
        + frame(JSON, Response(None, True, timestamp=TS))  # two in flight: not attributable
        + frame(JSON, Response(2, True, timestamp=TS))
    )
    with pytest.raises(ProtocolError, match="null id") as info:
        conn.receive_data(data)
    assert info.value.events == (Response(1, True, timestamp=TS), StreamChunk(3, 0, "a"))
    assert conn.in_flight == {2, 3}
    assert sorted(conn.receive_eof()) == [2, 3]


def test_heartbeats_pass_through_and_change_nothing() -> None:
    conn = ClientConnection(JSON)
    conn.send_request(Request(1, "x"))
    assert conn.receive_data(frame(JSON, Heartbeat(TS))) == [Heartbeat(TS)]
    assert conn.in_flight == {1}


def test_incoming_frames_respect_the_connection_limit() -> None:
    conn = ClientConnection(JSON, max_frame_size=16)
    conn.start_request(1, stream=False)
    with pytest.raises(ProtocolError, match="over the limit"):
        conn.receive_data(b"\x00\x00\x00\x11")


def test_receive_eof_returns_the_ids_still_in_flight() -> None:
    conn = ClientConnection(JSON)
    for i in (4, 2, 9):
        conn.send_request(Request(i, "x"))
    conn.receive_data(frame(JSON, Response(2, True, timestamp=TS)))
    assert sorted(conn.receive_eof()) == [4, 9]
    assert conn.in_flight == frozenset()
    assert conn.receive_eof() == []


@pytest.mark.parametrize("cut", [1, 4, 6])
def test_eof_inside_a_frame_is_a_protocol_error_that_keeps_the_lost_ids(cut: int) -> None:
    conn = ClientConnection(JSON)
    conn.send_request(Request(1, "x"))
    conn.send_request(Request(2, "x"))
    conn.receive_data(frame(JSON, Response(2, True, timestamp=TS))[:cut])
    with pytest.raises(ProtocolError, match="inside a frame"):
        conn.receive_eof()
    # The caller learns which requests will never be answered from in_flight.
    assert conn.in_flight == {1, 2}
    with pytest.raises(ProtocolError):
        conn.receive_data(b"")


# --------------------------------------------------------------------------- state machine


# Payloads stay small here: the machine is about routing; test_messages covers rich values.
light_values = (
    st.none() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8) | st.binary(max_size=8)
)
light_maps = st.dictionaries(st.text(max_size=4), light_values, max_size=3)

BAD = object()  # marks, in the model's queue, the frame that must break the connection


class ConnectionMachine(RuleBasedStateMachine):
    """The pool's ClientConnection against a model bridge that may misbehave.

    The model bridge queues the frames it writes; ``deliver`` feeds a prefix of them to the
    connection in random chunks and checks that each ``receive_data`` call returns exactly the
    frames it completed, in order, routed to the right id. A misbehaving frame is queued
    behind whatever is pending and everything is delivered: the call that completes it must
    raise ProtocolError carrying the frames completed before the bad one (``events``), leaving
    in flight every request whose answer it did not deliver. The machine then fails those requests and starts a new connection.
    """

    def __init__(self) -> None:
        super().__init__()
        self.next_id = 1
        # id -> outcomes seen ("response", "broken" or "lost"); each request gets exactly one.
        self.outcomes: dict[int, list[str]] = {}
        self.chunks_seen: dict[int, list[Any]] = {}
        self.responded: set[int] = set()  # ids the bridge has sent a response for
        self.connections = 0

    @initialize(codec=S.codecs)
    def start(self, codec: Codec) -> None:
        self.codec = codec
        self.new_connection()

    def new_connection(self) -> None:
        self.connections += 1
        self.conn = ClientConnection(self.codec)
        self.in_flight: dict[int, bool] = {}  # id -> stream?, as the connection should see it
        self.cancelling: set[int] = set()
        self.open: dict[int, int] = {}  # ids the bridge has not answered yet -> next chunk seq
        self.pending = bytearray()  # bytes the bridge wrote that the pool has not read
        self.expected: list[tuple[int, Any]] = []  # (end offset in pending, event or BAD)
        self.head_start = 0  # where the first unread frame starts (< 0: partly read already)

    # -- helpers
    def emit(self, message: Any, event: Any) -> None:
        self.pending += frame(self.codec, message)
        self.expected.append((len(self.pending), event))

    def finish(self, request_id: int, outcome: str) -> None:
        self.outcomes[request_id].append(outcome)

    def apply(self, event: Any) -> None:
        if isinstance(event, Response):
            del self.in_flight[event.id]
            self.cancelling.discard(event.id)
            self.finish(event.id, "response")
        elif isinstance(event, StreamChunk):
            assert event.seq == len(self.chunks_seen[event.id])
            self.chunks_seen[event.id].append(event.data)

    def deliver_bytes(self, count: int, cuts: list[int]) -> bool:
        """Feed the first ``count`` pending bytes, cut at ``cuts``. True if it broke."""
        data = bytes(self.pending[:count])
        del self.pending[:count]
        offset = 0
        for piece in split_at(data, [c % (len(data) + 1) for c in cuts]):
            offset += len(piece)
            done = []
            while self.expected and self.expected[0][0] <= offset:
                self.head_start, event = self.expected.pop(0)
                done.append(event)
            if BAD in done:
                self.check_broken(piece, done[: done.index(BAD)])
                return True
            assert self.conn.receive_data(piece) == done
            for event in done:
                self.apply(event)
        self.expected = [(end - count, event) for end, event in self.expected]
        self.head_start -= count
        return False

    def flush(self, cuts: list[int] = ()) -> bool:
        return self.deliver_bytes(len(self.pending), list(cuts))

    def check_broken(self, piece: bytes, before: list[Any]) -> None:
        with pytest.raises(ProtocolError) as info:
            self.conn.receive_data(piece)
        # What that call completed before the bad frame rides on the exception.
        assert list(info.value.events) == before
        for event in before:
            self.apply(event)
        assert self.conn.in_flight == set(self.in_flight)
        with pytest.raises(ProtocolError) as again:
            self.conn.receive_data(b"")
        assert str(again.value) == str(info.value)
        assert again.value.events == ()
        with pytest.raises(ProtocolError):
            self.conn.send_request(Request(self.next_id, "after-break"))
        for request_id in self.in_flight:
            self.finish(request_id, "broken")
        self.new_connection()

    def misbehave(self, bad: bytes, cuts: list[int]) -> None:
        self.pending += bad
        self.expected.append((len(self.pending), BAD))
        assert self.flush(cuts), "the bad frame was accepted"

    # -- the pool
    @rule(data=st.data(), count=st.integers(1, 3))
    def send_requests(self, data: st.DataObject, count: int) -> None:
        for _ in range(count):
            request_id = self.next_id + data.draw(st.integers(0, 3), label="id gap")
            self.next_id = request_id + 1
            stream = data.draw(st.booleans(), label="stream")
            args = data.draw(light_maps, label="args")
            request = Request(
                request_id, "cmd", args, TS, stream=stream, credits=4 if stream else None
            )
            out = self.conn.send_request(request)
            assert parse_pool_message(self.codec.decode(out[4:])) == request
            self.in_flight[request_id] = stream
            self.open[request_id] = 0
            self.outcomes[request_id] = []
            self.chunks_seen[request_id] = []

    @precondition(lambda self: self.outcomes)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        candidates = [*sorted(self.outcomes), self.next_id + 100]
        request_id = data.draw(st.sampled_from(candidates), label="cancel id")
        out = self.conn.send_cancel(request_id)
        if request_id in self.in_flight and request_id not in self.cancelling:
            assert parse_pool_message(self.codec.decode(out[4:])) == Cancel(request_id)
            self.cancelling.add(request_id)
        else:
            assert out == b""

    @precondition(lambda self: self.outcomes)
    @rule(data=st.data(), credits=st.integers(1, 64))
    def credit(self, data: st.DataObject, credits: int) -> None:
        candidates = [*sorted(self.outcomes), self.next_id + 100]
        request_id = data.draw(st.sampled_from(candidates), label="credit id")
        out = self.conn.send_credit(request_id, credits)
        if request_id in self.in_flight:
            assert parse_pool_message(self.codec.decode(out[4:])) == Credit(request_id, credits)
        else:
            assert out == b""

    # -- the bridge, behaving
    @precondition(lambda self: any(self.in_flight[i] for i in self.open))
    @rule(data=st.data(), count=st.integers(1, 5))
    def bridge_sends_chunks(self, data: st.DataObject, count: int) -> None:
        # Several streams' chunks, interleaved at random.
        streams = sorted(i for i in self.open if self.in_flight[i])
        for _ in range(count):
            request_id = data.draw(st.sampled_from(streams), label="chunk id")
            seq = self.open[request_id]
            self.open[request_id] = seq + 1
            chunk = StreamChunk(request_id, seq, data.draw(light_values, label="value"))
            self.emit(chunk, chunk)

    @precondition(lambda self: self.open)
    @rule(data=st.data(), kind=st.sampled_from(["success", "failure", "cancelled"]))
    def bridge_sends_response(self, data: st.DataObject, kind: str) -> None:
        value = data.draw(light_values, label="value")
        request_id = data.draw(st.sampled_from(sorted(self.open)), label="response id")
        del self.open[request_id]
        self.responded.add(request_id)
        if kind == "success":
            response = Response(request_id, True, value, timestamp=TS)
        elif kind == "failure":
            response = Response(
                request_id,
                False,
                error="boom",
                error_type="ValueError",
                traceback="tb",
                timestamp=TS,
            )
        else:
            response = Response(
                request_id, False, error="cancelled", error_type=CANCELLED_ERROR_TYPE, timestamp=TS
            )
        self.emit(response, response)

    @precondition(lambda self: len(self.open) == 1)
    @rule(cuts=st.lists(st.integers(0, 1000), max_size=6))
    def bridge_sends_null_id_response_for_the_only_request(self, cuts: list[int]) -> None:
        # Every other request in flight has its answer queued before this one, so when it
        # arrives exactly one is in flight. Delivered at once: a new request would race it.
        ((request_id, _),) = self.open.items()
        del self.open[request_id]
        self.responded.add(request_id)
        self.emit(
            Response(None, False, error="could not parse", timestamp=TS),
            Response(request_id, False, error="could not parse", timestamp=TS),
        )
        assert not self.flush(cuts)

    @precondition(lambda self: self.in_flight)
    @rule(timestamp=S.timestamps)
    def bridge_sends_heartbeat(self, timestamp: str) -> None:
        beat = Heartbeat(timestamp)
        self.emit(beat, beat)

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        count = data.draw(st.integers(0, len(self.pending)), label="bytes read")
        cuts = data.draw(st.lists(st.integers(0, max(count, 1)), max_size=6), label="cuts")
        assert not self.deliver_bytes(count, cuts)

    # -- the bridge, misbehaving (one rule, so that breaking does not crowd out the rest)
    @precondition(lambda self: self.in_flight)
    @rule(data=st.data(), cuts=st.lists(st.integers(0, 1000), max_size=6))
    def bridge_misbehaves(self, data: st.DataObject, cuts: list[int]) -> None:
        # Each frame is bad given everything queued before it, whatever has been read yet.
        kinds = ["id never sent", "payload that is not a message"]
        if self.responded:
            kinds += ["answered twice", "chunk after the response"]
        if self.open:
            kinds.append("chunk out of sequence")
        if len(self.open) != 1:
            kinds.append("null id with other than one in flight")
        kind = data.draw(st.sampled_from(kinds), label="misbehaviour")
        if kind == "payload that is not a message":
            payload = data.draw(st.sampled_from([b"", b"\xc1", b"[]", b"\x90", b"\xa1x", b"{}"]))
            self.misbehave(encode_frame(payload), cuts)
            return
        if kind == "id never sent":
            request_id = self.next_id + data.draw(st.integers(0, 1000), label="offset")
            bad: Any = Response(request_id, True, timestamp=TS)
        elif kind == "answered twice":
            request_id = data.draw(st.sampled_from(sorted(self.responded)), label="answered id")
            bad = Response(request_id, False, error="again", timestamp=TS)
        elif kind == "chunk after the response":
            request_id = data.draw(st.sampled_from(sorted(self.responded)), label="answered id")
            bad = StreamChunk(request_id, 0, None)
        elif kind == "chunk out of sequence":
            request_id = data.draw(st.sampled_from(sorted(self.open)), label="chunk id")
            skew = data.draw(st.sampled_from([-1, 1, 2, 1000]), label="skew")
            # For a stream, a seq other than the next one; for a unary request, any chunk.
            seq = self.open[request_id] + skew if self.in_flight[request_id] else 0
            bad = StreamChunk(request_id, seq, None)
        else:
            bad = Response(None, False, error="?", timestamp=TS)
        self.misbehave(frame(self.codec, bad), cuts)

    # -- end of stream
    @precondition(lambda self: self.in_flight or self.pending)
    @rule(data=st.data())
    def bridge_closes_stdout(self, data: st.DataObject) -> None:
        # The pool reads all the bridge wrote, or all but the tail of a torn last frame.
        if self.pending and data.draw(st.booleans(), label="torn"):
            last_start = self.expected[-2][0] if len(self.expected) > 1 else self.head_start
            keep = data.draw(
                st.integers(max(last_start + 1, 0), len(self.pending) - 1), label="keep"
            )
            assert not self.deliver_bytes(keep, [])
            with pytest.raises(ProtocolError, match="inside a frame"):
                self.conn.receive_eof()
            # The ids that will never be answered are still there to read.
            assert self.conn.in_flight == set(self.in_flight)
            lost = list(self.in_flight)
        else:
            assert not self.flush()
            lost = self.conn.receive_eof()
            assert sorted(lost) == sorted(self.in_flight)
            assert len(lost) == len(set(lost))
        for request_id in lost:
            self.finish(request_id, "lost")
        self.new_connection()

    # -- invariants
    @invariant()
    def in_flight_matches_the_model(self) -> None:
        assert self.conn.in_flight == set(self.in_flight)
        for request_id in self.in_flight:
            assert self.conn.is_in_flight(request_id)

    @invariant()
    def each_finished_request_has_exactly_one_outcome(self) -> None:
        for request_id, seen in self.outcomes.items():
            assert len(seen) == (0 if request_id in self.in_flight else 1), (request_id, seen)


ConnectionMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None
)
TestConnectionMachine = ConnectionMachine.TestCase


def test_an_oversize_header_delivers_the_answers_before_it() -> None:
    conn = ClientConnection(JSON, max_frame_size=1024)
    conn.send_request(Request(1, "x"))
    conn.send_request(Request(2, "x"))
    data = frame(JSON, Response(1, True, timestamp=TS)) + (1 << 20).to_bytes(4, "big")
    with pytest.raises(ProtocolError, match="over the limit") as info:
        conn.receive_data(data)
    assert info.value.events == (Response(1, True, timestamp=TS),)
    assert conn.in_flight == {2}
