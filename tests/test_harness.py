"""The handler harness: the bridge's own server in the test process, held to what real workers
answer for the same calls, and its own promises (context, cancellation, streams in step with
their consumer, timeouts, closing)."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncGenerator, Generator
from pathlib import Path
from typing import Any

import pytest
import trio
from snakepit_trio_bridge import BaseCommandHandler, current_context
from snakepit_trio_bridge.generic import GenericCommandHandler
from snakepit_trio_bridge.harness import CommandCancelled, CommandFailed, HandlerHarness
from snakepit_trio_bridge.testing import TestingHandler

import snakepit_trio as sp

ROOT = Path(__file__).resolve().parents[1]
SHOP = f"{ROOT / 'examples' / 'testing' / 'shop.py'}:ShopHandler"
# Values that differ from one run (or process) to the next.
VOLATILE = frozenset(
    {"timestamp", "processed_at", "uptime", "requests_handled", "total_requests", "slept"}
)

Call = tuple[str, dict[str, Any], str | None, bool]  # command, args, session_id, stream


def normalized(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: normalized(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


def through_harness(harness: HandlerHarness[Any], call: Call) -> tuple[Any, ...]:
    command, args, session_id, stream = call
    try:
        if stream:
            # No credit limit: a pool's window is wider than one chunk, and what is compared
            # here is what arrives, not how far ahead the generator runs.
            with harness.stream(command, args, session_id=session_id, credits=None) as chunks:
                items = list(chunks)
            return "ok", normalized(items), normalized(chunks.result)
        return "ok", normalized(harness.call(command, args, session_id=session_id))
    except CommandFailed as exc:
        return "error", exc.error_type, exc.message


async def through_pool(pool: sp.Pool, call: Call) -> tuple[Any, ...]:
    command, args, session_id, stream = call
    try:
        if stream:
            async with pool.stream(command, args, session_id=session_id) as chunks:
                items = [item async for item in chunks]
            return "ok", normalized(items), normalized(chunks.result)
        if session_id is not None:
            return "ok", normalized(await pool.execute_in_session(session_id, command, args))
        return "ok", normalized(await pool.execute(command, args))
    except sp.UnsupportedCommand as exc:
        return "error", "UnsupportedCommand", str(exc)
    except sp.CommandError as exc:
        return "error", exc.error_type, exc.message


def plain(command: str, args: dict[str, Any] | None = None, session: str | None = None) -> Call:
    return command, args or {}, session, False


def streamed(command: str, args: dict[str, Any] | None = None, session: str | None = None) -> Call:
    return command, args or {}, session, True


GENERIC_CALLS = [
    plain("compute", {"operation": "add", "a": 1, "b": 2}),
    plain("compute", {"operation": "divide", "a": 1, "b": 0}),
    # 2**70 fits JSON but not MessagePack: the bridge says so, in the harness as in a worker.
    plain("compute", {"operation": "power", "a": 2, "b": 70}),
    plain("compute", {"operation": "power", "a": 10.0, "b": 400}),
    plain("compute", {"operation": "power", "a": 3, "b": 1 << 20}),
    plain("compute", {"operation": "frobnicate"}),
    plain("compute", {"a": "one"}),
    plain(
        "echo",
        {
            "nested": [1, (2, 3), {"k": None}],
            "blob": b"\x00\xff" * 10,
            "text": "s\u00e9 \u2603",
            "big": (1 << 63) - 1,
            "neg": -(1 << 40),
            "float": 0.1,
            "flag": False,
        },
    ),
    plain("echo", {"x": 1}, session="s-1"),
    plain("comput"),
    plain("sleep", {"seconds": -1}),
    plain("ping_stream", {"count": 3, "interval": 0}),
    streamed("ping_stream", {"count": 3, "interval": 0}),
    streamed("batch_inference", {"items": ["a", "b"]}),
    streamed("compute", {"operation": "multiply", "a": 6, "b": 7}),
    streamed("tail_and_analyze", {"path": "/etc/passwd"}),
    streamed("process_large_dataset", {"total_rows": 5, "chunk_size": 2}, session="s-2"),
]

SHOP_CALLS = [
    plain("quote", {"item": "bread", "quantity": 2}),
    plain("quote", {"item": "caviar"}),
    plain("quote", {"item": "apple", "quantity": 0}),
    plain("quote", {}),
    plain("add_to_cart", {"item": "apple"}, session="ann"),
    plain("add_to_cart", {"item": "apple", "quantity": 2}, session="ann"),
    plain("add_to_cart", {"item": "cheese"}, session="bob"),
    plain("add_to_cart", {"item": "cheese"}),
    plain("check_stock", {"item": "apple"}),
    plain("check_stock", {"item": "caviar", "delay": 0}),
    plain("check_stock", {}),
    streamed("receipt", {"lines": [{"item": "apple", "quantity": 3}, {"item": "cheese"}]}),
    plain("receipt", {"lines": [{"item": "bread"}]}),
    streamed("receipt", {"lines": [{"item": "apple"}, {"item": "caviar"}]}),
    streamed("track", {"delay": 0.001}),
    plain("track"),
    plain("audit", {"seconds": 0.01}),
    streamed("quote", {"item": "cheese"}),
    plain("nothing"),
]


@pytest.mark.parametrize("wire", ["json", "msgpack"])
@pytest.mark.parametrize(
    ("handler", "calls"), [(None, GENERIC_CALLS), (SHOP, SHOP_CALLS)], ids=["generic", "shop"]
)
def test_the_harness_answers_as_a_real_worker_does(
    handler: str | None, calls: list[Call], wire: str
) -> None:
    with HandlerHarness(handler, wire=wire) as harness:
        assert harness.wire == wire
        in_process = [through_harness(harness, call) for call in calls]

    async def in_a_worker() -> list[tuple[Any, ...]]:
        adapter = sp.PythonAdapter(handler, wire=wire)
        async with sp.open_pool(adapter, size=1) as pool:
            return [await through_pool(pool, call) for call in calls]

    real = trio.run(in_a_worker)
    for call, mine, theirs in zip(calls, in_process, real, strict=True):
        assert mine == theirs, call
    # The calls cover successes, failures, streams and the codec's limits.
    kinds = {outcome[0] for outcome in in_process}
    assert kinds == {"ok", "error"}
    errors = {outcome[1] for outcome in in_process if outcome[0] == "error"}
    assert {"ValueError", "UnsupportedCommand"} <= errors


def test_the_comparison_sees_codec_differences() -> None:
    """The same call answers differently on the two wires, in the harness as in a worker (so
    the comparison above is sensitive to what the codec does)."""
    call = plain("compute", {"operation": "power", "a": 2, "b": 70})
    with HandlerHarness(wire="json") as harness:
        assert through_harness(harness, call)[1]["result"] == 1 << 70
    with HandlerHarness(wire="msgpack") as harness:
        outcome = through_harness(harness, call)
    assert outcome[0] == "error"
    assert "result['result'] is an int outside MessagePack's 64-bit range" in outcome[2]


# ---------------------------------------------------------------------- cancellation, both ways


def test_cancelling_a_cooperative_command_matches_a_worker() -> None:
    """A cancel stops ``audit`` (sync, polling its context) and ``check_stock`` (async) in the
    harness; in a worker, the pool's timeout cancels them and the worker confirms the cancel
    (it is not restarted) and goes on serving."""
    with HandlerHarness(SHOP) as harness:
        for command, args in (
            ("audit", {"seconds": 60}),
            ("check_stock", {"item": "x", "delay": 60}),
        ):
            running = harness.start(command, args)
            time.sleep(0.05)
            started = time.monotonic()
            running.cancel()
            with pytest.raises(CommandCancelled) as cancelled:
                running.result(timeout=5)
            assert time.monotonic() - started < 1.0
            assert cancelled.value.error_type == "Cancelled"
        assert harness.call("audit", {"seconds": 0.01}) == {"audited": True}

    async def in_a_worker() -> None:
        async with sp.open_pool(sp.PythonAdapter(SHOP), size=1) as pool:
            pid = pool.workers()[0].pid
            for command, args in (
                ("audit", {"seconds": 60}),
                ("check_stock", {"item": "x", "delay": 60}),
            ):
                with pytest.raises(sp.WorkerTimeout):
                    await pool.execute(command, args, timeout=0.2)
            assert await pool.execute("audit", {"seconds": 0.01}) == {"audited": True}
            worker = pool.workers()[0]
            assert (worker.pid, worker.restarts) == (pid, 0)

    trio.run(in_a_worker)


def _record(path: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while True:
        try:
            record: dict[str, Any] = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            record = {}
        if record.get("finally") or time.monotonic() > deadline:
            return record
        time.sleep(0.01)


def test_leaving_a_stream_early_closes_its_generator_as_in_a_worker(tmp_path: Path) -> None:
    harness_record = tmp_path / "harness.json"
    with HandlerHarness(TestingHandler) as harness:
        with harness.stream(
            "count_stream", {"count": 1000, "record_path": str(harness_record)}
        ) as chunks:
            taken = [chunk for _, chunk in zip(range(3), chunks, strict=False)]
        assert taken == [{"i": 0}, {"i": 1}, {"i": 2}]
        # Closed and confirmed when the block is left; in step with the consumer (1 credit).
        assert json.loads(harness_record.read_text()) == {"produced": 3, "finally": True}

    worker_record = tmp_path / "worker.json"

    async def in_a_worker() -> None:
        adapter = sp.PythonAdapter(TestingHandler)
        async with sp.open_pool(adapter, size=1) as pool:
            args = {"count": 1000, "record_path": str(worker_record)}
            async with pool.stream("count_stream", args) as chunks:
                async for chunk in chunks:
                    if chunk["i"] == 2:
                        break

    trio.run(in_a_worker)
    record = _record(worker_record)
    assert record["finally"] is True
    assert 3 <= record["produced"] < 1000  # a pool's window lets it run a few chunks ahead


# ---------------------------------------------------------------------- the harness's own promises


class Probe(BaseCommandHandler):
    """Commands that show what a handler sees and when it runs."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.ran: list[str] = []
        self.produced = 0
        self.closed = False
        super().__init__()

    def _register_commands(self) -> None:
        for name in (
            "context",
            "context_stream",
            "wait_for_cancel",
            "async_wait",
            "steps",
            "deaf",
            "exit",
            "boom",
            "when",
        ):
            self.register_command(name, getattr(self, f"handle_{name}"))

    def _describe(self) -> dict[str, Any]:
        ctx = current_context()
        self.ran.append(ctx.command)
        return {
            "id": ctx.id,
            "command": ctx.command,
            "session_id": ctx.session_id,
            "stream": ctx.stream,
            "same": self.context is ctx,
        }

    def handle_context(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._describe()

    def handle_context_stream(self, args: dict[str, Any]) -> Generator[dict[str, Any], None, str]:
        yield self._describe()
        return "end"

    def handle_wait_for_cancel(self, args: dict[str, Any]) -> None:
        ctx = current_context()
        self.started.set()
        while True:
            ctx.check_cancelled()
            time.sleep(0.001)

    async def handle_async_wait(self, args: dict[str, Any]) -> None:
        self.started.set()
        try:
            await asyncio.sleep(60)
        finally:
            self.closed = True

    async def handle_steps(self, args: dict[str, Any]) -> AsyncGenerator[int, None]:
        try:
            for i in range(args.get("count", 100)):
                self.produced += 1
                yield i
        finally:
            self.closed = True

    def handle_deaf(self, args: dict[str, Any]) -> dict[str, Any]:
        self.started.set()
        time.sleep(args["seconds"])
        return {"done": True}

    def handle_exit(self, args: dict[str, Any]) -> None:
        sys.exit(3)

    def handle_boom(self, args: dict[str, Any]) -> None:
        _fail_deep(args["message"])

    def handle_when(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"at": [datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC)]}


def _fail_deep(message: str) -> None:
    raise LookupError(message)


def test_the_context_names_the_request_and_its_session() -> None:
    with HandlerHarness(Probe) as harness:
        running = harness.start("context", session_id="s-1")
        assert running.result() == {
            "id": running.id,
            "command": "context",
            "session_id": "s-1",
            "stream": False,
            "same": True,
        }
        assert harness.call("context")["session_id"] is None
        with harness.stream("context_stream") as chunks:
            (seen,) = list(chunks)
        assert (seen["id"], seen["stream"], chunks.result) == (chunks.id, True, "end")


def test_a_cancel_reaches_a_sync_handler_through_its_context() -> None:
    with HandlerHarness(Probe) as harness:
        running = harness.start("wait_for_cancel")
        assert harness.handler.started.wait(5)
        assert not running.done()
        running.cancel()
        with pytest.raises(CommandCancelled):
            running.result(timeout=2)
        assert running.done()


def test_a_cancel_cancels_a_running_async_handler() -> None:
    with HandlerHarness(Probe) as harness:
        running = harness.start("async_wait")
        assert harness.handler.started.wait(5)
        running.cancel()
        with pytest.raises(CommandCancelled):
            running.result(timeout=2)
        assert harness.handler.closed  # its finally ran, before the answer


@pytest.mark.parametrize(("credits", "most"), [(1, 3), (4, 3 + 4)])
def test_a_stream_runs_at_most_its_credits_ahead_of_its_consumer(credits: int, most: int) -> None:
    with HandlerHarness(Probe) as harness:
        with harness.stream("steps", credits=credits) as chunks:
            assert [next(chunks) for _ in range(3)] == [0, 1, 2]
            time.sleep(0.05)  # room to run ahead, if it could
        assert harness.handler.closed
        assert 3 <= harness.handler.produced <= most
        assert chunks.count == 3


def test_cancel_then_iterate_raises_cancelled() -> None:
    with HandlerHarness(Probe) as harness:
        chunks = harness.stream("steps")
        assert next(chunks) == 0
        chunks.cancel()
        with pytest.raises(CommandCancelled):
            next(chunks)
        assert harness.handler.closed


def test_a_queued_command_is_cancelled_without_running() -> None:
    with HandlerHarness(Probe) as harness:
        first = harness.start("deaf", {"seconds": 0.3})
        second = harness.start("context")
        second.cancel()
        with pytest.raises(CommandCancelled):
            second.result()
        assert first.result() == {"done": True}
        assert harness.handler.ran == []


def test_a_timeout_cancels_the_command_and_the_harness_goes_on() -> None:
    with HandlerHarness(Probe) as harness:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="wait_for_cancel"):
            harness.call("wait_for_cancel", timeout=0.2)
        assert harness.call("context")["command"] == "context"
        assert time.monotonic() - started < 2


def test_close_gives_up_on_a_handler_that_ignores_cancellation() -> None:
    harness = HandlerHarness(Probe, timeout=0.2)
    harness.start("deaf", {"seconds": 1.0})
    assert harness.handler.started.wait(5)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="ignores cancellation"):
        harness.close()
    assert time.monotonic() - started < 1.0
    # Its thread ends with the handler (a second later); wait, not to leave it to other tests.
    for thread in threading.enumerate():
        if thread.name.startswith("snakepit-harness"):
            thread.join(5)


def test_a_handler_that_exits_fails_its_call_as_a_crash_would() -> None:
    with HandlerHarness(Probe) as harness:
        with pytest.raises(RuntimeError, match=r"SystemExit: 3"):
            harness.call("exit")
        with pytest.raises(RuntimeError, match="stopped"):
            harness.call("context")


def test_an_error_carries_the_handler_s_traceback() -> None:
    with HandlerHarness(Probe) as harness:
        with pytest.raises(CommandFailed) as failed:
            harness.call("boom", {"message": "no such thing"})
    error = failed.value
    assert (error.error_type, error.message) == ("LookupError", "no such thing")
    assert str(error) == "LookupError: no such thing"
    assert error.traceback is not None
    # From the handler down, as the bridge sends it: the server's own frames are left out.
    frames = [line for line in error.traceback.splitlines() if line.startswith("  File ")]
    assert [frame.rsplit(" ", 1)[-1] for frame in frames] == ["handle_boom", "_fail_deep"]


def test_a_result_the_codec_cannot_carry_is_named() -> None:
    with HandlerHarness(Probe, wire="msgpack") as harness:
        with pytest.raises(CommandFailed) as failed:
            harness.call("when")
    assert failed.value.message.startswith(
        "cannot send the result: result['at'][0] is a datetime.datetime, "
        "which MessagePack cannot encode"
    )


def test_big_payloads_pass_both_ways() -> None:
    blob = os.urandom(3 << 20)  # far over a pipe's buffer, both ways
    with HandlerHarness() as harness:
        assert harness.call("echo", {"blob": blob})["echoed"]["blob"] == blob


def test_handler_forms() -> None:
    instance = Probe()
    with HandlerHarness(instance) as harness:
        assert harness.handler is instance
    with HandlerHarness() as harness:
        assert type(harness.handler) is GenericCommandHandler
    with HandlerHarness("snakepit_trio_bridge.testing:TestingHandler") as harness:
        assert type(harness.handler) is TestingHandler
    with HandlerHarness(SHOP) as harness:
        assert harness.call("quote", {"item": "apple"})["total"] == 0.5
    with pytest.raises(TypeError, match="not a BaseCommandHandler"):
        HandlerHarness(dict)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="wire"):
        HandlerHarness(wire="xml")
    with pytest.raises(ValueError, match="timeout"):
        HandlerHarness(timeout=0)


def test_a_failing_constructor_raises_its_own_exception() -> None:
    class Broken(BaseCommandHandler):
        def __init__(self) -> None:
            raise OSError("model file missing")

    with pytest.raises(OSError, match="model file missing"):
        HandlerHarness(Broken)


def _harness_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("snakepit-harness")]


def test_close_releases_threads_and_descriptors() -> None:
    before = set(os.listdir("/proc/self/fd"))
    harness = HandlerHarness(Probe)
    assert len(_harness_threads()) == 2
    harness.call("context")
    running = harness.start("wait_for_cancel")  # still running: close cancels it
    harness.close()
    harness.close()  # twice is fine
    with pytest.raises(CommandCancelled):
        running.result()
    assert _harness_threads() == []
    assert set(os.listdir("/proc/self/fd")) == before
    with pytest.raises(RuntimeError, match="closed"):
        harness.start("context")


def test_importing_the_harness_keeps_the_worker_package_light() -> None:
    code = (
        "import sys, snakepit_trio_bridge.harness; "
        "print(sorted(m for m in ('trio', 'anyio', 'attrs', 'snakepit_trio') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "bridges" / "python")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
