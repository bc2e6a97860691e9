"""``run`` and ``stream``: one command on any adapter, its result or chunks as JSON, and what
the workers write on stderr shown on ours."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import snakepit_trio as sp

from ._common import EXIT_OK, PROG, dumps, parse_args_json, run_async
from ._options import make_adapter, pool_config

__all__ = ["cmd_run", "cmd_stream", "show_worker_output"]


class _WorkerOutput(logging.Formatter):
    """The workers' output as the pool relays it, every line marked as ours."""

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(f"{PROG}: {line}" for line in super().format(record).splitlines())


def _is_worker_output(record: logging.LogRecord) -> bool:
    """The pool's warnings about workers, and the lines workers wrote on stderr (relayed at
    WARNING, or at INFO on the ``.stderr`` child logger); not the pool's INFO chatter."""
    return record.levelno >= logging.WARNING or record.name == _STDERR_LOGGER


_WORKER_LOGGER = "snakepit_trio.worker"
_STDERR_LOGGER = _WORKER_LOGGER + ".stderr"


def show_worker_output(debug: bool) -> Callable[[], None]:
    """Show on stderr what the workers write there (a handler's print()), as the pool relays
    it on the ``snakepit_trio.worker`` loggers; returns the undo. With --debug the root
    logger shows everything already."""
    if debug:
        return lambda: None
    worker_log = logging.getLogger(_WORKER_LOGGER)
    stderr_log = logging.getLogger(_STDERR_LOGGER)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_is_worker_output)
    handler.setFormatter(_WorkerOutput("%(message)s"))
    level = stderr_log.level
    stderr_log.setLevel(logging.INFO)
    worker_log.addHandler(handler)

    def undo() -> None:
        worker_log.removeHandler(handler)
        stderr_log.setLevel(level)

    return undo


def cmd_run(ns: argparse.Namespace) -> int:
    adapter = make_adapter(ns.adapter, ns.wire)
    call_args = parse_args_json(ns.args_json)
    config = pool_config(ns)

    async def go() -> Any:
        async with sp.open_pool(adapter, size=ns.workers, config=config) as pool:
            if ns.session is not None:
                return await pool.execute_in_session(
                    ns.session, ns.command, call_args, timeout=ns.timeout
                )
            return await pool.execute(ns.command, call_args, timeout=ns.timeout)

    undo = show_worker_output(getattr(ns, "debug", False))
    try:
        result = run_async(go)
    finally:
        undo()
    print(dumps({"result": result} if ns.json else result, pretty=not ns.json))
    return EXIT_OK


def cmd_stream(ns: argparse.Namespace) -> int:
    adapter = make_adapter(ns.adapter, ns.wire)
    call_args = parse_args_json(ns.args_json)
    config = pool_config(ns)
    started = time.perf_counter()

    async def go() -> tuple[int, Any]:
        async with (
            sp.open_pool(adapter, size=ns.workers, config=config) as pool,
            pool.stream(ns.command, call_args, session_id=ns.session, timeout=ns.timeout) as chunks,
        ):
            async for chunk in chunks:
                print(dumps({"chunk": chunk} if ns.json else chunk), flush=True)
        return chunks.count, chunks.result

    undo = show_worker_output(getattr(ns, "debug", False))
    try:
        count, result = run_async(go)
    finally:
        undo()
    if ns.json:
        print(dumps({"result": result, "chunks": count}))
    else:
        elapsed = time.perf_counter() - started
        sys.stderr.write(f"{count} chunks in {elapsed:.2f} s; final value: {dumps(result)}\n")
    return EXIT_OK
