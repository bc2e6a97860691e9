"""The orphan sweep kills only what provably belongs to a dead pool of this namespace and user.

A run id reads ``<pool pid>-<pool start, clock ticks>-<pid namespace inode>-<random>``. The
sweep kills a process carrying one only when that pool is dead *here*: same pid namespace,
and no process with that pid, or one that started at another time (the pid was reused).
Processes of other users are skipped unless ``all_users=True``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import attrs
import pytest
from proc_support import kill_quietly, pid_alive

import snakepit_trio as sp
from snakepit_trio import _orphans
from snakepit_trio._orphans import OrphanInfo, kill_orphans, kill_run, new_run_id

SLEEP = ["/bin/sleep", "60"] if os.path.exists("/bin/sleep") else None
Spawn = Callable[..., "subprocess.Popen[bytes]"]


def _ns() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


def _ticks(pid: int) -> int:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return int(data[data.rfind(b")") + 2 :].split()[19])


def _dead_pool() -> tuple[int, int]:
    """The pid and start ticks of a process that has exited (a pool that died)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    ticks = _ticks(proc.pid)
    proc.kill()
    proc.wait()
    return proc.pid, ticks


def _run_id(pid: int, ticks: int, ns: int) -> str:
    return f"{pid}-{ticks}-{ns}-{os.urandom(4).hex()}"


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start sleepers carrying a run id; all of them are killed at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(run_id: str | None, **kw: object) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        if run_id is not None:
            env.update(SNAKEPIT_RUN_ID=run_id, SNAKEPIT_WORKER_ID="0")
        argv = SLEEP or [sys.executable, "-c", "import time; time.sleep(60)"]
        proc = subprocess.Popen(argv, env=env, **kw)  # type: ignore[call-overload]  # kw: preexec_fn
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def _found(pid: int, **kw: bool) -> list[OrphanInfo]:
    return [o for o in sp.sweep_orphans(dry_run=True, **kw) if o.pid == pid]


def test_new_run_ids_name_this_process_its_start_and_its_namespace() -> None:
    pid, ticks, ns, token = new_run_id().split("-")
    assert (int(pid), int(ticks), int(ns)) == (os.getpid(), _ticks(os.getpid()), _ns())
    assert len(token) == 8 and new_run_id() != new_run_id()


def test_a_dead_pool_s_leftover_in_this_namespace_is_swept(spawn: Spawn) -> None:
    dead = _run_id(*_dead_pool(), _ns())
    leftover = spawn(dead)
    bystander = spawn(None)
    time.sleep(0.1)
    (found,) = _found(leftover.pid)
    assert found.run_id == dead and found.worker_id == "0" and found.uid == os.geteuid()
    assert not _found(bystander.pid)
    # Verified before the kill: another command line (a reused pid) is left alone.
    (refused,) = kill_orphans([attrs.evolve(found, cmdline="something else")])
    assert not refused.killed and pid_alive(leftover.pid)
    swept = sp.sweep_orphans(dry_run=False)
    assert [o.killed for o in swept if o.pid == leftover.pid] == [True]
    leftover.wait(timeout=5)
    assert pid_alive(bystander.pid)


def test_a_pool_pid_now_held_by_a_later_process_counts_as_dead(spawn: Spawn) -> None:
    later = spawn(None)
    reused = _run_id(later.pid, _ticks(later.pid) - 1000, _ns())  # the pool started earlier
    leftover = spawn(reused)
    time.sleep(0.1)
    assert [o.run_id for o in _found(leftover.pid)] == [reused]
    assert not _found(later.pid)


def test_processes_of_a_live_pool_are_not_swept(spawn: Spawn) -> None:
    live = spawn(new_run_id())  # this process plays the pool
    time.sleep(0.1)
    assert not _found(live.pid)
    assert pid_alive(live.pid)


@pytest.mark.parametrize(
    "run_id",
    [
        pytest.param("OTHER_NS", id="another-namespace"),
        pytest.param("999999999-1-deadbeef", id="old-format"),
        pytest.param("not-one-of-ours", id="foreign"),
    ],
)
def test_a_pool_not_provably_dead_here_is_never_swept(spawn: Spawn, run_id: str) -> None:
    if run_id == "OTHER_NS":  # a pool whose pid means nothing here: another namespace's
        run_id = _run_id(*_dead_pool(), _ns() + 1)
    stranger = spawn(run_id)
    time.sleep(0.1)
    assert not _found(stranger.pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process as another user")
def test_other_users_processes_are_skipped_unless_asked(spawn: Spawn) -> None:
    if SLEEP is None:
        pytest.skip("no /bin/sleep")

    def become_nobody() -> None:
        os.setgid(65534)
        os.setuid(65534)

    dead = _run_id(*_dead_pool(), _ns())
    theirs = spawn(dead, preexec_fn=become_nobody)
    time.sleep(0.1)
    assert not _found(theirs.pid)
    (found,) = _found(theirs.pid, all_users=True)
    assert found.uid == 65534
    (killed,) = kill_orphans([found])
    assert killed.killed
    theirs.wait(timeout=5)


IN_CONTAINER = textwrap.dedent(
    """
    import os, sys, anyio, snakepit_trio as sp
    async def main():
        async with sp.open_pool(sp.PythonAdapter(), size=2) as pool:
            print(os.getpid(), pool.run_id, flush=True)
            sys.stdin.read()  # until the test is done
    anyio.run(main)
    """
)


def _unshare_works() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


def test_a_live_pool_in_another_pid_namespace_is_not_swept() -> None:
    if not _unshare_works():
        pytest.skip("needs root and unshare(1) to make a pid namespace")
    # The pool runs in a new pid namespace (a container) under a pid that no process has
    # here; its workers are visible from here, and their run id names that pid.
    # sh is the namespace's init; the pool, its child, gets the pid after 99990 there.
    script = 'echo 99990 > /proc/sys/kernel/ns_last_pid; "$0" -c "$1"'
    argv = ["unshare", "--pid", "--mount-proc", "--kill-child", "sh", "-c", script]
    container = subprocess.Popen(
        [*argv, sys.executable, IN_CONTAINER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert container.stdout is not None
        inner_pid, run_id = container.stdout.readline().split()
        workers = _carrying(run_id)  # the workers and their lifeline watchers
        assert len(workers) >= 2
        assert not pid_alive(int(inner_pid))  # that pid means nothing here
        swept = sp.sweep_orphans(dry_run=False)
        assert not [o for o in swept if o.run_id == run_id]
        assert all(pid_alive(pid) for pid in workers)
    finally:
        container.kill()
        container.wait()


def _carrying(run_id: str) -> list[int]:
    """Pids here of the live processes whose environment holds ``run_id``."""
    needle = f"SNAKEPIT_RUN_ID={run_id}\0".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if needle in Path(f"/proc/{entry}/environ").read_bytes() and pid_alive(int(entry)):
                    found.append(int(entry))
            except OSError:
                continue
    return found


def test_kill_run_takes_down_what_carries_one_run_id(spawn: Spawn) -> None:
    mine = new_run_id()  # a live pool's own id: kill_run does not ask whether it is dead
    ours = [spawn(mine) for _ in range(2)]
    other = spawn(new_run_id())
    time.sleep(0.1)
    killed = kill_run(mine)
    assert sorted(o.pid for o in killed if o.killed) == sorted(p.pid for p in ours)
    for proc in ours:
        proc.wait(timeout=5)
    assert pid_alive(other.pid)


@pytest.mark.anyio
async def test_the_async_sweep_runs_in_a_thread(
    spawn: Spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[int] = []
    find = _orphans.find_orphans

    def recording(**kw: bool) -> list[OrphanInfo]:
        threads.append(threading.get_ident())
        return find(**kw)

    monkeypatch.setattr(_orphans, "find_orphans", recording)
    leftover = spawn(_run_id(*_dead_pool(), _ns()))
    await anyio.sleep(0.1)
    with anyio.fail_after(10):
        swept = await _orphans.sweep_orphans_async(dry_run=False)
    assert [o.killed for o in swept if o.pid == leftover.pid] == [True]
    assert threads and threading.get_ident() not in threads
    kill_quietly(leftover.pid)
