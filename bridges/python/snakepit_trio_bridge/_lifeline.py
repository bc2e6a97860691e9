"""The lifeline: when the pool disappears, take this worker's process group down with it.

The pool passes the read end of a pipe in ``SNAKEPIT_LIFELINE_FD`` and never writes to it. Its
write end closes when the pool process ends, however it ends (SIGKILL included). At end of
file the lifeline waits ``grace`` seconds (``SNAKEPIT_LIFELINE_GRACE``, or the ``grace`` of the
negotiation frame, default 2 s) so that a graceful exit can finish, then SIGKILLs the process
group when this process leads one (the pool starts each worker in a session of its own), and
otherwise this process alone.

The watching is done by a small separate process that ``start`` launches (the *watcher*),
not by a thread: a thread needs the GIL, and a handler in a long C call (a regular expression
backtracking for hours, a builtin loop) holds it, so a thread could not run until the handler
returned. The watcher is this file run by the worker's interpreter (``python -I -S``, standard
library only), started with ``posix_spawn``: the worker pays ~0.3-2 ms and no copy-on-write
faults (a plain fork cost it ~5 ms of them, and a fork after a big handler was built would
duplicate every page the worker then touched); the watcher costs ~11 ms of CPU of its own
while the worker goes on starting, and ~3.6 MB (PSS) whatever the worker holds. It blocks in
``poll`` on three descriptors and nothing else:

- the lifeline: end of file starts the grace, after which it SIGKILLs the group;
- a pidfd of the worker: once the worker has exited, the watcher exits too, unless the worker
  left other processes in its group, which it then guards until they are gone or the lifeline
  closes (so a worker that dies first, e.g. with its nanny, takes its group along once the pool
  lets go of it);
- a control pipe from the worker, carrying grace updates (``set_grace``).

It holds no other descriptor: stdin, stdout and stderr are /dev/null there (stderr stays when
it is a file or a terminal), so the pool sees end of file on the worker's pipes as soon as the
worker exits. It ignores SIGTERM, SIGINT and SIGHUP and lives in the worker's process group, so
the pool's SIGKILL of the group, which ends every shutdown, ends it too. If it cannot be
started (no usable ``sys.executable``), a thread watches instead (the old way: it fires only
while the GIL is free).

``start`` should run before the handler is built, so that the lifeline holds while it is.
"""

from __future__ import annotations

import _thread
import os
import sys
import time
from select import POLLIN, poll, select
from stat import S_ISFIFO, S_ISSOCK

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from collections.abc import Mapping
else:  # the same functions and constants without ``signal``'s enum wrappers (saves ~3 ms)
    import _signal

__all__ = ["DEFAULT_GRACE", "kill_group", "pool_gone", "set_grace", "start", "watcher_pid"]

DEFAULT_GRACE = 2.0
# While the worker has exited and others remain in its group, how often to look at the group.
_GUARD_POLL = 1.0
# Without a pidfd (old kernels), how often to look whether the worker still runs.
_PARENT_POLL = 0.5

_fd = -1  # the lifeline's read end, kept in the worker for ``pool_gone``
_grace = DEFAULT_GRACE
_control = -1  # the write end of the control pipe to the watcher
_watcher = 0  # the watcher's pid; 0: none (a thread watches, or nothing does)


def start(environ: Mapping[str, str]) -> bool:
    """Start watching the lifeline named in ``environ``; False when there is none.

    Calling it again is harmless: the first call's watcher stays.
    """
    global _fd
    if _fd >= 0:
        return True
    # Imported here: this file also runs on its own, as the watcher program.
    from .protocol.constants import ENV_LIFELINE_FD, ENV_LIFELINE_GRACE

    text = environ.get(ENV_LIFELINE_FD)
    if not text:
        return False
    try:
        fd = int(text)
        os.set_inheritable(fd, False)  # grandchildren must not keep the pipe open
    except (ValueError, OSError) as exc:
        _log(f"ignoring {ENV_LIFELINE_FD}={text!r}: {exc}")
        return False
    try:
        set_grace(float(environ.get(ENV_LIFELINE_GRACE, DEFAULT_GRACE)))
    except ValueError:
        _log(f"ignoring {ENV_LIFELINE_GRACE}={environ.get(ENV_LIFELINE_GRACE)!r}")
    _fd = fd
    if not _spawn_watcher(fd):
        _thread.start_new_thread(_watch, (fd,))
    return True


def set_grace(seconds: float) -> None:
    """How long to wait, once the pool is gone, before killing the process group."""
    global _grace
    if seconds >= 0 and seconds != float("inf"):
        _grace = float(seconds)
        if _control >= 0:
            try:
                os.write(_control, f"{_grace!r}\n".encode())
            except OSError:  # the watcher is gone (or stuck with a full pipe): nothing to tell
                pass


def watcher_pid() -> int | None:
    """The pid of the watcher process, if one was started."""
    return _watcher or None


def pool_gone(timeout: float) -> bool:
    """True when the lifeline is watched and reaches end of file within ``timeout`` seconds."""
    fd = _fd
    if fd < 0:
        return False
    try:
        readable, _, _ = select([fd], [], [], timeout)
    except (OSError, ValueError):
        return True
    return bool(readable)  # the pool never writes: readable means end of file


def kill_group(reason: str) -> None:
    """SIGKILL our process group if we lead it (ourselves included); else exit with 1."""
    _log(f"{reason}; killing the worker's process group")
    try:
        if os.getpgrp() == os.getpid():
            os.killpg(0, _signal.SIGKILL)
    finally:
        os._exit(1)


# ---------------------------------------------------------------------- the watcher process


def _spawn_watcher(lifeline: int) -> bool:
    """Start the watcher program; False if it could not be started."""
    global _control, _watcher
    worker = os.getpid()
    try:
        control_r, control_w = os.pipe()
    except OSError:
        return False
    argv = [sys.executable, "-I", "-S", "-c", _BOOT, os.path.dirname(__file__)]
    argv += [str(lifeline), str(control_r), str(worker), repr(_grace)]
    # Its stdin and stdout are /dev/null; stderr too, unless it is a file or a terminal
    # (nobody waits for its end there): then a kill is logged, as the worker would.
    actions: list[tuple[int, ...] | tuple[int, int, str, int, int]] = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDWR, 0),
        (os.POSIX_SPAWN_DUP2, 0, 1),
    ]
    try:
        mode = os.fstat(2).st_mode
        if S_ISFIFO(mode) or S_ISSOCK(mode):
            actions.append((os.POSIX_SPAWN_DUP2, 0, 2))
    except OSError:
        actions.append((os.POSIX_SPAWN_DUP2, 0, 2))
    try:
        # Only these two cross the exec (every descriptor Python opens is close-on-exec).
        os.set_inheritable(lifeline, True)
        os.set_inheritable(control_r, True)
        # A vfork and an exec: no copy of the worker's pages (see the module docstring).
        pid = os.posix_spawn(sys.executable, argv, os.environ, file_actions=actions)
    except (OSError, ValueError):  # no usable sys.executable (an embedded interpreter)
        os.close(control_r)
        os.close(control_w)
        return False
    finally:
        try:
            os.set_inheritable(lifeline, False)
        except OSError:
            pass
    os.close(control_r)
    os.set_blocking(control_w, False)  # a stuck watcher must never block the worker
    _control = control_w
    _watcher = pid
    return True


# The watcher program: this file, imported as a top-level module from its cached bytecode.
# The package directory goes last on sys.path, after the standard library.
_BOOT = "import sys; sys.path.append(sys.argv[1]); import _lifeline; _lifeline._main(sys.argv[2:])"


def _main(args: list[str]) -> None:
    """The watcher program's entry: ``LIFELINE_FD CONTROL_FD WORKER_PID GRACE``."""
    global _grace
    code = 0
    try:
        lifeline, control, worker = (int(a) for a in args[:3])
        _grace = float(args[3])
        _watch_process(lifeline, control, worker, leader=os.getpgrp() == worker)
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _watch_process(lifeline: int, control: int, worker: int, leader: bool) -> None:
    """The watcher's whole life (see the module docstring); it ends in ``os._exit``."""
    try:
        pidfd = os.pidfd_open(worker)
    except (AttributeError, OSError):  # no pidfd (kernel < 5.3): poll getppid() instead
        pidfd = -1
    # Opened before this check, the pidfd is the worker's: we are still its child.
    worker_gone = os.getppid() != worker
    _detach(keep={lifeline, control, pidfd})
    try:
        with open("/proc/self/comm", "w") as comm:  # "ps" tells it from the worker
            comm.write("snakepit-watch")
    except OSError:
        pass

    grace = _grace
    closed_at: float | None = None  # when the lifeline reached end of file
    poller = poll()
    watched: set[int] = set()

    def watch(fd: int, on: bool) -> None:
        if on and fd >= 0 and fd not in watched:
            poller.register(fd, POLLIN)
            watched.add(fd)
        elif not on and fd in watched:
            poller.unregister(fd)
            watched.discard(fd)

    watch(lifeline, True)
    watch(pidfd, not worker_gone)
    watch(control, True)
    while True:
        now = time.monotonic()
        if closed_at is not None and (worker_gone or now >= closed_at + grace):
            _kill_worker(worker, leader, pidfd, worker_gone)
            return
        if closed_at is not None:
            timeout: float | None = closed_at + grace - now
        elif worker_gone:
            # The pool lives and will take the group down itself; we stay only while the
            # worker left others in its group, in case the pool dies first.
            if not leader or not _group_has_others(worker):
                return
            timeout = _GUARD_POLL
        elif pidfd < 0:
            timeout = _PARENT_POLL
        else:
            timeout = None
        try:
            # Round up: a timeout rounded down to 0 ms would spin until the deadline.
            events = dict(poller.poll(None if timeout is None else int(timeout * 1000) + 1))
        except InterruptedError:  # pragma: no cover - retried by Python itself since 3.5
            continue
        if control in events:
            grace, eof = _read_grace(control, grace)
            if eof:
                watch(control, False)
        if pidfd in events or (pidfd < 0 and os.getppid() != worker):
            worker_gone = True
            watch(pidfd, False)
        if lifeline in events and not _still_open(lifeline):
            if control in watched:
                grace, _ = _read_grace(control, grace)  # an update sent just before
            closed_at = time.monotonic()
            watch(lifeline, False)


def _detach(keep: set[int]) -> None:
    """Drop every descriptor but ``keep`` and stdio (already /dev/null); ignore stop signals."""
    keep = keep | {0, 1, 2}
    try:
        open_fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # pragma: no cover - no /proc: close the whole range
        open_fds = list(range(3, os.sysconf("SC_OPEN_MAX")))
    for fd in open_fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    for sig in (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP):
        # The pool's SIGTERM is for the worker; the pool's SIGKILL of the group ends us.
        try:
            _signal.signal(sig, _signal.SIG_IGN)
        except (OSError, ValueError):  # pragma: no cover - forked from a thread: keep going
            pass


def _read_grace(control: int, grace: float) -> tuple[float, bool]:
    """Read grace updates from the control pipe: (the latest grace, end of file)."""
    try:
        if not select([control], [], [], 0)[0]:
            return grace, False
        data = os.read(control, 4096)
    except OSError:
        return grace, True
    if not data:
        return grace, True
    for line in reversed(data.split(b"\n")):
        try:
            value = float(line)
        except ValueError:
            continue
        if value >= 0 and value != float("inf"):
            return value, False
    return grace, False


def _still_open(lifeline: int) -> bool:
    """Read what the lifeline holds; False at end of file (the pool is gone)."""
    try:
        return bool(os.read(lifeline, 64))
    except OSError:
        return False


def _kill_worker(worker: int, leader: bool, pidfd: int, worker_gone: bool) -> None:
    group = " and its process group" if leader else ""
    _log(f"the pool is gone (lifeline closed); the watcher kills worker {worker}{group}")
    if leader:  # we are in the group, so its id cannot have been reused
        os.killpg(worker, _signal.SIGKILL)
    elif pidfd >= 0 and not worker_gone:
        _signal.pidfd_send_signal(pidfd, _signal.SIGKILL)


def _group_has_others(pgid: int) -> bool:
    """Whether a live process other than us is in process group ``pgid``."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()  # state, ppid, pgrp, ...
        if len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == pgid:
            return True
    return False


# ---------------------------------------------------------------------- the fallback thread


def _watch(fd: int) -> None:
    try:
        while os.read(fd, 64):
            pass
    except OSError:
        pass
    time.sleep(_grace)
    kill_group("the pool is gone (lifeline closed)")


def _log(message: str) -> None:
    try:
        os.write(2, f"snakepit_trio_bridge[{os.getpid()}]: {message}\n".encode())
    except OSError:
        pass
