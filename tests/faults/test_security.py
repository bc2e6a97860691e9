"""Security properties (issue 10; docs/threat-model.md says why each matters).

- A worker is started from an argument vector, never through a shell.
- Its environment is explicit: with ``inherit_env=False`` it gets what was asked for and the
  pool's own ``SNAKEPIT_*`` variables, nothing of the parent's.
- Nothing a worker sends is unpickled or evaluated: the pool-side sources contain no pickle,
  marshal, eval or exec at all.
- Session ids are validated before anything is sent.
- Nothing listens on a network interface by default.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import anyio
import psutil
import pytest
from faultkit import BOUND, FAULT_CONFIG, FaultKit

import snakepit_trio as sp

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
JSON_ONLY_BRIDGE = ROOT / "tests" / "standins" / "v03_generic_bridge.py"
SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "busybox"}
POOL_ENV = {
    "SNAKEPIT_RUN_ID",
    "SNAKEPIT_WORKER_ID",
    "SNAKEPIT_LIFELINE_FD",
    "SNAKEPIT_LIFELINE_GRACE",
    "SNAKEPIT_SESSION_TTL",
    "SNAKEPIT_HEARTBEAT_INTERVAL",
}


def proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if item)
    return {k.decode(): v.decode() for k, v in pairs}


async def test_worker_runs_from_an_argv_never_a_shell(tmp_path: Path) -> None:
    planted = tmp_path / "pwned"
    hostile_arg = f"; touch {planted}; $(touch {planted}) `touch {planted}` | cat > {planted}"
    argv_tail = ["--mode", "pool-worker", hostile_arg, "$HOME", "*"]
    adapter = sp.Adapter(sys.executable, JSON_ONLY_BRIDGE, argv_tail, wire="json", cwd=tmp_path)
    with anyio.fail_after(BOUND):
        async with sp.open_pool(adapter, size=1, config=FAULT_CONFIG) as pool:
            seen = await pool.execute("whoami")
            worker = psutil.Process(seen["pid"])
            cmdline = worker.cmdline()
            chain = [worker, *worker.parents()]
            names = [p.name() for p in chain[: chain.index(psutil.Process()) + 1]]
    # The bridge received every argument verbatim: nothing was expanded or split.
    assert seen["argv"] == [str(JSON_ONLY_BRIDGE), *argv_tail]
    assert cmdline == [sys.executable, str(JSON_ONLY_BRIDGE), *argv_tail]
    # The pool spawned it directly: its parent is this process, with no shell in between.
    assert seen["ppid"] == os.getpid()
    assert not SHELLS & set(names), f"a shell in the worker's parent chain: {names}"
    assert not planted.exists()


async def test_environment_is_explicit_without_inheritance(
    kit: FaultKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CANARY_SECRET", "must-not-leak")
    monkeypatch.setenv("SNAKEPIT_CANARY", "must-not-leak-either")
    asked = {"ONLY_THIS": "1", "AND_THIS": "two words"}
    adapter = kit.adapter(env=asked, inherit_env=False)
    with anyio.fail_after(BOUND):
        async with sp.open_pool(adapter, size=1, config=FAULT_CONFIG) as pool:
            pid = (await pool.execute("whoami"))["pid"]
            env = proc_environ(pid)
    asked_with_record = {**asked, "STANDIN_RECORD": str(kit.record)}
    assert {k: env[k] for k in asked_with_record} == asked_with_record
    extra = set(env) - set(asked_with_record)
    assert extra <= POOL_ENV, f"variables nobody asked for: {sorted(extra - POOL_ENV)}"
    assert {"SNAKEPIT_RUN_ID", "SNAKEPIT_WORKER_ID"} <= extra
    assert env["SNAKEPIT_WORKER_ID"] == "0"


async def test_worker_inherits_no_file_descriptors_but_its_pipes_and_lifeline(
    kit: FaultKit, tmp_path: Path
) -> None:
    with (tmp_path / "parent-secret").open("w") as parent_file:  # open in the parent
        assert not os.get_inheritable(parent_file.fileno())
        os.set_inheritable(parent_file.fileno(), True)  # even an inheritable one stays out
        with anyio.fail_after(BOUND):
            async with sp.open_pool(kit.adapter(), size=1, config=FAULT_CONFIG) as pool:
                seen = await pool.execute("whoami")
    assert seen["fds"] == sorted({0, 1, 2, int(seen["lifeline_fd"])})


async def test_environment_is_merged_over_the_parents_by_default(
    kit: FaultKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INHERITED_VALUE", "from-parent")
    monkeypatch.setenv("OVERRIDDEN_VALUE", "from-parent")
    adapter = kit.adapter(env={"OVERRIDDEN_VALUE": "from-adapter"})
    with anyio.fail_after(BOUND):
        async with sp.open_pool(adapter, size=1, config=FAULT_CONFIG) as pool:
            env = proc_environ((await pool.execute("whoami"))["pid"])
    assert env["INHERITED_VALUE"] == "from-parent"
    assert env["OVERRIDDEN_VALUE"] == "from-adapter"


# --------------------------------------------------------------------------- no eval, no pickle

#: Modules that turn bytes into code or arbitrary objects.
UNSAFE_MODULES = {
    "pickle",
    "_pickle",
    "cPickle",
    "marshal",
    "shelve",
    "dill",
    "cloudpickle",
    "jsonpickle",
}
#: Builtins that run text as code.
UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}
#: Calls that start a shell.
SHELL_CALLS = {
    ("os", "system"),
    ("os", "popen"),
    ("subprocess", "getoutput"),
    ("subprocess", "getstatusoutput"),
}


#: Reviewed uses: (file, what). Each must take nothing from a worker.
ALLOWED = {
    # `snakepit-trio doctor` imports a fixed list of module names to report what is installed.
    ("snakepit_trio/cli.py", "__import__()"),
}


def unsafe_uses(source: str, filename: str) -> list[str]:
    """Every import of an unsafe module, call of eval/exec/compile, shell call or shell=True."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [
                f"{where} import {a.name}"
                for a in node.names
                if a.name.split(".")[0] in UNSAFE_MODULES
            ]
        elif (
            isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES
        ):
            found.append(f"{where} from {node.module} import")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in UNSAFE_CALLS:
                found.append(f"{where} {func.id}()")
            elif (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and (func.value.id, func.attr) in SHELL_CALLS
            ):
                found.append(f"{where} {func.value.id}.{func.attr}()")
            for keyword in node.keywords:
                if keyword.arg == "shell" and not (
                    isinstance(keyword.value, ast.Constant) and keyword.value.value is False
                ):
                    found.append(f"{where} shell=")
    return found


def pool_side_sources() -> list[Path]:
    """The code that reads what workers send: the library and the sans-IO protocol."""
    library = sorted((ROOT / "snakepit_trio").rglob("*.py"))
    protocol = sorted(
        (ROOT / "bridges" / "python" / "snakepit_trio_bridge" / "protocol").rglob("*.py")
    )
    return library + protocol


def test_the_scanner_finds_what_it_looks_for() -> None:
    planted = (
        "import pickle\nfrom marshal import loads\nimport os, subprocess\n"
        "eval(data)\nexec(data)\nos.system(cmd)\nsubprocess.run(cmd, shell=True)\n"
        "subprocess.run(['ls'], shell=False)\n"
    )
    assert len(unsafe_uses(planted, "planted.py")) == 6


def test_no_pickle_eval_or_shell_in_pool_side_code() -> None:
    sources = pool_side_sources()
    assert len(sources) >= 10, "the scan found too few files to mean anything"
    found = [
        hit
        for path in sources
        for hit in unsafe_uses(path.read_text(), str(path.relative_to(ROOT)))
    ]
    unexpected = [hit for hit in found if (hit.split(":")[0], hit.split(" ", 1)[1]) not in ALLOWED]
    assert unexpected == []


# --------------------------------------------------------------------------- session ids

BAD_SESSION_IDS = [
    "",
    "x" * 129,
    "has space",
    "line\nbreak",
    "nul\0byte",
    "semi;colon",
    "ümlaut",
    None,
    42,
    b"bytes",
]


async def test_bad_session_ids_are_refused_before_anything_is_sent(kit: FaultKit) -> None:
    with anyio.fail_after(BOUND):
        async with sp.open_pool(kit.adapter(), size=1, config=FAULT_CONFIG) as pool:
            for bad in BAD_SESSION_IDS:
                with pytest.raises(sp.SessionError):
                    await pool.execute_in_session(bad, "echo", {})  # type: ignore[arg-type]
                if bad is not None:  # session_id=None is a stream without a session
                    with pytest.raises(sp.SessionError):
                        async with pool.stream("echo", session_id=bad):  # type: ignore[arg-type]
                            pass  # pragma: no cover
                with pytest.raises(sp.SessionError):
                    pool.sessions.create_session(bad)  # type: ignore[arg-type]
            longest = "a" * 128
            assert (await pool.execute_in_session(longest, "echo", {}))["args"] == {
                "session_id": longest
            }
            assert pool.stats()["sessions"] == 1
    commands = [f.get("command") for f in kit.frames() if f["phase"] == "serve"]
    assert commands == ["ping", "echo"]


# --------------------------------------------------------------------------- no listening socket


def network_sockets(process: psutil.Process) -> list[str]:
    """Every IPv4/IPv6 socket of ``process`` (listening or not)."""
    return [
        f"pid {process.pid} ({process.name()}): {conn.family.name} {conn.status} {conn.laddr}"
        for conn in process.net_connections(kind="inet")
    ]


def bound_unix_paths(process: psutil.Process) -> set[str]:
    """Filesystem paths of the Unix sockets ``process`` has bound (socketpairs have none)."""
    return {
        conn.laddr
        for conn in process.net_connections(kind="unix")
        if isinstance(conn.laddr, str) and conn.laddr.startswith("/")
    }


def is_private(path: Path) -> bool:
    info = path.stat()
    return info.st_uid == os.getuid() and not info.st_mode & 0o077


ADAPTERS = [
    pytest.param(lambda kit: kit.adapter(), id="generic-adapter"),
    pytest.param(lambda kit: sp.PythonAdapter(), id="python-bridge"),
    pytest.param(
        lambda kit: sp.NodeAdapter(),
        id="node-bridge",
        marks=[
            pytest.mark.node,
            pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed"),
        ],
    ),
    pytest.param(
        lambda kit: sp.GrpcPythonAdapter(),
        id="grpc-bridge",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("grpclib") is None, reason="grpclib is not installed"
        ),
    ),
]


@pytest.mark.parametrize("make_adapter", ADAPTERS)
async def test_nothing_listens_on_a_network_interface(kit: FaultKit, make_adapter: object) -> None:
    adapter = make_adapter(kit)  # type: ignore[operator]
    me = psutil.Process()
    before = network_sockets(me)
    with anyio.fail_after(BOUND):
        async with sp.open_pool(adapter, size=2, config=FAULT_CONFIG) as pool:
            await pool.execute("ping")
            workers = [psutil.Process(w.pid) for w in pool.workers() if w.pid is not None]
            assert len(workers) == 2
            processes = [me, *workers, *(c for w in workers for c in w.children(recursive=True))]
            found = [line for p in processes for line in network_sockets(p)]
            unix_paths = {path for p in workers for path in bound_unix_paths(p)}
            private = {
                path: is_private(Path(path)) and is_private(Path(path).parent)
                for path in unix_paths
            }
    assert found == before
    # The gRPC bridge serves on a Unix socket: only in a directory nobody else can enter.
    if isinstance(adapter, sp.GrpcPythonAdapter):
        assert len(unix_paths) == 2
    else:
        assert unix_paths == set()
    assert all(private.values()), f"Unix sockets others can reach: {private}"
