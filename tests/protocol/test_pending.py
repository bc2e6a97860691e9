"""Big frames decoded off the event loop: ``receive_data(data, defer_over=n)`` hands a
payload over ``n`` bytes back as a ``PendingFrame``; ``PendingFrame.decode`` runs in a thread
and ``ClientConnection.resume`` tracks it and goes on with the frames behind it. The events,
their order and the errors are the ones inline decoding gives (issue 14, defect 12)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from snakepit_trio_bridge.protocol import (
    JSON,
    MSGPACK,
    Codec,
    ProtocolError,
    encode_frame,
    get_codec,
)
from snakepit_trio_bridge.protocol.messages import (
    ClientConnection,
    PendingFrame,
    Response,
    StreamChunk,
)

from .strategies import split_at
from .test_fast_paths import odd_messages

MAX_FRAME = 4096
LIMIT = 40  # max_containers of the connections here
TS = "2026-11-23T18:15:11.123Z"


def connection(codec: Codec) -> ClientConnection:
    return ClientConnection(get_codec(codec.name, LIMIT), MAX_FRAME)


def frame(codec: Codec, message: Any) -> bytes:
    return encode_frame(codec.encode(message))


def feed(conn: ClientConnection, data: bytes, defer_over: int | None) -> tuple[list[Any], Any]:
    """What the host sees for one read: every event, in order, whether a call returned it
    or an error carried it (``ProtocolError.events``); then the error's message, if any."""
    seen: list[Any] = []
    try:
        if defer_over is None:
            events: list[Any] = conn.receive_data(data)
        else:
            events = conn.receive_data(data, defer_over)
        while events and type(events[-1]) is PendingFrame:
            *done, pending = events
            event("a frame was deferred")
            seen.extend(done)
            pending.decode()
            events = conn.resume(pending)
        seen.extend(events)
    except ProtocolError as exc:
        event(f"error ({'after' if seen else 'with no'} events returned first)")
        return [*seen, *exc.events], str(exc)
    return seen, None


# Payloads that must break the connection, whatever the path that decodes them.
hostile = st.sampled_from(
    [
        ("json", b"[" * 3000),
        ("json", b"[" + b"[]," * 100 + b"[]]"),  # over LIMIT containers
        ("json", b'{"id": 1, "success": true, "result": ' + b"{}," * 60 + b"}"),
        ("json", b"\xff\xfe"),
        ("msgpack", b"\x91" * 1100 + b"\xc0"),
        ("msgpack", b"\xdc\x00\x64" + b"\x90" * 100),  # over LIMIT containers
        ("msgpack", b"\xc1"),
        ("msgpack", b"\x81\xa1x"),
    ]
)


@st.composite
def reads(draw: st.DrawFn) -> tuple[Codec, list[tuple[str, Any]]]:
    """Requests started, answered (often with big results), cancelled and read in random
    pieces; now and then a frame out of place, a hostile payload or an oversize header."""
    codec = draw(st.sampled_from([JSON, MSGPACK]))
    steps: list[tuple[str, Any]] = []
    next_id = 0
    live: dict[int, int] = {}  # id -> next chunk seq, or -1 for a plain request
    for _ in range(draw(st.integers(1, 10))):
        op = draw(st.sampled_from(["start", "start", "cancel", "data", "data", "data"]))
        if op == "start" or (op == "data" and not live):
            stream = draw(st.booleans())
            live[next_id] = 0 if stream else -1
            steps.append(("start", (next_id, stream)))
            next_id += 1
            continue
        if op == "cancel":
            steps.append(("cancel", draw(st.integers(0, next_id))))
            continue
        payloads = []
        for _ in range(draw(st.integers(1, 6))):
            kind = draw(st.sampled_from(["good"] * 12 + ["odd", "hostile"]))
            if kind == "hostile":
                name, payload = draw(hostile)
                if name == codec.name:
                    payloads.append(payload)
                continue
            if kind == "odd" or not live:
                message = draw(odd_messages(st.integers(0, next_id + 1)))
            else:
                request_id = draw(st.sampled_from(sorted(live)))
                big = draw(st.sampled_from([0, 0, 3, 25]))
                result = [{"n": i, "s": "x" * i} for i in range(big)]
                if live[request_id] >= 0 and draw(st.booleans()):
                    message = {"type": "chunk", "id": request_id, "seq": live[request_id]}
                    message["data"] = result
                    live[request_id] += 1
                else:
                    message = {"id": request_id, "success": True, "result": result}
                    del live[request_id]
            payloads.append(codec.encode(message))
        stream = b"".join(encode_frame(p) for p in payloads)
        if draw(st.sampled_from([False] * 7 + [True])):
            stream += (MAX_FRAME + 1).to_bytes(4, "big") + b"x"
        cuts = draw(st.lists(st.integers(0, len(stream)), max_size=4))
        steps.extend(("data", piece) for piece in split_at(stream, cuts))
    return codec, steps


def run(codec: Codec, steps: list[tuple[str, Any]], defer_over: int | None) -> list[Any]:
    conn = connection(codec)
    seen: list[Any] = []
    for op, arg in steps:
        try:
            if op == "start":
                conn.start_request(*arg)
                seen.append(("started", arg[0]))
            elif op == "cancel":
                seen.append(("cancel", conn.send_cancel(arg)))
            else:
                seen.append(("read", feed(conn, arg, defer_over)))
        except ProtocolError as exc:
            seen.append(("broken", str(exc)))
        seen.append(("in flight", conn.in_flight))
    try:
        seen.append(("eof", sorted(conn.receive_eof())))
    except ProtocolError as exc:
        seen.append(("eof", str(exc)))
    return seen


@settings(max_examples=400, deadline=None)
@given(scenario=reads(), defer_over=st.sampled_from([0, 1, 30, 200, 1000]))
def test_deferred_decoding_gives_what_inline_decoding_gives(
    scenario: tuple[Codec, list[tuple[str, Any]]], defer_over: int
) -> None:
    codec, steps = scenario
    assert run(codec, steps, defer_over) == run(codec, steps, None)


# --------------------------------------------------------------------------- examples


def test_a_big_frame_comes_back_pending_and_the_frames_behind_it_wait() -> None:
    conn = ClientConnection(MSGPACK)
    for i in (1, 2, 3):
        conn.start_request(i, stream=False)
    big = frame(MSGPACK, {"id": 2, "success": True, "result": ["x"] * 5000})
    small = [frame(MSGPACK, {"id": i, "success": True, "result": i}) for i in (1, 3)]
    events = conn.receive_data(small[0] + big + small[1], defer_over=1000)
    assert events[0] == Response(1, True, 1)
    pending = events[1]
    assert isinstance(pending, PendingFrame)
    assert pending.size == len(big) - 4
    assert len(events) == 2
    assert conn.in_flight == {2, 3}  # answered, but not yet decoded
    with pytest.raises(RuntimeError, match="resume"):
        conn.receive_data(b"")
    pending.decode()
    assert conn.resume(pending) == [Response(2, True, ["x"] * 5000), Response(3, True, 3)]
    assert conn.in_flight == frozenset()
    assert conn.receive_data(b"", defer_over=1000) == []


def test_a_big_frame_of_few_items_is_decoded_at_once() -> None:
    # One big bin decodes about as fast as it is copied: a thread would only add its hop.
    conn = ClientConnection(MSGPACK)
    conn.start_request(1, stream=False)
    big = frame(MSGPACK, {"id": 1, "success": True, "result": b"x" * 100_000, "timestamp": TS})
    assert MSGPACK.decodes_quickly(big[4:])
    assert conn.receive_data(big, defer_over=1000) == [
        Response(1, True, b"x" * 100_000, timestamp=TS)
    ]
    assert not JSON.decodes_quickly(b'"' + b"x" * 100_000 + b'"')


def test_without_defer_over_nothing_is_pending() -> None:
    conn = ClientConnection(MSGPACK)
    conn.start_request(1, stream=False)
    big = frame(MSGPACK, {"id": 1, "success": True, "result": "x" * 100_000})
    assert conn.receive_data(big) == [Response(1, True, "x" * 100_000)]


def test_resume_decodes_a_frame_nobody_decoded() -> None:
    conn = ClientConnection(JSON)
    conn.start_request(7, stream=True)
    (pending,) = conn.receive_data(frame(JSON, StreamChunk(7, 0, [1] * 50).to_wire()), 10)
    assert isinstance(pending, PendingFrame)
    assert conn.resume(pending) == [StreamChunk(7, 0, [1] * 50)]


def test_only_the_awaited_pending_frame_resumes() -> None:
    conn = ClientConnection(JSON)
    conn.start_request(1, stream=False)
    (pending,) = conn.receive_data(frame(JSON, {"id": 1, "success": True, "result": 1}), 0)
    assert isinstance(pending, PendingFrame)
    stranger = PendingFrame(b"{}", JSON.decode)
    with pytest.raises(ValueError, match="not the PendingFrame"):
        conn.resume(stranger)
    assert conn.resume(pending) == [Response(1, True, 1)]
    with pytest.raises(ValueError, match="not the PendingFrame"):
        conn.resume(pending)  # once only


def test_a_pending_frame_that_does_not_decode_breaks_the_connection_at_resume() -> None:
    conn = ClientConnection(MSGPACK)
    conn.start_request(1, stream=False)
    ok = frame(MSGPACK, {"id": 1, "success": True, "result": None})
    (event, pending) = conn.receive_data(ok + encode_frame(b"\x91" * 1100 + b"\xc0"), 100)
    assert event == Response(1, True)
    assert isinstance(pending, PendingFrame)
    pending.decode()  # never raises: the error is for resume, on the event loop
    with pytest.raises(ProtocolError, match="nested deeper than 1024") as info:
        conn.resume(pending)
    assert info.value.events == ()
    with pytest.raises(ProtocolError, match="nested deeper than 1024"):
        conn.receive_data(b"")


def test_an_oversize_header_behind_a_pending_frame_is_raised_after_it() -> None:
    conn = ClientConnection(JSON, max_frame_size=1000)
    for i in (1, 2, 3):
        conn.start_request(i, stream=False)
    big = frame(JSON, {"id": 1, "success": True, "result": "y" * 500})
    small = frame(JSON, {"id": 2, "success": True})
    (pending,) = conn.receive_data(big + small + (2000).to_bytes(4, "big"), defer_over=100)
    assert isinstance(pending, PendingFrame)
    with pytest.raises(ProtocolError, match="over the limit") as info:
        conn.resume(pending)
    assert info.value.events == (Response(1, True, "y" * 500), Response(2, True))
    assert conn.in_flight == {3}


def test_cancelling_a_request_whose_answer_is_pending_is_harmless() -> None:
    # The event loop goes on while the thread decodes: a caller may give up meanwhile.
    conn = ClientConnection(MSGPACK)
    conn.start_request(1, stream=False)
    (pending,) = conn.receive_data(
        frame(MSGPACK, {"id": 1, "success": True, "result": [0] * 99}), 50
    )
    assert isinstance(pending, PendingFrame)
    assert conn.send_cancel(1)  # the bridge ignores a cancel for a finished request
    conn.start_request(2, stream=False)
    pending.decode()
    assert conn.resume(pending) == [Response(1, True, [0] * 99)]
    assert conn.in_flight == {2}


def test_eof_while_a_frame_is_pending_loses_its_request() -> None:
    conn = ClientConnection(MSGPACK)
    conn.start_request(1, stream=False)
    conn.start_request(2, stream=False)
    data = frame(MSGPACK, {"id": 1, "success": True, "result": ["z"] * 99})
    (pending,) = conn.receive_data(data, defer_over=10)
    assert isinstance(pending, PendingFrame)
    assert sorted(conn.receive_eof()) == [1, 2]
    with pytest.raises(ValueError):
        conn.resume(pending)


def test_decode_in_a_thread_touches_no_connection_state() -> None:
    conn = ClientConnection(MSGPACK)
    conn.start_request(1, stream=False)
    result = [{"k": i} for i in range(50_000)]
    (pending,) = conn.receive_data(frame(MSGPACK, {"id": 1, "success": True, "result": result}), 1)
    assert isinstance(pending, PendingFrame)
    thread = threading.Thread(target=pending.decode)
    thread.start()
    for i in range(2, 2000):  # the event loop's work goes on meanwhile
        conn.start_request(i, stream=i % 2 == 0)
        conn.send_cancel(i)
    thread.join()
    assert conn.in_flight == frozenset(range(1, 2000))
    assert conn.resume(pending) == [Response(1, True, result)]
    assert conn.in_flight == frozenset(range(2, 2000))


# --------------------------------------------------------------------------- a real host


CAT = "import shutil, sys; shutil.copyfileobj(sys.stdin.buffer, sys.stdout.buffer)"


async def host_read(codec: Codec, data: bytes, decoder: Codec) -> tuple[list[Any], int]:
    """The host read loop as the pool writes it, reading ``data`` back from a real process's
    pipe, with big frames decoded in a thread by ``decoder``. Returns the events, and how
    many times another task ran while the big frame decoded."""
    conn = ClientConnection(decoder, max_frame_size=len(data))
    for i in (1, 2, 3):
        conn.start_request(i, stream=False)
    events: list[Any] = []
    ticks: list[float] = []
    decoding: list[tuple[float, float]] = []
    done = anyio.Event()

    async def ticker() -> None:
        while not done.is_set():
            await anyio.sleep(0.002)
            ticks.append(time.monotonic())

    async with await anyio.open_process([sys.executable, "-c", CAT]) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        stdin, stdout = proc.stdin, proc.stdout

        async def write() -> None:
            await stdin.send(data)
            await stdin.aclose()

        async def read() -> None:
            while conn.in_flight:
                batch = conn.receive_data(await stdout.receive(65536), defer_over=256 * 1024)
                while batch and isinstance(batch[-1], PendingFrame):
                    *ready, pending = batch
                    events.extend(ready)
                    started = time.monotonic()
                    await anyio.to_thread.run_sync(pending.decode)
                    decoding.append((started, time.monotonic()))
                    batch = conn.resume(pending)
                events.extend(batch)
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            tg.start_soon(write)
            tg.start_soon(read)

    ((started, ended),) = decoding
    during = [t for t in ticks if started < t < ended]
    pauses = [b - a for a, b in zip([started, *during], [*during, ended], strict=True)]
    print(
        f"decoded in {ended - started:.3f} s; {len(during)} ticks, pauses up to {max(pauses):.3f} s"
    )
    return events, len(during)


def big_reply(codec: Codec) -> tuple[bytes, list[Any]]:
    """Three responses; the second is big and legal (600k arrays, under max_containers)."""
    result = [[i, -7, "v"] for i in range(600_000)]
    data = b"".join(
        frame(codec, {"id": i, "success": True, "result": result if i == 2 else i})
        for i in (1, 2, 3)
    )
    return data, [Response(1, True, 1), Response(2, True, result), Response(3, True, 3)]


@pytest.mark.anyio
@pytest.mark.parametrize("codec", [MSGPACK, JSON], ids=lambda c: c.name)
async def test_a_big_frame_decoded_in_a_thread_does_not_stall_the_event_loop(
    codec: Codec,
) -> None:
    data, expected = big_reply(codec)
    events, ticks = await host_read(codec, data, get_codec(codec.name))
    assert events == expected
    # The checked path decodes in slices: the loop ticks every few milliseconds, but for the
    # cyclic garbage collector's passes over the heap (they hold the GIL as well).
    assert ticks >= 10


BRIDGE_DIR = Path(__file__).resolve().parents[2] / "bridges" / "python"


@pytest.mark.anyio
async def test_a_real_bridge_refuses_a_hostile_request_and_answers_big_off_the_loop() -> None:
    """The Python bridge decodes requests with the same codecs, so it gets the same limits;
    its big legal answer reaches the host through PendingFrame."""
    path = os.pathsep.join(p for p in (str(BRIDGE_DIR), os.environ.get("PYTHONPATH")) if p)
    command = [
        sys.executable,
        "-m",
        "snakepit_trio_bridge",
        "--handler",
        "snakepit_trio_bridge.testing:TestingHandler",
    ]
    conn = ClientConnection(MSGPACK)
    rows = [[i, -7, "v"] for i in range(300_000)]
    hostile = {"id": 1, "command": "echo", "args": {"x": [[]] * (1 << 20)}, "timestamp": TS}
    legal = {"id": 2, "command": "echo", "args": {"rows": rows}, "timestamp": TS}
    events: list[Any] = []
    deferred = 0
    async with await anyio.open_process(
        [*command, "--protocol", "msgpack"],
        env=dict(os.environ, PYTHONPATH=path),
        stderr=subprocess.DEVNULL,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        for request in (hostile, legal):
            conn.start_request(request["id"], stream=False)
            await proc.stdin.send(encode_frame(MSGPACK.encode(request)))
            while conn.is_in_flight(request["id"]):
                batch = conn.receive_data(await proc.stdout.receive(65536), defer_over=256 * 1024)
                while batch and isinstance(batch[-1], PendingFrame):
                    *ready, pending = batch
                    events.extend(ready)
                    deferred += 1
                    await anyio.to_thread.run_sync(pending.decode)
                    batch = conn.resume(pending)
                events.extend(batch)
        await proc.stdin.aclose()
    refused, echoed = events
    # The root map, "args", "x" and 2**20 arrays: over the bridge's limit, refused unbuilt.
    assert refused.id == 1 and not refused.success
    assert refused.error_type == "ProtocolError"
    assert "more than 1048576 maps, arrays and ext values" in refused.error
    assert echoed.id == 2 and echoed.success
    assert echoed.result["echoed"] == {"rows": rows}
    assert deferred == 1
