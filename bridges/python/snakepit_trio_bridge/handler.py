"""Command handlers: the code a worker runs for each request.

Writing a handler
=================

Subclass :class:`BaseCommandHandler` and register your commands in ``_register_commands``::

    from snakepit_trio_bridge import BaseCommandHandler, current_context

    class MyHandler(BaseCommandHandler):
        def _register_commands(self):
            self.register_command("add", self.handle_add)
            self.register_command("count", self.handle_count)

        def handle_add(self, args):            # a plain function: its return value is the result
            return {"sum": args["a"] + args["b"]}

        def handle_count(self, args):          # a generator: a streaming command
            for i in range(args.get("n", 3)):
                yield {"i": i}                 # each value is one chunk
            return {"done": True}              # the final result of the stream

Start a worker with it: ``python -m snakepit_trio_bridge --handler mypkg.mymod:MyHandler`` (the pool
does this for ``PythonAdapter(handler="mypkg.mymod:MyHandler")``). The class is instantiated
once per worker process, so it may keep state (models, caches) between requests.

The worker imports and builds the handler only after it has answered the pool's protocol
negotiation, so a slow constructor (a model load) is bounded by the pool's
``worker_init_timeout`` (20 s by default), not by its short ``negotiation_timeout``. If the
import or the constructor raises, the worker prints the whole traceback on stderr and answers
the pool's first request with the exception and the file and line that raised it; the pool's
``StartupError`` shows both.

Rules:

- A handler takes one argument, ``args`` (the request's argument map), and returns something
  the wire can carry: maps, lists, strings, numbers, booleans, ``None`` and ``bytes``. For
  anything else (a ``datetime``, a ``Decimal``, a ``set``, a NumPy scalar, your own class)
  override :meth:`BaseCommandHandler.default` to say what to send instead; without it such a
  result fails its request with an error naming the value's path
  (``cannot send the result: result['rows'][3] is a decimal.Decimal, which MessagePack cannot
  encode``).
- It may be ``def`` or ``async def``, a generator or an async generator. Async handlers run
  on an asyncio event loop that the worker creates the first time one is needed.
- A generator streams when the caller asks for a stream (each value becomes a chunk, the
  ``return`` value the final result); otherwise its values are returned as one list.
- Raising an exception fails the request: the caller gets its message, type name and
  traceback. Returning ``{"status": "error", ...}`` is a *successful* result (v0.3 style).
- Requests run one at a time, in arrival order, in the main thread.
- Cancellation is cooperative. Long handlers should call ``current_context().check_cancelled()``
  (or ``self.context.check_cancelled()``) now and then: it raises
  :class:`~snakepit_trio_bridge.context.Cancelled` once the pool cancelled the request. Between two
  chunks of a stream the worker checks by itself, and closes the generator (its ``finally``
  blocks run). Async handlers are cancelled like any asyncio task.
- ``print()`` is safe: the worker's stdout carries frames, so ``sys.stdout`` and file
  descriptor 1 are pointed at stderr before any handler runs.
- The built-in commands ``ping``, ``echo``, ``compute`` and ``info`` are always there; register
  a command of the same name to override one. They touch no file, no environment variable and
  no other process, and bound their work (``compute`` refuses an integer power of more than
  65536 bits).
- A command the handler does not have is answered ``Unknown command: 'name'`` with the close
  matches, if any (``(did you mean: compute?)``).
"""

from __future__ import annotations

import os
import sys
import time

from .context import RequestContext, current_context

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, TypeAlias

    CommandFunction: TypeAlias = Callable[[dict[str, Any]], Any]

__all__ = [
    "BaseCommandHandler",
    "load_failure_message",
    "load_handler",
    "unknown_command_message",
]

_OPERATIONS = ("add", "subtract", "multiply", "divide", "power", "sqrt")
# ``compute power`` refuses integer results longer than this many bits (a caller's
# ``2 ** 10**12`` would take the worker's memory and minutes of CPU).
_MAX_POWER_BITS = 1 << 16


class BaseCommandHandler:
    """Base class of command handlers; provides ``ping``, ``echo``, ``compute`` and ``info``.

    Override :meth:`default` to send values the codec cannot encode (dates, decimals, sets).
    """

    #: Reported by ``ping`` as ``bridge_type``.
    bridge_type = "python"

    def __init__(self) -> None:
        self.start_time: float = time.time()
        self.request_count: int = 0
        self._commands: dict[str, CommandFunction] = {}
        self.register_command("ping", self.handle_ping)
        self.register_command("echo", self.handle_echo)
        self.register_command("compute", self.handle_compute)
        self.register_command("info", self.handle_info)
        self._register_commands()

    def _register_commands(self) -> None:
        """Register this handler's commands with :meth:`register_command` (override this)."""

    def register_command(self, name: str, function: CommandFunction) -> None:
        """Make ``function(args)`` serve the command ``name`` (replacing any previous one)."""
        if not isinstance(name, str) or not name:
            raise ValueError("a command name must be a non-empty string")
        if not callable(function):
            raise TypeError(f"the handler of {name!r} is not callable")
        self._commands[name] = function

    @property
    def commands(self) -> Mapping[str, CommandFunction]:
        """The registered commands, name to function (a read-only view)."""
        from types import MappingProxyType

        return MappingProxyType(self._commands)

    def default(self, value: Any) -> Any:
        """What to send instead of ``value``, which the wire's codec cannot encode (override
        this; the base method refuses everything).

        Called while a result or a stream chunk is encoded, for each value at any depth that
        the codec has no form of its own for: a ``datetime``, a ``Decimal``, a ``set`` or
        ``frozenset``, a NumPy integer or array, an instance of your own class. Return a
        value the codec can encode (values inside a returned list or map get the same
        treatment; the returned value itself is not passed to ``default`` again), or raise
        ``TypeError`` to refuse: the request then fails with an error that names the path
        and type of the value (``cannot send the result: result['price'] is a
        decimal.Decimal, which JSON cannot encode (default() refused it: ...)``)::

            def default(self, value):
                if isinstance(value, (datetime.date, datetime.time)):
                    return value.isoformat()
                if isinstance(value, decimal.Decimal):
                    return str(value)
                if isinstance(value, (set, frozenset)):
                    return sorted(value)
                return super().default(value)   # refuse the rest

        The same meaning as ``json.JSONEncoder.default`` and msgpack's ``default=``, under
        both codecs (JSON and MessagePack) and in the gRPC worker. Values that encode as they
        are never reach it: ``None``, booleans, numbers (``float`` subclasses such as
        ``numpy.float64`` included), strings, ``bytes``, lists, tuples and maps. The codecs
        differ in three cases: a ``set`` that ``default`` refuses still travels as a list
        under JSON (it always has); MessagePack asks about an integer beyond 64 bits (JSON
        writes it as it is); JSON asks nothing about map keys (they must be strings, numbers,
        booleans or ``None``). It runs while the response is encoded, after the command
        returned (perhaps twice, to find the culprit of an error): keep it a pure conversion.
        """
        raise TypeError(f"{_type_name(value)} has no wire form (override default() to give one)")

    def get_command(self, name: str) -> CommandFunction | None:
        """The function serving ``name``, or None."""
        return self._commands.get(name)

    def get_supported_commands(self) -> list[str]:
        """Names of the registered commands, in registration order."""
        return list(self._commands)

    @property
    def context(self) -> RequestContext:
        """The context of the request being served (see :func:`current_context`)."""
        return current_context()

    def process_command(self, command: str, args: dict[str, Any]) -> Any:
        """Run ``command`` synchronously (Snakepit v0.3 compatibility; servers do more)."""
        function = self._commands.get(command)
        if function is None:
            raise KeyError(unknown_command_message(command, list(self._commands)))
        self.request_count += 1
        return function(args)

    # ----------------------------------------------------------------- built-in commands

    def handle_ping(self, args: dict[str, Any]) -> dict[str, Any]:
        """Health check: who we are and how long we have been up; echoes the arguments."""
        now = time.time()
        return {
            "status": "ok",
            "bridge_type": self.bridge_type,
            "uptime": now - self.start_time,
            "requests_handled": self.request_count,
            "timestamp": now,
            "python_version": sys.version,
            "worker_id": args.get("worker_id", "unknown"),
            "echo": args,
        }

    def handle_echo(self, args: dict[str, Any]) -> dict[str, Any]:
        """Return the arguments unchanged (bytes included)."""
        return {"status": "ok", "echoed": args, "timestamp": time.time()}

    def handle_compute(self, args: dict[str, Any]) -> dict[str, Any]:
        """Arithmetic on the numbers ``a`` and ``b``: add, subtract, multiply, divide, power,
        sqrt (of a).

        A bad operation raises ``ValueError``, an operand that is not a number ``TypeError``;
        dividing by zero raises ``ZeroDivisionError``. An integer power whose result would
        exceed 65536 bits raises ``ValueError`` (it would cost unbounded memory and CPU).
        """
        operation = args.get("operation", "add")
        a = _operand(args, "a")
        b = _operand(args, "b")
        result: Any
        if operation == "add":
            result = a + b
        elif operation == "subtract":
            result = a - b
        elif operation == "multiply":
            result = a * b
        elif operation == "divide":
            result = a / b
        elif operation == "power":
            if (
                isinstance(a, int)
                and isinstance(b, int)
                and b > 0
                and abs(a) > 1
                and (abs(a).bit_length() - 1) * b > _MAX_POWER_BITS
            ):
                raise ValueError(f"power: the result would exceed {_MAX_POWER_BITS} bits")
            result = a**b
        elif operation == "sqrt":
            if a < 0:
                raise ValueError("sqrt of a negative number")
            result = a**0.5
        else:
            raise ValueError(
                f"Unsupported operation: {operation!r} (one of {', '.join(_OPERATIONS)})"
            )
        return {
            "status": "ok",
            "operation": operation,
            "inputs": {"a": a, "b": b},
            "result": result,
            "timestamp": time.time(),
        }

    def handle_info(self, args: dict[str, Any]) -> dict[str, Any]:
        """Describe the bridge, its commands and the interpreter."""
        from . import __version__

        now = time.time()
        cls = type(self)
        return {
            "status": "ok",
            "bridge_info": {
                "name": "snakepit_trio_bridge",
                "version": __version__,
                "handler": f"{cls.__module__}:{cls.__qualname__}",
                "supported_commands": self.get_supported_commands(),
                "uptime": now - self.start_time,
                "total_requests": self.request_count,
            },
            "system_info": {
                "python_version": sys.version,
                "platform": sys.platform,
                "pid": os.getpid(),
            },
            "timestamp": now,
        }


def _type_name(value: object) -> str:
    cls = type(value)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _operand(args: dict[str, Any], key: str) -> int | float:
    value = args.get(key, 0)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"compute: {key!r} must be a number, not {type(value).__name__}")
    return value


def unknown_command_message(command: str, known: list[str]) -> str:
    """``Unknown command: 'comput' (did you mean: compute?)``: close matches, when any."""
    text = f"Unknown command: {command!r}" if len(command) <= 100 else "Unknown command"
    if len(command) > 100:  # difflib's cost grows with the name: a long one matches nothing
        return f"{text} (a name of {len(command)} characters)"
    from difflib import get_close_matches

    matches = get_close_matches(command, known, n=3, cutoff=0.6)
    if not matches and command.lower() in {name.lower() for name in known}:
        matches = [name for name in known if name.lower() == command.lower()]
    return f"{text} (did you mean: {', '.join(matches)}?)" if matches else text


def load_handler(spec: str | None) -> BaseCommandHandler:
    """Instantiate the handler class named ``"package.module:Class"`` (default: the generic one).

    The module part may also be the path of a ``.py`` file (``"handlers/mine.py:MyHandler"``).
    """
    if not spec:
        from .generic import GenericCommandHandler

        return GenericCommandHandler()
    module_name, sep, class_name = spec.rpartition(":")
    if not sep or not module_name or not class_name:
        raise ValueError(
            f"a handler must look like 'package.module:Class' or 'path/file.py:Class', not {spec!r}"
        )
    target: Any = _import_module(module_name)
    for part in class_name.split("."):
        target = getattr(target, part)
    if isinstance(target, type) and not issubclass(target, BaseCommandHandler):
        raise TypeError(f"{spec} is not a subclass of snakepit_trio_bridge.BaseCommandHandler")
    handler = target()
    if not isinstance(handler, BaseCommandHandler):
        raise TypeError(f"{spec} is not a subclass of snakepit_trio_bridge.BaseCommandHandler")
    return handler


def _import_module(name: str) -> Any:
    """The module ``name``; for a file ``dir/name.py``, the module ``name`` with ``dir`` put
    first on ``sys.path`` (as the CLI's ``python:FILE.py:CLASS`` does)."""
    if name.endswith(".py"):
        path = os.path.abspath(name)
        if not os.path.isfile(path):
            raise FileNotFoundError(2, "No such handler file", path)
        sys.path.insert(0, os.path.dirname(path))
        name = os.path.splitext(os.path.basename(path))[0]
    try:
        __import__(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            exc.msg = (
                f"{exc.msg}: the handler module {name!r} is not on the worker's sys.path "
                "(install it, or add its directory to PYTHONPATH with the adapter's env=)"
            )
        raise
    return sys.modules[name]


def load_failure_message(spec: str, exc: BaseException) -> str:
    """Why the handler ``spec`` could not be loaded: the exception, then where it was raised.

    The frames shown are the innermost ones outside the import machinery and this package
    (the handler's own file and line); causes and context follow, one line each. Bounded, so
    it always fits in a response.
    """
    import traceback

    lines = [f"cannot load handler {spec!r}: {_one_line(exc)}"]
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith("<frozen") and not _is_ours(frame.filename)
    ]
    for frame in frames[-3:]:
        lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}')
        if frame.line:
            lines.append(f"    {frame.line.strip()}")
    lines.extend(f"  note: {note}" for note in getattr(exc, "__notes__", ())[:3])
    seen = {id(exc)}
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    while cause is not None and id(cause) not in seen and len(seen) < 4:
        seen.add(id(cause))
        lines.append(f"  caused by {_one_line(cause)}")
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    text = "\n".join(line if len(line) <= 500 else line[:497] + "..." for line in lines)
    return text if len(text) <= 4000 else text[:3997] + "..."


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_OWN_FILES = frozenset({"handler.py", "server.py", "grpc_server.py", "__main__.py"})


def _is_ours(filename: str) -> bool:
    """A frame of the loading machinery here (the handler's own frames are shown)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return (
        os.path.basename(filename) in _OWN_FILES
        and os.path.dirname(os.path.abspath(filename)) == here
    )
