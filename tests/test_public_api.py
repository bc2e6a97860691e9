"""The public surface: what ``snakepit_trio`` exports, how completely it is typed, and how its
async calls behave at the edges (each is a checkpoint, failures included, as in trio).

The checkpoint tests run against a real pool of Python bridge workers on both anyio backends.
A call that fails fast must (1) raise ``Cancelled`` when made in an already-cancelled scope,
not its own error, and (2) otherwise raise its error only after a pass through the scheduler:
on trio ``trio.testing.assert_checkpoints`` (a cancel point and a schedule point); on asyncio a
callback queued before the call must have run before the call returns (the loop runs its ready
queue in order, so it runs only if the call yielded).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib.util
import inspect
import itertools
import json
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
import typing
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import pytest
import sniffio

import snakepit_trio as sp

ROOT = Path(__file__).resolve().parents[1]
TESTING = "snakepit_trio_bridge.testing:TestingHandler"
# max_queue=0: with the only worker busy, the next call is rejected at once (PoolSaturated).
CONFIG = sp.PoolConfig(shutdown_grace=1.0, kill_grace=1.0, cancel_grace=2.0, max_queue=0)
# Arguments of the wrong type, as a caller without a type checker passes them.
NOT_A_NUMBER: Any = "soon"
NOT_A_MAPPING: Any = 42
NOT_AN_ADAPTER: Any = "python"
NOT_A_CONFIG: Any = {"command_timeout": 1}

AsyncCall = Callable[[], Awaitable[object]]


class PickyAdapter(sp.PythonAdapter):
    """The testing bridge, refusing unknown commands at the call site, with a timeout hook
    that fails when asked to."""

    def supported_commands(self) -> set[str]:
        return {"ping", "echo", "async_sleep", "count_stream"}

    def command_timeout(self, command: str, args: Mapping[str, Any]) -> float | None:
        if isinstance(args, Mapping) and args.get("hook_fails"):
            raise LookupError("this adapter has no timeout for that call")
        return None


@contextlib.contextmanager
def passes_through_the_scheduler() -> Iterator[None]:
    """The block yields to the event loop (on trio: takes a cancel point and a schedule
    point). Put ``pytest.raises`` inside it: the check runs only if the block completes."""
    if sniffio.current_async_library() == "trio":
        import trio.testing

        with trio.testing.assert_checkpoints():
            yield
    else:
        ran: list[bool] = []
        asyncio.get_running_loop().call_soon(ran.append, True)
        yield
        assert ran, "the call did not yield to the event loop"


async def enter(manager: AbstractAsyncContextManager[object]) -> None:
    """Enter and leave an async context manager (the enter is what is checked)."""
    async with manager:
        pass


async def fails_fast_wrongly(name: str, call: AsyncCall, error: type[Exception]) -> list[str]:
    """What is wrong with how ``call`` fails: it must raise ``Cancelled`` in a cancelled
    scope, and otherwise ``error`` after a checkpoint."""
    with anyio.CancelScope() as scope:
        scope.cancel()
        try:
            await call()
        except Exception as exc:
            return [f"{name}: raised {exc!r} in a cancelled scope, not Cancelled"]
    if not scope.cancelled_caught:
        return [f"{name}: returned in a cancelled scope"]
    try:
        with passes_through_the_scheduler(), pytest.raises(error):
            await call()
    except AssertionError as exc:
        return [f"{name}: {str(exc).splitlines()[0]}"]
    return []


@pytest.mark.anyio
async def test_every_public_async_call_checkpoints_before_it_fails_fast() -> None:
    async with sp.open_pool(PickyAdapter(TESTING), size=1, config=CONFIG) as pool:
        sp.create_program(pool, "s1", "echo_x", {"command": "echo", "args": {"x": {"$input": "x"}}})

        # A stream whose answer is already an error: __anext__ fails without waiting.
        async with pool.stream("count_stream", {"count": "three"}) as chunks:
            with anyio.fail_after(10):
                while pool.workers()[0].in_flight:
                    await anyio.sleep(0.01)
            wrong = await fails_fast_wrongly(
                "ChunkStream.__anext__", chunks.__anext__, sp.CommandError
            )

        # Succeeding, they checkpoint too (execute waits for its answer; a stream's enter
        # may find its answer already on its way, and must yield all the same).
        with passes_through_the_scheduler():
            assert (await pool.execute("ping"))["status"] == "ok"
        manager = pool.stream("count_stream", {"count": 2})
        with passes_through_the_scheduler():
            chunks = await manager.__aenter__()
        try:
            assert [chunk async for chunk in chunks] == [{"i": 0}, {"i": 1}]
        finally:
            await manager.__aexit__(None, None, None)

        cases: dict[str, tuple[AsyncCall, type[Exception]]] = {
            "execute: a timeout that is not a number": (
                lambda: pool.execute("ping", timeout=NOT_A_NUMBER),
                TypeError,
            ),
            "execute: a NaN timeout": (lambda: pool.execute("ping", timeout=math.nan), ValueError),
            "execute: timeout 0": (lambda: pool.execute("ping", timeout=0), sp.QueueTimeout),
            "execute: a negative timeout": (
                lambda: pool.execute("ping", timeout=-1.5),
                sp.QueueTimeout,
            ),
            "execute: the adapter's timeout hook raises": (
                lambda: pool.execute("ping", {"hook_fails": True}),
                LookupError,
            ),
            "execute: an empty command": (lambda: pool.execute(""), TypeError),
            "execute: a command the adapter refuses": (
                lambda: pool.execute("format_disk"),
                sp.UnsupportedCommand,
            ),
            "execute: args that are not a mapping": (
                lambda: pool.execute("echo", NOT_A_MAPPING),
                TypeError,
            ),
            "execute_in_session: a bad session id": (
                lambda: pool.execute_in_session("two words", "ping"),
                sp.SessionError,
            ),
            "execute_in_session: a command the adapter refuses": (
                lambda: pool.execute_in_session("s1", "format_disk"),
                sp.UnsupportedCommand,
            ),
            "stream: a bad session id": (
                lambda: enter(pool.stream("count_stream", session_id="")),
                sp.SessionError,
            ),
            "stream: a timeout that is not a number": (
                lambda: enter(pool.stream("count_stream", timeout=NOT_A_NUMBER)),
                TypeError,
            ),
            "stream: timeout 0": (
                lambda: enter(pool.stream("count_stream", timeout=0)),
                sp.QueueTimeout,
            ),
            "stream: a command the adapter refuses": (
                lambda: enter(pool.stream("format_disk")),
                sp.UnsupportedCommand,
            ),
            "execute_stream: timeout 0": (
                lambda: pool.execute_stream("count_stream", {}, print, timeout=0),
                sp.QueueTimeout,
            ),
            "execute_in_session_stream: a bad session id": (
                lambda: pool.execute_in_session_stream("", "count_stream", {}, print),
                sp.SessionError,
            ),
            "execute_program: a bad session id": (
                lambda: sp.execute_program(pool, "two words", "echo_x", {"x": 1}),
                sp.SessionError,
            ),
            "execute_program: no such program": (
                lambda: sp.execute_program(pool, "s1", "nothing_here"),
                sp.SessionError,
            ),
            "execute_program: a missing input": (
                lambda: sp.execute_program(pool, "s1", "echo_x", {}),
                ValueError,
            ),
            "open_pool: size 0": (
                lambda: enter(sp.open_pool(PickyAdapter(TESTING), size=0)),
                ValueError,
            ),
            "open_pool: not an adapter": (lambda: enter(sp.open_pool(NOT_AN_ADAPTER)), TypeError),
            "open_pool: a config that is not a PoolConfig": (
                lambda: enter(sp.open_pool(PickyAdapter(TESTING), config=NOT_A_CONFIG)),
                TypeError,
            ),
        }
        for name, (call, error) in cases.items():
            wrong += await fails_fast_wrongly(name, call, error)
        answer = await sp.execute_program(pool, "s1", "echo_x", {"x": 1})
        assert answer["echoed"]["x"] == 1  # the same calls, well formed, run

        # The only worker busy and no queue: rejected at once, after a checkpoint.
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.execute, "async_sleep", {"seconds": 30})
            with anyio.fail_after(10):
                while pool.stats()["busy"] != 1:
                    await anyio.sleep(0.01)
            wrong += await fails_fast_wrongly(
                "execute: the queue is full", lambda: pool.execute("ping"), sp.PoolSaturated
            )
            assert pool.stats()["pool_saturated"] == 1  # the cancelled try was not counted
            tg.cancel_scope.cancel()

        # aclose in a cancelled scope still closes the pool completely, then raises Cancelled.
        with anyio.CancelScope() as scope:
            scope.cancel()
            await pool.aclose()
        if not scope.cancelled_caught:
            wrong.append("aclose: returned in a cancelled scope")
        assert pool.closed
        assert [w.state for w in pool.workers()] == ["stopped"]
        # Closed already: aclose returns at once, but still checkpoints.
        with anyio.CancelScope() as scope:
            scope.cancel()
            await pool.aclose()
        if not scope.cancelled_caught:
            wrong.append("aclose: returned in a cancelled scope once closed")
        try:
            with passes_through_the_scheduler():
                await pool.aclose()
        except AssertionError as exc:
            wrong.append(f"aclose, once closed: {str(exc).splitlines()[0]}")

        closed: dict[str, AsyncCall] = {
            "execute": lambda: pool.execute("ping"),
            "execute_in_session": lambda: pool.execute_in_session("s1", "ping"),
            "stream": lambda: enter(pool.stream("count_stream")),
            "execute_program": lambda: sp.execute_program(pool, "s1", "echo_x", {"x": 1}),
        }
        for name, call in closed.items():
            wrong += await fails_fast_wrongly(f"{name}: the pool is closed", call, sp.PoolClosed)
    assert not wrong, "\n".join(wrong)


@pytest.mark.anyio
async def test_sweep_orphans_async_is_a_checkpoint() -> None:
    with anyio.CancelScope() as scope:
        scope.cancel()
        await sp.sweep_orphans_async()
    assert scope.cancelled_caught
    with passes_through_the_scheduler():
        found = await sp.sweep_orphans_async()  # a dry run: finds, kills nothing
    assert all(isinstance(orphan, sp.OrphanInfo) for orphan in found)


@pytest.mark.anyio
async def test_timeouts_are_caught_as_builtin_timeout_errors() -> None:
    config = sp.PoolConfig(queue_timeout=0.1, shutdown_grace=1.0, kill_grace=1.0)
    async with sp.open_pool(sp.PythonAdapter(TESTING), size=1, config=config) as pool:
        caught: dict[str, BaseException] = {}

        async def hold_the_worker() -> None:
            try:
                await pool.execute("async_sleep", {"seconds": 30}, timeout=1.0)
            except TimeoutError as exc:
                caught["worker"] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(hold_the_worker)
            with anyio.fail_after(10):
                while pool.stats()["busy"] != 1:
                    await anyio.sleep(0.01)
            try:
                await pool.execute("ping")
            except TimeoutError as exc:
                caught["queue"] = exc
    assert isinstance(caught["queue"], sp.QueueTimeout)
    assert isinstance(caught["worker"], sp.WorkerTimeout)


def test_timeout_errors_keep_their_message_and_survive_pickling() -> None:
    for cls in (sp.WorkerTimeout, sp.QueueTimeout):
        assert issubclass(cls, TimeoutError)
        assert issubclass(cls, sp.SnakepitError)
        error = cls("'ping' did not finish within 1.0 s")
        assert str(error) == "'ping' did not finish within 1.0 s"
        assert error.args == ("'ping' did not finish within 1.0 s",)
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is cls and str(copy) == str(error)


def _documented_assignments() -> set[str]:
    """Names assigned at the top level of the package's modules and followed by a docstring
    (how a type alias or a constant is documented)."""
    documented: set[str] = set()
    for path in (ROOT / "snakepit_trio").glob("*.py"):
        body = ast.parse(path.read_text(encoding="utf-8")).body
        for node, after in itertools.pairwise(body):
            if not (
                isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
                and after.value.value.strip()
            ):
                continue
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                documented.add(node.target.id)
            elif isinstance(node, ast.Assign):
                documented.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return documented


def test_every_exported_name_is_importable_and_documented() -> None:
    namespace: dict[str, Any] = {}
    exec("from snakepit_trio import *", namespace)
    namespace.pop("__builtins__")
    assert sorted(namespace) == sorted(sp.__all__)
    assert len(set(sp.__all__)) == len(sp.__all__)

    documented = _documented_assignments()
    undocumented = []
    for name in sp.__all__:
        value = getattr(sp, name)
        if name == "__version__":
            assert re.fullmatch(r"\d+\.\d+\.\d+\S*", value), value
        elif inspect.isclass(value) or inspect.isfunction(value):
            if not (value.__doc__ or "").strip():
                undocumented.append(name)
        elif name not in documented:  # a type alias: documented where it is assigned
            undocumented.append(name)
    assert not undocumented, f"exported without a docstring: {undocumented}"


def test_the_exported_type_aliases_are_the_ones_the_api_uses() -> None:
    assert typing.get_type_hints(sp.WorkerInfo)["state"] == sp.WorkerState
    assert typing.get_type_hints(sp.RequestCompleted)["outcome"] == sp.Outcome
    assert typing.get_type_hints(sp.RequestRejected)["reason"] == sp.RejectReason
    assert typing.get_type_hints(sp.PoolConfig)["affinity"] == sp.Affinity
    assert typing.get_type_hints(sp.Adapter.__init__)["wire"] == sp.Wire
    assert typing.get_type_hints(sp.Telemetry.add_listener)["listener"] == sp.Listener
    assert typing.get_args(sp.Listener)[0] == [sp.TelemetryEvent]
    events = (
        sp.RequestCompleted,
        sp.RequestRejected,
        sp.WorkerStarted,
        sp.WorkerReady,
        sp.WorkerExited,
        sp.WorkerRecycled,
    )
    assert set(typing.get_args(sp.TelemetryEvent)) == set(events)


@pytest.mark.slow
def test_pyright_finds_the_public_surface_completely_typed() -> None:
    """``pyright --verifytypes snakepit_trio`` at 100%, on this checkout's sources."""
    if importlib.util.find_spec("pyright") is None:
        pytest.skip("pyright is not installed (`pip install pyright`; the test group has it)")
    if shutil.which("node") is None:
        pytest.skip("pyright needs Node.js, and node is not on PATH")
    env = {
        **os.environ,
        # This checkout, ahead of whatever is installed.
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "bridges" / "python")]),
        # No look-up of the latest pyright release on the package index.
        "PYRIGHT_PYTHON_IGNORE_WARNINGS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pyright", "--verifytypes", "snakepit_trio", "--outputjson"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"pyright did not report (exit {done.returncode}):\n{done.stderr[-3000:]}")
    completeness = report["typeCompleteness"]
    assert completeness["packageRootDirectory"] == str(ROOT / "snakepit_trio")
    problems = [
        f"{symbol['name']}: {diagnostic['message']}"
        for symbol in completeness["symbols"]
        for diagnostic in symbol["diagnostics"]
        if diagnostic["severity"] == "error"
    ]
    assert completeness["completenessScore"] == 1.0, "\n".join(problems)
