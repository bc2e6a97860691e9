"""The lifeline's watcher process: what it holds, when it leaves, what it guards.

The bridge forks a watcher at start (see ``snakepit_trio_bridge._lifeline``). These tests drive a
real bridge over stdio with a lifeline pipe whose write end the test holds, as a pool would.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from select import select
from typing import Any

import pytest
from proc_support import kill_quietly, pid_alive, wait_dead

BRIDGE_DIR = Path(__file__).resolve().parents[1] / "bridges" / "python"
TESTING = "snakepit_trio_bridge.testing:TestingHandler"


class Worker:
    """A bridge in a session of its own, with a lifeline, spoken to in JSON frames."""

    def __init__(
        self, grace: float, stderr: Any = subprocess.PIPE, python: tuple[str, ...] = ()
    ) -> None:
        read_end, self.lifeline = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(BRIDGE_DIR), env.get("PYTHONPATH")) if p
        )
        env["SNAKEPIT_LIFELINE_FD"] = str(read_end)
        env["SNAKEPIT_LIFELINE_GRACE"] = str(grace)
        python = python or (sys.executable, "-m", "snakepit_trio_bridge")
        self.proc = subprocess.Popen(
            [*python, "--protocol", "json", "--handler", TESTING],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,  # a pipe, as the pool's
            env=env,
            pass_fds=(read_end,),
            start_new_session=True,
        )
        os.close(read_end)
        self.pid = self.proc.pid
        self._next_id = 0

    def call(self, command: str, args: dict[str, Any] | None = None) -> Any:
        assert self.proc.stdin is not None
        self._next_id += 1
        body = json.dumps({"id": self._next_id, "command": command, "args": args or {}}).encode()
        self.proc.stdin.write(struct.pack(">I", len(body)) + body)
        self.proc.stdin.flush()
        (length,) = struct.unpack(">I", self._read(4))
        reply = json.loads(self._read(length))
        assert reply["success"], reply
        return reply["result"]

    def _read(self, n: int) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        data = b""
        while len(data) < n:
            assert select([fd], [], [], 10)[0], "the bridge did not answer"
            chunk = os.read(fd, n - len(data))
            assert chunk, "the bridge closed its stdout"
            data += chunk
        return data

    def watcher(self) -> int:
        """The watcher's pid: the bridge's child named ``snakepit-watch``."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for pid in _children(self.pid):
                if _comm(pid) == "snakepit-watch":
                    return pid
            time.sleep(0.01)
        raise AssertionError("no watcher process")

    def close_lifeline(self) -> None:
        if self.lifeline >= 0:
            os.close(self.lifeline)
            self.lifeline = -1

    def stop(self) -> None:
        self.close_lifeline()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        kill_quietly(self.pid)
        self.proc.wait()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _fd_targets(pid: int) -> dict[int, str]:
    fd_dir = Path(f"/proc/{pid}/fd")
    targets = {}
    for name in os.listdir(fd_dir):
        try:
            targets[int(name)] = os.readlink(fd_dir / name)
        except OSError:
            continue
    return targets


@pytest.fixture
def worker() -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(
        grace: float = 30.0, stderr: Any = subprocess.PIPE, python: tuple[str, ...] = ()
    ) -> Worker:
        started.append(Worker(grace, stderr, python))
        return started[-1]

    yield start
    for one in started:
        one.stop()


def test_the_watcher_holds_none_of_the_worker_s_descriptors(worker: Any) -> None:
    bridge = worker()
    assert bridge.call("ping")["status"] == "ok"
    watcher = bridge.watcher()
    assert os.getpgid(watcher) == bridge.pid  # in the worker's group: the pool's kill ends it
    stdio = {
        f"pipe:[{os.fstat(stream.fileno()).st_ino}]"
        for stream in (bridge.proc.stdin, bridge.proc.stdout, bridge.proc.stderr)
    }
    targets = _fd_targets(watcher)
    assert {targets[0], targets[1], targets[2]} == {os.devnull}
    assert not stdio & set(targets.values())
    lifeline = f"pipe:[{os.fstat(bridge.lifeline).st_ino}]"
    others = sorted(target for fd, target in targets.items() if fd > 2 and target != lifeline)
    # What is left: the lifeline, the control pipe from the worker, the worker's pidfd.
    assert len(others) == 2 and others[0] == "anon_inode:[pidfd]", targets
    assert others[1].startswith("pipe:[")


def test_a_killed_worker_s_stdout_ends_at_once_and_its_watcher_leaves(worker: Any) -> None:
    bridge = worker()
    bridge.call("ping")
    watcher = bridge.watcher()
    os.kill(bridge.pid, signal.SIGKILL)  # the worker alone, as the OOM killer does
    assert bridge.proc.stdout is not None
    assert select([bridge.proc.stdout], [], [], 5)[0]
    assert bridge.proc.stdout.read() == b""  # nobody else holds the pipe
    bridge.proc.wait()
    assert wait_dead([watcher], 5.0) == []  # nothing left in the group to guard


def test_the_watcher_leaves_with_a_worker_that_exits_normally(worker: Any) -> None:
    bridge = worker()
    bridge.call("ping")
    watcher = bridge.watcher()
    assert bridge.proc.stdin is not None
    bridge.proc.stdin.close()  # the graceful stop; the lifeline stays open (the pool lives)
    assert bridge.proc.wait(timeout=10) == 0
    assert wait_dead([watcher], 5.0) == []


def test_the_watcher_guards_what_a_dead_worker_left_in_its_group(worker: Any) -> None:
    bridge = worker(grace=30.0)
    child = bridge.call("spawn_child")["pid"]
    watcher = bridge.watcher()
    try:
        os.kill(bridge.pid, signal.SIGKILL)  # as the nanny's death signal does
        bridge.proc.wait()
        time.sleep(0.3)
        assert pid_alive(child) and pid_alive(watcher)  # the pool lives: its call
        started = time.monotonic()
        bridge.close_lifeline()  # the pool lets go (or dies)
        # The worker is already gone: no grace to wait (it is 30 s here).
        assert wait_dead([child, watcher], 5.0) == []
        assert time.monotonic() - started < 5.0
    finally:
        kill_quietly(child)


def test_the_grace_runs_while_the_worker_lives_then_the_group_is_killed(
    worker: Any, tmp_path: Path
) -> None:
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as stderr:  # a file: the watcher keeps it and logs the kill
        bridge = worker(grace=0.5, stderr=stderr)
    child = bridge.call("spawn_child")["pid"]
    try:
        started = time.monotonic()
        bridge.close_lifeline()
        assert bridge.proc.wait(timeout=10) == -signal.SIGKILL
        assert time.monotonic() - started >= 0.5  # the grace was honoured
        assert wait_dead([child], 5.0) == []
        assert f"kills worker {bridge.pid} and its process group" in log.read_text()
    finally:
        kill_quietly(child)


NO_EXECUTABLE = (
    "import sys; sys.executable = ''; sys.argv[0] = 'snakepit_trio_bridge'; "
    "from snakepit_trio_bridge.__main__ import main; main()"
)


def test_without_a_watcher_program_a_thread_watches(worker: Any) -> None:
    bridge = worker(grace=0.2, python=(sys.executable, "-c", NO_EXECUTABLE))
    child = bridge.call("spawn_child")["pid"]
    try:
        assert _children(bridge.pid) == [child]  # no watcher: it could not be started
        bridge.close_lifeline()
        assert bridge.proc.wait(timeout=10) == -signal.SIGKILL
        assert wait_dead([child], 5.0) == []
    finally:
        kill_quietly(child)
