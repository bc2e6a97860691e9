"""A Quart-Trio app on Hypercorn's trio worker whose endpoints run commands on a snakepit-trio pool.

    pip install quart-trio hypercorn     # or: pip install --group test
    python examples/web/quart_trio_app.py --port 8000
    # or with Hypercorn's own CLI (settings from SNAKEPIT_WEB_* variables, see Settings):
    hypercorn --worker-class trio --bind 127.0.0.1:8000 examples/web/quart_trio_app:app

    curl localhost:8000/ping
    curl localhost:8000/compute -H 'content-type: application/json' \\
         -d '{"operation": "add", "a": 1, "b": 2}'
    curl -N 'localhost:8000/stream?count=5&interval=0.2'      # NDJSON, one line per chunk
    curl localhost:8000/stats; curl localhost:8000/workers

The same endpoints as fastapi_app.py, the trio way (docs/integrations.md explains each point):

- the pool is opened in a ``while_serving`` generator, once per server process;
- the pool's errors become status codes: ``PoolSaturated`` and ``QueueTimeout`` 503 (with
  ``Retry-After``), ``WorkerTimeout`` 504, ``WorkerCrashed`` 502, ``CommandError`` 422;
- ``/stream`` consumes ``pool.stream(..., timeout=T)`` inside the response body's generator,
  waiting for the first line in the handler so that an admission error still gets its status.
  Quart-Trio cancels a handler, and closes a streaming body, when its client leaves.

Run by this file, Hypercorn serves in this process and shuts down gracefully on SIGTERM or
SIGINT; its CLI runs the app in a child process (see docs/integrations.md on signals).
"""

import argparse
import json
import logging
import math
import os
import signal
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import trio
from quart import Response, abort, request
from quart_trio import QuartTrio

import snakepit_trio as sp

logger = logging.getLogger("quart_trio_app")

# Status code, and what a client is told, for each pool error. The exception's own text stays in
# the server's log: it may carry a worker's stderr.
ERRORS: dict[type[sp.SnakepitError], tuple[int, str]] = {
    sp.PoolSaturated: (503, "too many requests are waiting for a worker"),
    sp.QueueTimeout: (503, "no worker became free in time"),
    sp.PoolClosed: (503, "the server is shutting down"),
    sp.WorkerTimeout: (504, "the command ran past its timeout"),
    sp.WorkerCrashed: (502, "the worker running the command died"),
}
OPERATIONS = ("add", "subtract", "multiply", "divide")


@dataclass(frozen=True)
class Settings:
    """The pool's size and limits; each has a ``SNAKEPIT_WEB_<NAME>`` environment variable."""

    size: int = 2
    max_queue: int = 100
    queue_timeout: float = 5.0
    command_timeout: float = 30.0
    drain_timeout: float = 5.0
    shutdown_grace: float = 2.0
    kill_grace: float = 2.0

    @classmethod
    def from_env(cls) -> "Settings":
        def get(name: str, default: float) -> Any:
            raw = os.environ.get(f"SNAKEPIT_WEB_{name.upper()}")
            return default if raw is None else type(default)(raw)

        return cls(**{name: get(name, value) for name, value in vars(cls()).items()})

    def pool_config(self) -> sp.PoolConfig:
        return sp.PoolConfig(
            max_queue=self.max_queue,
            queue_timeout=self.queue_timeout,
            command_timeout=self.command_timeout,
            drain_timeout=self.drain_timeout,
            shutdown_grace=self.shutdown_grace,
            kill_grace=self.kill_grace,
        )


def status_of(exc: sp.SnakepitError) -> tuple[int, str]:
    if isinstance(exc, sp.CommandError):
        # Most likely the caller's arguments. Type and message only: the traceback (and the
        # file names in it) stay on the server.
        return 422, f"{exc.error_type}: {exc.message}" if exc.error_type else exc.message
    return ERRORS.get(type(exc), (500, "the command failed"))


async def ndjson_lines(
    pool: sp.Pool, command: str, args: dict[str, Any], timeout: float
) -> AsyncGenerator[bytes, None]:
    """A stream's chunks as NDJSON lines, then ``{"done": true, "result": ...}``.

    An error before the first line propagates (the handler turns it into a status code); an
    error after it, when the status has been sent, becomes the last line.
    """
    started = False
    try:
        # The stream's deadline is enforced by the pool, not by a cancel scope around this
        # body, so a generator may hold the block across its yields.
        async with pool.stream(command, args, timeout=timeout) as chunks:
            async for chunk in chunks:
                started = True
                yield json.dumps({"chunk": chunk}).encode() + b"\n"
        started = True
        yield json.dumps({"done": True, "result": chunks.result}).encode() + b"\n"
    except sp.SnakepitError as exc:
        if not started:
            raise
        logger.warning("stream %s ended early: %s", command, exc)
        status, detail = status_of(exc)
        line = {"error": type(exc).__name__, "status": status, "detail": detail}
        yield json.dumps(line).encode() + b"\n"


class _Primed:
    """An async generator whose first item was already taken, put back in front."""

    def __init__(self, first: bytes, rest: AsyncGenerator[bytes, None]) -> None:
        self._first: bytes | None = first
        self._rest = rest

    def __aiter__(self) -> "_Primed":
        return self

    async def __anext__(self) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await self._rest.__anext__()

    async def aclose(self) -> None:
        # Quart closes a body when the response ends, however it ends (client gone too).
        await self._rest.aclose()


def query_number(
    name: str, default: float | None, low: float, high: float, kind: type = float
) -> Any:
    """A query argument within [low, high], or a 400."""
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        abort(400, f"{name} must be a number")
    if not (math.isfinite(value) and low <= value <= high):
        abort(400, f"{name} must be between {low} and {high}")
    return value


def create_app(settings: Settings) -> QuartTrio:
    """The app; its pool starts with the server (``while_serving``) and stops with it."""
    app = QuartTrio(__name__)

    @app.while_serving
    async def pool_lifespan() -> AsyncGenerator[None, None]:
        async with sp.open_pool(
            sp.PythonAdapter(), size=settings.size, config=settings.pool_config()
        ) as pool:
            app.extensions["snakepit_pool"] = pool
            yield
        # Here every worker has exited: the pool waited for calls in flight (drain_timeout),
        # then took the workers down the shutdown ladder.

    def pool() -> sp.Pool:
        running: sp.Pool = app.extensions["snakepit_pool"]
        return running

    @app.errorhandler(sp.SnakepitError)
    async def pool_error(exc: sp.SnakepitError) -> tuple[dict[str, str], int, dict[str, str]]:
        status, detail = status_of(exc)
        if status >= 500:
            logger.warning("%s %s: %r", request.method, request.path, exc)
        headers = {"Retry-After": "1"} if status == 503 else {}
        return {"error": type(exc).__name__, "detail": detail}, status, headers

    @app.get("/ping")
    async def ping() -> Any:
        return await pool().execute("ping")

    @app.post("/echo")
    async def echo() -> Any:
        return await pool().execute("echo", {"data": await request.get_json()})

    @app.post("/compute")
    async def compute() -> Any:
        body = await request.get_json(silent=True)
        if not isinstance(body, dict) or body.get("operation") not in OPERATIONS:
            abort(400, f"expected {{'operation': one of {OPERATIONS}, 'a': number, 'b': number}}")
        numbers = [body.get("a"), body.get("b")]
        if not all(isinstance(n, int | float) and not isinstance(n, bool) for n in numbers):
            abort(400, "a and b must be numbers")
        args = {"operation": body["operation"], "a": numbers[0], "b": numbers[1]}
        return await pool().execute("compute", args)

    @app.get("/sleep")
    async def sleep() -> Any:
        """A slow call: shows queueing, 503 under load and 504 past ``timeout``.

        ``cooperative=false`` sleeps without checking for a cancel, as code stuck in a C
        extension does: only the pool's ladder (kill, replace) ends it early.
        """
        seconds = query_number("seconds", 1.0, 0, 60)
        timeout = query_number("timeout", None, 0.001, 300)
        cooperative = request.args.get("cooperative", "true").lower() not in ("false", "0")
        args = {"seconds": seconds, "cooperative": cooperative}
        return await pool().execute("sleep", args, timeout=timeout)

    @app.get("/stream")
    async def stream() -> Response:
        count = query_number("count", 10, 1, 100_000, int)
        interval = query_number("interval", 0.1, 0, 10)
        timeout = query_number("timeout", 60.0, 0.001, 3600)
        lines = ndjson_lines(pool(), "ping_stream", {"count": count, "interval": interval}, timeout)
        # Wait for the first line here, where an error can still choose the status code.
        first = await lines.__anext__()
        response = Response(_Primed(first, lines), mimetype="application/x-ndjson")
        # Quart cuts every response at RESPONSE_TIMEOUT (60 s); the stream has its own bound.
        response.timeout = None
        return response

    @app.get("/stats")
    async def stats() -> dict[str, int]:
        return pool().stats()

    @app.get("/workers")
    async def workers() -> list[dict[str, Any]]:
        return [
            {"id": w.id, "pid": w.pid, "state": w.state, "requests": w.requests}
            for w in pool().workers()
        ]

    return app


# For `hypercorn --worker-class trio .../quart_trio_app:app`: settings from the environment.
app = create_app(Settings.from_env())


async def serve(app: QuartTrio, host: str, port: int, graceful_timeout: float, log: bool) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully (Hypercorn's trio worker)."""
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.graceful_timeout = graceful_timeout
    config.accesslog = "-" if log else None
    config.errorlog = "-"
    # Opened before serving, so a signal that comes during start-up is not lost either.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

        async def until_signalled() -> None:
            async for signum in signals:
                logger.info("%s: shutting down", signal.Signals(signum).name)
                return

        await hypercorn_serve(app, config, shutdown_trigger=until_signalled)


def main() -> None:
    env = Settings.from_env()
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=5.0,
        help="after SIGTERM, how long open requests and streams may go on (Hypercorn's "
        "graceful_timeout, 3 s by default)",
    )
    parser.add_argument("--no-access-log", action="store_true")
    for name, value in vars(env).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    options = vars(parser.parse_args())
    settings = Settings(**{name: options[name] for name in vars(env)})
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")
    trio.run(
        serve,
        create_app(settings),
        options["host"],
        options["port"],
        options["graceful_timeout"],
        not options["no_access_log"],
    )


if __name__ == "__main__":
    main()
