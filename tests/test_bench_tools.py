"""The profiling tools in bench/tools/ still run against the library as it is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "bench" / "tools"

_POOL = 'process 10:"python bench/tools/hotloop.py mux 3"'
# The Python bridge is started with ``-c "...; main()"``: a ';' inside a process frame.
_WORKER = 'process 11:"python -c from snakepit_trio_bridge.__main__ import main; main() --mode pool-worker"'
# The bridge's lifeline watcher is a fork of the worker: the same command line, one level down.
_WATCHER = 'process 12:"python -c from snakepit_trio_bridge.__main__ import main; main() --mode pool-worker"'
RAW_STACKS = "\n".join(
    [
        f"{_POOL};run (trio/_core/_run.py:2300);get_events (trio/_core/_io_epoll.py:230) 30",
        f"{_POOL};select (/usr/lib/python3.12/selectors.py:468) 4",
        f"{_POOL};{_WORKER};<module> (<string>:1);main (snakepit_trio_bridge/__main__.py:103);"
        "_read (snakepit_trio_bridge/server.py:296) 20",
        f"{_POOL};{_WORKER};{_WATCHER};<module> (<string>:1);"
        "_watch_process (snakepit_trio_bridge/_lifeline.py:200) 5",
        f"{_POOL};{_WORKER} 2",
    ]
)


def test_stacks_folds_each_process_role_apart_even_with_a_semicolon_in_a_command(
    tmp_path: Path,
) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(RAW_STACKS + "\n")
    out = subprocess.run(
        [sys.executable, str(TOOLS / "stacks.py"), str(raw)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "=== pool: 34 samples" in out
    assert "=== worker: 20 samples" in out  # the watcher's samples are not the worker's
    assert "=== worker fork: 5 samples" in out
    assert "main() --mode" not in out  # no piece of a command line taken for a frame
    assert "selectors.py" in out and "python3.12" not in out  # any Python version's stdlib


def test_hotloop_runs_a_scenario_against_the_current_library() -> None:
    out = subprocess.run(
        [sys.executable, str(TOOLS / "hotloop.py"), "latency", "0.3"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert out.startswith("latency: ") and " per second " in out
