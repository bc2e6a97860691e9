"""A worker in another language: the Perl bridge of examples/perl_bridge/, through real pools.

Skips when ``perl`` or its core module JSON::PP is missing. tests/test_examples.py runs
examples/perl_bridge/run.py itself.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from proc_support import pid_alive

import snakepit_trio as sp

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "examples" / "perl_bridge"
BRIDGE = FOLDER / "bridge.pl"


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("perl_bridge_run", FOLDER / "run.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = _load_example()
MISSING: str | None = example.perl_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"Perl bridge: {MISSING}")


def perl_adapter(**kwargs: Any) -> sp.Adapter:
    adapter: sp.Adapter = example.PerlAdapter(**kwargs)
    return adapter


@pytest.mark.anyio
async def test_a_plain_adapter_negotiates_json_without_features() -> None:
    async with sp.open_pool(sp.Adapter("perl", BRIDGE, wire="auto"), size=1) as pool:
        assert pool.features == frozenset()
        [worker] = pool.workers()
        assert worker.protocol == "json"
        assert worker.pid is not None
        pong = await pool.execute("ping")
        assert pong["status"] == "ok"
        assert pong["bridge_type"] == "perl"
        assert pong["pid"] == worker.pid
        added = await pool.execute("compute", {"operation": "add", "a": 2, "b": 3})
        assert added["result"] == 5
        product = await pool.execute("compute", {"operation": "multiply", "a": 2.5, "b": 4})
        assert product["result"] == 10
        payload = {"text": "grüße ☃", "blob": b"\x00\xff", "list": [1, 2.5, None, True]}
        assert (await pool.execute("echo", payload))["echoed"] == payload
        with pytest.raises(sp.CommandError) as info:
            await pool.execute("compute", {"operation": "divide", "a": 1, "b": 0})
        assert info.value.error_type == "PerlError"
        assert info.value.message == "division by zero"
        with pytest.raises(sp.CommandError, match="Unsupported operation"):
            await pool.execute("compute", {"operation": "modulo"})
        with pytest.raises(sp.UnsupportedCommand, match="Unknown command: fly"):
            await pool.execute("fly")
        echoed = await pool.execute_in_session("s1", "echo", {"n": 1})
        assert echoed["echoed"] == {"n": 1, "session_id": "s1"}
        assert pool.workers()[0].pid == worker.pid  # errors did not cost the worker
        assert pool.stats()["errors"] == 3
    assert not pid_alive(worker.pid)


@pytest.mark.anyio
async def test_wire_json_skips_negotiation() -> None:
    async with sp.open_pool(sp.Adapter("perl", BRIDGE, wire="json"), size=1) as pool:
        assert pool.workers()[0].protocol == "json"
        assert (await pool.execute("reverse", {"text": "perl"}))["text"] == "lrep"


@pytest.mark.anyio
async def test_adapter_hooks_shape_the_calls() -> None:
    async with sp.open_pool(perl_adapter(), size=2) as pool:
        pids = {w.pid for w in pool.workers() if w.pid is not None}
        assert len(pids) == 2
        # process_response: the bare number
        assert await pool.execute("compute", {"operation": "multiply", "a": 3, "b": 4}) == 12
        # prepare_args: a number becomes text
        assert (await pool.execute("reverse", {"text": 123}))["text"] == "321"
        before = pool.stats()["requests"]
        with pytest.raises(sp.UnsupportedCommand, match="not supported by perl bridge"):
            await pool.execute("fly")
        with pytest.raises(ValueError, match="unknown operation"):
            await pool.execute("compute", {"operation": "modulo"})
        with pytest.raises(TypeError, match="must be a number"):
            await pool.execute("compute", {"a": "7"})
        assert pool.stats()["requests"] == before  # refused at the call site, never sent
        with pytest.raises(sp.CommandError, match="on purpose"):
            await pool.execute("fail", {"message": "on purpose"})
        assert pool.adapter.command_timeout("ping", {}) == 5.0
    assert not any(pid_alive(pid) for pid in pids)


def _frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def test_raw_frames_bad_json_and_eof() -> None:
    frames = [
        _frame(json.dumps({"type": "protocol_negotiation", "supported": ["json"]}).encode()),
        _frame(b"{not json"),
        _frame(json.dumps({"id": 7, "command": "ping", "args": {}}).encode()),
    ]
    done = subprocess.run(
        ["perl", str(BRIDGE)], input=b"".join(frames), capture_output=True, timeout=30
    )
    assert done.returncode == 0  # stdin EOF between frames: a clean exit
    out, replies = done.stdout, []
    while out:
        (length,) = struct.unpack(">I", out[:4])
        replies.append(json.loads(out[4 : 4 + length]))
        out = out[4 + length :]
    assert replies[0] == {"type": "protocol_selected", "protocol": "json"}
    assert replies[1]["id"] is None
    assert replies[1]["success"] is False
    assert replies[2]["id"] == 7
    assert replies[2]["success"] is True
    cut = subprocess.run(
        ["perl", str(BRIDGE)], input=frames[2][:-3], capture_output=True, timeout=30
    )
    assert cut.returncode != 0  # end of input inside a frame
    assert b"inside a frame" in cut.stderr
