"""Benchmark snakepit-trio against its peers, side by side, in one run.

    python bench/run.py [--quick] [--pin CPU] [--out bench/results]

Contenders: snakepit-trio (Python bridge, MessagePack; one request in flight per worker, and
16 in flight per worker), ProcessPoolExecutor, multiprocessing.Pool, trio-parallel,
anyio.to_process, and the floor: a child echoing MessagePack frames over a pipe, driven with
os.read/os.write and one trio checkpoint per round trip.

Scenarios: (1) latency, 1 caller, 1 worker; (2) throughput, 16 callers, 1/2/4 workers, one in
flight per worker; (3) the same with several in flight per worker; (4) 1 MiB bytes echo;
(5) start-up; (6) streaming rate and memory; (7) memory per queued request.

Writes a markdown table to stdout and OUT/latest.md, the numbers to OUT/latest.json and a plot
to OUT/latency_throughput.png (when matplotlib is installed; without it, a note says so). Each
measurement runs in ``rounds`` interleaved rounds (every contender once per round) so that the
noise of a shared machine hits them all alike.
"""

from __future__ import annotations

import argparse
import compileall
import gc
import json
import linecache
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import trio
from contenders import (
    AnyioToProcess,
    Contender,
    Job,
    MultiprocessingPool,
    PoolExecutor,
    RawTrio,
    Snakepit,
    TrioParallel,
    bench_adapter,
)
from harness import Sample, Stopwatch, machine_info, merge, pin_to_cpu, rss
from report import evaluate_targets, render_markdown, render_plot
from workloads import MIB, SMALL, big_payload

import snakepit_trio as sp

SNAKEPIT = "snakepit-trio"
SNAKEPIT_MUX = "snakepit-trio mux16"
SNAKEPIT_JSON = "snakepit-trio json"
FLOOR = "raw trio pipe (floor)"
FLOOR_PIPELINED = "raw trio pipelined"


@dataclass(frozen=True)
class Plan:
    rounds: int
    latency_n: int
    throughput_n: int
    worker_counts: tuple[int, ...]
    big_n: int
    startup_reps: int
    small_chunks: int
    blob_chunks: int
    queued: int


QUICK = Plan(
    rounds=2,
    latency_n=1000,
    throughput_n=2000,
    worker_counts=(1, 2, 4),
    big_n=30,
    startup_reps=3,
    small_chunks=20_000,
    blob_chunks=256,
    queued=10_000,
)
FULL = Plan(
    rounds=3,
    latency_n=4000,
    throughput_n=6000,
    worker_counts=(1, 2, 4),
    big_n=120,
    startup_reps=7,
    small_chunks=100_000,
    blob_chunks=1024,
    queued=10_000,
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- request/response


def compare(
    contenders: list[Contender], job: Job, rounds: int
) -> tuple[dict[str, Sample], dict[str, str]]:
    """Run every contender ``rounds`` times, interleaved; merge each one's rounds."""
    runs: dict[str, list[Sample]] = {c.name: [] for c in contenders}
    errors: dict[str, str] = {}
    for _ in range(rounds):
        for contender in contenders:
            if contender.name in errors:
                continue
            try:
                runs[contender.name].append(contender.run(job))
            except Exception as exc:
                errors[contender.name] = f"{type(exc).__name__}: {exc}"
                log(f"  {contender.name} failed: {errors[contender.name]}")
    merged = {name: merge(samples) for name, samples in runs.items() if samples}
    for sample in merged.values():
        log(
            f"  {job.scenario:10} w={job.workers} c={job.callers} {sample.contender:24} "
            f"{sample.rate:9.0f}/s  median {sample.median * 1e6:8.1f} us  "
            f"p99 {sample.p99 * 1e6:8.1f} us"
        )
    return merged, errors


def peers() -> list[Contender]:
    return [PoolExecutor(), MultiprocessingPool(), TrioParallel(), AnyioToProcess()]


def run_latency(plan: Plan) -> tuple[dict[str, Sample], dict[str, str]]:
    log("(1) latency: 1 caller, 1 worker, small request")
    contenders = [
        Snakepit(SNAKEPIT),
        Snakepit(SNAKEPIT_JSON, wire="json"),
        *peers(),
        RawTrio(FLOOR),
    ]
    return compare(contenders, Job("latency", 1, 1, plan.latency_n, SMALL), plan.rounds)


def run_throughput(plan: Plan) -> tuple[dict[int, dict[str, Sample]], dict[str, str]]:
    log("(2)+(3) throughput: 16 callers, small request, by worker count")
    by_workers: dict[int, dict[str, Sample]] = {}
    errors: dict[str, str] = {}
    for workers in plan.worker_counts:
        contenders = [
            Snakepit(SNAKEPIT),
            Snakepit(SNAKEPIT_MUX, max_in_flight=16),
            *peers(),
            RawTrio(FLOOR),
            RawTrio(FLOOR_PIPELINED, pipelined=True),
        ]
        job = Job("throughput", workers, 16, plan.throughput_n, SMALL)
        by_workers[workers], failed = compare(contenders, job, plan.rounds)
        errors.update({f"{name} (w={workers})": e for name, e in failed.items()})
    return by_workers, errors


def run_big(plan: Plan) -> tuple[dict[str, Sample], dict[str, str]]:
    log("(4) 1 MiB bytes echo: 1 caller, 1 worker")
    contenders = [
        Snakepit(SNAKEPIT),
        Snakepit(SNAKEPIT_JSON, wire="json"),
        *peers(),
        RawTrio(FLOOR),
    ]
    job = Job("echo_1MiB", 1, 1, plan.big_n, big_payload(), warmup=5)
    return compare(contenders, job, plan.rounds)


# ---------------------------------------------------------------------- start-up


def _python_wall(code: str, reps: int) -> float:
    times = []
    for _ in range(reps):
        started = perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(perf_counter() - started)
    return statistics.median(times)


async def _startup_async(reps: int) -> dict[str, list[float]]:
    adapter = sp.PythonAdapter()
    config = sp.PoolConfig(health_check_interval=None)
    out: dict[str, list[float]] = {"concurrent": [], "sequential": [], "single": [], "close8": []}
    for _ in range(reps):
        started = perf_counter()
        async with sp.open_pool(adapter, size=8, config=config) as pool:
            out["concurrent"].append(perf_counter() - started)
            assert pool.stats()["workers"] == 8
            closing = perf_counter()
        out["close8"].append(perf_counter() - closing)
        async with AsyncExitStack() as stack:
            started = perf_counter()
            for _ in range(8):
                await stack.enter_async_context(sp.open_pool(adapter, size=1, config=config))
            out["sequential"].append(perf_counter() - started)
        started = perf_counter()
        async with sp.open_pool(adapter, size=1, config=config):
            out["single"].append(perf_counter() - started)
    return out


def run_startup(plan: Plan) -> dict[str, Any]:
    log("(5) start-up: 8 workers concurrently vs one after another; one worker vs python")
    # A wheel install compiles the bridge's bytecode; an editable checkout under
    # PYTHONDONTWRITEBYTECODE=1 never keeps it, and every worker would compile it again.
    import snakepit_trio_bridge

    compileall.compile_dir(Path(snakepit_trio_bridge.__file__).parent, quiet=1)
    reps = plan.startup_reps
    python_pass = _python_wall("pass", reps + 2)
    python_msgpack = _python_wall("import msgpack", reps + 2)
    times = trio.run(_startup_async, reps)
    result = {
        "python_pass_s": python_pass,
        "python_import_msgpack_s": python_msgpack,
        **{f"{key}_s": statistics.median(values) for key, values in times.items()},
        "reps": reps,
    }
    log(
        "  8 concurrent {concurrent_s:.3f} s, 8 sequential {sequential_s:.3f} s, one worker "
        "{single_s:.3f} s, python -c 'import msgpack' {python_import_msgpack_s:.3f} s".format(
            **result
        )
    )
    return result


# ---------------------------------------------------------------------- streaming


async def _stream_rate(pool: sp.Pool, command: str, args: dict[str, Any]) -> dict[str, Any]:
    count = 0
    with Stopwatch() as watch:
        async with pool.stream(command, args) as chunks:
            async for _ in chunks:
                count += 1
    return {
        "command": command,
        "chunks": count,
        "elapsed_s": watch.elapsed,
        "chunks_per_s": count / watch.elapsed,
        "parent_cpu_us_per_chunk": watch.parent_cpu / count * 1e6,
        "worker_cpu_us_per_chunk": watch.worker_cpu / count * 1e6,
    }


async def _stream_memory(chunks: int, credits: int, delay: float) -> dict[str, Any]:
    config = sp.PoolConfig(health_check_interval=None, stream_credits=credits)
    async with sp.open_pool(bench_adapter(), size=1, config=config) as pool:
        worker_pid = pool.workers()[0].pid
        assert worker_pid is not None
        async with pool.stream("blob_stream", {"n": 4, "size": MIB}) as warm:
            async for _ in warm:
                pass
        gc.collect()
        base, worker_base = rss(), rss(worker_pid)
        peak, worker_peak = base, worker_base
        received = 0
        started = perf_counter()
        async with pool.stream("blob_stream", {"n": chunks, "size": MIB}) as stream:
            async for chunk in stream:
                received += len(chunk)
                peak = max(peak, rss())
                worker_peak = max(worker_peak, rss(worker_pid))
                await trio.sleep(delay)
        elapsed = perf_counter() - started
        gc.collect()
        after = rss()
    return {
        "credits": credits,
        "chunks": chunks,
        "bytes": received,
        "consumer_delay_s": delay,
        "elapsed_s": elapsed,
        "pool_rss_base_mb": base / MIB,
        "pool_rss_growth_mb": (peak - base) / MIB,
        "pool_rss_after_mb": after / MIB,
        "worker_rss_growth_mb": (worker_peak - worker_base) / MIB,
    }


async def _streaming_async(plan: Plan) -> dict[str, Any]:
    config = sp.PoolConfig(health_check_interval=None)
    rates = []
    async with sp.open_pool(bench_adapter(), size=1, config=config) as pool:
        await _stream_rate(pool, "count_stream", {"n": 200})
        rates.append(await _stream_rate(pool, "count_stream", {"n": plan.small_chunks}))
        rates.append(
            await _stream_rate(pool, "ping_stream", {"count": plan.small_chunks, "interval": 0})
        )
    memory = [await _stream_memory(plan.blob_chunks, credits, 0.01) for credits in (32, 4)]
    return {"rates": rates, "memory": memory}


def run_streaming(plan: Plan) -> dict[str, Any]:
    log("(6) streaming: small chunks per second; pool RSS while streaming 1 MiB chunks")
    result = trio.run(_streaming_async, plan)
    for rate in result["rates"]:
        log(f"  {rate['command']}: {rate['chunks_per_s']:.0f} chunks/s")
    for mem in result["memory"]:
        log(
            f"  {mem['bytes'] / MIB:.0f} MiB in 1 MiB chunks, credits={mem['credits']}: pool RSS "
            f"+{mem['pool_rss_growth_mb']:.1f} MB, worker RSS +{mem['worker_rss_growth_mb']:.1f} MB"
        )
    return result


# ---------------------------------------------------------------------- queued requests


async def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)
    del what


def _measure(use_tracemalloc: bool) -> Any:
    gc.collect()
    return tracemalloc.take_snapshot() if use_tracemalloc else rss()


def _growth(before: Any, after: Any, n: int, use_tracemalloc: bool) -> dict[str, Any]:
    if not use_tracemalloc:
        return {"rss_bytes_per_item": (after - before) / n}
    diff = after.compare_to(before, "lineno")
    total = sum(d.size_diff for d in diff)
    top = [
        {
            "where": f"{Path(d.traceback[0].filename).name}:{d.traceback[0].lineno}",
            "code": linecache.getline(d.traceback[0].filename, d.traceback[0].lineno).strip()[:70],
            "bytes_per_item": round(d.size_diff / n, 1),
        }
        for d in sorted(diff, key=lambda d: d.size_diff, reverse=True)[:14]
    ]
    return {"traced_bytes_per_item": total / n, "top": top}


async def _queued_pool(n: int, use_tracemalloc: bool) -> dict[str, Any]:
    config = sp.PoolConfig(
        health_check_interval=None,
        max_queue=n + 100,
        queue_timeout=3600,
        command_timeout=3600,
        drain_timeout=0.5,
    )
    async with sp.open_pool(bench_adapter(), size=2, config=config) as pool:

        async def call() -> None:
            try:
                await pool.execute("bench_echo", SMALL)
            except sp.SnakepitError:
                pass

        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(pool.execute, "block", {"seconds": 3600})
            await _wait_for(lambda: pool.stats()["busy"] == 2, "workers blocked")
            if use_tracemalloc:
                tracemalloc.start()
            before = _measure(use_tracemalloc)
            for _ in range(n):
                nursery.start_soon(call)
            await _wait_for(lambda: pool.stats()["queued"] == n, "requests queued")
            after = _measure(use_tracemalloc)
            if use_tracemalloc:
                tracemalloc.stop()
            nursery.cancel_scope.cancel()
        await _wait_for(lambda: pool.stats()["available"] == 2, "workers freed")
    return _growth(before, after, n, use_tracemalloc)


async def _queued_bare(n: int, use_tracemalloc: bool) -> dict[str, Any]:
    """The same number of trio tasks, each parked on an Event: what any caller costs."""
    event = trio.Event()
    parked = 0

    async def park() -> None:
        nonlocal parked
        parked += 1
        await event.wait()

    async with trio.open_nursery() as nursery:
        if use_tracemalloc:
            tracemalloc.start()
        before = _measure(use_tracemalloc)
        for _ in range(n):
            nursery.start_soon(park)
        await _wait_for(lambda: parked == n, "tasks parked")
        after = _measure(use_tracemalloc)
        if use_tracemalloc:
            tracemalloc.stop()
        event.set()
    return _growth(before, after, n, use_tracemalloc)


_PROBES = {"queued-pool": _queued_pool, "queued-bare": _queued_bare}


def _probe(kind: str, n: int, traced: bool) -> dict[str, Any]:
    """Run one memory probe in a fresh interpreter (so that no freed memory is reused)."""
    argv = [sys.executable, __file__, "--probe", kind, "--probe-n", str(n)]
    if traced:
        argv.append("--probe-traced")
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"probe {kind} failed: {tail[0]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_queued(plan: Plan) -> dict[str, Any]:
    log(f"(7) memory per queued request: {plan.queued} requests behind 2 blocked workers")
    n = plan.queued
    pool_rss = _probe("queued-pool", n, False)
    pool_traced = _probe("queued-pool", n, True)
    bare_rss = _probe("queued-bare", n, False)
    bare_traced = _probe("queued-bare", n, True)
    result = {
        "queued": n,
        "pool_rss_bytes_per_request": pool_rss["rss_bytes_per_item"],
        "pool_traced_bytes_per_request": pool_traced["traced_bytes_per_item"],
        "bare_task_rss_bytes": bare_rss["rss_bytes_per_item"],
        "bare_task_traced_bytes": bare_traced["traced_bytes_per_item"],
        "pool_top_allocations": pool_traced["top"],
    }
    log(
        "  pool: {pool_rss_bytes_per_request:.0f} B RSS / {pool_traced_bytes_per_request:.0f} B "
        "traced per queued request; a bare parked trio task: {bare_task_rss_bytes:.0f} B RSS / "
        "{bare_task_traced_bytes:.0f} B traced".format(**result)
    )
    return result


# ---------------------------------------------------------------------- main

SCENARIOS: dict[str, Callable[[Plan], Any]] = {
    "latency": run_latency,
    "throughput": run_throughput,
    "big": run_big,
    "startup": run_startup,
    "streaming": run_streaming,
    "queued": run_queued,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (~2-3 minutes)")
    parser.add_argument("--pin", type=int, metavar="CPU", help="run everything on this CPU")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument(
        "--only",
        help=f"comma-separated subset of: {','.join(SCENARIOS)}",
    )
    parser.add_argument("--probe", choices=sorted(_PROBES), help=argparse.SUPPRESS)
    parser.add_argument("--probe-n", type=int, default=10_000, help=argparse.SUPPRESS)
    parser.add_argument("--probe-traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(trio.run(_PROBES[args.probe], args.probe_n, args.probe_traced)))
        return 0
    if args.pin is not None:
        pin_to_cpu(args.pin)
    plan = QUICK if args.quick else FULL
    only = set(args.only.split(",")) if args.only else None

    def wanted(name: str) -> bool:
        return only is None or name in only

    started = perf_counter()
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "plan": asdict(plan),
        "machine": machine_info(args.pin),
        "errors": {},
    }
    log(f"machine: {results['machine']}")
    samples: dict[str, Any] = {}
    for name, scenario in SCENARIOS.items():
        if not wanted(name):
            continue
        try:
            outcome = scenario(plan)
        except Exception as exc:  # keep going: one broken scenario must not lose the others
            results["errors"][name] = f"{type(exc).__name__}: {exc}"
            log(f"{name} failed: {results['errors'][name]}")
            continue
        if isinstance(outcome, tuple):
            samples[name], errors = outcome
            results["errors"].update({f"{name}: {k}": v for k, v in errors.items()})
        else:
            results[name] = outcome
    results["machine"]["loadavg_end"] = machine_info(args.pin)["loadavg"]
    results["wall_s"] = perf_counter() - started
    results["latency"] = {k: s.summary() for k, s in samples.get("latency", {}).items()}
    results["throughput"] = {
        str(w): {k: s.summary() for k, s in by_name.items()}
        for w, by_name in samples.get("throughput", {}).items()
    }
    results["big"] = {k: s.summary() for k, s in samples.get("big", {}).items()}
    results["targets"] = evaluate_targets(results)

    write_results(results, args.out)
    log(f"done in {results['wall_s']:.0f} s")
    return 0


def write_results(results: dict[str, Any], out: Path) -> list[Path]:
    """Print the markdown table and write it, the JSON and the plot (when matplotlib is
    installed: it is optional, and a run of minutes must not end in an ImportError)."""
    out.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(results)
    print(markdown)
    written = [out / "latest.md", out / "latest.json"]
    written[0].write_text(markdown)
    written[1].write_text(json.dumps(results, indent=2, default=float))
    if results["throughput"]:
        try:
            render_plot(results, out / "latency_throughput.png")
        except ImportError as exc:
            log(f"no plot: {exc} (pip install matplotlib, or pip install --group bench)")
        else:
            written.append(out / "latency_throughput.png")
    log("wrote " + ", ".join(str(path) for path in written))
    return written


if __name__ == "__main__":
    sys.exit(main())
