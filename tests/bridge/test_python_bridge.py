"""The Python bridge as a real subprocess, driven through the sans-IO ``ClientConnection``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from select import select
from typing import Any

import pytest

_BRIDGE_DIR = Path(__file__).resolve().parents[2] / "bridges" / "python"
_HANDLERS_DIR = Path(__file__).resolve().parents[1] / "handlers"
if str(_BRIDGE_DIR) not in sys.path:
    sys.path.insert(0, str(_BRIDGE_DIR))

from snakepit_trio_bridge.protocol import JSON, MSGPACK, FrameDecoder, encode_frame  # noqa: E402
from snakepit_trio_bridge.protocol.codecs import JsonCodec  # noqa: E402
from snakepit_trio_bridge.protocol.framing import DEFAULT_MAX_FRAME_SIZE  # noqa: E402
from snakepit_trio_bridge.protocol.messages import (  # noqa: E402
    BridgeEvent,
    Cancel,
    ClientConnection,
    Credit,
    ProtocolNegotiation,
    ProtocolSelected,
    Request,
    Response,
    Shutdown,
    StreamChunk,
    parse_negotiation_reply,
)

TESTING = "snakepit_trio_bridge.testing:TestingHandler"
TIMEOUT = 5.0


class _NonFiniteJson(JsonCodec):
    """The JSON codec, but sending NaN and infinities (as a hostile caller could)."""

    def encode(self, value: Any) -> bytes:
        return json.dumps(value, allow_nan=True).encode()


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


def _wait_dead(pid: int, timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.01)
    return False


class Bridge:
    """One bridge process: write frames to it, read events back with a deadline."""

    def __init__(
        self,
        tmp_path: Path,
        *args: str,
        handler: str = TESTING,
        offer: tuple[str, ...] | None = ("msgpack", "json"),
        env: dict[str, str] | None = None,
        pass_fds: tuple[int, ...] = (),
        grace: float | None = None,
        max_frame_size: int | None = None,
    ) -> None:
        environ = dict(os.environ, **(env or {}))
        environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_BRIDGE_DIR), str(_HANDLERS_DIR), environ.get("PYTHONPATH")) if p
        )
        self.stderr_path = tmp_path / f"stderr-{time.monotonic_ns()}.txt"
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "snakepit_trio_bridge", "--handler", handler, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=environ,
                pass_fds=pass_fds,
                start_new_session=True,
            )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout.fileno()
        self._events: deque[BridgeEvent] = deque()
        self._next_id = 1
        self.selected: ProtocolSelected | None = None
        limit = max_frame_size or DEFAULT_MAX_FRAME_SIZE
        if offer is None:  # started with an explicit --protocol: no negotiation frame
            codec = MSGPACK if "msgpack" in args else JSON
        else:
            self.selected = self._negotiate(offer, grace, max_frame_size)
            codec = MSGPACK if self.selected.protocol == "msgpack" else JSON
        self.conn = ClientConnection(codec, limit)  # a frame over the limit fails the test

    # -- plumbing
    def _negotiate(
        self, offer: tuple[str, ...], grace: float | None, max_frame_size: int | None
    ) -> ProtocolSelected:
        negotiation = ProtocolNegotiation(
            supported=offer, preferred=offer[0], grace=grace, max_frame_size=max_frame_size
        )
        self.write(encode_frame(JSON.encode(negotiation.to_wire())))
        decoder = FrameDecoder(max_frame_size or DEFAULT_MAX_FRAME_SIZE)
        frames: list[bytes] = []
        while not frames:
            frames = decoder.feed(self._read_some())
        assert len(frames) == 1 and not decoder.buffered
        selected = parse_negotiation_reply(frames[0], offer)
        assert selected is not None
        return selected

    def _read_some(self, timeout: float = TIMEOUT) -> bytes:
        ready, _, _ = select([self._out], [], [], timeout)
        if not ready:
            raise TimeoutError("the bridge said nothing")
        data = os.read(self._out, 1 << 20)
        if not data:
            raise EOFError("the bridge closed its stdout")
        return data

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # a big frame may go out in parts
            view = view[os.write(self._in, view) :]

    def send(self, *messages: Request | Cancel | Credit | Shutdown) -> None:
        frames = b""
        for message in messages:
            if isinstance(message, Request):
                frames += self.conn.send_request(message)
            else:
                frames += self.conn.encode(message)
        self.write(frames)

    def request(self, command: str, args: dict[str, Any] | None = None, **kw: Any) -> Request:
        request = Request(self._next_id, command, args or {}, **kw)
        self._next_id += 1
        return request

    def event(self, timeout: float = TIMEOUT) -> BridgeEvent:
        deadline = time.monotonic() + timeout
        while not self._events:
            self._events.extend(
                self.conn.receive_data(self._read_some(deadline - time.monotonic()))
            )
        return self._events.popleft()

    def response(self, request_id: int) -> tuple[list[Any], Response]:
        """Chunks of ``request_id`` and its terminal response (other events must not come)."""
        chunks: list[Any] = []
        while True:
            event = self.event()
            assert not isinstance(event, Response) or event.id == request_id, event
            if isinstance(event, Response):
                return chunks, event
            assert isinstance(event, StreamChunk) and event.id == request_id, event
            chunks.append(event.data)

    def call(self, command: str, args: dict[str, Any] | None = None, **kw: Any) -> Response:
        request = self.request(command, args, **kw)
        self.send(request)
        return self.response(request.id)[1]

    def result(self, command: str, args: dict[str, Any] | None = None) -> Any:
        response = self.call(command, args)
        assert response.success, response
        return response.result

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait(self, timeout: float = TIMEOUT) -> int:
        return self.proc.wait(timeout)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()


@pytest.fixture
def start(tmp_path: Path) -> Any:
    bridges: list[Bridge] = []

    def start(*args: str, **kw: Any) -> Bridge:
        bridge = Bridge(tmp_path, *args, **kw)
        bridges.append(bridge)
        return bridge

    yield start
    for bridge in bridges:
        bridge.kill()


# ---------------------------------------------------------------------- negotiation


def test_negotiation_selects_msgpack_and_announces_features(start: Any) -> None:
    bridge = start()
    selected = bridge.selected
    assert selected.protocol == "msgpack"
    assert selected.features == {"cancel", "credit", "lifeline", "multiplex", "shutdown", "stream"}
    assert selected.max_concurrency == 64
    info = selected.info
    assert info["bridge"] == "snakepit_trio_bridge" and info["language"] == "python"
    assert info["pid"] == bridge.proc.pid
    # Negotiation is answered before the handler is built: it is named, its commands are not.
    assert info["handler"] == TESTING
    commands = bridge.result("info")["bridge_info"]["supported_commands"]
    assert {"ping", "echo", "compute", "info", "crash", "count_stream"} <= set(commands)


def test_start_up_imports_stay_light(start: Any) -> None:
    heavy = ["trio", "anyio", "attrs", "asyncio", "typing", "json", "inspect", "dataclasses"]
    bridge = start()  # negotiated msgpack: not even json is needed
    assert bridge.result("loaded_modules", {"names": heavy}) == []


def test_negotiation_with_a_json_only_offer(start: Any) -> None:
    bridge = start("--max-concurrency", "8", offer=("json",))
    assert bridge.selected.protocol == "json"
    assert bridge.selected.max_concurrency == 8
    blob = bytes(range(256))
    assert bridge.result("echo", {"blob": blob, "text": "h\u00e9"})["echoed"] == {
        "blob": blob,
        "text": "h\u00e9",
    }


def test_explicit_json_protocol_needs_no_negotiation(start: Any) -> None:
    bridge = start("--protocol", "json", offer=None)
    assert bridge.result("compute", {"operation": "add", "a": 2, "b": 3})["result"] == 5
    assert bridge.result("echo", {"b": b"\x00"})["echoed"] == {"b": b"\x00"}


def test_first_frame_that_is_a_request_is_served_as_json(start: Any) -> None:
    bridge = start(offer=None)  # no --protocol flag, yet the first frame is a plain request
    assert bridge.result("ping")["status"] == "ok"


# ---------------------------------------------------------------------- commands


def test_builtin_result_shapes(start: Any) -> None:
    bridge = start()
    ping = bridge.result("ping", {"worker_id": "w1"})
    assert {
        "status",
        "bridge_type",
        "uptime",
        "requests_handled",
        "timestamp",
        "python_version",
    } <= set(ping)
    assert ping["worker_id"] == "w1" and ping["echo"] == {"worker_id": "w1"}
    assert bridge.result("echo", {"x": [1, 2]}) == {
        "status": "ok",
        "echoed": {"x": [1, 2]},
        "timestamp": pytest.approx(time.time(), abs=60),
    }
    computed = bridge.result("compute", {"operation": "multiply", "a": 6, "b": 7})
    assert computed["result"] == 42 and computed["inputs"] == {"a": 6, "b": 7}
    assert computed["operation"] == "multiply" and computed["status"] == "ok"
    info = bridge.result("info")
    assert info["status"] == "ok"
    assert "ping" in info["bridge_info"]["supported_commands"]
    assert {"name", "version", "uptime", "total_requests"} <= set(info["bridge_info"])
    assert {"python_version", "platform"} <= set(info["system_info"])
    failed = bridge.call("compute", {"operation": "divide", "a": 1, "b": 0})
    assert not failed.success and failed.error_type == "ZeroDivisionError"


def test_generic_demo_commands_return_their_chunks_as_a_list(start: Any) -> None:
    bridge = start()
    batch = bridge.result("batch_inference", {"items": ["a", "b"]})
    assert [c["item"] for c in batch] == ["a", "b"] and batch[-1]["progress"] == 1.0
    rows = bridge.result("process_large_dataset", {"total_rows": 250, "chunk_size": 100})
    assert [c["processed_rows"] for c in rows] == [100, 200, 250]
    assert rows[-1]["progress_percent"] == 100.0
    lines = bridge.result("tail_and_analyze", {"lines": ["ERROR x", "fine"]})
    assert [c["severity"] for c in lines] == ["ERROR", "INFO"]
    bridge.send(request := bridge.request("distributed_training", {"epochs": 2}, stream=True))
    chunks, final = bridge.response(request.id)
    assert [c["epoch"] for c in chunks] == [1, 2] and {"train_loss", "val_acc"} <= set(chunks[0])
    assert isinstance(final.result["final_model_path"], str)


@pytest.mark.parametrize("target", ["secret-file", "/proc/self/environ"])
def test_tail_and_analyze_reads_no_file(start: Any, tmp_path: Path, target: str) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("ERROR SECRET-MARKER-1234\n")
    path = str(secret) if target == "secret-file" else target
    bridge = start(env={"SNAKEPIT_TEST_SECRET": "SECRET-MARKER-1234"})
    for stream in (False, True):
        bridge.send(request := bridge.request("tail_and_analyze", {"path": path}, stream=stream))
        chunks, response = bridge.response(request.id)
        assert chunks == [] and not response.success and response.error_type == "ValueError"
        assert "does not read files" in (response.error or "")
        assert "SECRET-MARKER" not in repr(response)
    generated = bridge.result("tail_and_analyze", {"count": 7})  # demo data, made up
    assert len(generated) == 7 and {c["severity"] for c in generated} >= {"ERROR", "INFO"}


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("ping_stream", {"count": 10**9, "interval": 0}),
        ("ping_stream", {"count": 2, "interval": float("nan")}),
        ("ping_stream", {"count": 2, "interval": float("inf")}),
        ("process_large_dataset", {"total_rows": 10**12, "chunk_size": 1}),
        ("batch_inference", {"items": [0] * 100_001}),
        ("batch_inference", {"items": ["a"], "delay": 1e9}),
        ("tail_and_analyze", {"count": 10**9}),
        ("tail_and_analyze", {"lines": ["x"] * 100_001}),
        ("distributed_training", {"epochs": 10**9}),
        ("sleep", {"seconds": float("nan")}),
        ("sleep", {"seconds": 1e12}),
        ("sleep", {"seconds": -1}),
        ("compute", {"operation": "power", "a": 2, "b": 10**12}),
        ("compute", {"operation": "power", "a": -3, "b": 10**9}),
        ("compute", {"operation": "multiply", "a": "x", "b": 10**12}),
        ("compute", {"operation": "multiply", "a": [0], "b": 10**12}),
    ],
)
def test_builtins_refuse_unbounded_work_at_once(
    start: Any, command: str, args: dict[str, Any]
) -> None:
    """A caller's huge count, size or delay is refused before any work (no OOM, no hang)."""
    bridge = start(offer=("json",))  # JSON carries NaN and infinities in
    bridge.conn = ClientConnection(_NonFiniteJson(), DEFAULT_MAX_FRAME_SIZE)
    response = bridge.call(command, args)
    assert not response.success and response.error_type in ("ValueError", "TypeError")
    assert bridge.result("compute", {"operation": "power", "a": 2, "b": 64})["result"] == 2**64


def test_bytes_round_trip_in_msgpack(start: Any) -> None:
    bridge = start()
    blob = os.urandom(1 << 20)
    assert bridge.result("echo", {"blob": blob})["echoed"]["blob"] == blob


def test_unknown_command(start: Any) -> None:
    bridge = start()
    response = bridge.call("no_such_command")
    assert not response.success and response.error_type == "UnsupportedCommand"
    assert response.error == "Unknown command: 'no_such_command'"
    response = bridge.call("comput")
    assert response.error == "Unknown command: 'comput' (did you mean: compute?)"
    response = bridge.call("x" * 1_000_000)  # no quadratic matching, no megabyte echo
    assert response.error == "Unknown command (a name of 1000000 characters)"


def test_handler_exception_carries_type_and_traceback(start: Any) -> None:
    response = start().call("raise_error", {"message": "no good"})
    assert not response.success
    assert (response.error, response.error_type) == ("no good", "ValueError")
    assert response.traceback and "handle_raise_error" in response.traceback
    assert "server.py" not in response.traceback  # the bridge's own frames are left out


_UNPRINTABLE = """
from snakepit_trio_bridge import BaseCommandHandler


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no words for it")


class Handler(BaseCommandHandler):
    def _register_commands(self):
        self.register_command("unprintable", self.unprintable)

    def unprintable(self, args):
        raise Unprintable()
"""


def test_an_exception_whose_str_fails_is_answered_and_the_bridge_goes_on(
    start: Any, tmp_path: Path
) -> None:
    (tmp_path / "unprintable.py").write_text(_UNPRINTABLE)
    bridge = start(handler=f"{tmp_path / 'unprintable.py'}:Handler")
    response = bridge.call("unprintable")
    assert not response.success and response.error_type == "Unprintable"
    assert response.error == "<Unprintable: str() failed: RuntimeError: no words for it>"
    assert response.traceback and "raise Unprintable()" in response.traceback
    assert bridge.call("unprintable").error_type == "Unprintable"  # still serving


def test_print_does_not_corrupt_frames(start: Any) -> None:
    bridge = start()
    text = "\x00\x00\x00\x05hello from print()"
    assert bridge.result("print_stdout", {"text": text, "raw": True}) == {"ok": True}
    assert bridge.result("ping")["status"] == "ok"
    bridge.close_stdin()
    assert bridge.wait() == 0
    assert bridge.stderr.count("hello from print()") == 2


def test_pipelined_requests_are_answered_in_order(start: Any) -> None:
    bridge = start()
    requests = [bridge.request("echo", {"i": i}) for i in range(50)]
    requests.insert(25, bridge.request("compute", {"operation": "add", "a": 1, "b": 1}))
    bridge.send(*requests)
    answered = [bridge.event() for _ in requests]
    assert [r.id for r in answered] == [r.id for r in requests]
    assert all(isinstance(r, Response) and r.success for r in answered)


def test_async_handlers(start: Any) -> None:
    bridge = start()
    assert bridge.result("async_sleep", {"seconds": 0.01}) == {"slept": 0.01}
    bridge.send(request := bridge.request("async_stream", {"count": 3}, stream=True))
    chunks, final = bridge.response(request.id)
    assert chunks == [{"i": 0}, {"i": 1}, {"i": 2}] and final.success and final.result is None
    bridge.send(request := bridge.request("async_sleep", {"seconds": 30}))
    time.sleep(0.1)
    bridge.send(Cancel(request.id))
    _, response = bridge.response(request.id)
    assert response.cancelled
    assert bridge.result("ping")["status"] == "ok"


# ---------------------------------------------------------------------- streams


def test_stream_chunks_in_order_then_the_final_result(start: Any) -> None:
    bridge = start()
    bridge.send(request := bridge.request("ping_stream", {"count": 5, "interval": 0}, stream=True))
    chunks, final = bridge.response(request.id)
    assert [c["ping_number"] for c in chunks] == [1, 2, 3, 4, 5]
    assert final.success and final.result == {"status": "ok", "total": 5}
    # A plain command asked for a stream: its result is the only chunk.
    bridge.send(request := bridge.request("echo", {"x": 1}, stream=True))
    chunks, final = bridge.response(request.id)
    assert [c["echoed"] for c in chunks] == [{"x": 1}] and final.result is None


def _record(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def test_credits_pause_the_producer(start: Any, tmp_path: Path) -> None:
    bridge = start()
    record = tmp_path / "record.json"
    args = {"count": 1000, "record_path": str(record)}
    bridge.send(request := bridge.request("count_stream", args, stream=True, credits=3))
    assert [bridge.event().data for _ in range(3)] == [{"i": 0}, {"i": 1}, {"i": 2}]
    time.sleep(0.2)
    assert _record(record) == {"produced": 3, "finally": False}
    bridge.send(Credit(request.id, 2))
    assert [bridge.event().data for _ in range(2)] == [{"i": 3}, {"i": 4}]
    time.sleep(0.1)
    assert _record(record)["produced"] == 5
    # Cancel while it waits for credit: the generator is closed, its finally runs.
    bridge.send(Cancel(request.id))
    _, response = bridge.response(request.id)
    assert response.cancelled and _record(record) == {"produced": 5, "finally": True}


def test_cancel_of_a_running_stream(start: Any) -> None:
    bridge = start()
    args = {"count": 100_000, "interval": 0.005}
    bridge.send(request := bridge.request("ping_stream", args, stream=True))
    assert isinstance(bridge.event(), StreamChunk)
    bridge.send(Cancel(request.id))
    chunks, response = bridge.response(request.id)
    assert response.cancelled and response.error_type == "Cancelled" and len(chunks) < 100
    assert bridge.result("ping")["status"] == "ok"


def test_cooperative_cancel_of_sleep(start: Any) -> None:
    bridge = start()
    bridge.send(request := bridge.request("sleep", {"seconds": 30}))
    time.sleep(0.1)
    started = time.monotonic()
    bridge.send(Cancel(request.id))
    _, response = bridge.response(request.id)
    assert response.cancelled and time.monotonic() - started < 1.0
    bridge.send(Cancel(request.id))  # no longer in flight: ignored
    assert bridge.result("ping")["status"] == "ok"


@pytest.mark.parametrize("first", ["sleep", "block"])
def test_cancel_of_a_queued_request(start: Any, first: str) -> None:
    bridge = start()
    running = bridge.request(first, {"seconds": 0.3})
    queued = bridge.request("ping")
    bridge.send(running, queued)
    time.sleep(0.05)
    bridge.send(Cancel(queued.id))
    answers = {}
    for _ in range(2):
        event = bridge.event()
        assert isinstance(event, Response)
        answers[event.id] = event
    assert answers[running.id].success and answers[queued.id].cancelled


# ---------------------------------------------------------------------- errors in the input


def test_malformed_payload_gets_a_null_id_error_and_the_bridge_goes_on(start: Any) -> None:
    bridge = start()
    bridge.conn.start_request(999, stream=False)  # as a pool would: the request in flight
    bridge.write(encode_frame(b"\xc1"))  # 0xc1 is never valid MessagePack
    response = bridge.event()
    assert isinstance(response, Response) and response.id == 999 and not response.success
    assert bridge.result("ping")["status"] == "ok"


def test_oversize_frame_exits_2(start: Any) -> None:
    bridge = start()
    bridge.write((2**31).to_bytes(4, "big"))  # a header alone, built by hand: announces 2 GiB
    assert bridge.wait() == 2
    assert "framing" in bridge.stderr


# ---------------------------------------------------------------------- lifecycle


def test_stdin_eof_finishes_queued_work_then_exits_0(start: Any) -> None:
    bridge = start()
    bridge.send(
        first := bridge.request("sleep", {"seconds": 0.2}), second := bridge.request("ping")
    )
    bridge.close_stdin()
    assert bridge.response(first.id)[1].success and bridge.response(second.id)[1].success
    assert bridge.wait() == 0


def test_shutdown_frame(start: Any) -> None:
    bridge = start()
    running = bridge.request("sleep", {"seconds": 0.2})
    late = bridge.request("ping")
    bridge.send(running, Shutdown(), late)
    answers = [bridge.event(), bridge.event()]
    assert answers[0].id == late.id and answers[0].error_type == "ShuttingDown"
    assert answers[1].id == running.id and answers[1].success
    assert bridge.wait() == 0  # stdin is still open


def test_sigterm_exits_promptly_and_runs_finally_blocks(start: Any, tmp_path: Path) -> None:
    bridge = start()
    record = tmp_path / "record.json"
    args = {"count": 10, "record_path": str(record)}
    bridge.send(bridge.request("count_stream", args, stream=True, credits=1))
    assert bridge.event().data == {"i": 0}
    started = time.monotonic()
    bridge.proc.send_signal(signal.SIGTERM)
    assert bridge.wait() == 143 and time.monotonic() - started < 1.0
    assert _record(record) == {"produced": 1, "finally": True}


def _lifeline_bridge(start: Any) -> tuple[Bridge, int, int]:
    read_end, write_end = os.pipe()
    env = {"SNAKEPIT_LIFELINE_FD": str(read_end), "SNAKEPIT_LIFELINE_GRACE": "30"}
    bridge = start(env=env, pass_fds=(read_end,), grace=0.2)  # the negotiated grace wins
    os.close(read_end)
    child = bridge.result("spawn_child")["pid"]
    assert _alive(child)
    return bridge, write_end, child


def _holds_pipe(pid: int, pipe_fd: int) -> bool:
    inode = os.fstat(pipe_fd).st_ino
    fd_dir = Path(f"/proc/{pid}/fd")
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / name)
        except FileNotFoundError:  # closed since the listing (a child still starting up)
            continue
        if target == f"pipe:[{inode}]":
            return True
    return False


def test_lifeline_eof_kills_the_process_group(start: Any) -> None:
    bridge, write_end, child = _lifeline_bridge(start)
    assert _holds_pipe(bridge.proc.pid, write_end) and not _holds_pipe(child, write_end)
    os.close(write_end)  # the pool is gone; stdin stays open
    assert bridge.wait() == -signal.SIGKILL
    assert _wait_dead(child)


def test_pool_death_closes_stdin_and_lifeline_and_kills_the_group(start: Any) -> None:
    bridge, write_end, child = _lifeline_bridge(start)
    bridge.close_stdin()
    os.close(write_end)
    assert bridge.wait() == -signal.SIGKILL
    assert _wait_dead(child)


def test_stdin_eof_with_the_pool_alive_leaves_the_group_alone(start: Any) -> None:
    bridge, write_end, child = _lifeline_bridge(start)
    try:
        bridge.close_stdin()
        assert bridge.wait() == 0
        assert _alive(child)
    finally:
        os.close(write_end)
        os.kill(child, signal.SIGKILL)


# ---------------------------------------------------------------------- start-up order


def _line_of(path: Path, text: str) -> int:
    """The 1-based number of the first line of ``path`` holding ``text``."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} not in {path}")


@pytest.mark.parametrize("explicit", [False, True], ids=["negotiated", "explicit-protocol"])
def test_the_handler_is_built_after_negotiation_is_answered(start: Any, explicit: bool) -> None:
    """A constructor that has not finished holds back requests, never the negotiation reply.

    The constructor blocks on a pipe until the test writes to it: no timing involved. Had the
    bridge built the handler first, ``start`` would find no negotiation reply at all.
    """
    gate_read, gate_write = os.pipe()
    try:
        kw: dict[str, Any] = {"offer": None} if explicit else {}
        args = ("--protocol", "msgpack") if explicit else ()
        bridge = start(
            *args,
            handler="init_handlers:GatedInitHandler",
            env={"INIT_GATE_FD": str(gate_read)},
            pass_fds=(gate_read,),
            **kw,
        )
        os.close(gate_read)
        gate_read = -1
        if not explicit:
            assert bridge.selected.protocol == "msgpack"
        bridge.send(request := bridge.request("built"))
        ready, _, _ = select([bridge.proc.stdout], [], [], 0.3)
        assert not ready  # nothing can answer while the handler is being built
        os.write(gate_write, b"go")
        assert bridge.response(request.id)[1].result == {"built": True}
        assert bridge.result("ping")["status"] == "ok"
    finally:
        os.close(gate_write)
        if gate_read >= 0:
            os.close(gate_read)


@pytest.mark.parametrize(
    ("handler", "module", "raising_line", "missing"),
    [
        (
            "bad_import:Handler",
            "bad_import.py",
            'open(MISSING_MODEL, "rb")',
            "/nonexistent/snakepit-test/model-weights.bin",
        ),
        (
            "init_handlers:RaisingInitHandler",
            "init_handlers.py",
            "open(path, encoding",
            "/nonexistent/snakepit-test/handler-config.toml",
        ),
    ],
    ids=["import", "constructor"],
)
@pytest.mark.parametrize("explicit", [False, True], ids=["negotiated", "explicit-protocol"])
def test_a_handler_that_cannot_load_answers_the_first_request_with_the_cause(
    start: Any, handler: str, module: str, raising_line: str, missing: str, explicit: bool
) -> None:
    kw: dict[str, Any] = {"offer": None} if explicit else {}
    args = ("--protocol", "json") if explicit else ()
    bridge = start(*args, handler=handler, **kw)  # negotiation is answered all the same
    response = bridge.call("ping")
    assert not response.success and response.error_type == "FileNotFoundError"
    error = response.error or ""
    line = _line_of(_HANDLERS_DIR / module, raising_line)
    assert error.startswith(f"cannot load handler {handler!r}: FileNotFoundError: ")
    assert missing in error  # the path it could not open (the exception's repr loses it)
    assert f'{module}", line {line}' in error  # where: file and line
    assert bridge.wait() == 1
    stderr = bridge.stderr
    assert "Traceback (most recent call last)" in stderr and missing in stderr
    assert f'{module}", line {line}' in stderr


def test_a_handler_that_cannot_load_exits_1_at_stdin_eof(start: Any) -> None:
    bridge = start(handler="bad_import:Handler")
    bridge.close_stdin()  # the pool closed before its init ping: no wait for a request
    assert bridge.wait() == 1
    assert "model-weights.bin" in bridge.stderr


def test_a_handler_file_path_is_accepted(start: Any) -> None:
    bridge = start(
        handler=str(_HANDLERS_DIR / "init_handlers.py") + ":SlowInitHandler",
        env={"SLOW_INIT_SECONDS": "0"},
    )
    assert bridge.result("ping")["status"] == "ok"


# ---------------------------------------------------------------------- unsendable responses

LIMIT = 64 * 1024  # negotiated: the sizes below are big on purpose, whatever the checkout path


@pytest.fixture(params=["msgpack", "json"])
def output_bridge(request: pytest.FixtureRequest, start: Any) -> Bridge:
    bridge: Bridge = start(
        handler="output_handlers:OutputHandler", offer=(request.param,), max_frame_size=LIMIT
    )
    return bridge


def _codec_name(bridge: Bridge) -> str:
    assert bridge.selected is not None
    return "MessagePack" if bridge.selected.protocol == "msgpack" else "JSON"


def test_a_result_over_the_frame_limit_becomes_a_short_error(output_bridge: Bridge) -> None:
    response = output_bridge.call("big_result", {"size": 2 * LIMIT})
    assert not response.success and response.error_type == "ProtocolError"
    assert response.error is not None and response.error.startswith("cannot send the result: ")
    assert f"over the frame limit of {LIMIT} bytes (max_frame_size)" in response.error
    assert output_bridge.result("ping")["status"] == "ok"


def test_an_error_with_a_huge_traceback_keeps_its_message_and_the_traceback_tail(
    output_bridge: Bridge,
) -> None:
    response = output_bridge.call("big_traceback", {"size": 4 * LIMIT})
    assert not response.success
    assert (response.error, response.error_type) == ("the short message at the end", "RuntimeError")
    traceback = response.traceback or ""
    assert len(traceback) < 10_000 and "characters of traceback cut" in traceback
    assert traceback.rstrip().endswith("RuntimeError: the short message at the end")
    assert output_bridge.result("ping")["status"] == "ok"


def test_an_error_with_a_huge_message_is_cut_and_keeps_its_type(output_bridge: Bridge) -> None:
    response = output_bridge.call("big_message", {"size": 2 * LIMIT})
    assert not response.success and response.error_type == "ValueError"
    error = response.error or ""
    assert error.startswith("MMMM") and len(error) < 3000
    assert f"[error message cut: it was {2 * LIMIT} characters]" in error
    assert output_bridge.result("ping")["status"] == "ok"


@pytest.mark.parametrize("kind", ["datetime", "decimal"])
def test_an_unencodable_result_names_the_type_and_its_path(
    output_bridge: Bridge, kind: str
) -> None:
    response = output_bridge.call("unencodable", {"kind": kind})
    assert not response.success and response.error_type == "TypeError"
    type_name = {"datetime": "datetime.datetime", "decimal": "decimal.Decimal"}[kind]
    assert response.error == (
        f"cannot send the result: result['a'][3] is a {type_name}, "
        f"which {_codec_name(output_bridge)} cannot encode"
    )
    assert output_bridge.result("ping")["status"] == "ok"


def test_a_lone_surrogate_is_named(output_bridge: Bridge) -> None:
    response = output_bridge.call("bad_text")
    assert not response.success and response.error_type == "UnicodeEncodeError"
    assert "result['text'] is a str with a lone surrogate" in (response.error or "")
    assert output_bridge.result("ping")["status"] == "ok"


def test_a_json_map_key_that_is_not_a_string_is_named(start: Any) -> None:
    bridge = start(handler="output_handlers:OutputHandler", offer=("json",))
    response = bridge.call("unencodable_key")
    assert not response.success and response.error_type == "TypeError"
    assert "result['fine'][(1, 2)] is a key of type tuple" in (response.error or "")


@pytest.mark.parametrize(
    ("command", "args", "why"),
    [
        ("big_chunk", {"size": 2 * LIMIT}, f"over the frame limit of {LIMIT} bytes"),
        ("unencodable_chunk", {}, "data['when'] is a datetime.date, which"),
    ],
    ids=["too-big", "unencodable"],
)
def test_a_chunk_that_cannot_be_sent_ends_its_stream_with_an_error(
    output_bridge: Bridge, command: str, args: dict[str, Any], why: str
) -> None:
    request = output_bridge.request(command, args, stream=True)
    output_bridge.send(request)
    chunks, response = output_bridge.response(request.id)
    assert chunks == [{"small": True}]
    assert not response.success and (response.error or "").startswith("cannot send chunk 1: ")
    assert why in (response.error or "") and response.traceback is None
    assert output_bridge.result("ping")["status"] == "ok"


def test_a_tiny_frame_limit_still_gets_a_negotiation_reply_and_errors(start: Any) -> None:
    bridge = start(max_frame_size=120)  # too small for the full reply, or for a ping result
    assert bridge.selected.protocol == "msgpack" and bridge.selected.info == {}
    response = bridge.call("ping")
    assert not response.success and "cannot send the result" in (response.error or "")
