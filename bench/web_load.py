"""The web examples under load, and how long they take to stop after SIGTERM.

    python bench/web_load.py                 # FastAPI on uvicorn, 2,000 requests, 64 at once
    python bench/web_load.py --app quart_trio
    python bench/web_load.py --skip-shutdown # the load only

Needs the web frameworks and httpx: ``pip install --group test``.

Starts ``examples/web/<app>_app.py`` on 127.0.0.1 (a free port, loopback only, access log off)
and sends ``--requests`` POST /compute requests over ``--concurrency`` keep-alive connections
(a bare HTTP/1.1 client on asyncio, in this process: on a small machine the client's CPU
competes with the server's, so the numbers are a floor). Prints requests per second, latency
percentiles and the status codes.

Then, on fresh servers, SIGTERM and the time until the server has exited and every worker
process is gone, in three cases: idle; a client reading a stream (the server ends it after its
graceful timeout); a call stuck in code that ignores cancels (``/sleep?cooperative=false``:
the pool's ladder has to kill it). The worst case is bounded by graceful timeout +
drain_timeout + shutdown_grace + kill_grace, printed beside the measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
# The shutdown settings of the example apps (their defaults), for the bound printed below.
SHUTDOWN = {"graceful_timeout": 5.0, "drain_timeout": 5.0, "shutdown_grace": 2.0, "kill_grace": 2.0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def group_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` still runs (zombies count as gone)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                data = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            fields = data[data.rfind(b")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] != b"Z":
                return True
    return False


class Server:
    def __init__(self, app: str, size: int, extra: dict[str, object]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, str(ROOT / f"examples/web/{app}_app.py"), "--port", str(self.port)]
        argv += ["--no-access-log", "--size", str(size)]
        for name, value in extra.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise SystemExit(f"{app} server did not start")
            try:
                workers = httpx.get(self.url + "/workers", timeout=5).json()
                break
            except httpx.TransportError:
                time.sleep(0.1)
        self.worker_pids = [w["pid"] for w in workers]

    def kill(self) -> None:
        """The cleanup: the server's group, then each worker's group."""
        for pgid in [self.proc.pid, *getattr(self, "worker_pids", [])]:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
        self.proc.wait()

    def terminate(self) -> tuple[float, float]:
        """SIGTERM; seconds until the server exited, and until every worker was gone."""
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)
        exited = time.monotonic() - sent
        while any(group_alive(pid) for pid in self.worker_pids):
            if time.monotonic() - sent > 120:
                break
            time.sleep(0.01)
        return exited, time.monotonic() - sent


async def one_connection(
    port: int, left: list[int], latencies: list[float], statuses: Counter[int]
) -> None:
    """Requests back to back on one keep-alive connection while any are left."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while left[0] > 0:
            left[0] -= 1
            body = b'{"operation": "add", "a": %d, "b": 1}' % left[0]
            request = (
                b"POST /compute HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            ) % (len(body), body)
            started = time.perf_counter()
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await asyncio.wait_for(reader.readexactly(length), 30)
            latencies.append(time.perf_counter() - started)
            statuses[int(head.split(b" ", 2)[1])] += 1
    finally:
        writer.close()


async def load(
    port: int, requests: int, concurrency: int
) -> tuple[float, list[float], Counter[int]]:
    """``requests`` POST /compute over ``concurrency`` connections; wall time, latencies,
    status codes.

    A bare HTTP/1.1 client on asyncio streams: httpx's AsyncClient, tried first, costs more
    CPU per request than the server does (213 requests/s, p99 2.3 s, against 900 and 117 ms
    with this client, same server, same run).
    """
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    left = [requests]
    started = time.perf_counter()
    await asyncio.gather(
        *(one_connection(port, left, latencies, statuses) for _ in range(concurrency))
    )
    return time.perf_counter() - started, latencies, statuses


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_load(args: argparse.Namespace) -> None:
    server = Server(args.app, args.size, {"max_queue": max(1000, args.concurrency)})
    try:
        asyncio.run(load(server.port, 200, args.concurrency))  # warm-up
        wall, latencies, statuses = asyncio.run(load(server.port, args.requests, args.concurrency))
        stats = httpx.get(server.url + "/stats").json()
    finally:
        server.kill()
    ms = [x * 1000 for x in latencies]
    print(
        f"{args.app}, {args.size} workers: {args.requests} POST /compute at concurrency "
        f"{args.concurrency}, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"  {args.requests / wall:,.0f} requests/s over {wall:.2f} s")
    print(
        f"  latency ms: p50 {percentile(ms, 0.5):.1f}  p90 {percentile(ms, 0.9):.1f}  "
        f"p99 {percentile(ms, 0.99):.1f}  max {max(ms):.1f}  mean {statistics.fmean(ms):.1f}"
    )
    print(f"  statuses: {dict(sorted(statuses.items()))}; pool errors {stats['errors']}")


def read_stream(url: str, opened: threading.Event) -> None:
    try:
        with httpx.stream("GET", url + "/stream?count=10000&interval=0.05", timeout=60) as r:
            for _ in r.iter_lines():
                opened.set()
    except httpx.HTTPError:
        pass
    opened.set()


def hold_call(url: str, opened: threading.Event) -> None:
    try:
        opened.set()
        httpx.get(url + "/sleep?seconds=60&cooperative=false", timeout=60)
    except httpx.HTTPError:
        pass


def run_shutdown(args: argparse.Namespace) -> None:
    bound = sum(SHUTDOWN.values())
    print(
        f"{args.app}: SIGTERM to exit (and to the last worker gone), seconds; graceful timeout "
        f"{SHUTDOWN['graceful_timeout']:g} + drain {SHUTDOWN['drain_timeout']:g} + shutdown grace "
        f"{SHUTDOWN['shutdown_grace']:g} + kill grace {SHUTDOWN['kill_grace']:g} = {bound:g} worst case"
    )
    for case, client in (("idle", None), ("stream open", read_stream), ("stuck call", hold_call)):
        server = Server(args.app, args.size, {})
        try:
            if client is not None:
                opened = threading.Event()
                thread = threading.Thread(target=client, args=(server.url, opened), daemon=True)
                thread.start()
                opened.wait(30)
                deadline = time.monotonic() + 30
                while httpx.get(server.url + "/stats").json()["busy"] < 1:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{case}: no worker became busy")
                    time.sleep(0.02)
            exited, gone = server.terminate()
        finally:
            server.kill()
        print(f"  {case:<12} exited after {exited:5.2f}, workers gone after {gone:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--app", choices=("fastapi", "quart_trio"), default="fastapi")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--size", type=int, default=2, help="workers in the pool")
    parser.add_argument("--skip-shutdown", action="store_true")
    args = parser.parse_args()
    run_load(args)
    if not args.skip_shutdown:
        run_shutdown(args)


if __name__ == "__main__":
    main()
