"""The ``snakepit-trio`` command line (also ``python -m snakepit_trio``).

Subcommands: ``demo`` (a tour of the pool in a few seconds), ``run`` and ``stream`` (one command
on any adapter), ``bench`` (a quick latency and throughput table), ``doctor`` (what works on this
machine and how to fix what does not) and ``sweep`` (orphaned workers of dead pools).

Exit codes: 0 success, 1 error, 2 bad usage, 130 interrupted (Ctrl-C). Errors are one line on
stderr, ``snakepit-trio: error: ...``; ``--debug`` adds tracebacks and the workers' log.
Colour and progress bars appear only on a terminal.

This module holds ``main`` and the argparse tree; each family of subcommands lives in a module
of its own (``_run``, ``_demo``, ``_bench``, ``_doctor``, ``_sweep``), on top of ``_options``
(adapter specs and the pool options) and ``_common`` (errors, output, exit codes).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

import snakepit_trio as sp

from ._bench import cmd_bench
from ._common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    PROG,
    Style,
    Terminated,
    UsageError,
    describe,
    dumps,
)
from ._demo import cmd_demo
from ._doctor import cmd_doctor
from ._options import ADAPTER_HELP, pool_options, pool_size, positive_int, seconds
from ._run import cmd_run, cmd_stream
from ._sweep import cmd_sweep

__all__ = ["main"]


# ---------------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks and the workers' log on stderr",
    )
    parser = _Parser(
        prog=PROG,
        parents=[common],
        description="A pool of long-lived worker processes (Python, Node.js, any program "
        "speaking the protocol) for trio and anyio.",
        epilog="exit codes: 0 ok, 1 error, 2 bad usage, 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {sp.__version__}")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="a few-second tour of the pool",
        description="A few-second tour of the pool: Python workers started concurrently, a "
        "ping, parallel calls, an error, bytes, a session, a stream and a cancelled one, the "
        "Node bridge when node is there, then the pool's statistics. Needs nothing but this "
        "package.",
    )
    demo.add_argument("--workers", type=pool_size, help="pool size (default: 2 per CPU, 2 to 4)")
    demo.add_argument("--no-node", action="store_true", help="skip the Node.js part")
    demo.set_defaults(handler=cmd_demo)

    for name, helptext, what, handler in (
        ("run", "run one command and print its JSON result", "print its result", cmd_run),
        (
            "stream",
            "run a streaming command, printing each chunk as a JSON line",
            "print each chunk as a JSON line",
            cmd_stream,
        ),
    ):
        p = sub.add_parser(
            name,
            parents=[common],
            help=helptext,
            description=f"Start a pool of ADAPTER workers, run COMMAND on it and {what}. "
            'Bytes travel as {"__bytes__": base64} both ways. What the workers write on '
            "stderr (a handler's print()) shows on stderr.",
        )
        p.add_argument("adapter", metavar="ADAPTER", help=ADAPTER_HELP)
        p.add_argument("command", metavar="COMMAND", help="the command name, e.g. ping")
        p.add_argument(
            "args_json",
            metavar="ARGS_JSON",
            nargs="?",
            help="the arguments as a JSON object ('-' reads stdin)",
        )
        pool_options(p, workers=1)
        p.add_argument("--timeout", type=seconds, help="bound on the whole call, in seconds")
        p.add_argument("--session", metavar="ID", help="run in this session (affinity)")
        p.add_argument(
            "--json", action="store_true", help="machine output: one JSON document a line"
        )
        p.set_defaults(handler=handler)

    bench = sub.add_parser(
        "bench",
        parents=[common],
        help="a quick latency and throughput table",
        description="Time COMMAND on a fresh pool: sequential requests (latency), then a "
        "burst from concurrent callers (throughput). A quick look; the full suite with "
        "baselines is bench/run.py in the source tree.",
    )
    bench.add_argument("--adapter", default="python", metavar="ADAPTER", help=ADAPTER_HELP)
    pool_options(bench, workers=2)
    bench.add_argument("--command", default="echo", help="the command to time (default: echo)")
    bench.add_argument("--args-json", default='{"n": 1}', metavar="JSON", help="its arguments")
    bench.add_argument("--requests", type=positive_int, default=1000, help="sequential requests")
    bench.add_argument("--burst", type=positive_int, default=4000, help="requests in the burst")
    bench.add_argument("--concurrency", type=positive_int, default=16, help="callers in the burst")
    bench.add_argument("--json", action="store_true", help="machine output")
    bench.set_defaults(handler=cmd_bench)

    doctor = sub.add_parser(
        "doctor",
        parents=[common],
        help="check this machine; exit 1 if something essential fails",
        description="Check Python, the dependencies, Node.js and its MessagePack package, the "
        "gRPC extra and the socket directory, then start real Python, Node and gRPC workers. "
        "Each failed check says how to fix it; exit 1 if something essential fails.",
    )
    doctor.add_argument("--json", action="store_true", help="machine output")
    doctor.set_defaults(handler=cmd_doctor)

    sweep = sub.add_parser(
        "sweep",
        parents=[common],
        help="find (and with --kill, kill) orphaned workers of dead pools",
        description="List worker processes whose pool is gone (a pool SIGKILLed before its "
        "workers' lifeline fired), verified by their run id and start time; --kill kills them.",
    )
    sweep.add_argument("--kill", action="store_true", help="kill them (default: a dry run)")
    sweep.add_argument(
        "--all-users",
        action="store_true",
        help="other users' processes too (default: only your own; needs root to kill them)",
    )
    sweep.add_argument("--json", action="store_true", help="machine output")
    sweep.set_defaults(handler=cmd_sweep)
    return parser


# ---------------------------------------------------------------------------------- main


def _leaf(exc: BaseException) -> BaseException:
    """The exception inside single-member groups; KeyboardInterrupt if a group holds one."""
    while isinstance(exc, BaseExceptionGroup):
        interrupted = exc.subgroup(KeyboardInterrupt)
        if interrupted is not None and len(exc.exceptions) > 1:
            return KeyboardInterrupt()
        if len(exc.exceptions) != 1:
            return exc
        exc = exc.exceptions[0]
    return exc


def _error(message: str) -> None:
    style = Style(sys.stderr)
    sys.stderr.write(f"{PROG}: {style.bad('error:')} {message}\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        ns = build_parser().parse_args(argv)
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    debug: bool = getattr(ns, "debug", False)
    if debug:
        logging.basicConfig(
            level=logging.DEBUG,
            stream=sys.stderr,
            format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        )
    try:
        code: int = ns.handler(ns)
        return code
    except BaseException as raised:
        failure = _leaf(raised)
        if isinstance(failure, KeyboardInterrupt):
            sys.stderr.write(f"\n{PROG}: interrupted\n")
            return EXIT_INTERRUPTED
        if isinstance(failure, Terminated):
            sys.stderr.write(f"{PROG}: terminated\n")
            return EXIT_TERMINATED
        if isinstance(failure, BrokenPipeError):  # stdout closed early, e.g. `| head`
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_ERROR
        if isinstance(failure, SystemExit):
            raise
        if debug:
            traceback.print_exception(raised)
        _error(describe(failure, debug=debug))
        if getattr(ns, "json", False) and not isinstance(failure, UsageError):
            print(dumps({"error": {"type": type(failure).__name__, "message": describe(failure)}}))
        return EXIT_USAGE if isinstance(failure, UsageError) else EXIT_ERROR
