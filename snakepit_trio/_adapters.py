"""Adapters say how to start a worker and how to talk to it.

``Adapter`` runs any program that speaks the stdio protocol (docs/protocol.md). Subclass it
and override the hooks to validate or reshape commands on the pool side, before anything is
queued. ``PythonAdapter`` and ``NodeAdapter`` start the bridges shipped with this package.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import snakepit_bridge

from ._errors import UnsupportedCommand

__all__ = ["Adapter", "NodeAdapter", "PythonAdapter", "Wire", "node_bridge_path"]

Wire = Literal["auto", "json", "msgpack"]
_WIRES = ("auto", "json", "msgpack")


class Adapter:
    """A worker program speaking the stdio protocol.

    ``argv = [executable] + ([script] if script else []) + list(script_args)``; no shell is
    ever involved. ``wire="auto"`` negotiates the codec (the first frame is a JSON
    ``protocol_negotiation``); ``"json"`` or ``"msgpack"`` means the program was started with
    that codec fixed, and it is sent no negotiation frame.

    ``env`` is merged over the parent's environment; pass ``inherit_env=False`` to start from
    an empty one (only ``env`` and the pool's ``SNAKEPIT_*`` variables are set then).
    """

    #: Command sent once after negotiation; the worker is ready when it answers. None: skip.
    init_command: str | None = "ping"
    #: Whether this is one of our bridges (negotiates even when the codec is forced).
    speaks_extensions: bool = False

    def __init__(
        self,
        executable: str | os.PathLike[str],
        script: str | os.PathLike[str] | None = None,
        script_args: Iterable[str] = (),
        *,
        wire: Wire = "auto",
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        inherit_env: bool = True,
        name: str | None = None,
    ) -> None:
        if wire not in _WIRES:
            raise ValueError(f"wire must be one of {_WIRES}, not {wire!r}")
        self.executable = os.fspath(executable)
        self.script = None if script is None else os.fspath(script)
        self.script_args = tuple(str(a) for a in script_args)
        self.wire: Wire = wire
        self.env = dict(env or {})
        self.cwd = None if cwd is None else os.fspath(cwd)
        self.inherit_env = inherit_env
        self.name = name or Path(self.script or self.executable).name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.argv()!r}, wire={self.wire!r})"

    # -- how to start
    def argv(self) -> list[str]:
        """The worker's argument vector."""
        argv = [self.executable]
        if self.script:
            argv.append(self.script)
        argv.extend(self.script_args)
        return argv

    def environment(self) -> dict[str, str]:
        """The worker's environment (before the pool adds its ``SNAKEPIT_*`` variables)."""
        base = dict(os.environ) if self.inherit_env else {}
        base.update(self.env)
        return base

    @property
    def negotiate(self) -> bool:
        """Whether the pool sends the negotiation frame."""
        return self.wire == "auto" or self.speaks_extensions

    def offered_protocols(self) -> list[str]:
        """Codecs offered in negotiation, preferred first."""
        if self.wire == "auto":
            return ["msgpack", "json"]
        return [self.wire]

    # -- hooks, called at the call site before anything is queued
    def supported_commands(self) -> Collection[str] | None:
        """The commands this adapter accepts, or None for any (the bridge decides)."""
        return None

    def validate_command(self, command: str, args: Mapping[str, Any]) -> None:
        """Raise to refuse a call. The default checks ``supported_commands``."""
        supported = self.supported_commands()
        if supported is not None and command not in supported:
            raise UnsupportedCommand(
                f"{command!r} is not supported by {self.name} (supported: {sorted(supported)})"
            )

    def prepare_args(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        """Reshape the arguments before they are encoded."""
        return args

    def process_response(self, command: str, result: Any) -> Any:
        """Reshape a successful result before the caller sees it."""
        return result

    def command_timeout(self, command: str, args: Mapping[str, Any]) -> float | None:
        """A per-command default timeout, or None for ``PoolConfig.command_timeout``."""
        return None


_BRIDGE_MAIN = "from snakepit_bridge.__main__ import main; main()"
_MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=33554432"


def _bridge_pythonpath(env: dict[str, str]) -> dict[str, str]:
    """Make the worker import the same ``snakepit_bridge`` as this process."""
    bridge_root = str(Path(snakepit_bridge.__file__).resolve().parent.parent)
    current = env.get("PYTHONPATH", "")
    parts = [p for p in current.split(os.pathsep) if p]
    if bridge_root not in parts:
        env["PYTHONPATH"] = os.pathsep.join([bridge_root, *parts])
    return env


class PythonAdapter(Adapter):
    """Our Python bridge (what ``python -m snakepit_bridge`` runs).

    ``handler`` is ``"package.module:HandlerClass"`` (a ``BaseCommandHandler`` subclass); None
    runs the built-in generic commands. ``wire`` forces a codec but keeps negotiation, so the
    bridge's features (streaming, cancellation, multiplexing) stay on.

    ``enhanced=True`` runs ``snakepit_bridge.enhanced:EnhancedCommandHandler`` instead: its
    ``call`` and ``pipeline`` commands import and call any Python code the caller names, so
    anyone who can send commands to the pool can run arbitrary code with the worker's rights.
    Use it only with trusted callers (docs/enhanced-bridge.md). It excludes ``handler``: to
    add commands to it, subclass ``EnhancedCommandHandler`` and pass that as ``handler``.
    """

    speaks_extensions = True
    #: The handler that ``enhanced=True`` selects.
    ENHANCED_HANDLER = "snakepit_bridge.enhanced:EnhancedCommandHandler"

    def __init__(
        self,
        handler: str | None = None,
        *,
        python: str | os.PathLike[str] = sys.executable,
        wire: Wire = "auto",
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        inherit_env: bool = True,
        max_concurrency: int | None = None,
        enhanced: bool = False,
    ) -> None:
        label = handler or "generic"
        if enhanced:
            if handler is not None:
                raise ValueError(
                    "pass either enhanced=True or handler=, not both: to extend the enhanced "
                    "handler, subclass snakepit_bridge.enhanced.EnhancedCommandHandler and "
                    "pass it as handler='package.module:YourHandler'"
                )
            handler, label = self.ENHANCED_HANDLER, "enhanced"
        # Not ``-m snakepit_bridge``: runpy and what it imports cost ~3 ms per worker start.
        args = ["-c", _BRIDGE_MAIN, "--mode", "pool-worker", "--protocol", "auto"]
        if handler is not None:
            if ":" not in handler:
                raise ValueError(f"handler must look like 'package.module:Class', not {handler!r}")
            args += ["--handler", handler]
        if max_concurrency is not None:
            args += ["--max-concurrency", str(max_concurrency)]
        super().__init__(
            python,
            None,
            args,
            wire=wire,
            env=env,
            cwd=cwd,
            inherit_env=inherit_env,
            name=f"python bridge ({label})",
        )
        self.handler = handler
        self.enhanced = enhanced

    def environment(self) -> dict[str, str]:
        env = _bridge_pythonpath(super().environment())
        # glibc hands allocations of 128 KiB and more back to the kernel when freed, so every
        # large payload costs hundreds of page faults to touch fresh memory (~1 ms per MiB
        # here). Keep up to 4 MiB blocks on the heap instead, unless the user tuned malloc.
        env.setdefault("GLIBC_TUNABLES", _MALLOC_TUNABLES)
        return env


def node_bridge_path() -> Path:
    """Where the Node bridge script is: inside the installed package, or in a checkout."""
    package_dir = Path(snakepit_bridge.__file__).resolve().parent
    candidates = [
        package_dir / "node" / "snakepit_bridge.js",
        package_dir.parent.parent / "node" / "snakepit_bridge.js",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "the Node bridge (snakepit_bridge.js) is missing from this installation; looked in: "
        + ", ".join(str(c) for c in candidates)
    )


class NodeAdapter(Adapter):
    """Our Node.js bridge; ``script`` is an optional user module that registers commands."""

    speaks_extensions = True

    def __init__(
        self,
        script: str | os.PathLike[str] | None = None,
        *,
        node: str = "node",
        wire: Wire = "auto",
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        inherit_env: bool = True,
    ) -> None:
        args = ["--mode", "pool-worker"]
        if script is not None:
            args += ["--module", str(Path(script).resolve())]
        super().__init__(
            node,
            str(node_bridge_path()),
            args,
            wire=wire,
            env=env,
            cwd=cwd,
            inherit_env=inherit_env,
            name=f"node bridge ({Path(script).name if script else 'generic'})",
        )
        self.user_module = None if script is None else os.fspath(script)
