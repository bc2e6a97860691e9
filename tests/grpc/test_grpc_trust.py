"""The gRPC transport under attack and in a new user's hands (issue 14): tokens, big errors,
slow or broken handlers, and a worker killed while a descendant holds its output.

Real worker processes and real gRPC servers; the only fakes are the impostor servers of the
port-squatting tests (an attacker's server is a fake by nature). Pool tests run on both anyio
backends; an outsider's grpclib client runs on asyncio in a thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError
from grpclib.server import Server
from proc_support import kill_quietly, pid_alive
from snakepit_trio_bridge._grpc_generated.grpc.health.v1 import (
    HealthCheckRequest,
    HealthCheckResponse,
)
from snakepit_trio_bridge._grpc_generated.snakepit.v1 import (
    ExecuteReply,
    ExecuteRequest,
    HealthReply,
    HealthRequest,
    InfoReply,
    InfoRequest,
    SnakepitBridgeBase,
    StreamReply,
)
from snakepit_trio_bridge.grpc_wire import (
    EXECUTE,
    EXECUTE_STREAM,
    HEALTH,
    INFO,
    SizeLimitedCodec,
    pack,
)
from snakepit_trio_bridge.protocol.messages import Request

import snakepit_trio as sp

HERE = Path(__file__).resolve().parent
BRIDGE = HERE.parents[1] / "bridges" / "python"
HANDLER = "grpc_handlers:GrpcTestHandler"
CONFIG = sp.PoolConfig(cancel_grace=2.0, shutdown_grace=1.0, kill_grace=1.0)
TOKEN_VARIABLE = "SNAKEPIT_GRPC_TOKEN"
CHECK = "/grpc.health.v1.Health/Check"


def adapter(handler: str = HANDLER, **kwargs: Any) -> sp.GrpcPythonAdapter:
    env = {"PYTHONPATH": str(HERE), **kwargs.pop("env", {})}
    return sp.GrpcPythonAdapter(handler, env=env, **kwargs)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


# ---------------------------------------------------------------- an outsider's client


def _routes(witness: Path) -> list[tuple[str, Cardinality, Any, type[Any]]]:
    """Every RPC the worker serves, with a request whose handler would leave ``witness``."""
    touch = ExecuteRequest(command="touch", args=pack({"path": str(witness)}))
    return [
        (EXECUTE, Cardinality.UNARY_UNARY, touch, ExecuteReply),
        (EXECUTE_STREAM, Cardinality.UNARY_STREAM, touch, StreamReply),
        (INFO, Cardinality.UNARY_UNARY, InfoRequest(), InfoReply),
        (HEALTH, Cardinality.UNARY_UNARY, HealthRequest(), HealthReply),
        (CHECK, Cardinality.UNARY_UNARY, HealthCheckRequest(), HealthCheckResponse),
    ]


def outsider_calls(
    port: int, witness: Path, metadata: list[tuple[str, str]] | None
) -> list[tuple[str, Any]]:
    """Call every route on 127.0.0.1:``port``: per route ("OK", replies) or (status name, None)."""

    async def main() -> list[tuple[str, Any]]:
        channel = Channel("127.0.0.1", port, codec=SizeLimitedCodec())
        outcomes: list[tuple[str, Any]] = []
        try:
            for name, cardinality, request, reply_type in _routes(witness):
                try:
                    async with channel.request(
                        name, cardinality, type(request), reply_type, metadata=metadata
                    ) as stream:
                        await stream.send_message(request, end=True)
                        replies = []
                        while (reply := await stream.recv_message()) is not None:
                            replies.append(reply)
                    outcomes.append(("OK", replies))
                except GRPCError as exc:
                    outcomes.append((exc.status.name, None))
        finally:
            channel.close()
        return outcomes

    return asyncio.run(main())


def listening_port(pid: int) -> int:
    ports = [
        c.laddr.port
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert len(ports) == 1, ports
    return int(ports[0])


def gone(path: str) -> bool:
    return not os.path.lexists(path)


def proc_file(pid: int, name: str) -> bytes:
    with open(f"/proc/{pid}/{name}", "rb") as handle:
        return handle.read()


def environ_token(pid: int) -> str:
    """The token in the worker's initial environment (readable by its own user only)."""
    for item in proc_file(pid, "environ").split(b"\0"):
        name, _, value = item.partition(b"=")
        if name == TOKEN_VARIABLE.encode():
            return value.decode()
    raise AssertionError("the worker was started without a token")


# ---------------------------------------------------------------- 5: TCP needs the token


@pytest.mark.anyio
async def test_a_tcp_worker_serves_its_pool_and_nobody_without_its_token(tmp_path: Path) -> None:
    witness = tmp_path / "handler-ran"
    async with sp.open_pool(adapter(listen="tcp"), size=1, config=CONFIG) as pool:
        # The pool itself works on TCP: calls, streams, sessions.
        assert (await pool.execute("compute", {"operation": "add", "a": 2, "b": 3}))["result"] == 5
        async with pool.stream("count_stream", {"count": 50}) as chunks:
            assert [chunk["i"] async for chunk in chunks] == list(range(50))
        assert (await pool.execute_in_session("s-1", "getpid"))["pid"] == pool.workers()[0].pid
        pid = pool.workers()[0].pid
        assert pid is not None
        requests = pool.stats()["requests"]
        port = listening_port(pid)
        token = environ_token(pid)
        assert len(token) >= 32
        # Never in argv: any local user can read /proc/<pid>/cmdline.
        assert token.encode() not in proc_file(pid, "cmdline")

        wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
        refused = [
            None,  # no token at all
            bearer(wrong),  # one character off
            bearer(token[:20]),  # a prefix
            [("authorization", token)],  # the token without its scheme
            [("snakepit-token", token)],  # under another name
            bearer(wrong) + bearer(token),  # two tokens: ambiguous, refused
        ]
        for metadata in refused:
            outcomes = await anyio.to_thread.run_sync(outsider_calls, port, witness, metadata)
            assert outcomes == [("UNAUTHENTICATED", None)] * 5, metadata
            assert not witness.exists()  # the handler never ran
        assert pool.stats()["requests"] == requests

        outcomes = await anyio.to_thread.run_sync(outsider_calls, port, witness, bearer(token))
        assert [status for status, _ in outcomes] == ["OK"] * 5
        assert witness.exists()
        # The worker took the token out of its environment: its children do not inherit it.
        assert await pool.execute("token_seen") == {"environ": None, "child": ""}
        assert pool.workers()[0].pid == pid  # the outsiders did not disturb the worker


@pytest.mark.anyio
async def test_every_worker_gets_a_token_of_its_own_even_on_a_unix_socket() -> None:
    config = sp.PoolConfig(cancel_grace=2.0, shutdown_grace=1.0, max_requests=1)
    async with sp.open_pool(adapter(), size=2, config=config) as pool:
        tokens = {environ_token(w.pid) for w in pool.workers() if w.pid is not None}
        await pool.execute("ping")  # one worker is recycled: its successor has a new token
        await pool.execute("ping")
        for _ in range(200):
            pids = [w.pid for w in pool.workers()]
            if pool.stats()["available"] == 2 and None not in pids:
                break
            await anyio.sleep(0.05)
        tokens |= {environ_token(w.pid) for w in pool.workers() if w.pid is not None}
        assert len(tokens) >= 3


# ---------------------------------------------------------------- 5: a squatter on the port


class _Impostor(SnakepitBridgeBase):  # type: ignore[misc]
    """A server on a port the worker held: answers everything, records what it was sent."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def info(self, message: InfoRequest) -> InfoReply:
        self.seen.append("info")
        return InfoReply(bridge="snakepit_trio_bridge", features=["stream"], max_concurrency=4)

    async def execute(self, message: ExecuteRequest) -> ExecuteReply:
        self.seen.append(message.command)
        return ExecuteReply(success=True, result=pack({"forged": True}))


def _listen() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    return sock


def test_the_pool_does_not_believe_a_server_that_cannot_prove_the_token() -> None:
    from snakepit_trio._grpc_client import BadReply, Client

    async def main() -> None:
        impostor = _Impostor()
        server = Server([impostor], codec=SizeLimitedCodec())
        sock = _listen()
        await server.start(sock=sock)
        client = Client(f"tcp:127.0.0.1:{sock.getsockname()[1]}", 1 << 20, "t" * 43)
        try:
            with pytest.raises(BadReply, match="token"):
                await client.info()
        finally:
            await client.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


@contextmanager
def raw_worker(*args: str, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(BRIDGE), str(HERE)])
    environment.update(env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakepit_trio_bridge", "--transport", "grpc", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=environment,
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
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.stdout.close()


def test_a_lost_connection_is_not_reopened_to_whoever_holds_the_address_now() -> None:
    # On TCP the kernel keeps a killed worker's port busy while its connections linger in
    # TIME_WAIT, so the squatter here takes over the worker's Unix socket path instead: the
    # same attack on the client, and one this test can always stage.
    from snakepit_trio._grpc_client import Client, RequestCodec

    token = "k" * 43
    request = RequestCodec().encode(Request(1, "ping").to_wire())

    async def main(proc: subprocess.Popen[bytes], address: str) -> None:
        client = Client(address, 1 << 20, token)
        impostor = _Impostor()
        server = Server([impostor], codec=SizeLimitedCodec())
        path = address[len("unix:") :]
        try:
            await client.info()
            assert (await client.execute(request)).success
            proc.kill()  # the worker dies (its socket file stays: nobody removed it)
            proc.wait()
            await asyncio.sleep(0.1)  # the client's loop sees the end of the connection
            # The squatter takes the dead worker's path (whether or not its file is still there).
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            await server.start(path=path)
            with pytest.raises(ConnectionError):
                await client.execute(request)
            assert impostor.seen == []  # nothing, not even the token, went to the squatter
        finally:
            await client.close()
            server.close()
            await server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                os.rmdir(os.path.dirname(path))

    with raw_worker(**{TOKEN_VARIABLE: token}) as (proc, address):
        asyncio.run(main(proc, address))


# ---------------------------------------------------------------- 1: replies that cannot be sent


@pytest.mark.anyio
async def test_an_error_too_big_or_not_encodable_becomes_a_short_error_at_once() -> None:
    limit = 256 * 1024
    config = sp.PoolConfig(cancel_grace=2.0, shutdown_grace=1.0, max_frame_size=limit)
    async with sp.open_pool(adapter(), size=1, config=config) as pool:
        pid = pool.workers()[0].pid
        # A message over the limit: cut, and said so.
        with pytest.raises(sp.CommandError) as info:
            await pool.execute("huge_error", {"size": 4 * limit}, timeout=20)
        assert info.value.error_type == "ValueError"
        assert info.value.message.startswith("EEEE")
        assert len(info.value.message) < limit // 4
        assert f"[error message cut: it was {4 * limit} characters]" in info.value.message
        # A traceback over the limit (a long chain of exceptions): its innermost end is kept.
        with pytest.raises(sp.CommandError) as info:
            await pool.execute("deep_error", {"count": 300, "padding": 2000}, timeout=20)
        assert info.value.error_type == "RuntimeError"
        assert info.value.message == "the last straw"
        assert info.value.traceback is not None
        assert len(info.value.traceback) < limit // 2
        assert "RuntimeError: the last straw" in info.value.traceback
        assert "characters of traceback cut" in info.value.traceback
        # Text protobuf cannot carry (a lone surrogate) is escaped, not a broken reply.
        with pytest.raises(sp.CommandError) as info:
            await pool.execute("surrogate_error", timeout=20)
        assert info.value.error_type == "ValueError"
        assert "bad byte" in info.value.message and "in a file name" in info.value.message
        # A result MessagePack cannot encode, and a chunk over the limit.
        with pytest.raises(sp.CommandError) as info:
            await pool.execute("unencodable", timeout=20)
        assert info.value.message == (
            "cannot send the result: result['value'] is an object, which MessagePack cannot encode"
        )
        got: list[Any] = []
        with pytest.raises(sp.CommandError) as info:
            async with pool.stream("big_chunk_stream", {"size": 2 * limit}, timeout=20) as chunks:
                async for chunk in chunks:
                    got.append(chunk)
        assert got == [b"a", b"b"]
        assert info.value.error_type == "MessageTooLarge"
        assert info.value.message.startswith("cannot send chunk 2: it is ")
        assert f"over the frame limit of {limit} bytes" in info.value.message
        # None of it cost the worker its life, or the pool a protocol error.
        assert pool.workers()[0].pid == pid
        assert (await pool.execute("ping"))["status"] == "ok"
        assert pool.stats()["restarts"] == 0


@pytest.mark.anyio
async def test_an_exception_whose_str_fails_is_a_command_error_of_its_request() -> None:
    async with sp.open_pool(adapter(), size=1, config=CONFIG) as pool:
        pid = pool.workers()[0].pid
        with pytest.raises(sp.CommandError) as info:
            await pool.execute("unprintable_error", timeout=20)
        assert info.value.error_type == "Unprintable"
        assert info.value.message == "<Unprintable: str() failed: RuntimeError: no words for it>"
        assert info.value.traceback is not None
        assert "raise Unprintable()" in info.value.traceback
        assert pool.workers()[0].pid == pid
        assert (await pool.execute("ping"))["status"] == "ok"
        assert pool.stats()["restarts"] == 0


# ---------------------------------------------------------------- 2: a slow handler constructor


@pytest.mark.anyio
async def test_a_slow_handler_constructor_is_bounded_by_worker_init_timeout_alone() -> None:
    slow = adapter("grpc_handlers:SlowInitHandler", env={"SLOW_INIT_SECONDS": "1.5"})
    config = sp.PoolConfig(
        negotiation_timeout=0.2, worker_init_timeout=30.0, shutdown_grace=1.0, kill_grace=1.0
    )
    async with sp.open_pool(slow, size=1, config=config) as pool:
        assert (await pool.execute("ping"))["status"] == "ok"

    # 5 s: time enough for the interpreter to start on a loaded machine, so that the phase
    # that runs out is the constructor's.
    stuck = adapter("grpc_handlers:SlowInitHandler", env={"SLOW_INIT_SECONDS": "120"})
    config = sp.PoolConfig(worker_init_timeout=5.0, shutdown_grace=0.5, kill_grace=0.5)
    with pytest.raises(sp.StartupError) as info:
        async with sp.open_pool(stuck, size=1, config=config):
            pass  # pragma: no cover - never entered
    text = str(info.value)
    assert "worker_init_timeout" in text
    assert "building the handler" in text and "constructor" in text, text


# ---------------------------------------------------------------- 16: a handler that will not import


@pytest.mark.anyio
async def test_a_handler_that_fails_at_import_names_file_line_and_cause() -> None:
    config = sp.PoolConfig(worker_init_timeout=60.0, shutdown_grace=1.0, kill_grace=1.0)
    with pytest.raises(sp.StartupError) as info:
        async with sp.open_pool(adapter("broken_handler:Handler"), size=1, config=config):
            pass  # pragma: no cover - never entered
    text = str(info.value)
    assert "broken_handler.py" in text
    assert "line 12" in text
    assert "FileNotFoundError" in text
    assert "/nonexistent/snakepit-grpc-test/model-weights.bin" in text


# ---------------------------------------------------------------- 7: death with a held stderr


@pytest.mark.anyio
async def test_a_sigkilled_worker_fails_its_calls_at_once_while_a_child_holds_its_output() -> None:
    async with sp.open_pool(adapter(), size=1, config=CONFIG) as pool:
        pid = pool.workers()[0].pid
        assert pid is not None
        sockets = {c.laddr for c in psutil.Process(pid).net_connections(kind="unix") if c.laddr}
        assert len(sockets) == 1, sockets
        directory = os.path.dirname(str(sockets.pop()))
        # The child inherits the worker's stdout and stderr (both the stderr pipe by now).
        child = (await pool.execute("spawn_child"))["pid"]
        try:
            outcome: list[BaseException] = []
            died_at = 0.0

            async def long_call() -> None:
                try:
                    await pool.execute("block", {"seconds": 60}, timeout=60)
                except sp.SnakepitError as exc:
                    outcome.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(long_call)
                while pool.stats()["busy"] != 1:
                    await anyio.sleep(0.01)
                await anyio.sleep(0.1)
                os.kill(pid, signal.SIGKILL)
                died_at = time.monotonic()
            took = time.monotonic() - died_at
            assert len(outcome) == 1 and isinstance(outcome[0], sp.WorkerCrashed), outcome
            assert outcome[0].signal == signal.SIGKILL
            # The bound is the point: about a second, not the call's 60 s timeout.
            assert took < 3.0, f"the call failed {took:.1f} s after the worker died"
            # A fresh worker serves the next call; the dead one's socket directory is removed
            # (it could not remove it itself).
            assert (await pool.execute("getpid", timeout=20))["pid"] != pid
            assert gone(directory)
        finally:
            kill_quietly(child)
        for _ in range(100):
            if not pid_alive(child):
                break
            await anyio.sleep(0.02)
