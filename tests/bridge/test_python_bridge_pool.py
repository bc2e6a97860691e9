"""The Python bridge's start-up and unsendable responses, seen from a real pool (both backends).

The wire-level proofs of the same behaviour are in test_python_bridge.py; these check what a
user of ``open_pool`` gets: a slow handler constructor starts, a broken handler's cause is in
the ``StartupError``, and a result that cannot be sent is a prompt ``CommandError``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

import snakepit_trio as sp

pytestmark = pytest.mark.anyio

HANDLERS = Path(__file__).resolve().parents[1] / "handlers"
CONFIG = sp.PoolConfig(shutdown_grace=1.0, kill_grace=1.0)
# Generous: only a hang (a response that never comes) can reach it.
BOUND = 60.0


def adapter(handler: str, **env: str) -> sp.PythonAdapter:
    return sp.PythonAdapter(handler, env={"PYTHONPATH": str(HANDLERS), **env})


def line_of(module: str, text: str) -> int:
    for number, line in enumerate((HANDLERS / module).read_text().splitlines(), 1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} not in {module}")


# ------------------------------------------------------------------ a slow constructor


async def test_a_constructor_slower_than_negotiation_timeout_starts() -> None:
    """Negotiation is answered before the handler is built, so only worker_init_timeout
    bounds construction (2 s here, against a 1 s negotiation_timeout)."""
    config = sp.PoolConfig(negotiation_timeout=1.0, shutdown_grace=1.0, kill_grace=1.0)
    slow = adapter("init_handlers:SlowInitHandler", SLOW_INIT_SECONDS="2")
    with anyio.fail_after(BOUND):
        async with sp.open_pool(slow, size=1, config=config) as pool:
            assert (await pool.execute("ping"))["status"] == "ok"
            assert [w.protocol for w in pool.workers()] == ["msgpack"]  # negotiated in time


@pytest.mark.slow
async def test_a_six_second_constructor_starts_with_the_default_config() -> None:
    slow = adapter("init_handlers:SlowInitHandler", SLOW_INIT_SECONDS="6")
    with anyio.fail_after(BOUND):
        async with sp.open_pool(slow, size=1) as pool:
            assert (await pool.execute("ping"))["status"] == "ok"
            assert [w.protocol for w in pool.workers()] == ["msgpack"]


# ------------------------------------------------------------------ a handler that cannot load


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
async def test_startup_error_names_the_file_the_line_and_the_missing_path(
    handler: str, module: str, raising_line: str, missing: str
) -> None:
    with anyio.fail_after(BOUND), pytest.raises(sp.StartupError) as caught:
        async with sp.open_pool(adapter(handler), size=1, config=CONFIG):
            pass
    text = str(caught.value)
    line = line_of(module, raising_line)
    # The init ping's answer: the exception, with the path that repr() would have lost...
    assert f"cannot load handler {handler!r}: FileNotFoundError: " in text
    assert missing in text
    # ... and where it was raised.
    assert f'{module}", line {line}' in text


# ------------------------------------------------------------------ responses


async def test_unknown_command_lists_close_matches() -> None:
    with anyio.fail_after(BOUND):
        async with sp.open_pool(sp.PythonAdapter(), size=1, config=CONFIG) as pool:
            with pytest.raises(sp.UnsupportedCommand, match=r"did you mean: compute\?"):
                await pool.execute("comput")


async def test_results_that_cannot_be_sent_are_prompt_errors_and_keep_the_worker() -> None:
    limit = 256 * 1024
    config = sp.PoolConfig(shutdown_grace=1.0, kill_grace=1.0, max_frame_size=limit)
    with anyio.fail_after(BOUND):
        async with sp.open_pool(
            adapter("output_handlers:OutputHandler"), size=1, config=config
        ) as pool:
            pid = pool.workers()[0].pid
            with pytest.raises(sp.CommandError, match=r"result\['a'\]\[3\] is a datetime"):
                await pool.execute("unencodable")
            with pytest.raises(sp.CommandError, match=f"over the frame limit of {limit}"):
                await pool.execute("big_result", {"size": 2 * limit})
            with pytest.raises(sp.CommandError) as caught:
                await pool.execute("big_traceback", {"size": 4 * limit})
            assert caught.value.error_type == "RuntimeError"
            assert "the short message at the end" in str(caught.value)
            chunks: list[Any] = []
            with pytest.raises(sp.CommandError, match="cannot send chunk 1"):
                async with pool.stream("unencodable_chunk") as stream:
                    async for chunk in stream:
                        chunks.append(chunk)
            assert chunks == [{"small": True}]
            assert pool.workers()[0].pid == pid  # answered, not replaced
