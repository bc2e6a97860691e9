"""The ``snakepit-trio`` command line (also ``python -m snakepit_trio``).

Subcommands: ``demo`` (a tour of the pool in a few seconds), ``run`` and ``stream`` (one command
on any adapter), ``bench`` (a quick latency and throughput table), ``doctor`` (what works on this
machine and how to fix what does not) and ``sweep`` (orphaned workers of dead pools).

Exit codes: 0 success, 1 error, 2 bad usage, 130 interrupted (Ctrl-C). Errors are one line on
stderr, ``snakepit-trio: error: ...``; ``--debug`` adds tracebacks and the workers' log.
Colour and progress bars appear only on a terminal.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn, TextIO, TypeVar

import anyio

import snakepit_trio as sp

from .._adapters import Wire
from .._config import MAX_SECONDS, validate_size
from .._progress import Progress, use_colour

__all__ = ["main"]

PROG = "snakepit-trio"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_T = TypeVar("_T")

ADAPTER_HELP = (
    "python | python:MODULE:CLASS | python:FILE.py:CLASS | node | node:FILE.js | "
    "grpc[:MODULE:CLASS] | exec:PROGRAM [ARGS]"
)


class UsageError(Exception):
    """Bad command line: exit code 2."""


class CliError(Exception):
    """A failure worth one line of explanation: exit code 1."""


# ---------------------------------------------------------------------------------- output


class Style:
    """ANSI colours for one stream, switched off when it is not a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.on = use_colour(stream)

    def paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.on else text

    def bold(self, text: str) -> str:
        return self.paint(text, "1")

    def dim(self, text: str) -> str:
        return self.paint(text, "2")

    def good(self, text: str) -> str:
        return self.paint(text, "32")

    def warn(self, text: str) -> str:
        return self.paint(text, "33")

    def bad(self, text: str) -> str:
        return self.paint(text, "31;1")


def jsonable(value: Any) -> Any:
    """``value`` with bytes as ``{"__bytes__": base64}`` and tuples as lists, ready for json."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"__bytes__": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def dumps(value: Any, *, pretty: bool = False) -> str:
    return json.dumps(
        jsonable(value), indent=2 if pretty else None, ensure_ascii=False, default=repr
    )


def _bytes_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "__bytes__" in obj:
        encoded = obj["__bytes__"]
        try:
            return base64.b64decode(encoded, validate=True)
        except (TypeError, ValueError):
            raise UsageError(f"invalid base64 in {{'__bytes__': {encoded!r}}}") from None
    return obj


def parse_args_json(text: str | None) -> dict[str, Any]:
    """The command's arguments: a JSON object (``-`` reads it from stdin; bytes as above)."""
    if text is None:
        return {}
    if text == "-":
        text = sys.stdin.read()
    try:
        value = json.loads(text, object_hook=_bytes_hook)
    except json.JSONDecodeError as exc:
        raise UsageError(f"ARGS_JSON is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UsageError('ARGS_JSON must be a JSON object, like \'{"a": 1, "b": 2}\'')
    return value


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def describe(exc: BaseException, *, debug: bool = False) -> str:
    """The one-line message for ``exc`` (the full text, remote traceback included, on debug)."""
    if debug:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, sp.CommandError) and exc.traceback:
            text += "\n--- remote traceback ---\n" + exc.traceback.rstrip()
        return text
    if isinstance(exc, sp.CommandError):
        kind = f"{exc.error_type}: " if exc.error_type else ""
        return f"the command failed: {kind}{_first_line(exc.message)}"
    if isinstance(exc, sp.StartupError | sp.WorkerCrashed):
        head = _first_line(str(exc))
        cause = _last_line(exc.stderr_tail)
        return f"{head}: {cause}" if cause else head
    if isinstance(exc, sp.SnakepitError | CliError | UsageError):
        return _first_line(str(exc)) or type(exc).__name__
    return f"{type(exc).__name__}: {_first_line(str(exc))}".rstrip(": ")


# ---------------------------------------------------------------------------------- adapters


def _handler(spec: str, rest: str) -> str | None:
    """The handler of ``python:...`` or ``grpc:...`` adapters (the adapter checks the rest)."""
    if not rest:
        return None
    target, sep, cls = rest.rpartition(":")
    if not sep or not target or not cls:
        kind = spec.partition(":")[0]
        raise UsageError(f"bad adapter {spec!r}: use {kind}:MODULE:CLASS or {kind}:FILE.py:CLASS")
    return rest


def _exec_program(spec: str, program: str) -> str:
    """Check the program of an ``exec:`` adapter up front: a clear line beats a failed start."""
    if os.sep not in program:
        found = shutil.which(program)
        if found is None:
            raise CliError(f"bad adapter {spec!r}: {program!r} is not found on PATH")
        return found
    path = Path(program)
    if not path.exists():
        raise CliError(f"bad adapter {spec!r}: {program!r}: No such file or directory")
    if path.is_dir():
        raise CliError(f"bad adapter {spec!r}: {program!r} is a directory, not a program")
    if not os.access(path, os.X_OK):
        raise CliError(
            f"bad adapter {spec!r}: {program!r} is not executable (Permission denied; "
            f"chmod +x it, or name its interpreter: exec:python3 {program})"
        )
    return program


def make_adapter(spec: str, wire: Wire = "auto") -> sp.Adapter:
    """Build the adapter named by ``spec`` (see ``ADAPTER_HELP``)."""
    kind, _, rest = spec.partition(":")
    try:
        return _make_adapter(spec, kind, rest, wire)
    except (TypeError, ValueError) as exc:  # the adapter refused an argument
        raise UsageError(f"bad adapter {spec!r}: {exc}") from None


def _make_adapter(spec: str, kind: str, rest: str, wire: Wire) -> sp.Adapter:
    if kind == "python":
        return sp.PythonAdapter(_handler(spec, rest), wire=wire)
    if kind == "grpc":
        grpc_adapter = getattr(sp, "GrpcPythonAdapter", None)
        if grpc_adapter is None:
            raise CliError(f"this snakepit_trio {sp.__version__} has no gRPC adapter")
        if wire != "auto":
            raise UsageError("--wire does not apply to the grpc adapter (it speaks protobuf)")
        adapter: sp.Adapter = grpc_adapter(_handler(spec, rest))
        return adapter
    if kind == "node":
        node = shutil.which("node")
        if node is None:
            raise CliError("the node adapter needs Node.js: 'node' is not on PATH")
        if rest and not Path(rest).is_file():
            raise UsageError(f"bad adapter {spec!r}: no such file {rest!r}")
        return sp.NodeAdapter(rest or None, node=node, wire=wire)
    if kind == "exec":
        try:
            argv = shlex.split(rest)
        except ValueError as exc:
            raise UsageError(f"bad adapter {spec!r}: {exc}") from None
        if not argv:
            raise UsageError("the exec adapter needs a program: exec:/path/to/program")
        _exec_program(spec, argv[0])
        return sp.Adapter(argv[0], None, argv[1:], wire=wire)
    raise UsageError(f"unknown adapter {spec!r}; use one of: {ADAPTER_HELP}")


def _run_async(fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
    return anyio.run(fn, *args, backend="trio")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _pool_size(text: str) -> int:
    """``--workers``: what ``open_pool`` accepts (a typo like 100000 must not fork away)."""
    size = _positive_int(text)
    try:
        return validate_size(size, "--workers")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    """A duration: positive and finite, at most a year (``MAX_SECONDS``, as PoolConfig)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= MAX_SECONDS:  # false for NaN too
        raise argparse.ArgumentTypeError(
            f"{text!r} must be a positive number of seconds, at most {MAX_SECONDS:.0f}"
        )
    return value


_SIZE = re.compile(r"(\d+)\s*(?:([kmg])(?:i?b)?|b)?", re.IGNORECASE)


def _byte_size(text: str) -> int:
    """A number of bytes: ``65536``, ``64k``, ``16MiB``, ``1G`` (powers of 1024)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in bytes (like 65536 or 16MiB)")
    number, unit = match.groups()
    return int(number) << (10 * " kmg".index(unit.lower()) if unit else 0)


def _pool_config(ns: argparse.Namespace) -> sp.PoolConfig:
    """The pool's configuration from the command line's pool options."""
    given = {n: getattr(ns, n) for n in _CONFIG_FLAGS if getattr(ns, n, None) is not None}
    try:
        return sp.PoolConfig(**given)
    except (TypeError, ValueError) as exc:  # out of range: say it with the option's name
        text = str(exc)
        for name in given:
            text = text.replace(f"PoolConfig.{name}", "--" + name.replace("_", "-"))
        raise UsageError(text) from None


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


def _show_worker_output(debug: bool) -> Callable[[], None]:
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


# ---------------------------------------------------------------------------------- run, stream


def cmd_run(ns: argparse.Namespace) -> int:
    adapter = make_adapter(ns.adapter, ns.wire)
    call_args = parse_args_json(ns.args_json)
    config = _pool_config(ns)

    async def go() -> Any:
        async with sp.open_pool(adapter, size=ns.workers, config=config) as pool:
            if ns.session is not None:
                return await pool.execute_in_session(
                    ns.session, ns.command, call_args, timeout=ns.timeout
                )
            return await pool.execute(ns.command, call_args, timeout=ns.timeout)

    undo = _show_worker_output(getattr(ns, "debug", False))
    try:
        result = _run_async(go)
    finally:
        undo()
    print(dumps({"result": result} if ns.json else result, pretty=not ns.json))
    return EXIT_OK


def cmd_stream(ns: argparse.Namespace) -> int:
    adapter = make_adapter(ns.adapter, ns.wire)
    call_args = parse_args_json(ns.args_json)
    config = _pool_config(ns)
    started = time.perf_counter()

    async def go() -> tuple[int, Any]:
        async with (
            sp.open_pool(adapter, size=ns.workers, config=config) as pool,
            pool.stream(ns.command, call_args, session_id=ns.session, timeout=ns.timeout) as chunks,
        ):
            async for chunk in chunks:
                print(dumps({"chunk": chunk} if ns.json else chunk), flush=True)
        return chunks.count, chunks.result

    undo = _show_worker_output(getattr(ns, "debug", False))
    try:
        count, result = _run_async(go)
    finally:
        undo()
    if ns.json:
        print(dumps({"result": result, "chunks": count}))
    else:
        elapsed = time.perf_counter() - started
        sys.stderr.write(f"{count} chunks in {elapsed:.2f} s; final value: {dumps(result)}\n")
    return EXIT_OK


# ---------------------------------------------------------------------------------- demo


class _Tour:
    """Prints the demo's steps: a tag column, then what happened."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.style = Style(out)

    def line(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def step(self, tag: str, text: str) -> None:
        self.line(f"  {self.style.bold(f'{tag:<9}')} {text}")

    def note(self, tag: str, text: str) -> None:
        self.line(f"  {self.style.bold(f'{tag:<9}')} {self.style.warn(text)}")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _table(rows: Sequence[Sequence[object]], indent: str = "    ") -> list[str]:
    columns = max(len(row) for row in rows)
    cells = [[str(c) for c in row] + [""] * (columns - len(row)) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(columns)]
    return [
        indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]


def _session_pid(pool: sp.Pool, session_id: str) -> int | None:
    session = pool.sessions.get_session(session_id)
    if session is None or session.last_worker_id is None:
        return None
    return pool.workers()[session.last_worker_id].pid


async def _demo(ns: argparse.Namespace, tour: _Tour) -> None:
    size = ns.workers or max(2, min(4, 2 * (os.cpu_count() or 1)))
    style = tour.style
    tour.line(
        style.bold(f"snakepit-trio {sp.__version__} demo")
        + style.dim(f"  (Python {sys.version.split()[0]}, trio {_version('trio')})")
    )
    tour.line()
    began = time.perf_counter()
    async with sp.open_pool(sp.PythonAdapter(), size=size) as pool:
        ready = time.perf_counter() - began
        live = [w for w in pool.workers() if w.pid is not None]
        wire = live[0].protocol if live else "?"
        tour.step(
            "start",
            f"{len(live)} Python workers started concurrently, ready in {_ms(ready)} "
            f"(wire: {wire}; features: {', '.join(sorted(pool.features)) or 'none'})",
        )

        trips = []
        for _ in range(20):
            t = time.perf_counter()
            pong = await pool.execute("ping")
            trips.append(time.perf_counter() - t)
        tour.step(
            "ping",
            f"status {pong['status']!r}; round trip {_ms(statistics.median(trips))} "
            f"(median of {len(trips)}, first {_ms(trips[0])})",
        )

        calls = 2 * size
        t = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(calls):
                tg.start_soon(pool.execute, "sleep", {"seconds": 0.2})
        tour.step(
            "parallel",
            f"{calls} concurrent sleep(0.2 s) calls on {size} workers took "
            f"{_ms(time.perf_counter() - t)} (one after another: {calls * 0.2:.1f} s)",
        )

        product = await pool.execute("compute", {"operation": "multiply", "a": 6, "b": 7})
        try:
            await pool.execute("compute", {"operation": "divide", "a": 1, "b": 0})
            failure = "no error?"
        except sp.CommandError as exc:
            failure = f"CommandError({exc.error_type}: {exc.message})"
        tour.step("compute", f"6 * 7 = {product['result']}; 1 / 0 raises {failure}")

        blob = os.urandom(256 * 1024)
        t = time.perf_counter()
        echoed = await pool.execute("echo", {"blob": blob})
        elapsed = time.perf_counter() - t
        back = echoed["echoed"]["blob"]
        if back != blob:
            raise CliError("echo returned different bytes than it was sent")
        tour.step(
            "bytes",
            f"256 KiB of random bytes echoed back identical over {wire} "
            f"(sha256 {hashlib.sha256(back).hexdigest()[:16]}) in {_ms(elapsed)}",
        )

        first = await pool.execute_in_session("demo-user", "info")
        second = await pool.execute_in_session("demo-user", "info")
        pids = (first["system_info"]["pid"], second["system_info"]["pid"])
        if pids[0] != pids[1]:
            raise CliError(f"session affinity failed: pids {pids[0]} then {pids[1]}")
        tour.step("session", f"two calls in session 'demo-user' both ran on worker pid {pids[0]}")

        items = [f"photo-{i:02d}.jpg" for i in range(24)]
        predictions: Counter[str] = Counter()
        t = time.perf_counter()
        with Progress("  batch_inference", len(items)) as bar:
            async with pool.stream("batch_inference", {"items": items, "delay": 0.04}) as chunks:
                async for chunk in chunks:
                    predictions[chunk["prediction"]] += 1
                    bar.update(chunk["index"] + 1, chunk["item"])
        tour.step(
            "stream",
            f"batch_inference streamed {chunks.count} chunks in {_ms(time.perf_counter() - t)}: "
            f"{dict(sorted(predictions.items()))}, final value {chunks.result}",
        )

        await _demo_cancel(tour, pool)

        if ns.no_node:
            tour.note("node", "skipped (--no-node)")
        elif shutil.which("node") is None:
            tour.note("node", "skipped: 'node' is not on PATH (install Node.js 18+ to try it)")
        else:
            await _demo_node(tour)

        _show_stats(tour, pool)
    tour.line()
    tour.line(
        style.good(f"demo finished in {_ms(time.perf_counter() - began)}")
        + style.dim("; every worker was shut down on leaving the pool's `async with`")
    )


async def _demo_cancel(tour: _Tour, pool: sp.Pool) -> None:
    """Leave a long stream early, then show which worker serves the session's next call."""
    total = 10_000
    async with pool.stream(
        "batch_inference",
        {"items": list(range(total)), "delay": 0.01},
        session_id="demo-cancel",
    ) as chunks:
        async for chunk in chunks:
            if chunk["index"] == 4:
                break
    left = time.perf_counter()
    pid = _session_pid(pool, "demo-cancel")
    while time.perf_counter() - left < pool.config.cancel_grace + 1:
        states = {w.pid: w.state for w in pool.workers()}
        if states.get(pid) == "idle":
            break
        await anyio.sleep(0.002)
    confirmed = time.perf_counter() - left
    after = await pool.execute_in_session("demo-cancel", "info")
    server = after["system_info"]["pid"]
    outcome = (
        f"worker pid {pid} confirmed the cancel in {_ms(confirmed)} and served the next request"
        if server == pid
        else f"worker pid {pid} was replaced; pid {server} served the next request"
    )
    tour.step("cancel", f"left a {total}-item stream after {chunks.count} chunks; {outcome}")


def _show_stats(tour: _Tour, pool: sp.Pool) -> None:
    style = tour.style
    tour.line()
    tour.line(style.bold("  pool.stats()"))
    stats = pool.stats()
    keys = list(stats)
    half = (len(keys) + 1) // 2
    rows = [
        [
            keys[i],
            stats[keys[i]],
            *((keys[i + half], stats[keys[i + half]]) if i + half < len(keys) else ()),
        ]
        for i in range(half)
    ]
    for text in _table(rows):
        tour.line(text)
    tour.line()
    tour.line(style.bold("  pool.workers()"))
    rows = [["id", "pid", "state", "requests", "rss"]]
    rows += [
        [w.id, w.pid, w.state, w.requests, f"{w.rss / 2**20:.1f} MiB" if w.rss else "-"]
        for w in pool.workers()
    ]
    for text in _table(rows):
        tour.line(text)


async def _demo_node(tour: _Tour) -> None:
    began = time.perf_counter()
    try:
        async with sp.open_pool(sp.NodeAdapter(), size=1) as pool:
            ready = time.perf_counter() - began
            pong = await pool.execute("ping")
            power = await pool.execute("compute", {"operation": "power", "a": 2, "b": 10})
            wire = pool.workers()[0].protocol
    except sp.SnakepitError as exc:
        tour.note("node", f"the Node bridge failed: {describe(exc)} (see `{PROG} doctor`)")
        return
    version = pong.get("node_version", "?")
    tour.step(
        "node",
        f"Node {version} bridge ready in {_ms(ready)} (wire: {wire}): ping {pong['status']!r}, "
        f"compute 2 ** 10 = {power['result']}",
    )


def cmd_demo(ns: argparse.Namespace) -> int:
    _run_async(_demo, ns, _Tour(sys.stdout))
    return EXIT_OK


# ---------------------------------------------------------------------------------- bench


def _percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cmd_bench(ns: argparse.Namespace) -> int:
    adapter = make_adapter(ns.adapter, ns.wire)
    command, call_args = ns.command, parse_args_json(ns.args_json)
    config = _pool_config(ns)
    report: dict[str, Any] = {"adapter": adapter.name, "workers": ns.workers}

    async def go() -> None:
        began = time.perf_counter()
        async with sp.open_pool(adapter, size=ns.workers, config=config) as pool:
            report["startup_ms"] = (time.perf_counter() - began) * 1000
            report["wire"] = pool.workers()[0].protocol
            for _ in range(min(50, ns.requests)):  # warm-up
                await pool.execute(command, call_args)
            sequential: list[float] = []
            t0 = time.perf_counter()
            for _ in range(ns.requests):
                t = time.perf_counter()
                await pool.execute(command, call_args)
                sequential.append(time.perf_counter() - t)
            report["sequential"] = _summary(sequential, time.perf_counter() - t0)

            burst: list[float] = []

            async def caller(n: int) -> None:
                for _ in range(n):
                    t = time.perf_counter()
                    await pool.execute(command, call_args)
                    burst.append(time.perf_counter() - t)

            share, extra = divmod(ns.burst, ns.concurrency)
            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for i in range(ns.concurrency):
                    tg.start_soon(caller, share + (1 if i < extra else 0))
            report["burst"] = _summary(burst, time.perf_counter() - t0)
            report["burst"]["callers"] = ns.concurrency
            report["stats"] = pool.stats()

    _run_async(go)
    if ns.json:
        print(dumps(report))
        return EXIT_OK
    style = Style(sys.stdout)
    print(
        style.bold(
            f"{PROG} bench: {report['adapter']}, {ns.workers} workers, wire {report['wire']}"
        )
    )
    print(style.dim(f"  command {command!r}; pool start-up {report['startup_ms']:.0f} ms"))
    rows: list[list[object]] = [["", "requests", "callers", "p50", "p99", "throughput"]]
    for name, callers in (("sequential", 1), ("burst", ns.concurrency)):
        r = report[name]
        rows.append(
            [
                name,
                r["requests"],
                callers,
                f"{r['p50_ms']:.3f} ms",
                f"{r['p99_ms']:.3f} ms",
                f"{r['per_second']:,.0f} req/s",
            ]
        )
    for text in _table(rows, indent="  "):
        print(text)
    print(
        style.dim(
            "  a quick look; the full suite with baselines lives in bench/ of the source tree"
        )
    )
    return EXIT_OK


def _summary(samples: list[float], wall: float) -> dict[str, Any]:
    return {
        "requests": len(samples),
        "seconds": wall,
        "per_second": len(samples) / wall if wall else 0.0,
        "p50_ms": statistics.median(samples) * 1000,
        "p99_ms": _percentile(samples, 0.99) * 1000,
        "mean_ms": statistics.fmean(samples) * 1000,
    }


# ---------------------------------------------------------------------------------- doctor


class Check(NamedTuple):
    name: str
    ok: bool
    detail: str
    fix: str = ""
    essential: bool = True


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _check_import(name: str, dist: str, *, essential: bool, fix: str) -> Check:
    try:
        __import__(name)
    except Exception as exc:
        return Check(name, False, f"cannot import: {describe(exc)}", fix, essential)
    return Check(name, True, _version(dist), essential=essential)


def _check_socket_dir() -> Check:
    base = Path(tempfile.gettempdir())  # where gRPC workers make their socket directories
    fix = f"make {base} writable, or point TMPDIR at a writable directory with a short path"
    try:
        with tempfile.TemporaryDirectory(prefix="snakepit-", dir=base) as tmp:
            path = os.path.join(tmp, "doctor.sock")
            if len(path.encode()) > 100:
                return Check(
                    "socket dir", False, f"{base} is too deep for Unix sockets", fix, False
                )
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.bind(path)
        mode = f"{os.stat(base).st_mode & 0o7777:o}"
    except OSError as exc:
        return Check("socket dir", False, f"{base}: {exc}", fix, False)
    return Check(
        "socket dir", True, f"{base} (mode {mode}; Unix sockets bind there)", essential=False
    )


def _check_node() -> list[Check]:
    node = shutil.which("node")
    if node is None:
        return [
            Check("node", False, "not on PATH", "install Node.js 18+ to use NodeAdapter", False)
        ]
    try:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return [Check("node", False, f"{node} does not run: {exc}", "reinstall Node.js 18+", False)]
    major = version.lstrip("v").split(".")[0]
    checks = [
        Check(
            "node",
            major.isdigit() and int(major) >= 18,
            f"{version} ({node})",
            "NodeAdapter needs Node.js 18 or newer",
            False,
        )
    ]
    try:
        bridge = sp.node_bridge_path()
    except FileNotFoundError as exc:
        return [*checks, Check("node bridge", False, str(exc), "reinstall snakepit-trio", False)]
    probe = "const b=require(process.argv[1]);process.stdout.write(b.loadMsgpack([process.cwd()])?'yes':'no')"
    try:
        found = subprocess.run(
            [node, "-e", probe, str(bridge)], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        found = "no"
    checks.append(
        Check(
            "@msgpack/msgpack",
            found == "yes",
            "found: the Node bridge speaks MessagePack"
            if found == "yes"
            else "missing: the Node bridge falls back to JSON (bytes as base64)",
            f"npm install @msgpack/msgpack (in {bridge.parent} or your working directory)",
            False,
        )
    )
    return checks


async def _check_worker(name: str, adapter: sp.Adapter, *, essential: bool, fix: str) -> Check:
    began = time.perf_counter()
    config = sp.PoolConfig(startup_timeout=20, worker_init_timeout=20)
    try:
        with anyio.fail_after(30):
            async with sp.open_pool(adapter, size=1, config=config) as pool:
                ready = time.perf_counter() - began
                t = time.perf_counter()
                await pool.execute("ping", timeout=10)
                rtt = time.perf_counter() - t
                wire = pool.workers()[0].protocol
    except (sp.SnakepitError, OSError, TimeoutError) as exc:
        return Check(name, False, describe(exc), fix, essential)
    return Check(
        name, True, f"ready in {_ms(ready)}, ping {_ms(rtt)}, wire {wire}", essential=essential
    )


def _check_sweep() -> Check:
    sweep = getattr(sp, "sweep_orphans", None)
    if sweep is None:
        return Check(
            "orphans", True, "sweep_orphans() is not available in this version", essential=False
        )
    try:
        orphans = sweep(dry_run=True)
    except Exception as exc:
        return Check("orphans", False, f"the sweep failed: {describe(exc)}", "", False)
    return Check(
        "orphans",
        not orphans,
        f"{len(orphans)} orphaned workers of dead pools" if orphans else "none",
        f"{PROG} sweep --kill",
        False,
    )


def cmd_doctor(ns: argparse.Namespace) -> int:
    py_ok = sys.version_info >= (3, 11)
    checks = [
        Check(
            "python",
            py_ok,
            f"{sys.version.split()[0]} ({sys.executable})",
            "use Python 3.11 or newer",
        ),
        Check("snakepit-trio", True, f"{sp.__version__} ({Path(sp.__file__).parent})"),
    ]
    reinstall = "pip install --force-reinstall snakepit-trio"
    for module, dist in (
        ("trio", "trio"),
        ("anyio", "anyio"),
        ("msgpack", "msgpack"),
        ("attrs", "attrs"),
    ):
        checks.append(_check_import(module, dist, essential=True, fix=reinstall))
    checks.append(_check_import("snakepit_bridge", "snakepit-trio", essential=True, fix=reinstall))
    grpc_fix = "pip install 'snakepit-trio[grpc]' (only for the gRPC adapter)"
    checks.append(_check_import("grpclib", "grpclib", essential=False, fix=grpc_fix))
    checks.append(_check_import("betterproto2", "betterproto2", essential=False, fix=grpc_fix))
    grpc_ok = checks[-1].ok and checks[-2].ok
    checks.append(_check_socket_dir())
    node_checks = _check_node()
    checks += node_checks

    async def workers() -> list[Check]:
        found = [
            await _check_worker(
                "python worker",
                sp.PythonAdapter(),
                essential=True,
                fix=f"run `{sys.executable} -m snakepit_bridge --help`; `{PROG} --debug doctor` shows its stderr",
            )
        ]
        if node_checks[0].ok:
            found.append(
                await _check_worker(
                    "node worker",
                    sp.NodeAdapter(node=shutil.which("node") or "node"),
                    essential=False,
                    fix=f"`{PROG} --debug doctor` shows the bridge's stderr",
                )
            )
        grpc_adapter = getattr(sp, "GrpcPythonAdapter", None)
        if grpc_adapter is not None and grpc_ok:
            found.append(
                await _check_worker(
                    "grpc worker",
                    grpc_adapter(),
                    essential=False,
                    fix=f"`{PROG} --debug doctor` shows the worker's stderr",
                )
            )
        return found

    checks += _run_async(workers)
    checks.append(_check_sweep())
    failed = [c for c in checks if not c.ok and c.essential]
    if ns.json:
        print(dumps({"ok": not failed, "checks": [c._asdict() for c in checks]}))
        return EXIT_ERROR if failed else EXIT_OK
    style = Style(sys.stdout)
    print(style.bold(f"{PROG} doctor"))
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = (
            style.good("ok  ")
            if c.ok
            else (style.bad("FAIL") if c.essential else style.warn("warn"))
        )
        print(f"  {mark}  {c.name:<{width}}  {c.detail}")
        if not c.ok and c.fix:
            print(f"        {'':<{width}}  {style.dim('fix: ' + c.fix)}")
    warnings = sum(1 for c in checks if not c.ok and not c.essential)
    if failed:
        print(style.bad(f"{len(failed)} essential check(s) failed") + f", {warnings} warning(s)")
        return EXIT_ERROR
    print(
        style.good("everything essential works") + f", {warnings} warning(s) about optional parts"
    )
    return EXIT_OK


# ---------------------------------------------------------------------------------- sweep


def cmd_sweep(ns: argparse.Namespace) -> int:
    sweep = getattr(sp, "sweep_orphans", None)
    if sweep is None:
        raise CliError(
            f"sweep is not available: snakepit_trio {sp.__version__} has no sweep_orphans()"
        )
    orphans = list(sweep(dry_run=not ns.kill))
    if ns.json:
        print(
            dumps(
                [
                    {"pid": o.pid, "run_id": o.run_id, "cmdline": o.cmdline, "killed": o.killed}
                    for o in orphans
                ]
            )
        )
        return EXIT_OK
    if not orphans:
        print("no orphaned workers found")
        return EXIT_OK
    rows: list[list[object]] = [["pid", "run id", "killed", "command line"]]
    for o in orphans:
        cmdline = o.cmdline if isinstance(o.cmdline, str) else shlex.join(o.cmdline)
        rows.append([o.pid, o.run_id, "yes" if o.killed else "no", cmdline[:80]])
    for text in _table(rows, indent="  "):
        print(text)
    if ns.kill:
        print(f"killed {sum(1 for o in orphans if o.killed)} of {len(orphans)} orphaned workers")
    else:
        print(f"{len(orphans)} orphaned workers found; dry run, nothing killed (use --kill)")
    return EXIT_OK


# ---------------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks and the workers' log on stderr",
    )
    parser = _Parser(
        prog=PROG,
        parents=[common],
        description="A pool of long-lived worker processes (Python, Node.js, any program "
        "speaking the protocol) for trio and anyio.",
        epilog="exit codes: 0 ok, 1 error, 2 bad usage, 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {sp.__version__}")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="a few-second tour of the pool",
        description="A few-second tour of the pool: Python workers started concurrently, a "
        "ping, parallel calls, an error, bytes, a session, a stream and a cancelled one, the "
        "Node bridge when node is there, then the pool's statistics. Needs nothing but this "
        "package.",
    )
    demo.add_argument("--workers", type=_pool_size, help="pool size (default: 2 per CPU, 2 to 4)")
    demo.add_argument("--no-node", action="store_true", help="skip the Node.js part")
    demo.set_defaults(handler=cmd_demo)

    for name, helptext, what, handler in (
        ("run", "run one command and print its JSON result", "print its result", cmd_run),
        (
            "stream",
            "run a streaming command, printing each chunk as a JSON line",
            "print each chunk as a JSON line",
            cmd_stream,
        ),
    ):
        p = sub.add_parser(
            name,
            parents=[common],
            help=helptext,
            description=f"Start a pool of ADAPTER workers, run COMMAND on it and {what}. "
            'Bytes travel as {"__bytes__": base64} both ways. What the workers write on '
            "stderr (a handler's print()) shows on stderr.",
        )
        p.add_argument("adapter", metavar="ADAPTER", help=ADAPTER_HELP)
        p.add_argument("command", metavar="COMMAND", help="the command name, e.g. ping")
        p.add_argument(
            "args_json",
            metavar="ARGS_JSON",
            nargs="?",
            help="the arguments as a JSON object ('-' reads stdin)",
        )
        _pool_options(p, workers=1)
        p.add_argument("--timeout", type=_seconds, help="bound on the whole call, in seconds")
        p.add_argument("--session", metavar="ID", help="run in this session (affinity)")
        p.add_argument(
            "--json", action="store_true", help="machine output: one JSON document a line"
        )
        p.set_defaults(handler=handler)

    bench = sub.add_parser(
        "bench",
        parents=[common],
        help="a quick latency and throughput table",
        description="Time COMMAND on a fresh pool: sequential requests (latency), then a "
        "burst from concurrent callers (throughput). A quick look; the full suite with "
        "baselines is bench/run.py in the source tree.",
    )
    bench.add_argument("--adapter", default="python", metavar="ADAPTER", help=ADAPTER_HELP)
    _pool_options(bench, workers=2)
    bench.add_argument("--command", default="echo", help="the command to time (default: echo)")
    bench.add_argument("--args-json", default='{"n": 1}', metavar="JSON", help="its arguments")
    bench.add_argument("--requests", type=_positive_int, default=1000, help="sequential requests")
    bench.add_argument("--burst", type=_positive_int, default=4000, help="requests in the burst")
    bench.add_argument("--concurrency", type=_positive_int, default=16, help="callers in the burst")
    bench.add_argument("--json", action="store_true", help="machine output")
    bench.set_defaults(handler=cmd_bench)

    doctor = sub.add_parser(
        "doctor",
        parents=[common],
        help="check this machine; exit 1 if something essential fails",
        description="Check Python, the dependencies, Node.js and its MessagePack package, the "
        "gRPC extra and the socket directory, then start real Python, Node and gRPC workers. "
        "Each failed check says how to fix it; exit 1 if something essential fails.",
    )
    doctor.add_argument("--json", action="store_true", help="machine output")
    doctor.set_defaults(handler=cmd_doctor)

    sweep = sub.add_parser(
        "sweep",
        parents=[common],
        help="find (and with --kill, kill) orphaned workers of dead pools",
        description="List worker processes whose pool is gone (a pool SIGKILLed before its "
        "workers' lifeline fired), verified by their run id and start time; --kill kills them.",
    )
    sweep.add_argument("--kill", action="store_true", help="kill them (default: a dry run)")
    sweep.add_argument("--json", action="store_true", help="machine output")
    sweep.set_defaults(handler=cmd_sweep)
    return parser


# PoolConfig fields the pool options set: flag --startup-timeout sets startup_timeout.
_CONFIG_FLAGS = {
    "startup_timeout": "how long to wait for the workers to start (default 10 s; the "
    "pool starts with those ready by then)",
    "worker_init_timeout": "bound on one worker's start, handler construction included "
    "(default 20 s: raise it for a handler that loads a model)",
    "negotiation_timeout": "how long a worker may take to answer protocol negotiation "
    "(default 5 s)",
    "command_timeout": "default bound on a call when --timeout is not given (default 30 s)",
    "max_frame_size": "largest message either side may send, in bytes: 65536, 16MiB, 1G "
    "(default 64MiB, at most 4GiB - 1)",
}


def _pool_options(p: argparse.ArgumentParser, *, workers: int) -> None:
    p.add_argument(
        "--workers", type=_pool_size, default=workers, help=f"pool size (default {workers})"
    )
    p.add_argument(
        "--wire",
        choices=("auto", "json", "msgpack"),
        default="auto",
        help="codec: negotiate (default), or force JSON or MessagePack",
    )
    for name, helptext in _CONFIG_FLAGS.items():
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=_byte_size if name == "max_frame_size" else _seconds,
            metavar="BYTES" if name == "max_frame_size" else "S",
            help=helptext,
        )


# ---------------------------------------------------------------------------------- main


def _leaf(exc: BaseException) -> BaseException:
    """The exception inside single-member groups; KeyboardInterrupt if a group holds one."""
    while isinstance(exc, BaseExceptionGroup):
        interrupted = exc.subgroup(KeyboardInterrupt)
        if interrupted is not None and len(exc.exceptions) > 1:
            return KeyboardInterrupt()
        if len(exc.exceptions) != 1:
            return exc
        exc = exc.exceptions[0]
    return exc


def _error(message: str) -> None:
    style = Style(sys.stderr)
    sys.stderr.write(f"{PROG}: {style.bad('error:')} {message}\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        ns = build_parser().parse_args(argv)
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    debug: bool = getattr(ns, "debug", False)
    if debug:
        logging.basicConfig(
            level=logging.DEBUG,
            stream=sys.stderr,
            format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        )
    try:
        code: int = ns.handler(ns)
        return code
    except BaseException as raised:
        failure = _leaf(raised)
        if isinstance(failure, KeyboardInterrupt):
            sys.stderr.write(f"\n{PROG}: interrupted\n")
            return EXIT_INTERRUPTED
        if isinstance(failure, BrokenPipeError):  # stdout closed early, e.g. `| head`
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_ERROR
        if isinstance(failure, SystemExit):
            raise
        if debug:
            traceback.print_exception(raised)
        _error(describe(failure, debug=debug))
        if getattr(ns, "json", False) and not isinstance(failure, UsageError):
            print(dumps({"error": {"type": type(failure).__name__, "message": describe(failure)}}))
        return EXIT_USAGE if isinstance(failure, UsageError) else EXIT_ERROR
