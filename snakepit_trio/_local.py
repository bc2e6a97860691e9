"""What every transport to a local worker process shares: the process itself.

``LocalProcessTransport`` spawns the adapter's program (under the nanny in hardened mode),
drains its stderr into a bounded tail, watches its exit through its pidfd, and takes it down
through the ladder. ``StdioTransport`` (frames over the pipes) and ``GrpcTransport`` (a gRPC
server the process runs) add how requests travel.

Liveness is the process's exit, watched directly: never inferred from EOF on stdout alone,
since a forked descendant may hold stdout open long after the worker died.
"""

from __future__ import annotations

import logging
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import anyio
from snakepit_trio_bridge.protocol import constants

from ._backend import read_some
from ._process import WorkerProcess, read_rss, spawn_worker
from ._transport import EventSink, StartFailed, TransportContext

if TYPE_CHECKING:
    from ._adapters import Adapter

__all__ = ["LocalProcessTransport"]

logger = logging.getLogger("snakepit_trio.worker")
# What the workers write on stderr, line by line at INFO (the CLI shows it).
stderr_logger = logging.getLogger("snakepit_trio.worker.stderr")

THIS_HOST: Final = socket.gethostname()

# The first time a worker writes on stderr in this program while nothing shows the workers'
# output, it is shown once at WARNING: print() in a handler is never lost silently.
_stderr_hint_pending = True


class LocalProcessTransport:
    """The process part of a transport to a local worker (see the module doc)."""

    def __init__(self, adapter: Adapter, context: TransportContext) -> None:
        self._adapter = adapter
        self._context = context
        self._config = context.config
        self._proc: WorkerProcess | None = None
        self._eof = False  # the worker closed its output: it is most likely exiting
        self._stderr_tail = bytearray()
        self._stderr_done = anyio.Event()
        self._start_error = ""
        self.phase = "start-up"

    # ------------------------------------------------------------------ identity
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def worker_pid(self) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        if not self._config.hardened:
            return proc.pid
        return proc.child_pid()  # the real worker, behind its nanny

    @property
    def node(self) -> str:
        return THIS_HOST

    @property
    def started_at(self) -> float:
        return self._proc.started_at if self._proc is not None else time.monotonic()

    def rss(self) -> int | None:
        pid = self.worker_pid
        return read_rss(pid) if pid is not None else None

    def stderr_tail(self) -> str:
        if self._start_error:
            return self._start_error
        return self._stderr_tail.decode("utf-8", "replace")

    def exit_status(self) -> tuple[int | None, int | None]:
        proc = self._proc
        if proc is None:
            return None, None
        return proc.exit_code, proc.exit_signal

    # ------------------------------------------------------------------ start
    def _environment(self) -> dict[str, str]:
        """The process environment: the adapter's, plus the pool's ``SNAKEPIT_*`` variables."""
        config = self._config
        env = self._adapter.environment()
        env[constants.ENV_RUN_ID] = self._context.run_id
        env[constants.ENV_WORKER_ID] = str(self._context.slot_id)
        env[constants.ENV_LIFELINE_GRACE] = str(config.shutdown_grace)
        env[constants.ENV_SESSION_TTL] = str(config.session_ttl)
        if config.heartbeat_timeout is not None:
            env[constants.ENV_HEARTBEAT_INTERVAL] = str(config.heartbeat_interval)
        return env

    async def start(self) -> None:
        config = self._config
        argv = self._adapter.argv()
        if config.hardened:
            argv = [*_nanny_argv(config.shutdown_grace, config.kill_grace), "--", *argv]
        try:
            # Spawned from the event loop's thread: the nanny's death signal follows the
            # thread that spawned it.
            self._proc = spawn_worker(
                argv, env=self._environment(), cwd=self._adapter.cwd, report_child=config.hardened
            )
        except OSError as exc:
            self._start_error = f"could not start {self._adapter.argv()[0]!r}: {exc}"
            raise StartFailed(self._start_error) from None

    # ------------------------------------------------------------------ liveness
    async def watch(self, sink: EventSink) -> None:
        """Drain stderr (a full pipe would block the worker) and watch the process exit."""
        proc = self._proc
        assert proc is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._drain_stderr, proc)  # until EOF, or the slot is done with it
            await proc.wait()
            if self._on_exit(proc, sink):
                sink.ended("the worker process exited")

    def _on_exit(self, proc: WorkerProcess, sink: EventSink) -> bool:
        """The process exited: whether the slot must be told now (a transport may first
        route what the worker wrote before it died)."""
        return True

    async def _drain_stderr(self, proc: WorkerProcess) -> None:
        """Read stderr, keep a bounded tail, log lines at INFO."""
        fd = proc.stderr_fd
        limit = self._config.stderr_tail_bytes
        slot = self._context.slot_id
        pending = b""
        try:
            while True:
                data = await read_some(fd)
                if not data:
                    break
                tail = self._stderr_tail
                tail += data
                if len(tail) > limit:
                    del tail[: len(tail) - limit]
                relay = stderr_logger.isEnabledFor(logging.INFO)
                if _stderr_hint_pending and not relay:
                    _stderr_hint(slot, proc.pid, data)
                if relay:
                    lines = (pending + data).split(b"\n")
                    pending = lines.pop()[-limit:]
                    for line in lines:
                        text = line.decode("utf-8", "replace")
                        stderr_logger.info("worker %d (pid %d): %s", slot, proc.pid, text)
            if pending and stderr_logger.isEnabledFor(logging.INFO):
                text = pending.decode("utf-8", "replace")
                stderr_logger.info("worker %d (pid %d): %s", slot, proc.pid, text)
        finally:
            self._stderr_done.set()

    # ------------------------------------------------------------------ take-down
    def _graceful_step(self, proc: WorkerProcess) -> Callable[[], Awaitable[None]]:
        """The first step of a planned stop: by default, close the worker's stdin."""

        async def close_stdin() -> None:
            proc.close_stdin()

        return close_stdin

    async def _after_close(self) -> None:
        """Release what the transport holds besides the process (a connection)."""

    async def close(self, *, planned: bool) -> str:
        """The ladder: graceful step (when planned) -> SIGTERM -> SIGKILL -> reap. Bounded."""
        proc = self._proc
        if proc is None:
            return "not started"
        config = self._config
        try:
            if self._eof and not planned:
                # It closed its output: most likely it is exiting. Let it, to learn its status.
                await proc.wait(min(0.5, config.kill_grace))
            graceful = self._graceful_step(proc) if planned and proc.poll() is None else None
            step = await proc.terminate_ladder(
                graceful=graceful,
                shutdown_grace=config.shutdown_grace,
                # A nanny runs its own ladder on SIGTERM: give it the time to finish it.
                kill_grace=config.kill_grace + (1.0 if config.hardened else 0.0),
            )
            with anyio.move_on_after(0.5):
                await self._stderr_done.wait()
            return step
        finally:
            proc.kill_now()
            proc.close()
            await self._after_close()


def _stderr_hint(worker_id: int, pid: int, data: bytes) -> None:
    """Say once, at WARNING, that a worker wrote on stderr and how to see all of it."""
    global _stderr_hint_pending
    _stderr_hint_pending = False
    first = data.split(b"\n", 1)[0][:200].decode("utf-8", "replace")
    logger.warning(
        "worker %d (pid %d) wrote on stderr: %s\n(workers' stderr is logged at INFO on the "
        "%r logger; shown once: call logging.basicConfig(level=logging.INFO) to see all of it)",
        worker_id,
        pid,
        first,
        stderr_logger.name,
    )


def _nanny_argv(grace: float, kill_grace: float) -> list[str]:
    """Start the nanny by file path with ``-I -S``: no site, no environment, standard library
    only, so it starts fast and whatever PYTHONPATH the worker needs does not affect it."""
    import snakepit_trio_bridge.nanny as nanny

    return [
        sys.executable,
        "-I",
        "-S",
        nanny.__file__,
        "--grace",
        str(grace),
        "--kill-grace",
        str(kill_grace),
    ]
