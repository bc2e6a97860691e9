"""What the command line accepts: adapter specs, durations, sizes, and the pool options
(``--workers``, ``--wire`` and the ``PoolConfig`` fields) shared by run, stream and bench."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
from pathlib import Path

import snakepit_trio as sp

from .._adapters import Wire
from .._config import MAX_SECONDS, validate_size
from ._common import CliError, UsageError

__all__ = [
    "ADAPTER_HELP",
    "CONFIG_FLAGS",
    "byte_size",
    "make_adapter",
    "pool_config",
    "pool_options",
    "pool_size",
    "positive_int",
    "seconds",
]

ADAPTER_HELP = (
    "python | python:MODULE:CLASS | python:FILE.py:CLASS | node | node:FILE.js | "
    "grpc[:MODULE:CLASS] | exec:PROGRAM [ARGS]"
)


def _handler(spec: str, rest: str) -> str | None:
    """The handler of ``python:...`` or ``grpc:...`` adapters (the adapter checks the rest)."""
    if not rest:
        return None
    target, sep, cls = rest.rpartition(":")
    if not sep or not target or not cls:
        kind = spec.partition(":")[0]
        raise UsageError(f"bad adapter {spec!r}: use {kind}:MODULE:CLASS or {kind}:FILE.py:CLASS")
    return rest


def _exec_program(spec: str, program: str) -> str:
    """Check the program of an ``exec:`` adapter up front: a clear line beats a failed start."""
    if os.sep not in program:
        found = shutil.which(program)
        if found is None:
            raise CliError(f"bad adapter {spec!r}: {program!r} is not found on PATH")
        return found
    path = Path(program)
    if not path.exists():
        raise CliError(f"bad adapter {spec!r}: {program!r}: No such file or directory")
    if path.is_dir():
        raise CliError(f"bad adapter {spec!r}: {program!r} is a directory, not a program")
    if not os.access(path, os.X_OK):
        raise CliError(
            f"bad adapter {spec!r}: {program!r} is not executable (Permission denied; "
            f"chmod +x it, or name its interpreter: exec:python3 {program})"
        )
    return program


def make_adapter(spec: str, wire: Wire = "auto") -> sp.Adapter:
    """Build the adapter named by ``spec`` (see ``ADAPTER_HELP``)."""
    kind, _, rest = spec.partition(":")
    try:
        return _make_adapter(spec, kind, rest, wire)
    except (TypeError, ValueError) as exc:  # the adapter refused an argument
        raise UsageError(f"bad adapter {spec!r}: {exc}") from None


def _make_adapter(spec: str, kind: str, rest: str, wire: Wire) -> sp.Adapter:
    if kind == "python":
        return sp.PythonAdapter(_handler(spec, rest), wire=wire)
    if kind == "grpc":
        if wire != "auto":
            raise UsageError("--wire does not apply to the grpc adapter (it speaks protobuf)")
        return sp.GrpcPythonAdapter(_handler(spec, rest))
    if kind == "node":
        node = shutil.which("node")
        if node is None:
            raise CliError("the node adapter needs Node.js: 'node' is not on PATH")
        if rest and not Path(rest).is_file():
            raise UsageError(f"bad adapter {spec!r}: no such file {rest!r}")
        return sp.NodeAdapter(rest or None, node=node, wire=wire)
    if kind == "exec":
        try:
            argv = shlex.split(rest)
        except ValueError as exc:
            raise UsageError(f"bad adapter {spec!r}: {exc}") from None
        if not argv:
            raise UsageError("the exec adapter needs a program: exec:/path/to/program")
        _exec_program(spec, argv[0])
        return sp.Adapter(argv[0], None, argv[1:], wire=wire)
    raise UsageError(f"unknown adapter {spec!r}; use one of: {ADAPTER_HELP}")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def pool_size(text: str) -> int:
    """``--workers``: what ``open_pool`` accepts (a typo like 100000 must not fork away)."""
    size = positive_int(text)
    try:
        return validate_size(size, "--workers")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def seconds(text: str) -> float:
    """A duration: positive and finite, at most a year (``MAX_SECONDS``, as PoolConfig)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= MAX_SECONDS:  # false for NaN too
        raise argparse.ArgumentTypeError(
            f"{text!r} must be a positive number of seconds, at most {MAX_SECONDS:.0f}"
        )
    return value


_SIZE = re.compile(r"(\d+)\s*(?:([kmg])(?:i?b)?|b)?", re.IGNORECASE)


def byte_size(text: str) -> int:
    """A number of bytes: ``65536``, ``64k``, ``16MiB``, ``1G`` (powers of 1024)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in bytes (like 65536 or 16MiB)")
    number, unit = match.groups()
    return int(number) << (10 * " kmg".index(unit.lower()) if unit else 0)


# PoolConfig fields the pool options set: flag --startup-timeout sets startup_timeout.
CONFIG_FLAGS = {
    "startup_timeout": "how long to wait for the workers to start (default 10 s; the "
    "pool starts with those ready by then)",
    "worker_init_timeout": "bound on one worker's start, handler construction included "
    "(default 20 s: raise it for a handler that loads a model)",
    "negotiation_timeout": "how long a worker may take to answer protocol negotiation "
    "(default 5 s)",
    "command_timeout": "default bound on a call when --timeout is not given (default 30 s)",
    "max_frame_size": "largest message either side may send, in bytes: 65536, 16MiB, 1G "
    "(default 64MiB, at most 4GiB - 1)",
}


def pool_options(p: argparse.ArgumentParser, *, workers: int) -> None:
    """Add ``--workers``, ``--wire`` and one option per ``CONFIG_FLAGS`` field to ``p``."""
    p.add_argument(
        "--workers", type=pool_size, default=workers, help=f"pool size (default {workers})"
    )
    p.add_argument(
        "--wire",
        choices=("auto", "json", "msgpack"),
        default="auto",
        help="codec: negotiate (default), or force JSON or MessagePack",
    )
    for name, helptext in CONFIG_FLAGS.items():
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=byte_size if name == "max_frame_size" else seconds,
            metavar="BYTES" if name == "max_frame_size" else "S",
            help=helptext,
        )


def pool_config(ns: argparse.Namespace) -> sp.PoolConfig:
    """The pool's configuration from the command line's pool options."""
    given = {n: getattr(ns, n) for n in CONFIG_FLAGS if getattr(ns, n) is not None}
    try:
        return sp.PoolConfig(**given)
    except (TypeError, ValueError) as exc:  # out of range: say it with the option's name
        text = str(exc)
        for name in given:
            text = text.replace(f"PoolConfig.{name}", "--" + name.replace("_", "-"))
        raise UsageError(text) from None
