"""A tiny single-threaded nanny that guarantees a worker leaves nothing behind (Linux).

    python -m snakepit_trio_bridge.nanny --grace 2.0 --kill-grace 2.0 -- worker-argv...

The pool starts the nanny (in a session of its own) instead of the worker when
``PoolConfig(hardened=True)``. The nanny:

- makes itself a child subreaper, so every descendant of the worker that is orphaned, even
  one that escaped into a session of its own, is re-parented to the nanny instead of init;
- asks for a death signal (SIGUSR2) when the pool process dies. It sets this itself, in its
  own single thread, after the pool spawned it from the thread that owns the pool, so the
  signal follows the pool's life (DESIGN.md section 6);
- starts the worker in a process group of its own, with the nanny's stdin, stdout, stderr and
  lifeline descriptor, and with SIGKILL as the worker's death signal: the worker dies with the
  nanny, however the nanny ends (the nanny has one thread, so the signal follows its life);
  the worker's lifeline watcher then takes the rest of the worker's group down once the pool
  lets go of the lifeline;
- reports the worker's pid, when the pool asks for it (``SNAKEPIT_CHILD_PID_FD`` names a pipe):
  the worker writes ``<pid>\n`` there itself, before it executes the worker program, so the
  pid is known before the worker's first byte of output;
- on SIGTERM (the pool's ladder) runs the ladder on the worker: SIGTERM to its group, wait
  ``--kill-grace``, SIGKILL; on the pool's death it first waits ``--grace`` for a graceful
  exit (the worker sees stdin EOF);
- when the worker exits, SIGKILLs every remaining descendant, reaps them, and exits with the
  worker's status (128 + N when a signal N killed it).

It imports only the standard library's low-level modules and never imports trio or asyncio.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
# snakepit_trio_bridge.protocol.constants names them too; the nanny runs by path with -I -S and
# imports nothing of the package.
ENV_LIFELINE_FD = "SNAKEPIT_LIFELINE_FD"
ENV_CHILD_PID_FD = "SNAKEPIT_CHILD_PID_FD"

_stop_reason: str | None = None


class _Stop(Exception):
    """Raised by the first SIGTERM/SIGUSR2 to interrupt the blocking wait for the worker."""


_libc: ctypes.CDLL | None = None


def _prctl(option: int, value: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _on_signal(signum: int, frame: object) -> None:
    global _stop_reason
    first = _stop_reason is None
    if signum == signal.SIGUSR2 or _stop_reason is None:
        _stop_reason = "pool-died" if signum == signal.SIGUSR2 else "terminate"
    if first:
        raise _Stop


def _children(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == parent:
            found.append(int(entry))
    return found


def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _kill_descendants() -> None:
    """SIGKILL everything below the nanny until nothing is left (orphans come to us)."""
    me = os.getpid()
    for _ in range(200):
        children = _children(me)
        if not children:
            return
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.005)
        _reap_all()


def _wait_worker(pid: int, timeout: float) -> int | None:
    """Wait up to ``timeout`` for the worker's exit status, reaping orphans meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return 0
        if done == pid:
            return status
        if done == 0:
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.005)


def _serve(pid: int) -> int | None:
    """Block until the worker exits (its status) or a stop signal arrives (None)."""
    try:
        while True:
            done, status = os.waitpid(-1, 0)  # orphans re-parented to us are reaped here too
            if done == pid:
                return status
    except _Stop:
        return None
    except ChildProcessError:
        return 0


def _ladder(pid: int, grace: float, kill_grace: float, graceful: bool) -> int:
    if graceful:
        status = _wait_worker(pid, grace)
        if status is not None:
            return status
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    status = _wait_worker(pid, kill_grace)
    if status is None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        status = _wait_worker(pid, 5.0) or 0
    return status


def _take_report_fd() -> int:
    """The descriptor to report the worker's pid on (-1: none); kept from the worker."""
    text = os.environ.pop(ENV_CHILD_PID_FD, "")
    if not text.isdigit():
        return -1
    fd = int(text)
    try:
        os.set_inheritable(fd, False)  # the worker program must not hold it
    except OSError:
        return -1
    return fd


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    grace, kill_grace = 2.0, 2.0
    while args and args[0] != "--":
        flag = args.pop(0)
        if flag == "--grace" and args:
            grace = float(args.pop(0))
        elif flag == "--kill-grace" and args:
            kill_grace = float(args.pop(0))
        else:
            print(f"snakepit nanny: unknown option {flag!r}", file=sys.stderr)
            return 2
    if not args or len(args) < 2:
        print(
            "usage: python -m snakepit_trio_bridge.nanny [--grace S] [--kill-grace S] -- argv...",
            file=sys.stderr,
        )
        return 2
    command = args[1:]
    parent = os.getppid()
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    signal.signal(signal.SIGUSR2, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    _prctl(PR_SET_PDEATHSIG, signal.SIGUSR2)
    if os.getppid() != parent:  # the pool died before the death signal was armed
        return 1
    keep = [int(fd) for fd in [os.environ.get(ENV_LIFELINE_FD, "")] if fd.isdigit()]
    report = _take_report_fd()
    nanny = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            # The worker dies with the nanny. Set between fork and exec (exec keeps it), and
            # checked: if the nanny died before it was armed, we were already re-parented.
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != nanny:
                os._exit(127)
            os.setpgid(0, 0)
            signal.signal(signal.SIGUSR2, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            for fd in keep:
                os.set_inheritable(fd, True)
            if report >= 0:  # before exec: the pool has the pid before any output
                os.write(report, f"{os.getpid()}\n".encode())
            os.execvp(command[0], command)
        finally:
            os._exit(127)
    if report >= 0:
        os.close(report)
    # The worker has our stdin and stdout; drop our copies so its exit is seen at once.
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    for fd in keep:
        try:
            os.close(fd)
        except OSError:
            pass
    status = _serve(pid)
    if status is None:
        status = _ladder(pid, grace, kill_grace, graceful=_stop_reason == "pool-died")
    _kill_descendants()
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1


if __name__ == "__main__":
    sys.exit(main())
