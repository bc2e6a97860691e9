"""``doctor``: what works on this machine (Python, the dependencies, Node.js, the gRPC extra,
the socket directory, real workers, orphans) and how to fix what does not."""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import anyio

import snakepit_trio as sp

from ._common import EXIT_ERROR, EXIT_OK, PROG, Style, describe, dist_version, dumps, ms, run_async

__all__ = ["Check", "cmd_doctor"]


class Check(NamedTuple):
    """One line of the report; a failed ``essential`` check makes the doctor exit 1."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    essential: bool = True


def _check_import(name: str, dist: str, *, essential: bool, fix: str) -> Check:
    try:
        importlib.import_module(name)  # a name from our fixed list, never from input
    except Exception as exc:
        return Check(name, False, f"cannot import: {describe(exc)}", fix, essential)
    return Check(name, True, dist_version(dist), essential=essential)


def _check_socket_dir() -> Check:
    base = Path(tempfile.gettempdir())  # where gRPC workers make their socket directories
    fix = f"make {base} writable, or point TMPDIR at a writable directory with a short path"
    try:
        with tempfile.TemporaryDirectory(prefix="snakepit-", dir=base) as tmp:
            path = os.path.join(tmp, "doctor.sock")
            if len(path.encode()) > 100:
                return Check(
                    "socket dir", False, f"{base} is too deep for Unix sockets", fix, False
                )
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.bind(path)
        mode = f"{os.stat(base).st_mode & 0o7777:o}"
    except OSError as exc:
        return Check("socket dir", False, f"{base}: {exc}", fix, False)
    return Check(
        "socket dir", True, f"{base} (mode {mode}; Unix sockets bind there)", essential=False
    )


# Where the Node bridge looks for the package (loadMsgpack in snakepit_bridge.js): the
# node_modules folders beside the bridge script and above it, NODE_PATH, then those of the
# --module file's folder and of the worker's working directory. Beside an installed bridge
# is inside site-packages, which pip owns: the user's project is the place to install it.
# `npm install -g` puts packages where require() does not look, hence NODE_PATH.
_MSGPACK_FIX = (
    "run `npm install @msgpack/msgpack` in your project directory (the folder of your "
    "NodeAdapter script, or the workers' working directory, or a folder above either); or "
    'install it globally and give the workers NODE_PATH="$(npm root -g)"'
)
# Asks the bridge itself (its own lookup, from this working directory), then says where the
# package was found; prints nothing when it was not.
_MSGPACK_PROBE = """
const path = require('node:path'), { createRequire } = require('node:module');
const bridge = process.argv[1], name = '@msgpack/msgpack';
if (require(bridge).loadMsgpack([process.cwd()])) {
  let where = 'found';
  for (const from of [bridge, path.join(process.cwd(), 'noop.js')]) {
    try {
      const entry = createRequire(from).resolve(name), folder = path.join('node_modules', name);
      where = 'found in ' + entry.slice(0, entry.lastIndexOf(folder) + folder.length);
      break;
    } catch {}
  }
  process.stdout.write(where);
}
"""


def _find_msgpack(node: str, bridge: Path) -> str | None:
    """Where the Node bridge finds @msgpack/msgpack when started from here, or None."""
    try:
        found = subprocess.run(
            [node, "-e", _MSGPACK_PROBE, str(bridge)], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return found or None


def _check_node() -> list[Check]:
    node = shutil.which("node")
    if node is None:
        return [
            Check("node", False, "not on PATH", "install Node.js 18+ to use NodeAdapter", False)
        ]
    try:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return [Check("node", False, f"{node} does not run: {exc}", "reinstall Node.js 18+", False)]
    major = version.lstrip("v").split(".")[0]
    checks = [
        Check(
            "node",
            major.isdigit() and int(major) >= 18,
            f"{version} ({node})",
            "NodeAdapter needs Node.js 18 or newer",
            False,
        )
    ]
    try:
        bridge = sp.node_bridge_path()
    except FileNotFoundError as exc:
        return [*checks, Check("node bridge", False, str(exc), "reinstall snakepit-trio", False)]
    found = _find_msgpack(node, bridge)
    checks.append(
        Check(
            "@msgpack/msgpack",
            found is not None,
            f"{found}: the Node bridge speaks MessagePack"
            if found
            else "missing: the Node bridge falls back to JSON (bytes as base64)",
            _MSGPACK_FIX,
            False,
        )
    )
    return checks


async def _check_worker(name: str, adapter: sp.Adapter, *, essential: bool, fix: str) -> Check:
    began = time.perf_counter()
    config = sp.PoolConfig(startup_timeout=20, worker_init_timeout=20)
    try:
        with anyio.fail_after(30):
            async with sp.open_pool(adapter, size=1, config=config) as pool:
                ready = time.perf_counter() - began
                t = time.perf_counter()
                await pool.execute("ping", timeout=10)
                rtt = time.perf_counter() - t
                wire = pool.workers()[0].protocol
    except (sp.SnakepitError, OSError, TimeoutError) as exc:
        return Check(name, False, describe(exc), fix, essential)
    return Check(
        name, True, f"ready in {ms(ready)}, ping {ms(rtt)}, wire {wire}", essential=essential
    )


def _check_sweep() -> Check:
    try:
        orphans = sp.sweep_orphans(dry_run=True)
    except Exception as exc:
        return Check("orphans", False, f"the sweep failed: {describe(exc)}", "", False)
    return Check(
        "orphans",
        not orphans,
        f"{len(orphans)} orphaned workers of dead pools" if orphans else "none",
        f"{PROG} sweep --kill",
        False,
    )


def cmd_doctor(ns: argparse.Namespace) -> int:
    checks = [
        # Reported, not judged: pip installs us on 3.11+ only, and on an older Python run from
        # a checkout the command line dies on BaseExceptionGroup before this report prints.
        Check("python", True, f"{sys.version.split()[0]} ({sys.executable})"),
        Check("snakepit-trio", True, f"{sp.__version__} ({Path(sp.__file__).parent})"),
    ]
    reinstall = "pip install --force-reinstall snakepit-trio"
    for module, dist in (
        ("trio", "trio"),
        ("anyio", "anyio"),
        ("msgpack", "msgpack"),
        ("attrs", "attrs"),
    ):
        checks.append(_check_import(module, dist, essential=True, fix=reinstall))
    checks.append(
        _check_import("snakepit_trio_bridge", "snakepit-trio", essential=True, fix=reinstall)
    )
    grpc_fix = "pip install 'snakepit-trio[grpc]' (only for the gRPC adapter)"
    checks.append(_check_import("grpclib", "grpclib", essential=False, fix=grpc_fix))
    checks.append(_check_import("betterproto2", "betterproto2", essential=False, fix=grpc_fix))
    grpc_ok = checks[-1].ok and checks[-2].ok
    checks.append(_check_socket_dir())
    node_checks = _check_node()
    checks += node_checks

    async def workers() -> list[Check]:
        found = [
            await _check_worker(
                "python worker",
                sp.PythonAdapter(),
                essential=True,
                fix=f"run `{sys.executable} -m snakepit_trio_bridge --help`; `{PROG} --debug doctor` shows its stderr",
            )
        ]
        if node_checks[0].ok:
            found.append(
                await _check_worker(
                    "node worker",
                    sp.NodeAdapter(node=shutil.which("node") or "node"),
                    essential=False,
                    fix=f"`{PROG} --debug doctor` shows the bridge's stderr",
                )
            )
        if grpc_ok:
            found.append(
                await _check_worker(
                    "grpc worker",
                    sp.GrpcPythonAdapter(),
                    essential=False,
                    fix=f"`{PROG} --debug doctor` shows the worker's stderr",
                )
            )
        return found

    checks += run_async(workers)
    checks.append(_check_sweep())
    failed = [c for c in checks if not c.ok and c.essential]
    if ns.json:
        print(dumps({"ok": not failed, "checks": [c._asdict() for c in checks]}))
        return EXIT_ERROR if failed else EXIT_OK
    style = Style(sys.stdout)
    print(style.bold(f"{PROG} doctor"))
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = (
            style.good("ok  ")
            if c.ok
            else (style.bad("FAIL") if c.essential else style.warn("warn"))
        )
        print(f"  {mark}  {c.name:<{width}}  {c.detail}")
        if not c.ok and c.fix:
            print(f"        {'':<{width}}  {style.dim('fix: ' + c.fix)}")
    warnings = sum(1 for c in checks if not c.ok and not c.essential)
    if failed:
        print(style.bad(f"{len(failed)} essential check(s) failed") + f", {warnings} warning(s)")
        return EXIT_ERROR
    print(
        style.good("everything essential works") + f", {warnings} warning(s) about optional parts"
    )
    return EXIT_OK
