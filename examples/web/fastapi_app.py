"""A FastAPI app on uvicorn (asyncio) whose endpoints run commands on a snakepit-trio pool.

    pip install fastapi uvicorn          # or: pip install --group test
    python examples/web/fastapi_app.py --port 8000
    # or with uvicorn's own CLI (settings from SNAKEPIT_WEB_* variables, see Settings):
    uvicorn --app-dir examples/web fastapi_app:app --port 8000 --timeout-graceful-shutdown 5
    hypercorn --worker-class trio --bind 127.0.0.1:8000 examples/web/fastapi_app:app  # on trio

    curl localhost:8000/ping
    curl localhost:8000/compute -H 'content-type: application/json' \\
         -d '{"operation": "add", "a": 1, "b": 2}'
    curl -N 'localhost:8000/stream?count=5&interval=0.2'      # NDJSON, one line per chunk
    curl localhost:8000/stats; curl localhost:8000/workers

What it shows (docs/integrations.md explains each point):

- the pool is opened in the lifespan, once per server process, and kept on ``app.state``;
- the pool's errors become status codes: ``PoolSaturated`` and ``QueueTimeout`` 503 (with
  ``Retry-After``), ``WorkerTimeout`` 504, ``WorkerCrashed`` 502, ``CommandError`` 422;
- ``/stream`` consumes ``pool.stream(..., timeout=T)`` inside the response body's generator.
  The handler waits for the first line, so an admission error still gets its status code; an
  error after that ends the body with an ``{"error": ...}`` line. A client that leaves cancels
  the worker-side stream, and the response always closes the generator (``NDJSONResponse``).
"""

import argparse
import json
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import anyio
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

import snakepit_trio as sp

logger = logging.getLogger("fastapi_app")

# Status code, and what a client is told, for each pool error. The exception's own text stays in
# the server's log: it may carry a worker's stderr.
ERRORS: dict[type[sp.SnakepitError], tuple[int, str]] = {
    sp.PoolSaturated: (503, "too many requests are waiting for a worker"),
    sp.QueueTimeout: (503, "no worker became free in time"),
    sp.PoolClosed: (503, "the server is shutting down"),
    sp.WorkerTimeout: (504, "the command ran past its timeout"),
    sp.WorkerCrashed: (502, "the worker running the command died"),
}


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
        await self._rest.aclose()


class NDJSONResponse(StreamingResponse):
    """A streaming response that always closes its body generator.

    Starlette's ``StreamingResponse`` never closes its body iterator. When the client leaves,
    the cancellation usually lands inside the generator, which ends it; a body left suspended
    at a ``yield`` would wait for the garbage collector, and its worker with it.
    """

    media_type = "application/x-ndjson"

    def __init__(self, body: _Primed) -> None:
        super().__init__(body)
        self._body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._body.aclose()


def get_pool(request: Request) -> sp.Pool:
    pool: sp.Pool = request.app.state.pool
    return pool


# Endpoints take the pool as a dependency. (FastAPI reads annotations at run time, so the
# names they use live at module level.)
Pool = Annotated[sp.Pool, Depends(get_pool)]


class Compute(BaseModel):
    operation: Literal["add", "subtract", "multiply", "divide"]
    a: float
    b: float


def create_app(settings: Settings) -> FastAPI:
    """The app; its pool starts with the server (lifespan) and stops with it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with sp.open_pool(
            sp.PythonAdapter(), size=settings.size, config=settings.pool_config()
        ) as pool:
            app.state.pool = pool
            yield
        # Here every worker has exited: the pool waited for calls in flight (drain_timeout),
        # then took the workers down the shutdown ladder.

    app = FastAPI(title="snakepit-trio on FastAPI", lifespan=lifespan)

    async def pool_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, sp.SnakepitError)
        status, detail = status_of(exc)
        if status >= 500:
            logger.warning("%s %s: %r", request.method, request.url.path, exc)
        headers = {"Retry-After": "1"} if status == 503 else None
        return JSONResponse(
            {"error": type(exc).__name__, "detail": detail}, status_code=status, headers=headers
        )

    # Starlette picks the handler of the exception's nearest class: the base is the fallback.
    for cls in (*ERRORS, sp.CommandError, sp.SnakepitError):
        app.add_exception_handler(cls, pool_error)

    @app.get("/ping")
    async def ping(pool: Pool) -> Any:
        return await pool.execute("ping")

    @app.post("/echo")
    async def echo(pool: Pool, request: Request) -> Any:
        return await pool.execute("echo", {"data": await request.json()})

    @app.post("/compute")
    async def compute(pool: Pool, body: Compute) -> Any:
        return await pool.execute("compute", body.model_dump())

    @app.get("/sleep")
    async def sleep(
        pool: Pool,
        seconds: Annotated[float, Query(ge=0, le=60)] = 1.0,
        timeout: Annotated[float | None, Query(gt=0, le=300)] = None,
        cooperative: bool = True,
    ) -> Any:
        """A slow call: shows queueing, 503 under load and 504 past ``timeout``.

        ``cooperative=false`` sleeps without checking for a cancel, as code stuck in a C
        extension does: only the pool's ladder (kill, replace) ends it early.
        """
        args = {"seconds": seconds, "cooperative": cooperative}
        return await pool.execute("sleep", args, timeout=timeout)

    @app.get("/stream")
    async def stream(
        pool: Pool,
        count: Annotated[int, Query(ge=1, le=100_000)] = 10,
        interval: Annotated[float, Query(ge=0, le=10)] = 0.1,
        timeout: Annotated[float, Query(gt=0, le=3600)] = 60.0,
    ) -> NDJSONResponse:
        lines = ndjson_lines(pool, "ping_stream", {"count": count, "interval": interval}, timeout)
        # Wait for the first line here, where an error can still choose the status code.
        first = await lines.__anext__()
        return NDJSONResponse(_Primed(first, lines))

    @app.get("/stats")
    async def stats(pool: Pool) -> dict[str, int]:
        return pool.stats()

    @app.get("/workers")
    async def workers(pool: Pool) -> list[dict[str, Any]]:
        return [
            {"id": w.id, "pid": w.pid, "state": w.state, "requests": w.requests}
            for w in pool.workers()
        ]

    return app


# For `uvicorn fastapi_app:app`: settings from the environment.
app = create_app(Settings.from_env())


def main() -> None:
    import uvicorn

    env = Settings.from_env()
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=5.0,
        help="after SIGTERM, how long open requests and streams may go on (uvicorn's "
        "--timeout-graceful-shutdown; uvicorn's own default waits for ever)",
    )
    parser.add_argument("--no-access-log", action="store_true")
    for name, value in vars(env).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    options = vars(parser.parse_args())
    settings = Settings(**{name: options[name] for name in vars(env)})
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")
    uvicorn.run(
        create_app(settings),
        host=options["host"],
        port=options["port"],
        timeout_graceful_shutdown=options["graceful_timeout"],
        access_log=not options["no_access_log"],
    )


if __name__ == "__main__":
    main()
