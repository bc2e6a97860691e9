"""Measurement plumbing: samples, percentiles, CPU accounting, RSS, pinning."""

from __future__ import annotations

import math
import os
import platform
import resource
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

__all__ = [
    "CpuMeter",
    "Sample",
    "Stopwatch",
    "machine_info",
    "merge",
    "percentile",
    "pin_to_cpu",
    "rss",
]


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    data = sorted(values)
    if not data:
        return math.nan
    rank = (len(data) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    return data[low] + (data[high] - data[low]) * (rank - low)


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _proc_cpu(proc: psutil.Process) -> float:
    try:
        times = proc.cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return 0.0
    return times.user + times.system


class CpuMeter:
    """CPU seconds spent by this process and by its (live) descendants between start and stop.

    Workers are counted with psutil while they are alive (``RUSAGE_CHILDREN`` only counts
    children after they are reaped, i.e. after the pool is gone); a worker that exits in
    between is counted up to its last sighting.
    """

    def __init__(self) -> None:
        self._me = psutil.Process()
        self._parent0 = 0.0
        self._children0: dict[int, float] = {}
        self._children_last: dict[int, float] = {}

    def _children(self) -> dict[int, float]:
        try:
            kids = self._me.children(recursive=True)
        except psutil.Error:
            return {}
        return {kid.pid: _proc_cpu(kid) for kid in kids}

    def start(self) -> None:
        self._children0 = self._children()
        self._children_last = dict(self._children0)
        self._parent0 = _self_cpu()

    def stop(self) -> tuple[float, float]:
        """(parent CPU seconds, workers' CPU seconds) since ``start``."""
        parent = _self_cpu() - self._parent0
        now = self._children()
        self._children_last.update(now)
        workers = sum(
            cpu - self._children0.get(pid, 0.0) for pid, cpu in self._children_last.items()
        )
        return parent, max(0.0, workers)


class Stopwatch:
    """``with Stopwatch() as watch:`` times the block and meters its CPU (see CpuMeter)."""

    elapsed = 0.0
    parent_cpu = 0.0
    worker_cpu = 0.0

    def __enter__(self) -> Stopwatch:
        self._meter = CpuMeter()
        self._meter.start()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.elapsed = time.perf_counter() - self._started
        self.parent_cpu, self.worker_cpu = self._meter.stop()


@dataclass
class Sample:
    """One measurement: ``n`` requests (or chunks) of one contender in one scenario."""

    scenario: str
    contender: str
    workers: int
    callers: int
    n: int
    elapsed: float
    latencies: list[float] = field(default_factory=list, repr=False)
    parent_cpu: float = 0.0
    worker_cpu: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.n / self.elapsed if self.elapsed > 0 else math.nan

    @property
    def median(self) -> float:
        return statistics.median(self.latencies) if self.latencies else math.nan

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)

    def summary(self) -> dict[str, Any]:
        """Plain numbers for the JSON report (times in microseconds)."""
        n = max(self.n, 1)
        return {
            "scenario": self.scenario,
            "contender": self.contender,
            "workers": self.workers,
            "callers": self.callers,
            "n": self.n,
            "elapsed_s": round(self.elapsed, 6),
            "rate_per_s": round(self.rate, 1),
            "median_us": round(self.median * 1e6, 2),
            "p99_us": round(self.p99 * 1e6, 2),
            "parent_cpu_us_per_req": round(self.parent_cpu / n * 1e6, 2),
            "worker_cpu_us_per_req": round(self.worker_cpu / n * 1e6, 2),
            **self.extra,
        }


def rss(pid: int | None = None) -> int:
    """Resident set size in bytes (this process by default)."""
    return psutil.Process(pid).memory_info().rss if pid else psutil.Process().memory_info().rss


def pin_to_cpu(cpu: int) -> None:
    """Run this process (and every child it starts afterwards) on one CPU only."""
    os.sched_setaffinity(0, {cpu})


def machine_info(pinned: int | None) -> dict[str, Any]:
    load1, load5, load15 = os.getloadavg()
    return {
        "cpu_count": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "pinned_cpu": pinned,
        "loadavg": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def merge(samples: list[Sample]) -> Sample:
    """One sample out of several rounds of the same measurement (latencies pooled)."""
    first = samples[0]
    merged = Sample(
        first.scenario,
        first.contender,
        first.workers,
        first.callers,
        sum(s.n for s in samples),
        sum(s.elapsed for s in samples),
        [x for s in samples for x in s.latencies],
        sum(s.parent_cpu for s in samples),
        sum(s.worker_cpu for s in samples),
        dict(samples[-1].extra),
    )
    merged.extra["round_rates"] = [round(s.rate, 1) for s in samples]
    return merged
