"""Command handlers: the code a worker runs for each request.

Writing a handler
=================

Subclass :class:`BaseCommandHandler` and register your commands in ``_register_commands``::

    from snakepit_bridge import BaseCommandHandler, current_context

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

Start a worker with it: ``python -m snakepit_bridge --handler mypkg.mymod:MyHandler`` (the pool
does this for ``PythonAdapter(handler="mypkg.mymod:MyHandler")``). The class is instantiated
once per worker process, so it may keep state (models, caches) between requests.

Rules:

- A handler takes one argument, ``args`` (the request's argument map), and returns something
  the wire can carry: maps, lists, strings, numbers, booleans, ``None`` and ``bytes``.
- It may be ``def`` or ``async def``, a generator or an async generator. Async handlers run
  on an asyncio event loop that the worker creates the first time one is needed.
- A generator streams when the caller asks for a stream (each value becomes a chunk, the
  ``return`` value the final result); otherwise its values are returned as one list.
- Raising an exception fails the request: the caller gets its message, type name and
  traceback. Returning ``{"status": "error", ...}`` is a *successful* result (v0.3 style).
- Requests run one at a time, in arrival order, in the main thread.
- Cancellation is cooperative. Long handlers should call ``current_context().check_cancelled()``
  (or ``self.context.check_cancelled()``) now and then: it raises
  :class:`~snakepit_bridge.context.Cancelled` once the pool cancelled the request. Between two
  chunks of a stream the worker checks by itself, and closes the generator (its ``finally``
  blocks run). Async handlers are cancelled like any asyncio task.
- ``print()`` is safe: the worker's stdout carries frames, so ``sys.stdout`` and file
  descriptor 1 are pointed at stderr before any handler runs.
- The built-in commands ``ping``, ``echo``, ``compute`` and ``info`` are always there; register
  a command of the same name to override one.
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

__all__ = ["BaseCommandHandler", "load_handler"]

_OPERATIONS = ("add", "subtract", "multiply", "divide", "power", "sqrt")


class BaseCommandHandler:
    """Base class of command handlers; provides ``ping``, ``echo``, ``compute`` and ``info``."""

    #: Reported by ``ping`` as ``bridge_type``.
    bridge_type = "python"

    def __init__(self) -> None:
        self.start_time = time.time()
        self.request_count = 0
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
            raise KeyError(f"Unknown command: {command}")
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
        """Arithmetic on ``a`` and ``b``: add, subtract, multiply, divide, power, sqrt (of a).

        A bad operation raises ``ValueError``; dividing by zero raises ``ZeroDivisionError``.
        """
        operation = args.get("operation", "add")
        a = args.get("a", 0)
        b = args.get("b", 0)
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
                "name": "snakepit_bridge",
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


def load_handler(spec: str | None) -> BaseCommandHandler:
    """Instantiate the handler class named ``"package.module:Class"`` (default: the generic one)."""
    if not spec:
        from .generic import GenericCommandHandler

        return GenericCommandHandler()
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise ValueError(f"--handler must look like 'package.module:Class', not {spec!r}")
    __import__(module_name)
    target: Any = sys.modules[module_name]
    for part in class_name.split("."):
        target = getattr(target, part)
    handler = target()
    if not isinstance(handler, BaseCommandHandler):
        raise TypeError(f"{spec} is not a subclass of snakepit_bridge.BaseCommandHandler")
    return handler
