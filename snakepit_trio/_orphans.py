"""Finding and killing workers whose pool is gone (Linux ``/proc``).

Every worker a pool starts carries ``SNAKEPIT_RUN_ID`` in its environment, and so do the
processes it spawns. ``new_run_id`` writes it as ``<pid>-<start>-<pidns>-<random>``: the pool
process's pid, its start time in clock ticks since boot (``/proc/PID/stat`` field 22), the
inode of its pid namespace, and 8 random hex digits. Pid and start time name one process for
as long as the machine runs; the namespace says in which numbering the pid is meant.

A process is an orphan only when its pool is provably dead *here*: the run id names this
process's pid namespace (a pool in a container, or in the host seen from a container, numbers
its pids otherwise: its pid means nothing here), and no live process has that pid, or the one
that has it started at another time (the pid was reused). Run ids of any other shape (older
versions, other programs) are never swept. Other users' processes are skipped unless
``all_users=True``.

Before killing, the candidate is pinned with a pidfd, then its start time, run id and command
line are read again: a pid reused in between is never touched.

Scanning ``/proc`` and waiting for the kills block: from an event loop, use
``sweep_orphans_async``, which runs the sweep in a worker thread.
"""

from __future__ import annotations

import functools
import os
import secrets
import signal
import time

import anyio
import attrs
from snakepit_trio_bridge.protocol.constants import ENV_RUN_ID, ENV_WORKER_ID

__all__ = [
    "OrphanInfo",
    "find_orphans",
    "kill_orphans",
    "kill_run",
    "new_run_id",
    "sweep_orphans",
    "sweep_orphans_async",
]


@attrs.frozen
class OrphanInfo:
    """A leftover process of a dead pool."""

    pid: int
    run_id: str
    worker_id: str | None
    cmdline: str
    start_ticks: int
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22)."""
    killed: bool = False
    uid: int | None = None
    """The process's real user id."""


def new_run_id() -> str:
    """A run id for a pool run by this process (see the module docstring)."""
    pid = os.getpid()
    stat = _stat(pid)
    ns = _pid_namespace()
    # Without /proc (no start time, no namespace) the id is one no sweep can prove dead.
    return f"{pid}-{stat[1] if stat else 0}-{ns or 0}-{secrets.token_hex(4)}"


def _pid_namespace() -> int | None:
    """The inode of this process's pid namespace, if /proc shows this namespace's pids.

    /proc mounted for another namespace would make every pid in it mean something else.
    """
    try:
        if os.readlink("/proc/self") != str(os.getpid()):
            return None
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _parse(run_id: str) -> tuple[int, int, int] | None:
    """(pool pid, pool start ticks, pid namespace) of a run id ``new_run_id`` wrote."""
    parts = run_id.split("-")
    if len(parts) != 4 or not all(p.isdigit() for p in parts[:3]):
        return None
    pid, ticks, ns = (int(p) for p in parts[:3])
    if pid <= 0 or ticks <= 0 or ns <= 0:
        return None
    return pid, ticks, ns


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start ticks) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return fields[0].decode(), int(fields[19])
    except (IndexError, ValueError):
        return None


def _live(stat: tuple[str, int] | None) -> bool:
    return stat is not None and stat[0] not in ("Z", "X")  # zombies are reaped lazily here


def _uids(pid: int) -> tuple[int, int] | None:
    """(real, effective) user id of ``pid``."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    real, effective = line.split()[1:3]
                    return int(real), int(effective)
    except (OSError, ValueError):
        pass
    return None


def _environ(pid: int) -> dict[str, str] | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key in (ENV_RUN_ID.encode(), ENV_WORKER_ID.encode()):
            env[key.decode()] = value.decode("utf-8", "replace")
    return env


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _pool_dead(run_id: str, namespace: int) -> bool:
    """Whether the pool named by ``run_id`` is provably dead in pid namespace ``namespace``."""
    parsed = _parse(run_id)
    if parsed is None:
        return False  # not a run id we wrote: never treat its owner as dead
    pool_pid, pool_ticks, pool_ns = parsed
    if pool_ns != namespace:
        return False  # its pid is another namespace's: it proves nothing here
    stat = _stat(pool_pid)
    return not _live(stat) or (stat is not None and stat[1] != pool_ticks)


def _candidates(all_users: bool) -> list[tuple[int, dict[str, str], tuple[str, int], int]]:
    """(pid, run id environment, stat, real uid) of every live process carrying a run id."""
    me = os.getpid()
    my_uid = os.geteuid()
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        if not all_users:
            # A quick look first (the directory belongs to the process's effective uid): other
            # users' environments are not even read.
            try:
                if os.stat(f"/proc/{pid}").st_uid != my_uid:
                    continue
            except OSError:
                continue
        env = _environ(pid)
        if not env or ENV_RUN_ID not in env:
            continue
        stat = _stat(pid)
        uids = _uids(pid)
        if not _live(stat) or stat is None or uids is None:
            continue
        if not all_users and uids != (my_uid, my_uid):
            continue  # e.g. a set-user-id program started by us: not ours to kill
        found.append((pid, env, stat, uids[0]))
    return found


def find_orphans(*, all_users: bool = False) -> list[OrphanInfo]:
    """Every live process that carries a run id whose pool is provably dead here.

    Only this user's processes unless ``all_users`` (root only can see the others').
    """
    namespace = _pid_namespace()
    if namespace is None:
        return []  # no way to prove any pool dead
    dead: dict[str, bool] = {}
    found: list[OrphanInfo] = []
    for pid, env, stat, uid in _candidates(all_users):
        run_id = env[ENV_RUN_ID]
        if run_id not in dead:
            dead[run_id] = _pool_dead(run_id, namespace)
        if dead[run_id]:
            info = OrphanInfo(pid, run_id, env.get(ENV_WORKER_ID), _cmdline(pid), stat[1], uid=uid)
            found.append(info)
    return found


def kill_orphans(orphans: list[OrphanInfo]) -> list[OrphanInfo]:
    """SIGKILL each orphan after checking it is still the same process.

    The process is pinned with a pidfd first; then its start time, run id and command line
    must still be those found. Returns the list with ``killed`` set; a process that changed
    is left alone.
    """
    result: list[OrphanInfo] = []
    for orphan in orphans:
        result.append(attrs.evolve(orphan, killed=_kill_if_same(orphan)))
    return result


def _kill_if_same(orphan: OrphanInfo) -> bool:
    try:
        pidfd = os.pidfd_open(orphan.pid)
    except OSError:
        return False  # gone
    try:
        stat = _stat(orphan.pid)
        env = _environ(orphan.pid)
        same = (
            _live(stat)
            and stat is not None
            and stat[1] == orphan.start_ticks
            and env is not None
            and env.get(ENV_RUN_ID) == orphan.run_id
            and _cmdline(orphan.pid) == orphan.cmdline
        )
        if not same:
            return False
        # The pidfd was opened before the checks: it is the process that passed them.
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        os.close(pidfd)


def _wait_gone(killed: list[OrphanInfo], wait: float) -> None:
    deadline = time.monotonic() + wait
    pending = [o for o in killed if o.killed]
    while pending and time.monotonic() < deadline:
        pending = [o for o in pending if _still(o)]
        if pending:
            time.sleep(0.01)


def _still(orphan: OrphanInfo) -> bool:
    stat = _stat(orphan.pid)
    return _live(stat) and stat is not None and stat[1] == orphan.start_ticks


def sweep_orphans(
    *, dry_run: bool = True, wait: float = 1.0, all_users: bool = False
) -> list[OrphanInfo]:
    """Find leftovers of dead pools; with ``dry_run=False`` kill them (verified first).

    Only processes of pools provably dead in this pid namespace, and only this user's
    processes unless ``all_users=True``. Returns what was found (``killed`` tells what was
    killed). Waits up to ``wait`` seconds for killed processes to disappear. It blocks (a
    scan of ``/proc``): from an event loop, await ``sweep_orphans_async`` instead.
    """
    orphans = find_orphans(all_users=all_users)
    if dry_run or not orphans:
        return orphans
    result = kill_orphans(orphans)
    _wait_gone(result, wait)
    return result


async def sweep_orphans_async(
    *, dry_run: bool = True, wait: float = 1.0, all_users: bool = False
) -> list[OrphanInfo]:
    """``sweep_orphans`` in a worker thread, so the event loop keeps running meanwhile.

    Cancelling waits for the sweep to finish (at most the scan plus ``wait``).
    """
    sweep = functools.partial(sweep_orphans, dry_run=dry_run, wait=wait, all_users=all_users)
    return await anyio.to_thread.run_sync(sweep)


def kill_run(run_id: str, *, wait: float = 1.0) -> list[OrphanInfo]:
    """SIGKILL every process of this user that carries ``run_id``, live pool or not.

    For a pool closing down: once its workers are stopped, whatever still carries its run id
    escaped them (a descendant in a session of its own whose nanny was killed). Verified
    like ``kill_orphans``; waits up to ``wait`` seconds for them to disappear.
    """
    found = [
        OrphanInfo(pid, run_id, env.get(ENV_WORKER_ID), _cmdline(pid), stat[1], uid=uid)
        for pid, env, stat, uid in _candidates(all_users=False)
        if env[ENV_RUN_ID] == run_id
    ]
    result = kill_orphans(found)
    _wait_gone(result, wait)
    return result
