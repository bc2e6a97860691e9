"""Drop-in compatibility with Snakepit v0.3.0 bridges (issue 6).

The bridges here are stand-ins in tests/standins/ that reproduce the v0.3 bridges' behaviour,
quirks included (see their docstrings): ``generic_bridge_v2.py`` in its three protocol modes,
the JSON-only ``generic_bridge.py`` and the Node ``generic_bridge.js``. Every pool is built from
the generic ``sp.Adapter``, as a user with an unmodified v0.3 bridge would build it. The
stand-ins record every frame they receive to the file named by ``STANDIN_RECORD``, so the tests
can check what actually went over the wire.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Literal

import anyio
import psutil
import pytest

import snakepit_trio as sp

pytestmark = pytest.mark.anyio

STANDINS = Path(__file__).resolve().parent / "standins"
V2_BRIDGE = STANDINS / "v03_generic_bridge_v2.py"
JSON_BRIDGE = STANDINS / "v03_generic_bridge.py"
NODE_BRIDGE = STANDINS / "v03_generic_bridge.js"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed")

CONFIG = sp.PoolConfig(
    negotiation_timeout=2.0,
    startup_timeout=5.0,
    worker_init_timeout=5.0,
    shutdown_grace=1.0,
    kill_grace=0.5,
    restart_backoff=0.01,
    health_check_interval=None,
)
BOUND = 10.0  # seconds: no test here may take longer (a hang is a failure, not a stall)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def record_file(tmp_path: Path) -> Path:
    return tmp_path / "frames.jsonl"


def read_record(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def v2_adapter(record: Path, protocol: Literal["json", "msgpack"] | None) -> sp.Adapter:
    flags = ["--mode", "pool-worker"]
    if protocol is not None:
        flags += ["--protocol", protocol]
    return sp.Adapter(
        sys.executable,
        V2_BRIDGE,
        flags,
        wire=protocol or "auto",
        env={"STANDIN_RECORD": str(record)},
    )


def json_only_adapter(record: Path) -> sp.Adapter:
    return sp.Adapter(
        sys.executable,
        JSON_BRIDGE,
        ["--mode", "pool-worker"],
        wire="auto",
        env={"STANDIN_RECORD": str(record)},
    )


def node_adapter(record: Path) -> sp.Adapter:
    assert NODE is not None
    return sp.Adapter(
        NODE,
        NODE_BRIDGE,
        ["--mode", "pool-worker"],
        wire="auto",
        env={"STANDIN_RECORD": str(record)},
    )


def adapter_for(kind: str, record: Path) -> sp.Adapter:
    if kind == "v2-auto":
        return v2_adapter(record, None)
    if kind == "v2-json":
        return v2_adapter(record, "json")
    if kind == "v2-msgpack":
        return v2_adapter(record, "msgpack")
    if kind == "json-only":
        return json_only_adapter(record)
    if kind == "node":
        if NODE is None:
            pytest.skip("node is not installed")
        return node_adapter(record)
    raise AssertionError(kind)


NODE_KIND = pytest.param("node", marks=pytest.mark.node)
ALL_BRIDGES = [
    "v2-auto",
    "v2-json",
    "v2-msgpack",
    "json-only",
    NODE_KIND,
]


async def wait_for(predicate: Any, what: str, timeout: float = 5.0) -> None:
    with anyio.move_on_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# --------------------------------------------------------------------------- protocol modes


async def test_v2_without_flag_negotiates_msgpack_and_announces_no_features(
    record_file: Path,
) -> None:
    with anyio.fail_after(BOUND):
        async with sp.open_pool(v2_adapter(record_file, None), size=1, config=CONFIG) as pool:
            (info,) = pool.workers()
            assert info.protocol == "msgpack"
            assert info.features == frozenset()
            assert pool.features == frozenset()
            added = await pool.execute("compute", {"operation": "add", "a": 2, "b": 3})
            info_result = await pool.execute("info")
    assert added["status"] == "ok" and added["result"] == 5
    assert info_result["bridge_info"]["name"] == "Generic Snakepit Bridge"
    frames = read_record(record_file)
    assert frames[0]["phase"] == "negotiation"
    assert frames[0]["type"] == "protocol_negotiation"
    served = [f for f in frames if f["phase"] == "serve"]
    assert [f["command"] for f in served] == ["ping", "compute", "info"]
    assert {f["codec"] for f in served} == {"msgpack"}
    # v0.3 request shape: id, command, args, timestamp (nothing else on a plain call)
    assert served[1]["keys"] == ["args", "command", "id", "timestamp"]


@pytest.mark.parametrize("protocol", ["json", "msgpack"])
async def test_explicit_protocol_bridge_is_never_sent_negotiation(
    record_file: Path, protocol: str
) -> None:
    with anyio.fail_after(BOUND):
        async with sp.open_pool(v2_adapter(record_file, protocol), size=2, config=CONFIG) as pool:
            assert {w.protocol for w in pool.workers()} == {protocol}
            result = await pool.execute("compute", {"operation": "multiply", "a": 6, "b": 7})
    assert result["result"] == 42
    frames = read_record(record_file)
    assert frames, "the stand-in recorded nothing"
    assert all(f["phase"] == "serve" for f in frames)
    assert all(f.get("type") is None for f in frames)
    assert {f["codec"] for f in frames} == {protocol}
    assert sorted(f["command"] for f in frames) == ["compute", "ping", "ping"]


@pytest.mark.parametrize("kind", ["json-only", NODE_KIND])
async def test_auto_falls_back_to_json_against_json_only_bridge(
    record_file: Path, kind: str
) -> None:
    # Neither JSON-only v0.3 bridge knows negotiation: both take the frame for a request without
    # a command. The Python one answers {"id": null, "success": true, "result": {"status":
    # "error", ...}}, the Node one an error frame with no id at all. Neither is a
    # protocol_selected, so the pool falls back to JSON at once, well within the timeout.
    config = sp.PoolConfig(negotiation_timeout=3.0, shutdown_grace=1.0, health_check_interval=None)
    with anyio.fail_after(BOUND):
        started = time.monotonic()
        async with sp.open_pool(adapter_for(kind, record_file), size=1, config=config) as pool:
            ready_after = time.monotonic() - started
            assert pool.workers()[0].protocol == "json"
            assert pool.features == frozenset()
            result = await pool.execute("compute", {"operation": "subtract", "a": 10, "b": 4})
    assert result["result"] == 6
    assert ready_after < config.negotiation_timeout
    frames = read_record(record_file)
    assert frames[0]["type"] == "protocol_negotiation" and frames[0].get("command") is None
    assert [f["command"] for f in frames[1:]] == ["ping", "compute"]


@needs_node
@pytest.mark.node
async def test_node_bridge_errors_reach_callers_typed(record_file: Path) -> None:
    with anyio.fail_after(BOUND):
        async with sp.open_pool(node_adapter(record_file), size=1, config=CONFIG) as pool:
            power = await pool.execute("compute", {"operation": "power", "a": 2, "b": 10})
            with pytest.raises(sp.CommandError, match="Division by zero") as divide:
                await pool.execute("compute", {"operation": "divide", "a": 1, "b": 0})
            # v0.3 Node turns a handler's {"status": "error"} into success: false
            with pytest.raises(sp.CommandError, match="soft failure"):
                await pool.execute("soft_error")
            with pytest.raises(sp.UnsupportedCommand, match="Unknown command: nope"):
                await pool.execute("nope")
            still = await pool.execute("random", {"type": "integer", "min": 3, "max": 3})
    assert power["result"] == 1024
    assert divide.value.error_type is None
    assert still["value"] == 3


# --------------------------------------------------------------------------- v0.3 quirks


@pytest.mark.parametrize("kind", ["v2-auto", "v2-json", "json-only"])
async def test_success_true_with_status_error_is_passed_through(
    record_file: Path, kind: str
) -> None:
    with anyio.fail_after(BOUND):
        async with sp.open_pool(adapter_for(kind, record_file), size=1, config=CONFIG) as pool:
            divided = await pool.execute("compute", {"operation": "divide", "a": 1, "b": 0})
            unknown = await pool.execute("no_such_command", {"x": 1})
            stats = pool.stats()
    assert divided["status"] == "error" and divided["error"] == "Division by zero"
    assert unknown["status"] == "error"
    assert unknown["error"] == "Unknown command: no_such_command"
    assert "compute" in unknown["supported_commands"]
    # At the protocol level both succeeded: they are not counted as errors.
    assert stats["requests"] == 2 and stats["errors"] == 0


@pytest.mark.parametrize("kind", ["v2-auto", "v2-json", "json-only", NODE_KIND])
async def test_malformed_frame_gets_no_reply_and_ends_in_worker_timeout(
    record_file: Path, kind: str
) -> None:
    with anyio.fail_after(BOUND):
        async with sp.open_pool(adapter_for(kind, record_file), size=1, config=CONFIG) as pool:
            first_pid = pool.workers()[0].pid
            started = time.monotonic()
            with pytest.raises(sp.WorkerTimeout):
                await pool.execute("unparseable", {"x": 1}, timeout=0.5)
            assert time.monotonic() - started < 1.5
            # The worker cannot cancel (v0.3): it is replaced, and the pool serves again.
            await wait_for(lambda: pool.workers()[0].state == "idle", "a fresh worker")
            result = await pool.execute("echo", {"after": "timeout"})
            assert pool.workers()[0].pid != first_pid
            assert pool.workers()[0].restarts == 1
    assert result["echoed"] == {"after": "timeout"}
    assert any(f.get("unparseable") for f in read_record(record_file))


async def test_msgpack_frame_v03_cannot_decode_gets_no_reply(record_file: Path) -> None:
    # A real v0.3 decoding failure, not a stand-in hook: v0.3 unpacks with use_list=True, so a
    # map key that is an array (a tuple key on our side) is unhashable there. Its JSON fallback
    # fails too, and the request is silently dropped.
    with anyio.fail_after(BOUND):
        async with sp.open_pool(v2_adapter(record_file, "msgpack"), size=1, config=CONFIG) as pool:
            with pytest.raises(sp.WorkerTimeout):
                await pool.execute("echo", {(1, 2): "tuple key"}, timeout=0.5)
            await wait_for(lambda: pool.workers()[0].state == "idle", "a fresh worker")
            assert (await pool.execute("echo", {"ok": 1}))["echoed"] == {"ok": 1}
    assert any(f.get("unparseable") for f in read_record(record_file))


@pytest.mark.parametrize("kind", ["v2-auto", "v2-msgpack"])
async def test_binary_payloads_round_trip_exactly_through_msgpack(
    record_file: Path, kind: str
) -> None:
    blob = bytes(range(256)) * 4096 + os.urandom(4093)  # 1 MiB and a bit; not valid UTF-8
    with anyio.fail_after(BOUND):
        async with sp.open_pool(adapter_for(kind, record_file), size=1, config=CONFIG) as pool:
            assert pool.workers()[0].protocol == "msgpack"
            result = await pool.execute("echo", {"blob": blob, "empty": b"", "nul": b"\x00\xff"})
            # v0.3 quirk, passed through as the bridge sends it: v0.3 turns every bin that
            # is valid UTF-8 into a str.
            texty = await pool.execute("echo", {"texty": b"plain ascii"})
    echoed = result["echoed"]
    assert type(echoed["blob"]) is bytes and echoed["blob"] == blob
    assert echoed["nul"] == b"\x00\xff"
    assert texty["echoed"]["texty"] == "plain ascii"


@pytest.mark.parametrize("kind", ["v2-auto", "json-only", NODE_KIND])
async def test_streaming_on_v03_bridge_is_a_clear_unsupported_command(
    record_file: Path, kind: str
) -> None:
    with anyio.fail_after(BOUND):
        async with sp.open_pool(adapter_for(kind, record_file), size=1, config=CONFIG) as pool:
            with pytest.raises(sp.UnsupportedCommand, match="'stream'") as caught:
                async with pool.stream("ping_stream", {"count": 3}) as chunks:
                    async for _ in chunks:  # pragma: no cover - must not get here
                        pass
            with pytest.raises(sp.UnsupportedCommand, match="stream"):
                await pool.execute_stream("ping_stream", {"count": 3}, lambda chunk: None)
            # The pool is unharmed and nothing was sent for the refused streams.
            assert (await pool.execute("echo", {"n": 1}))["echoed"] == {"n": 1}
    assert "feature" in str(caught.value)
    commands = [f.get("command") for f in read_record(record_file)]
    assert "ping_stream" not in commands


@pytest.mark.parametrize("kind", ["v2-auto", "v2-json", NODE_KIND])
async def test_cancellation_on_v03_bridge_kills_and_restarts_the_worker(
    record_file: Path, kind: str
) -> None:
    with anyio.fail_after(BOUND):
        async with sp.open_pool(adapter_for(kind, record_file), size=1, config=CONFIG) as pool:
            old_pid = pool.workers()[0].pid
            assert old_pid is not None

            def sleep_received() -> bool:
                return any(f.get("command") == "sleep" for f in read_record(record_file))

            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(pool.execute, "sleep", {"seconds": 30})
                    await wait_for(sleep_received, "the request to reach the bridge")
                    cancelled_at = time.monotonic()
                    scope.cancel()
            assert scope.cancelled_caught
            assert time.monotonic() - cancelled_at < 0.5, "cancellation must return promptly"
            await wait_for(lambda: pool.workers()[0].state == "idle", "a fresh worker")
            new = pool.workers()[0]
            assert new.pid != old_pid and new.restarts == 1
            await wait_for(lambda: not _running(old_pid), "the old process to be gone")
            assert (await pool.execute("echo", {"again": True}))["echoed"] == {"again": True}
            assert pool.stats()["cancelled"] == 1


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("kind", ALL_BRIDGES)
async def test_v03_bridge_exits_cleanly_on_stdin_eof(record_file: Path, kind: str) -> None:
    exits: list[sp.WorkerExited] = []
    config = sp.PoolConfig(shutdown_grace=3.0, kill_grace=1.0, health_check_interval=None)
    with anyio.fail_after(BOUND):
        async with sp.open_pool(adapter_for(kind, record_file), size=2, config=config) as pool:
            pool.telemetry.add_listener(
                lambda event: exits.append(event) if isinstance(event, sp.WorkerExited) else None
            )
            await pool.execute("ping")
            closing = time.monotonic()
        closed_in = time.monotonic() - closing
    # Closing stdin is the first step of the ladder; a v0.3 bridge exits 0 on it, long
    # before the ladder would escalate to SIGTERM.
    assert closed_in < config.shutdown_grace
    assert len(exits) == 2
    assert all(e.exit_code == 0 and e.signal is None and not e.crashed for e in exits)


@pytest.mark.parametrize("kind", ["v2-auto", "json-only", NODE_KIND])
async def test_v03_bridge_killed_by_sigterm_is_replaced(record_file: Path, kind: str) -> None:
    with anyio.fail_after(BOUND):
        async with sp.open_pool(adapter_for(kind, record_file), size=1, config=CONFIG) as pool:
            old_pid = pool.workers()[0].pid
            assert old_pid is not None
            os.kill(old_pid, signal.SIGTERM)
            await wait_for(lambda: not _running(old_pid), "the bridge to exit on SIGTERM")
            await wait_for(
                lambda: pool.workers()[0].state == "idle" and pool.workers()[0].pid != old_pid,
                "a replacement",
            )
            assert (await pool.execute("echo", {"x": 1}))["echoed"] == {"x": 1}


async def test_session_calls_carry_session_id_in_args_as_v03_does(record_file: Path) -> None:
    with anyio.fail_after(BOUND):
        async with sp.open_pool(v2_adapter(record_file, None), size=2, config=CONFIG) as pool:
            first = await pool.execute_in_session("user-42", "echo", {"step": 1})
            second = await pool.execute_in_session("user-42", "whoami")
            third = await pool.execute_in_session("user-42", "whoami")
    assert first["echoed"] == {"step": 1, "session_id": "user-42"}
    assert second["pid"] == third["pid"], "session affinity keeps the session on one worker"
