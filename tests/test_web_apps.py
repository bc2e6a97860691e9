"""The web examples, served for real: each app runs as a server on loopback in a subprocess and
is driven by a real HTTP client (httpx).

Three servers: the FastAPI example on uvicorn (asyncio) and on Hypercorn's trio worker, the
Quart-Trio example on Hypercorn's trio worker. For each: the JSON and streaming endpoints; a
stream cut by its client is cancelled in the worker; overload gives 503s at once instead of a
hang; the pool's errors map to 504 and 502; what the framework does with a plain handler whose
client left (docs/integrations.md relies on it); SIGTERM leaves no worker process. The
frameworks are test-only dependencies: without them these tests skip."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest
from proc_support import pid_alive, wait_dead

ROOT = Path(__file__).resolve().parents[1]
# How each app is served, and what it needs. "fastapi_on_trio" is the FastAPI example under
# Hypercorn's own CLI with its trio worker: Starlette runs on trio too, and the pool settings
# come from SNAKEPIT_WEB_* variables.
APPS = {
    "fastapi": ("fastapi", "uvicorn"),
    "quart_trio": ("quart_trio", "hypercorn"),
    "fastapi_on_trio": ("fastapi", "hypercorn"),
}
# Generous: a loaded 2-core machine imports a web framework and starts two workers slowly.
START_TIMEOUT = 60.0

httpx = pytest.importorskip("httpx", reason="the web tests need httpx (the 'test' extra)")
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_group(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (a worker and its helpers share one)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != b"Z":
            members.append(int(entry))
    return members


class Server:
    """One example app served by its own script (``python examples/web/xxx.py --port N``)."""

    def __init__(self, kind: str, tmp: Path, **settings: float) -> None:
        missing = [m for m in APPS[kind] if importlib.util.find_spec(m) is None]
        if missing:
            pytest.skip(f"{kind} example needs {', '.join(missing)} (pip install --group test)")
        self.kind = kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        if kind == "fastapi_on_trio":
            graceful = int(settings.pop("graceful_timeout", 5))  # its CLI takes whole seconds
            argv = [sys.executable, "-m", "hypercorn", "--worker-class", "trio"]
            argv += ["--bind", f"127.0.0.1:{self.port}", "--graceful-timeout", str(graceful)]
            argv += ["examples/web/fastapi_app:app"]
            env.update({f"SNAKEPIT_WEB_{k.upper()}": str(v) for k, v in settings.items()})
        else:
            script = ROOT / f"examples/web/{kind}_app.py"
            argv = [sys.executable, str(script), "--port", str(self.port), "--no-access-log"]
            for name, value in settings.items():
                argv += [f"--{name.replace('_', '-')}", str(value)]
        self.log_path = tmp / f"{kind}-{self.port}.log"
        # A file, not a pipe nobody reads (it could fill up); a session of its own, so that
        # the cleanup can signal everything the server started.
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.client = httpx.Client(base_url=self.url, timeout=20.0)
        self.worker_pids: set[int] = set()
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.kind} server exited at start:\n{self.log()}")
            try:
                if self.client.get("/stats").status_code == 200:
                    self.workers()  # remember the pids, for the cleanup
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.kind} server not ready in {START_TIMEOUT} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stats(self) -> dict[str, int]:
        response = self.client.get("/stats")
        assert response.status_code == 200, response.text
        stats: dict[str, int] = response.json()
        return stats

    def workers(self) -> list[dict[str, object]]:
        response = self.client.get("/workers")
        assert response.status_code == 200, response.text
        workers: list[dict[str, object]] = response.json()
        self.worker_pids.update(w["pid"] for w in workers if isinstance(w["pid"], int))
        return workers

    def wait_stats(self, what: str, check: object, timeout: float = 15.0) -> dict[str, int]:
        """Poll /stats until ``check(stats)`` holds."""
        assert callable(check)
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if check(stats):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout} s; last stats {stats}")
            time.sleep(0.05)

    def close(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(10)
        # Whatever a failed test left: the workers live in sessions of their own.
        for pid in self.worker_pids:
            for member in process_group(pid):
                try:
                    os.kill(member, signal.SIGKILL)
                except OSError:
                    pass

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module", params=sorted(APPS))
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A running app: 2 workers, at most 2 callers queued, 0.5 s of queue wait."""
    running = Server(
        request.param,
        tmp_path_factory.mktemp("web"),
        size=2,
        max_queue=2,
        queue_timeout=0.5,
    )
    yield running
    running.close()


def idle(stats: dict[str, int]) -> bool:
    return stats["available"] == stats["workers"] == 2 and stats["queued"] == 0


def test_the_json_endpoints_answer(server: Server) -> None:
    c = server.client
    assert c.get("/ping").json()["status"] == "ok"
    assert c.post("/echo", json={"x": [1, "two"]}).json()["echoed"] == {"data": {"x": [1, "two"]}}
    body = {"operation": "multiply", "a": 6, "b": 7}
    assert c.post("/compute", json=body).json()["result"] == 42
    # The command raised in the worker: 422, with the error but no traceback or file name.
    failed = c.post("/compute", json={"operation": "divide", "a": 1, "b": 0})
    assert failed.status_code == 422
    assert failed.json()["error"] == "CommandError"
    assert "ZeroDivisionError" in failed.json()["detail"]
    assert ".py" not in failed.json()["detail"]
    # Bad arguments are refused by the app before they reach the pool.
    assert c.post("/compute", json={"operation": "pow", "a": 1, "b": 2}).status_code in (400, 422)


def test_a_stream_arrives_as_ndjson_lines_with_a_final_record(server: Server) -> None:
    with server.client.stream("GET", "/stream", params={"count": 5, "interval": 0.01}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert [line["chunk"]["ping_number"] for line in lines[:-1]] == [1, 2, 3, 4, 5]
    assert lines[-1] == {"done": True, "result": {"status": "ok", "total": 5}}


def test_a_stream_past_its_timeout_ends_with_an_error_line_and_frees_its_worker(
    server: Server,
) -> None:
    before = server.stats()
    params = {"count": 1000, "interval": 0.05, "timeout": 0.5}
    with server.client.stream("GET", "/stream", params=params) as response:
        assert response.status_code == 200  # sent with the first chunk, before the deadline
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert "chunk" in lines[0]
    assert lines[-1]["error"] == "WorkerTimeout"
    assert lines[-1]["status"] == 504
    after = server.wait_stats("worker idle after a stream timeout", idle)
    assert after["timeouts"] == before["timeouts"] + 1


def test_a_stream_cut_by_the_client_is_cancelled_in_the_worker(server: Server) -> None:
    before = server.stats()
    params = {"count": 10_000, "interval": 0.02, "timeout": 600}
    with server.client.stream("GET", "/stream", params=params) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert "chunk" in json.loads(next(lines))
        assert "chunk" in json.loads(next(lines))
        assert server.stats()["busy"] == 1
    # Leaving the block closed the connection mid-body. Without a cancel the worker would
    # stream for another three minutes (10,000 chunks, 20 ms apart).
    after = server.wait_stats("worker idle after the client left", idle)
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["timeouts"] == before["timeouts"]


def test_overload_gives_503s_at_once_not_a_hang(server: Server) -> None:
    """Both workers held, at most 2 callers may queue for 0.5 s: every caller hears a 503,
    none waits for a worker (the client's timeout would fail the test)."""
    before = server.stats()
    params = {"count": 10_000, "interval": 0.05, "timeout": 600}
    with ExitStack() as holding, ThreadPoolExecutor(max_workers=12) as threads:
        # Two streams hold both workers for as long as this block keeps them open. (Their
        # line iterators are kept too: dropping one closes its connection.)
        readers = []
        for _ in range(2):
            stream = holding.enter_context(server.client.stream("GET", "/stream", params=params))
            readers.append(stream.iter_lines())
            assert "chunk" in json.loads(next(readers[-1]))
        assert server.stats()["busy"] == 2
        started = time.monotonic()
        responses = list(threads.map(lambda _: server.client.get("/ping"), range(12)))
        refused_in = time.monotonic() - started
    assert [r.status_code for r in responses] == [503] * 12, [r.text for r in responses]
    assert all(r.headers.get("retry-after") == "1" for r in responses)
    assert {r.json()["error"] for r in responses} <= {"PoolSaturated", "QueueTimeout"}
    assert refused_in < 15  # queue_timeout is 0.5 s: a generous bound on "not a hang"
    after = server.wait_stats("pool idle after the overload", idle)
    saturated = after["pool_saturated"] - before["pool_saturated"]
    timed_out = after["queue_timeouts"] - before["queue_timeouts"]
    assert saturated + timed_out == 12
    assert saturated >= 1 and timed_out >= 1
    assert after["cancelled"] == before["cancelled"] + 2  # the streams, cut by the client
    assert server.client.get("/ping").status_code == 200


def test_a_call_past_its_timeout_is_a_504(server: Server) -> None:
    response = server.client.get("/sleep", params={"seconds": 30, "timeout": 0.3})
    assert response.status_code == 504
    assert response.json()["error"] == "WorkerTimeout"
    server.wait_stats("worker idle after a timeout", idle)


def test_a_worker_killed_under_a_call_is_a_502(server: Server) -> None:
    with ThreadPoolExecutor(max_workers=1) as threads:
        pending = threads.submit(server.client.get, "/sleep", params={"seconds": 30})
        server.wait_stats("a worker busy", lambda s: s["busy"] == 1)
        (busy,) = [w for w in server.workers() if w["state"] == "busy"]
        assert isinstance(busy["pid"], int)
        os.kill(busy["pid"], signal.SIGKILL)
        response = pending.result()
    assert response.status_code == 502
    assert response.json() == {
        "error": "WorkerCrashed",
        "detail": "the worker running the command died",
    }
    # The pool replaced the worker.
    server.wait_stats("worker replaced", idle, timeout=30)
    server.workers()


def test_what_the_framework_does_with_a_plain_handler_whose_client_left(server: Server) -> None:
    """Quart-Trio cancels the handler (the pool cancels the call in the worker); Starlette
    does not, on uvicorn or on Hypercorn: the call runs to its end. docs/integrations.md says
    so."""
    before = server.stats()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /sleep?seconds=1.5 HTTP/1.1\r\nHost: test\r\n\r\n")
        server.wait_stats("the call reached a worker", lambda s: s["busy"] == 1)
    # The connection is closed, the call still running in the worker.
    after = server.wait_stats("worker idle after the client left", idle)
    if server.kind == "quart_trio":
        assert after["cancelled"] == before["cancelled"] + 1
        assert after["successes"] == before["successes"]
    else:
        assert after["cancelled"] == before["cancelled"]
        assert after["successes"] == before["successes"] + 1


@pytest.mark.parametrize("kind", sorted(APPS))
def test_sigterm_ends_an_open_stream_and_leaves_no_worker_process(
    kind: str, tmp_path: Path
) -> None:
    """SIGTERM with a client still reading a stream: the server stops it after its graceful
    timeout, the pool closes, every worker process (and its helpers) is gone."""
    server = Server(
        kind,
        tmp_path,
        size=2,
        graceful_timeout=1.0,
        drain_timeout=1.0,
        shutdown_grace=1.0,
        kill_grace=1.0,
    )
    try:
        pids = sorted(server.worker_pids)
        assert len(pids) == 2 and all(pid_alive(p) for p in pids)
        params = {"count": 10_000, "interval": 0.05, "timeout": 600}
        with server.client.stream("GET", "/stream", params=params) as response:
            lines = response.iter_lines()
            assert "chunk" in json.loads(next(lines))
            sent = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            try:
                # The body ends when the server gives up on it: cleanly or cut.
                for _ in lines:
                    pass
            except httpx.TransportError:
                pass
        code = server.proc.wait(60)
        took = time.monotonic() - sent
        assert code in (0, -signal.SIGTERM), server.log()
        # Worst case: graceful 1 + drain 1 + shutdown grace 1 + kill grace 1, and slack.
        assert took < 30, (took, server.log())
        survivors = [member for pid in pids for member in process_group(pid)]
        assert wait_dead(survivors, 5.0) == [], server.log()
        # uvicorn logs the task it cancelled with a traceback of its own; nothing else may
        # complain (a cancel scope exited out of order, an unawaited task, a finalizer).
        log = server.log().lower()
        for sign in ("cancel scope", "never retrieved", "never awaited", "exception ignored"):
            assert sign not in log, server.log()
    finally:
        server.close()
