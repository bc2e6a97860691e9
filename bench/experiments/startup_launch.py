"""One worker's spawn -> first reply, started with ``python -m snakepit_bridge`` (stock) or
with ``python -c "from snakepit_bridge.__main__ import main; main()"`` (no runpy, which
imports importlib.util and contextlib: ~10 ms of start-up on this VM).

    python bench/experiments/startup_launch.py [reps]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from time import perf_counter

import trio

import snakepit_trio as sp

LAUNCH = "from snakepit_bridge.__main__ import main; main()"


class DashCAdapter(sp.PythonAdapter):
    """The stock adapter, launching the bridge through ``-c`` instead of ``-m``."""

    def argv(self) -> list[str]:
        argv = super().argv()
        at = argv.index("-m")
        return [*argv[:at], "-c", LAUNCH, *argv[at + 2 :]]


async def ready_time(adapter: sp.Adapter) -> float:
    started = perf_counter()
    config = sp.PoolConfig(health_check_interval=None)
    async with sp.open_pool(adapter, size=1, config=config):
        return perf_counter() - started


def python_wall(code: str) -> float:
    started = perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return perf_counter() - started


def main() -> None:
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    times: dict[str, list[float]] = {"-m (stock)": [], "-c": [], "import msgpack": []}
    for _ in range(reps):
        times["-m (stock)"].append(trio.run(ready_time, sp.PythonAdapter()))
        times["-c"].append(trio.run(ready_time, DashCAdapter()))
        times["import msgpack"].append(python_wall("import msgpack"))
    for name, values in times.items():
        print(
            f"{name:16} median {statistics.median(values) * 1e3:6.1f} ms  "
            f"min {min(values) * 1e3:6.1f} ms"
        )


if __name__ == "__main__":
    main()
