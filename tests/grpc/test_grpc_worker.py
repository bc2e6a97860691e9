"""The gRPC worker process on its own: READY line, socket hygiene, shutdown paths, health."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import secrets
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from snakepit_trio_bridge._grpc_generated.grpc.health.v1 import (
    HealthCheckRequest,
    HealthCheckResponseServingStatus,
    HealthStub,
)
from snakepit_trio_bridge._grpc_generated.snakepit.v1 import (
    ExecuteRequest,
    SnakepitBridgeBase,
    SnakepitBridgeStub,
)
from snakepit_trio_bridge.grpc_wire import (
    EXECUTE,
    EXECUTE_STREAM,
    HEALTH,
    INFO,
    SizeLimitedCodec,
    pack,
    unpack,
)

ROOT = Path(__file__).resolve().parents[2]
BRIDGE = ROOT / "bridges" / "python"
HERE = Path(__file__).resolve().parent
TOKEN = secrets.token_urlsafe(32)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(BRIDGE), str(HERE), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def _auth() -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {TOKEN}")]


@contextmanager
def worker(*args: str, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A gRPC worker and its announced address; killed if the test leaves it running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakepit_trio_bridge", "--transport", "grpc", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(**env),
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("READY "), line
        yield proc, line.split()[1]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _unix_path(address: str) -> str:
    assert address.startswith("unix:"), address
    return address[len("unix:") :]


def test_ready_line_private_socket_and_graceful_exit_on_stdin_eof() -> None:
    with worker() as (proc, address):
        path = _unix_path(address)
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.read() == b""  # exactly one line, then stdout is closed
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        proc.stdin.close()
        assert proc.wait(10) == 0
        assert not os.path.lexists(os.path.dirname(path))


def test_sigterm_stops_the_worker_and_removes_its_socket() -> None:
    with worker() as (proc, address):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 143
        assert not os.path.lexists(os.path.dirname(_unix_path(address)))


def test_sigterm_cuts_a_graceful_stop_short() -> None:
    async def stall_a_stream(address: str) -> None:
        from grpclib.client import Channel
        from grpclib.const import Cardinality
        from grpclib.exceptions import GRPCError, StreamTerminatedError
        from snakepit_trio_bridge._grpc_generated.snakepit.v1 import StreamReply

        channel = Channel(path=_unix_path(address), codec=SizeLimitedCodec())
        request = ExecuteRequest(command="count_stream", args=pack({"count": 10**9}))
        try:
            async with channel.request(
                EXECUTE_STREAM, Cardinality.UNARY_STREAM, ExecuteRequest, StreamReply
            ) as stream:
                await stream.send_message(request, end=True)
                assert (await stream.recv_message()) is not None  # then stop reading
                assert proc.stdin is not None
                proc.stdin.close()  # graceful stop: it waits for the stream to finish...
                await asyncio.sleep(0.3)
                assert proc.poll() is None
                proc.send_signal(signal.SIGTERM)  # ...until SIGTERM
                started = time.monotonic()
                while proc.poll() is None and time.monotonic() - started < 5:
                    await asyncio.sleep(0.01)
        except (StreamTerminatedError, GRPCError, OSError):
            pass  # the stream breaks when the worker goes
        finally:
            channel.close()

    with worker("--handler", "snakepit_trio_bridge.testing:TestingHandler") as (proc, address):
        asyncio.run(stall_a_stream(address))
        assert proc.wait(5) == 143
        assert not os.path.lexists(os.path.dirname(_unix_path(address)))


def test_the_lifeline_takes_the_worker_down_when_the_pool_is_gone() -> None:
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakepit_trio_bridge", "--transport", "grpc"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=_env(SNAKEPIT_LIFELINE_FD=str(read_end), SNAKEPIT_LIFELINE_GRACE="0.2"),
        pass_fds=(read_end,),
        start_new_session=True,
    )
    os.close(read_end)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(b"READY ")
        os.close(write_end)  # the pool "dies"; stdin stays open
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.stdout.close()


def test_tcp_worker_serves_loopback_and_answers_health_and_info() -> None:
    async def client(address: str) -> None:
        from grpclib.client import Channel

        host, _, port = address[len("tcp:") :].rpartition(":")
        assert host == "127.0.0.1"
        channel = Channel(host, int(port), codec=SizeLimitedCodec())
        auth = _auth()
        try:
            check = await HealthStub(channel).check(HealthCheckRequest(), metadata=auth)
            assert check.status == HealthCheckResponseServingStatus.SERVING
            stub = SnakepitBridgeStub(channel)
            info = await stub.info(metadata=auth)
            assert info.language == "python" and "stream" in info.features
            health = await stub.health(metadata=auth)
            assert health.serving
            request = ExecuteRequest(command="echo", args=pack({"b": b"\x01"}))
            reply = await stub.execute(request, metadata=auth)
            assert reply.success and unpack(reply.result)["echoed"] == {"b": b"\x01"}
            took = []
            for _ in range(10):
                started = time.monotonic()
                await stub.execute(ExecuteRequest(command="ping"), metadata=auth)
                took.append(time.monotonic() - started)
            # TCP_NODELAY is on (IPPROTO_TCP listening socket): no 40 ms delayed-ACK stalls.
            assert sorted(took)[5] < 0.03  # the median: a stall of a loaded machine is not Nagle
        finally:
            channel.close()

    with worker("--listen", "tcp", SNAKEPIT_GRPC_TOKEN=TOKEN) as (proc, address):
        assert address.startswith("tcp:127.0.0.1:")
        asyncio.run(client(address))
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(10) == 0


@pytest.mark.parametrize("token", [None, "short-token"])
def test_a_tcp_worker_will_not_start_without_a_token_of_32_characters(token: str | None) -> None:
    env = _env()
    env.pop("SNAKEPIT_GRPC_TOKEN", None)
    if token is not None:
        env["SNAKEPIT_GRPC_TOKEN"] = token
    out = subprocess.run(
        [sys.executable, "-m", "snakepit_trio_bridge", "--transport", "grpc", "--listen", "tcp"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stdout == b""  # no READY line: nothing listened
    assert b"SNAKEPIT_GRPC_TOKEN" in out.stderr


def test_the_worker_says_ready_before_it_builds_its_handler_and_sigterm_cleans_up() -> None:
    # serve() is given the handler's spec, as the command line does: it binds, announces,
    # then builds (a slow constructor is bounded by the pool's worker_init_timeout, which
    # also covers the Info call that waits for it).
    code = (
        "import sys; from snakepit_trio_bridge.grpc_server import serve; "
        "sys.exit(serve('grpc_handlers:SlowInitHandler'))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=_env(SLOW_INIT_SECONDS="120", SNAKEPIT_GRPC_TOKEN=TOKEN),
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert select.select([proc.stdout], [], [], 60)[0], "no READY line within 60 s"
        line = proc.stdout.readline().decode()
        assert line.startswith("READY unix:"), line
        path = _unix_path(line.split()[1])

        async def info_waits() -> None:
            from grpclib.client import Channel

            channel = Channel(path=path, codec=SizeLimitedCodec())
            try:
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(SnakepitBridgeStub(channel).info(metadata=_auth()), 1)
            finally:
                channel.close()

        asyncio.run(info_waits())  # connected (the backlog), not answered: still building
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 143
        assert not os.path.lexists(os.path.dirname(path))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.stdout.close()


def test_the_worker_serves_its_handlers_commands_and_no_command_of_its_own() -> None:
    from snakepit_trio_bridge.generic import GenericCommandHandler

    async def client(path: str) -> list[str]:
        from grpclib.client import Channel

        channel = Channel(path=path, codec=SizeLimitedCodec())
        try:
            return list((await SnakepitBridgeStub(channel).info(metadata=_auth())).commands)
        finally:
            channel.close()

    with worker(SNAKEPIT_GRPC_TOKEN=TOKEN) as (_, address):
        commands = asyncio.run(client(_unix_path(address)))
    assert sorted(commands) == sorted(GenericCommandHandler().get_supported_commands())


def test_routes_match_the_generated_service() -> None:
    mapping = SnakepitBridgeBase().__mapping__()
    assert {EXECUTE, EXECUTE_STREAM, HEALTH, INFO} == set(mapping)


def test_importing_the_library_does_not_load_grpc() -> None:
    code = (
        "import sys, snakepit_trio as sp; sp.GrpcPythonAdapter(); "
        "print(sorted(m for m in ('grpclib', 'betterproto2', 'h2') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_committed_generated_code_is_current() -> None:
    spec = importlib.util.spec_from_file_location("generate_proto", ROOT / "proto" / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    reason = generate.missing_tools()
    if reason is not None:
        pytest.skip(reason)
    assert generate.stale_files() == [], "run: python proto/generate.py"
