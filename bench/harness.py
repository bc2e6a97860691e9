"""Measurement plumbing: samples, percentiles, CPU accounting, RSS, pinning."""

from __future__ import annotations

import math
import os
import platform
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


def _task_runtime(pid: int) -> float:
    """CPU seconds of every thread of ``pid``, from /proc schedstat (nanosecond precision;
    psutil's cpu_times counts 10 ms clock ticks)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def _minor_faults(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        return int(fields[7])
    except (OSError, ValueError, IndexError):
        return 0


def _counters(pid: int) -> tuple[float, int]:
    return _task_runtime(pid), _minor_faults(pid)


class CpuMeter:
    """CPU seconds (and minor page faults) of this process and of its live descendants
    between start and stop.

    Workers are counted while they are alive (``RUSAGE_CHILDREN`` only counts children once
    they are reaped, i.e. after the pool is gone); a worker that exits in between is counted
    up to its last sighting. Threads that end in between are not counted.
    """

    def __init__(self) -> None:
        self._me = psutil.Process()
        self._parent0 = (0.0, 0)
        self._children0: dict[int, tuple[float, int]] = {}
        self._children_last: dict[int, tuple[float, int]] = {}
        self.parent_faults = 0
        self.worker_faults = 0

    def _children(self) -> dict[int, tuple[float, int]]:
        try:
            kids = self._me.children(recursive=True)
        except psutil.Error:
            return {}
        return {kid.pid: _counters(kid.pid) for kid in kids}

    def start(self) -> None:
        self._children0 = self._children()
        self._children_last = dict(self._children0)
        self._parent0 = _counters(os.getpid())

    def stop(self) -> tuple[float, float]:
        """(parent CPU seconds, workers' CPU seconds) since ``start``."""
        cpu, faults = _counters(os.getpid())
        parent = cpu - self._parent0[0]
        self.parent_faults = faults - self._parent0[1]
        self._children_last.update(self._children())
        workers = 0.0
        self.worker_faults = 0
        for pid, (cpu, faults) in self._children_last.items():
            cpu0, faults0 = self._children0.get(pid, (0.0, 0))
            workers += cpu - cpu0
            self.worker_faults += faults - faults0
        return parent, max(0.0, workers)


class Stopwatch:
    """``with Stopwatch() as watch:`` times the block and meters its CPU (see CpuMeter)."""

    elapsed = 0.0
    parent_cpu = 0.0
    worker_cpu = 0.0
    parent_faults = 0
    worker_faults = 0

    def __enter__(self) -> Stopwatch:
        self._meter = CpuMeter()
        self._meter.start()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.elapsed = time.perf_counter() - self._started
        self.parent_cpu, self.worker_cpu = self._meter.stop()
        self.parent_faults = self._meter.parent_faults
        self.worker_faults = self._meter.worker_faults


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
