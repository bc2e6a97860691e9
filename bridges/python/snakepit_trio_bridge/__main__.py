"""Command line: ``python -m snakepit_trio_bridge [options]`` (also ``snakepit-python-bridge``)."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

USAGE = """\
usage: python -m snakepit_trio_bridge [--mode pool-worker] [--protocol auto|json|msgpack]
                                 [--handler package.module:Class] [--max-concurrency N]
                                 [--transport stdio|grpc] [--listen unix|tcp]

Serve a command handler over stdin/stdout with the snakepit-trio wire protocol.

options:
  --mode pool-worker      the only mode (accepted for Snakepit v0.3 compatibility)
  --protocol PROTOCOL     auto (default: the first frame negotiates), json or msgpack
  --handler MODULE:CLASS  a BaseCommandHandler subclass (default: the generic handler);
                          MODULE may be a path/to/file.py
  --max-concurrency N     requests the pool may pipeline (default: 64)
  --transport TRANSPORT   stdio (default) or grpc: serve gRPC, print "READY <address>"
  --listen unix|tcp       gRPC only: a private Unix socket (default) or 127.0.0.1:<free port>
  -h, --help              show this help and exit
"""

_OPTIONS = {
    "--mode": "mode",
    "--protocol": "protocol",
    "--handler": "handler",
    "--max-concurrency": "max_concurrency",
    "--transport": "transport",
    "--listen": "listen",
}


class UsageError(Exception):
    """Bad command line."""


def parse_args(argv: Sequence[str]) -> dict[str, str]:
    """Parse ``--name value`` and ``--name=value`` options (no argparse: it is slow to import)."""
    options = {"mode": "pool-worker", "protocol": "auto", "handler": "", "max_concurrency": "64"}
    options.update(transport="stdio", listen="unix")
    items = list(argv)
    while items:
        item = items.pop(0)
        if item in ("-h", "--help"):
            options["help"] = "1"
            continue
        name, sep, value = item.partition("=")
        key = _OPTIONS.get(name)
        if key is None:
            raise UsageError(f"unknown argument {item!r}")
        if not sep:
            if not items:
                raise UsageError(f"{name} needs a value")
            value = items.pop(0)
        options[key] = value
    if options["mode"] != "pool-worker":
        raise UsageError(f"--mode must be 'pool-worker', not {options['mode']!r}")
    if options["protocol"] not in ("auto", "json", "msgpack"):
        raise UsageError(f"--protocol must be auto, json or msgpack, not {options['protocol']!r}")
    if options["transport"] not in ("stdio", "grpc"):
        raise UsageError(f"--transport must be stdio or grpc, not {options['transport']!r}")
    if options["listen"] not in ("unix", "tcp"):
        raise UsageError(f"--listen must be unix or tcp, not {options['listen']!r}")
    if not options["max_concurrency"].isdigit() or int(options["max_concurrency"]) < 1:
        raise UsageError("--max-concurrency must be a positive integer")
    return options


def main(argv: Sequence[str] | None = None) -> None:
    """Run a worker until its input ends; exits with the server's status (see ``server``)."""
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        sys.stderr.write(f"{USAGE}\nerror: {exc}\n")
        sys.exit(2)
    if "help" in options:
        sys.stdout.write(USAGE)
        return
    # Either server builds the handler itself, once its transport is set up: the stdio one after
    # answering negotiation (see server.py), the gRPC one once its socket listens.
    if options["transport"] == "grpc":  # the gRPC worker: see grpc_server.py
        from .grpc_server import serve

        concurrency = int(options["max_concurrency"])
        _exit(
            serve(options["handler"] or None, listen=options["listen"], max_concurrency=concurrency)
        )
        return
    from .server import ProtocolHandler

    server = ProtocolHandler(
        options["handler"] or None,
        options["protocol"],
        max_concurrency=int(options["max_concurrency"]),
    )
    _exit(server.run())


def _exit(code: int) -> None:
    """Exit now if a handler left non-daemon threads running (they would hang the exit)."""
    sys.stderr.flush()
    if code != 0 or _lingering_threads():
        os._exit(code)
    sys.exit(code)


def _lingering_threads() -> bool:
    threading = sys.modules.get("threading")
    if threading is None:
        return False
    main_thread = threading.main_thread()
    return any(
        t.is_alive() and not t.daemon and t is not main_thread for t in threading.enumerate()
    )


if __name__ == "__main__":
    main()
