"""The enhanced bridge (opt-in) and the pool-side program helpers, with real workers."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import namedtuple
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from snakepit_trio_bridge.enhanced import (
    ENHANCED_COMMANDS,
    EnhancedCommandHandler,
    ObjectNotFound,
    to_wire,
)
from snakepit_trio_bridge.protocol.constants import ENV_SESSION_TTL

import snakepit_trio as sp
from snakepit_trio._adapters import Wire

ROOT = Path(__file__).resolve().parents[1]
S = "sess-a"


@pytest.fixture
async def pool(anyio_backend: str) -> AsyncIterator[sp.Pool]:
    async with sp.open_pool(sp.PythonAdapter(enhanced=True), size=1) as pool:
        yield pool


async def expect_error(pool: sp.Pool, command: str, args: dict[str, Any]) -> sp.CommandError:
    with pytest.raises(sp.CommandError) as info:
        await pool.execute_in_session(S, command, args)
    return info.value


# ------------------------------------------------------------------ the adapter keyword


def test_enhanced_keyword_selects_the_handler() -> None:
    adapter = sp.PythonAdapter(enhanced=True)
    assert adapter.handler == "snakepit_trio_bridge.enhanced:EnhancedCommandHandler"
    assert adapter.enhanced
    assert "--handler" in adapter.argv()
    assert "enhanced" in adapter.name
    assert not sp.PythonAdapter().enhanced
    with pytest.raises(ValueError, match="either enhanced=True or handler="):
        sp.PythonAdapter("pkg.mod:Handler", enhanced=True)


@pytest.mark.anyio
async def test_enhanced_commands_are_absent_by_default() -> None:
    async with sp.open_pool(sp.PythonAdapter(), size=1) as pool:
        info = await pool.execute("info")
        assert not set(ENHANCED_COMMANDS) & set(info["bridge_info"]["supported_commands"])
        for command in ENHANCED_COMMANDS:
            with pytest.raises(sp.UnsupportedCommand):
                await pool.execute_in_session(S, command, {"target": "os.getpid"})


# ------------------------------------------------------------------ commands


@pytest.mark.anyio
async def test_call_by_dotted_path_colon_path_and_builtin(pool: sp.Pool) -> None:
    mean = await pool.execute("call", {"target": "statistics.mean", "args": [[1, 2, 3, 4]]})
    assert mean == {"status": "ok", "result": 2.5}
    joined = await pool.execute("call", {"target": "os.path.join", "args": ["a", "b"]})
    assert joined["result"] == "a/b"
    text = await pool.execute(
        "call",
        {"target": "textwrap:shorten", "args": ["hello big world"], "kwargs": {"width": 12}},
    )
    assert text["result"] == "hello [...]"
    assert (await pool.execute("call", {"target": "len", "args": ["four"]}))["result"] == 4
    fit = await pool.execute(
        "call", {"target": "statistics:linear_regression", "args": [[1, 2, 3], [2, 4, 6]]}
    )
    assert fit["result"] == {"slope": 2.0, "intercept": 0.0}  # a named tuple becomes a map


@pytest.mark.anyio
async def test_call_store_as_then_call_a_method_of_the_stored_object(pool: sp.Pool) -> None:
    stored = await pool.execute_in_session(
        S,
        "call",
        {"target": "collections.Counter", "args": ["abracadabra"], "store_as": "counts"},
    )
    assert stored["stored"]["name"] == "counts"
    assert stored["stored"]["type"] == "collections.Counter"
    assert "result" not in stored
    top = await pool.execute_in_session(
        S, "call", {"object": "counts", "method": "most_common", "args": [2]}
    )
    assert top["result"] == [["a", 5], ["b", 2]]


@pytest.mark.anyio
async def test_store_retrieve_list_delete(pool: sp.Pool) -> None:
    reply = await pool.execute_in_session(S, "store", {"name": "xs", "value": [3, 1, 2]})
    assert reply["stored"] == {"name": "xs", "type": "list", "len": 3}
    assert not reply["replaced"]
    await pool.execute_in_session(S, "store", {"name": "cfg", "value": {"k": {"deep": [7, 8]}}})
    # a stored value may reference another; $literal keeps a "$ref" map as data
    await pool.execute_in_session(
        S,
        "store",
        {"name": "alias", "value": {"of": {"$ref": "xs"}, "raw": {"$literal": {"$ref": 1}}}},
    )
    assert (await pool.execute_in_session(S, "retrieve", {"name": "xs"}))["value"] == [3, 1, 2]
    deep = await pool.execute_in_session(S, "retrieve", {"name": "cfg.k.deep.1"})
    assert deep == {"status": "ok", "name": "cfg.k.deep.1", "value": 8}
    alias = await pool.execute_in_session(S, "retrieve", {"name": "alias"})
    assert alias["value"] == {"of": [3, 1, 2], "raw": {"$ref": 1}}
    listing = await pool.execute_in_session(S, "list_stored")
    assert listing["count"] == 3
    assert [o["name"] for o in listing["objects"]] == ["xs", "cfg", "alias"]
    deleted = await pool.execute_in_session(S, "delete_stored", {"names": ["xs", "nope"]})
    assert deleted["deleted"] == ["xs"]
    assert deleted["missing"] == ["nope"]
    await pool.execute_in_session(S, "delete_stored", {"all": True})
    assert (await pool.execute_in_session(S, "list_stored"))["count"] == 0


@pytest.mark.anyio
async def test_the_object_store_is_per_session(pool: sp.Pool) -> None:
    # one worker: both sessions share the process, not the store
    await pool.execute_in_session("alice", "store", {"name": "secret", "value": 1})
    await pool.execute_in_session("bob", "store", {"name": "secret", "value": 2})
    await pool.execute_in_session("bob", "store", {"name": "only_bob", "value": 3})
    alice = await pool.execute_in_session("alice", "retrieve", {"name": "secret"})
    assert alice["value"] == 1
    with pytest.raises(sp.CommandError) as info:
        await pool.execute_in_session("alice", "retrieve", {"name": "only_bob"})
    assert info.value.error_type == "ObjectNotFound"
    assert (await pool.execute_in_session("alice", "list_stored"))["count"] == 1
    await pool.execute_in_session("bob", "delete_stored", {"all": True})
    still = await pool.execute_in_session("alice", "retrieve", {"name": "secret"})
    assert still["value"] == 1
    # without a session there is no store
    with pytest.raises(sp.CommandError, match="execute_in_session"):
        await pool.execute("store", {"name": "x", "value": 1})


def test_a_session_unused_for_the_ttl_loses_its_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    handler = EnhancedCommandHandler(session_ttl=100)
    monkeypatch.setattr(handler, "_clock", lambda: now[0])
    handler.handle_store({"session_id": "old", "name": "x", "value": 1})
    handler.handle_store({"session_id": "busy", "name": "y", "value": 2})
    for _ in range(4):  # "busy" keeps being used; "old" does not (sweeps are 50 s apart)
        now[0] += 40
        handler.handle_retrieve({"session_id": "busy", "name": "y"})
    assert set(handler.stores) == {"busy"}
    with pytest.raises(ObjectNotFound):
        handler.handle_retrieve({"session_id": "old", "name": "x"})
    now[0] += 100
    handler.handle_list_stored({"session_id": "other"})  # any session's access sweeps
    assert handler.stores == {}


def test_the_session_ttl_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_SESSION_TTL, raising=False)
    assert EnhancedCommandHandler().session_ttl == 3600
    monkeypatch.setenv(ENV_SESSION_TTL, "2.5")
    assert EnhancedCommandHandler().session_ttl == 2.5
    monkeypatch.setenv(ENV_SESSION_TTL, "inf")
    assert EnhancedCommandHandler().session_ttl == math.inf
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(ENV_SESSION_TTL, bad)
        with pytest.raises(ValueError, match=ENV_SESSION_TTL):
            EnhancedCommandHandler()


@pytest.mark.anyio
async def test_worker_objects_expire_with_the_pool_session_ttl(anyio_backend: str) -> None:
    config = sp.PoolConfig(session_ttl=0.3)
    async with sp.open_pool(sp.PythonAdapter(enhanced=True), size=1, config=config) as pool:
        await pool.execute_in_session(S, "store", {"name": "x", "value": 1})
        assert (await pool.execute_in_session(S, "retrieve", {"name": "x"}))["value"] == 1
        await anyio.sleep(0.5)
        with pytest.raises(sp.CommandError) as info:
            await pool.execute_in_session(S, "retrieve", {"name": "x"})
        assert info.value.error_type == "ObjectNotFound"


@pytest.mark.anyio
async def test_inspect_a_stored_object_and_an_import_path(pool: sp.Pool) -> None:
    await pool.execute_in_session(S, "store", {"name": "word", "value": "x" * 1000})
    word = await pool.execute_in_session(S, "inspect", {"name": "word", "max_repr": 20})
    assert word["type"] == "str"
    assert word["len"] == 1000
    assert len(word["repr"]) == 20
    assert word["repr"].endswith("...")
    assert "upper" in word["attributes"]
    assert word["callable"] is False
    target = await pool.execute("inspect", {"target": "statistics:fmean"})
    assert target["callable"] is True
    assert target["signature"].startswith("(data")
    assert target["doc"]
    module = await pool.execute("inspect", {"target": "json.decoder"})
    assert module["type"] == "module"
    assert "JSONDecoder" in module["attributes"]


@pytest.mark.anyio
async def test_pipeline_with_step_refs_store_refs_and_outputs(pool: sp.Pool) -> None:
    await pool.execute_in_session(S, "store", {"name": "data", "value": ["3", "1", "2"]})
    steps = [
        {"name": "nums", "target": "map", "args": [{"$import": "int"}, {"$ref": "data"}]},
        {"name": "ordered", "target": "sorted", "args": [{"$ref": "nums"}], "store_as": "ordered"},
        {"name": "total", "target": "sum", "args": [{"$ref": "ordered"}]},
        {"name": "stats", "target": "statistics:fmean", "args": [{"$ref": "ordered"}]},
    ]
    reply = await pool.execute_in_session(S, "pipeline", {"steps": steps})
    assert reply["result"] == 2.0  # the last step
    assert reply["steps"] == 4
    assert reply["stored"] == ["ordered"]
    named = await pool.execute_in_session(
        S, "pipeline", {"steps": steps, "output": ["total", "ordered.0", "nums"]}
    )
    assert named["result"]["total"] == 6
    assert named["result"]["ordered.0"] == 1
    assert named["result"]["nums"]["__type__"] == "map"  # an iterator is not data
    one = await pool.execute_in_session(S, "pipeline", {"steps": steps, "output": "ordered"})
    assert one["result"] == [1, 2, 3]
    kept = await pool.execute_in_session(S, "retrieve", {"name": "ordered"})
    assert kept["value"] == [1, 2, 3]


@pytest.mark.anyio
async def test_a_failed_pipeline_names_the_step_and_stores_nothing(pool: sp.Pool) -> None:
    steps = [
        {"name": "ok", "target": "list", "args": [[1]], "store_as": "partial"},
        {"name": "bad", "target": "math.sqrt", "args": [-1]},
    ]
    error = await expect_error(pool, "pipeline", {"steps": steps})
    assert error.error_type == "PipelineError"
    assert "step 1 (bad) failed: ValueError" in str(error)
    assert (await pool.execute_in_session(S, "list_stored"))["count"] == 0


@pytest.mark.anyio
@pytest.mark.parametrize("wire", ["json", "msgpack"])
async def test_results_are_made_wire_safe(anyio_backend: str, wire: Wire) -> None:
    async with sp.open_pool(sp.PythonAdapter(enhanced=True, wire=wire), size=1) as pool:
        dec = await pool.execute("call", {"target": "decimal:Decimal", "args": ["1.5"]})
        assert dec["result"] == {"__type__": "decimal.Decimal", "repr": "Decimal('1.5')"}
        nan = await pool.execute("call", {"target": "float", "args": ["nan"]})
        assert nan["result"] == {"__type__": "float", "repr": "nan"}
        big = await pool.execute("call", {"target": "pow", "args": [2, 70]})
        assert big["result"]["__type__"] == "int"
        mixed = await pool.execute(
            "call",
            {"target": "dict", "kwargs": {"s": {"$import": "math:pi"}, "b": {"$literal": b"\x00"}}},
        )
        assert mixed["result"] == {"s": math.pi, "b": b"\x00"}
        nested = await pool.execute(
            "call", {"target": "list", "args": [[{"$import": "os:getpid"}, 1]]}
        )
        assert nested["result"][0]["__type__"] == "builtin_function_or_method"
        assert nested["result"][1] == 1
        # asked to store it, the object stays whole in the worker
        await pool.execute_in_session(
            S, "call", {"target": "decimal:Decimal", "args": ["2.5"], "store_as": "d"}
        )
        doubled = await pool.execute_in_session(
            S, "call", {"object": "d", "method": "__add__", "args": [{"$ref": "d"}]}
        )
        assert doubled["result"]["repr"] == "Decimal('5.0')"


def test_to_wire_conversions() -> None:
    point = namedtuple("point", "x y")
    assert to_wire({"t": (1, 2), "s": frozenset([1]), "p": point(1, 2)}) == {
        "t": [1, 2],
        "s": [1],
        "p": {"x": 1, "y": 2},
    }
    assert to_wire({(1, 2): "tuple key", 3: "int key"}) == {"(1, 2)": "tuple key", 3: "int key"}
    assert to_wire(bytearray(b"ab")) == b"ab"
    assert to_wire(math.inf) == {"__type__": "float", "repr": "inf"}
    assert to_wire(Decimal(1))["__type__"] == "decimal.Decimal"
    loop: list[Any] = []
    loop.append(loop)
    deep = to_wire(loop)  # a cycle ends in a description, not a RecursionError
    while isinstance(deep, list):
        deep = deep[0]
    assert deep["__type__"] == "list"


@pytest.mark.anyio
async def test_errors_come_back_as_command_errors(pool: sp.Pool) -> None:
    cases: list[tuple[str, dict[str, Any], str, str]] = [
        ("call", {"target": "no_such_module_xyz.f"}, "TargetNotFound", "no_such_module_xyz"),
        ("call", {"target": "statistics.nope"}, "TargetNotFound", "nope"),
        ("call", {"target": "statistics:"}, "TargetNotFound", "package.module:name"),
        ("call", {"target": "math:pi"}, "TypeError", "not callable"),
        ("call", {"object": "missing"}, "ObjectNotFound", "missing"),
        ("call", {"target": "len", "object": "x"}, "ValueError", "exactly one"),
        ("call", {"target": "len", "args": "abc"}, "TypeError", "'args' must be a list"),
        ("call", {"target": "math.sqrt", "args": [-1]}, "ValueError", "math domain error"),
        ("retrieve", {"name": "missing"}, "ObjectNotFound", "missing"),
        ("inspect", {"target": "no_such_module_xyz:f"}, "TargetNotFound", "no_such_module_xyz"),
        ("store", {"name": "a.b", "value": 1}, "ValueError", "without dots"),
        ("pipeline", {"steps": []}, "ValueError", "non-empty list"),
        ("delete_stored", {}, "ValueError", "'all': true"),
    ]
    for command, args, error_type, text in cases:
        error = await expect_error(pool, command, args)
        assert error.error_type == error_type, (command, args, error)
        assert text in str(error), (command, args, error)
    await pool.execute_in_session(S, "store", {"name": "n", "value": [1]})
    error = await expect_error(pool, "retrieve", {"name": "n.5"})
    assert error.error_type == "ObjectNotFound"
    assert (await pool.execute("ping"))["status"] == "ok"  # the worker is fine


# ------------------------------------------------------------------ programs


def test_program_definitions() -> None:
    command = sp.Program.from_definition(
        {"command": "compute", "args": {"a": {"$input": "a"}, "b": 2}, "timeout": 3}
    )
    assert command == sp.Program("compute", {"a": {"$input": "a"}, "b": 2}, 3)
    assert command.inputs() == {"a"}
    assert command.bind({"a": 5}) == {"a": 5, "b": 2}
    with pytest.raises(KeyError, match="'a'"):
        command.bind({})
    assert sp.Program.from_definition({"steps": [{"target": "len"}]}).command == "pipeline"
    assert sp.Program.from_definition({"target": "len", "args": [[1]]}).command == "call"
    assert sp.Program.from_definition({"object": "x", "method": "m"}).command == "call"
    for bad, error in (
        ({}, ValueError),
        ({"command": "x", "extra": 1}, ValueError),
        ({"command": ""}, TypeError),
        ({"command": "x", "args": [1]}, TypeError),
        ({"steps": []}, ValueError),
        ({"command": "x", "timeout": -1}, ValueError),
        ([("command", "x")], TypeError),
    ):
        with pytest.raises(error):
            sp.Program.from_definition(bad)  # type: ignore[arg-type]
    definition: dict[str, Any] = {"command": "echo", "args": {"v": [1]}}
    kept = sp.Program.from_definition(definition)
    definition["args"]["v"].append(2)  # the program keeps its own copy
    assert kept.args == {"v": [1]}


@pytest.mark.anyio
async def test_programs_on_any_bridge(anyio_backend: str) -> None:
    async with sp.open_pool(sp.PythonAdapter(), size=1) as pool:
        sp.create_global_program(
            pool,
            "add",
            {"command": "compute", "args": {"operation": "add", "a": {"$input": "a"}, "b": 1}},
        )
        sp.create_program(
            pool,
            S,
            "add",
            {
                "command": "compute",
                "args": {"operation": "multiply", "a": {"$input": "a"}, "b": 10},
            },
        )
        assert (await sp.execute_program(pool, S, "add", {"a": 4}))["result"] == 40  # session's
        assert (await sp.execute_program(pool, "other", "add", {"a": 4}))["result"] == 5  # global
        assert isinstance(pool.sessions.get_program(S, "add"), sp.Program)
        with pytest.raises(sp.SessionError, match="no program 'nope'"):
            await sp.execute_program(pool, S, "nope")
        with pytest.raises(ValueError, match="needs the input 'a'"):
            await sp.execute_program(pool, S, "add", {})
        with pytest.raises(sp.SessionError):
            sp.create_program(pool, "bad id!", "p", {"command": "ping"})
        sp.create_program(
            pool, S, "nap", {"command": "sleep", "args": {"seconds": 5}, "timeout": 0.2}
        )
        with pytest.raises(sp.WorkerTimeout):
            await sp.execute_program(pool, S, "nap")


@pytest.mark.anyio
async def test_programs_drive_the_enhanced_bridge(pool: sp.Pool) -> None:
    await pool.execute_in_session(S, "store", {"name": "xs", "value": [1.0, 2.0, 3.0, 4.0]})
    sp.create_program(
        pool,
        S,
        "scale",
        {
            "steps": [
                {
                    "name": "f",
                    "target": "operator:mul",
                    "args": [{"$input": "k"}, {"$ref": "xs.1"}],
                },
                {"name": "g", "target": "operator:add", "args": [{"$ref": "f"}, {"$input": "c"}]},
            ],
            "output": "g",
        },
    )
    assert (await sp.execute_program(pool, S, "scale", {"k": 3, "c": 1}))["result"] == 7.0
    sp.create_program(
        pool, S, "stat", {"target": {"$input": "fn"}, "args": [{"$ref": "xs"}], "store_as": "out"}
    )
    reply = await sp.execute_program(pool, S, "stat", {"fn": "statistics:median"})
    assert reply["stored"]["name"] == "out"
    assert (await pool.execute_in_session(S, "retrieve", {"name": "out"}))["value"] == 2.5


# ------------------------------------------------------------------ the example


def test_the_data_science_example_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "data_science_workflow.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    for line in ("== regression", "y = 3.0", "left                     0"):
        assert line in result.stdout
