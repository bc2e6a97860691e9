"""Worker processes: spawn, reap, and the signal ladder. Linux/POSIX only.

Each worker starts in a session (and process group) of its own, with three non-blocking
pipes for stdin, stdout and stderr, and the read end of a lifeline pipe whose write end only
the pool holds. The pool never sets PR_SET_PDEATHSIG: trio spawns from short-lived threads,
and a death signal tied to a thread would kill healthy workers (DESIGN.md section 6).

A worker started under the nanny (hardened mode) can report the pid of the real worker
program: with ``report_child=True`` the nanny gets the write end of one more pipe, and its
child writes its own pid there before it executes the worker program (``child_pid``).

Every await here is a plain wait on a file descriptor; cancelling one leaves the process as
it was. The ladder itself is meant to run shielded by its caller.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import anyio
from snakepit_trio_bridge.protocol.constants import ENV_CHILD_PID_FD, ENV_LIFELINE_FD

__all__ = ["WorkerProcess", "read_rss", "spawn_worker"]

logger = logging.getLogger("snakepit_trio.process")

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_SIZE = 1 << 20


def _grow_pipe(fd: int) -> None:
    """Raise a pipe's buffer to 1 MiB (fewer wake-ups for big frames); best effort."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)


class WorkerProcess:
    """One spawned worker: its pid, its pipe ends, and how it ended."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | None,
        lifeline: bool = True,
        report_child: bool = False,
    ) -> None:
        self.argv = list(argv)
        child_env = dict(env)
        pass_fds: list[int] = []
        lifeline_r = lifeline_w = report_r = report_w = -1
        try:
            if lifeline:
                lifeline_r, lifeline_w = os.pipe()
                child_env[ENV_LIFELINE_FD] = str(lifeline_r)
                pass_fds.append(lifeline_r)
            if report_child:
                report_r, report_w = os.pipe()
                child_env[ENV_CHILD_PID_FD] = str(report_w)
                pass_fds.append(report_w)
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=child_env,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
                pass_fds=pass_fds,
                bufsize=0,
            )
        except BaseException:
            for fd in (lifeline_r, lifeline_w, report_r, report_w):
                if fd >= 0:
                    os.close(fd)
            raise
        for fd in (lifeline_r, report_w):  # the child's ends
            if fd >= 0:
                os.close(fd)
        self._report_r = report_r
        self._report = b""
        self._child_pid: int | None = None
        if report_r >= 0:
            os.set_blocking(report_r, False)
        self.pid: int = self._popen.pid
        self.started_at = time.monotonic()
        assert self._popen.stdin and self._popen.stdout and self._popen.stderr
        self.stdin_fd = self._popen.stdin.fileno()
        self.stdout_fd = self._popen.stdout.fileno()
        self.stderr_fd = self._popen.stderr.fileno()
        self._lifeline_w = lifeline_w
        for fd in (self.stdin_fd, self.stdout_fd, self.stderr_fd):
            os.set_blocking(fd, False)
        _grow_pipe(self.stdin_fd)
        _grow_pipe(self.stdout_fd)
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self._pidfd = None
        self._stdin_closed = False
        self._closed = False
        self._watcher_changed: anyio.Event | None = None  # set while a task watches the pidfd

    # -- state
    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative: killed by that signal), else None."""
        return self._popen.returncode

    @property
    def exit_code(self) -> int | None:
        rc = self._popen.returncode
        return rc if rc is not None and rc >= 0 else None

    @property
    def exit_signal(self) -> int | None:
        rc = self._popen.returncode
        return -rc if rc is not None and rc < 0 else None

    def child_pid(self) -> int | None:
        """The pid of the program the nanny runs (``report_child=True``), once reported.

        The nanny's child writes it before it executes the worker program, so it is known
        as soon as anything the worker wrote has been read (after the handshake, surely).
        None without ``report_child``, before the report, or if the nanny could not start
        its child.
        """
        if self._child_pid is None and self._report_r >= 0:
            try:
                data = os.read(self._report_r, 64)
            except BlockingIOError:
                return None
            except OSError:
                data = b""
            self._report += data
            line, newline, _ = self._report.partition(b"\n")
            if newline and line.isdigit():
                self._child_pid = int(line)
            if newline or not data:  # reported, or the pipe ended without a report
                self._close_report()
        return self._child_pid

    def _close_report(self) -> None:
        if self._report_r >= 0:
            with contextlib.suppress(OSError):
                os.close(self._report_r)
            self._report_r = -1

    def poll(self) -> int | None:
        """Reap the process if it has exited (never blocks)."""
        if self._popen.returncode is None:
            self._popen.poll()
        return self._popen.returncode

    # -- control
    def close_stdin(self) -> None:
        """The graceful first step of the ladder: the bridge sees EOF and finishes up."""
        if not self._stdin_closed:
            self._stdin_closed = True
            _notify_closing(self.stdin_fd)
            with contextlib.suppress(OSError):
                assert self._popen.stdin is not None
                self._popen.stdin.close()

    @property
    def stdin_closed(self) -> bool:
        return self._stdin_closed

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the worker's process group (its pgid is its pid).

        The group survives its leader while any member lives, and Linux does not hand out a
        pid that is still some group's id, so this is safe after the leader was reaped too,
        as long as it is called right away.
        """
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:  # pragma: no cover - the group was taken over; leave it
            logger.warning("not allowed to signal process group %d", self.pid)

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until the process has exited and is reaped; False on timeout.

        Several tasks may wait at once (the exit watcher and the ladder): one of them
        watches the pidfd (a descriptor takes one reader), the others wait for it to
        finish or give up, and the next one takes over.
        """
        if self.poll() is not None:
            return True
        with anyio.move_on_after(timeout if timeout is not None else float("inf")):
            while self.poll() is None:
                if self._watcher_changed is not None:
                    await self._watcher_changed.wait()
                    continue
                self._watcher_changed = changed = anyio.Event()
                try:
                    await self._watch_exit()
                finally:
                    self._watcher_changed = None
                    changed.set()
            return True
        return False

    async def _watch_exit(self) -> None:
        if self._pidfd is not None:
            await anyio.wait_readable(self._pidfd)
            # The pidfd is readable once the process is a zombie: reap it now.
            while self.poll() is None:  # pragma: no cover - a tiny race
                await anyio.sleep(0.001)
        else:  # pragma: no cover - kernels without pidfd_open
            delay = 0.001
            while self.poll() is None:
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.05)

    async def terminate_ladder(
        self,
        *,
        graceful: Callable[[], Awaitable[None]] | None,
        shutdown_grace: float,
        kill_grace: float,
    ) -> str:
        """Stop the worker: graceful step -> wait -> SIGTERM -> wait -> SIGKILL -> reap.

        Every path ends with SIGKILL to the process group (its leftovers included) and the
        leader reaped. Returns the step that ended it: "graceful", "sigterm" or "sigkill".
        Run it shielded; each wait is bounded.
        """
        step = "graceful"
        if self.poll() is None and graceful is not None:
            with anyio.move_on_after(shutdown_grace):
                await graceful()
            if not await self.wait(shutdown_grace):
                step = "sigterm"
        elif self.poll() is None:
            step = "sigterm"
        if step == "sigterm":
            self.signal_group(signal.SIGTERM)
            self.signal_group(signal.SIGCONT)  # a stopped worker handles its SIGTERM now
            if not await self.wait(kill_grace):
                step = "sigkill"
        # Always: the group may hold grandchildren even when the leader exited cleanly.
        self.signal_group(signal.SIGKILL)
        if step == "sigkill":
            await self.wait(None)
        return step

    def kill_now(self) -> None:
        """SIGKILL the whole group without waiting (last resort, e.g. on a failed spawn)."""
        if self.poll() is None:
            self.signal_group(signal.SIGKILL)

    def close(self) -> None:
        """Release the pipes and the lifeline. Call once nobody waits on the descriptors."""
        if self._closed:
            return
        self._closed = True
        if not self._stdin_closed:
            _notify_closing(self.stdin_fd)
        for stream in (self._popen.stdin, self._popen.stdout, self._popen.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self._lifeline_w >= 0:
            with contextlib.suppress(OSError):
                os.close(self._lifeline_w)
            self._lifeline_w = -1
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = None
        self._close_report()


def _notify_closing(fd: int) -> None:
    """Wake whoever waits to write to ``fd`` (ClosedResourceError) before it is closed.

    Without it, trio forgets a waiter on a closed descriptor: a caller writing a big frame
    to a worker that stopped reading would wait forever.
    """
    with contextlib.suppress(RuntimeError):  # no event loop here: nobody can be waiting
        anyio.notify_closing(fd)


def spawn_worker(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None,
    lifeline: bool = True,
    report_child: bool = False,
) -> WorkerProcess:
    """Start one worker; raises OSError (e.g. the executable does not exist).

    ``report_child``: ``argv`` starts the nanny, and ``child_pid()`` will tell its child's pid.
    """
    return WorkerProcess(argv, env=env, cwd=cwd, lifeline=lifeline, report_child=report_child)


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def read_rss(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes, or None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            fields = f.read().split()
        return int(fields[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None
