"""Adapters say how to start a worker and how to talk to it.

``Adapter`` runs any program that speaks the stdio protocol (docs/protocol.md). Subclass it
and override the hooks to validate or reshape commands on the pool side, before anything is
queued. ``PythonAdapter`` and ``NodeAdapter`` start the bridges shipped with this package.
"""

from __future__ import annotations

import functools
import importlib.machinery
import os
import shutil
import site
import sys
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import snakepit_trio_bridge
from snakepit_trio_bridge import BaseCommandHandler

from ._errors import UnsupportedCommand

if TYPE_CHECKING:
    from ._transport import Transport, TransportContext

__all__ = ["Adapter", "NodeAdapter", "PythonAdapter", "Wire", "node_bridge_path"]

Wire: TypeAlias = Literal["auto", "json", "msgpack"]
"""The codec of an adapter's workers: negotiated (``"auto"``: MessagePack when both sides have
it, else JSON), or fixed when the program starts."""
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

    executable: str
    """The program to run (``argv[0]``)."""
    script: str | None
    """The script given to it, if any (``argv[1]``)."""
    script_args: tuple[str, ...]
    """The arguments after the script."""
    wire: Wire
    """The codec: negotiated (``"auto"``) or fixed."""
    env: dict[str, str]
    """Variables set in the worker's environment, over the parent's unless ``inherit_env``
    is False."""
    cwd: str | None
    """The worker's working directory (None: the parent's)."""
    inherit_env: bool
    """Whether the worker starts from the parent's environment."""
    name: str
    """A label for messages and ``repr`` (by default the script's or program's file name)."""

    def __init__(
        self,
        executable: str | os.PathLike[str],
        script: str | os.PathLike[str] | None = None,
        script_args: Iterable[str | os.PathLike[str] | int] = (),
        *,
        wire: Wire = "auto",
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        inherit_env: bool = True,
        name: str | None = None,
    ) -> None:
        if not isinstance(wire, str) or wire not in _WIRES:
            raise ValueError(f"wire must be one of {_WIRES}, not {wire!r}")
        if not isinstance(inherit_env, bool):
            raise TypeError(f"inherit_env must be True or False, not {inherit_env!r}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, not {name!r}")
        self.executable = _path_argument("executable", executable)
        self.script = None if script is None else _path_argument("script", script)
        self.script_args = _arguments(script_args)
        self.wire = wire
        self.env = _environment_argument(env)
        self.cwd = None if cwd is None else _path_argument("cwd", cwd)
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

    def transport(self, context: TransportContext) -> Transport:
        """How the pool reaches one worker of this adapter (by default: a local process
        speaking the stdio protocol). Another transport overrides this one method."""
        from ._stdio import StdioTransport

        return StdioTransport(self, context)

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


_BRIDGE_MAIN = "from snakepit_trio_bridge.__main__ import main; main()"
# The same, for a bridge that sits among other packages (a wheel in site-packages) and a worker
# that does not share them: a finder that imports only snakepit_trio_bridge from that directory, so
# none of its neighbours reach the worker's import path.
_BRIDGE_BY_PATH = (
    "import sys\n"
    "from importlib.machinery import PathFinder\n"
    "class BridgeFinder:\n"
    "    @staticmethod\n"
    "    def find_spec(name, path=None, target=None):\n"
    "        if name == 'snakepit_trio_bridge':\n"
    "            return PathFinder.find_spec(name, [{root!r}])\n"
    "sys.meta_path.insert(0, BridgeFinder)\n" + _BRIDGE_MAIN
)
_MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=33554432"


def _path_argument(what: str, value: object) -> str:
    """``value`` as a str path (no empty path, no NUL: the spawn would fail obscurely)."""
    if isinstance(value, bytes) or not isinstance(value, str | os.PathLike):
        raise TypeError(f"{what} must be a str or os.PathLike, not {value!r}")
    text = os.fspath(value)
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str path, not {value!r}")
    if not text:
        raise ValueError(f"{what} must not be empty")
    if "\0" in text:
        raise ValueError(f"{what} must not contain a NUL character: {text!r}")
    return text


def _arguments(values: Iterable[Any]) -> tuple[str, ...]:
    """``script_args`` as strings: each a str, a path or an int (a port, a count)."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise TypeError(f"script_args must be a list of arguments, not {values!r}")
    found = []
    for i, value in enumerate(values):
        if isinstance(value, int) and not isinstance(value, bool):
            found.append(str(value))
            continue
        if isinstance(value, bytes) or not isinstance(value, str | os.PathLike):
            raise TypeError(f"script_args[{i}] must be a str, a path or an int, not {value!r}")
        text = os.fspath(value)
        if not isinstance(text, str) or "\0" in text:
            raise ValueError(f"script_args[{i}] must be text without a NUL character: {text!r}")
        found.append(text)
    return tuple(found)


def _environment_argument(env: Mapping[str, str] | None) -> dict[str, str]:
    """``env`` checked: str keys a process environment can hold, str values."""
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise TypeError(f"env must be a mapping of str to str, not {env!r}")
    checked: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str):
            raise TypeError(f"env key {key!r} must be a str")
        if not key or "=" in key or "\0" in key:
            raise ValueError(f"env key {key!r} must be non-empty, without '=' or NUL")
        if not isinstance(value, str):
            raise TypeError(f"env[{key!r}] must be a str, not {value!r}")
        if "\0" in value:
            raise ValueError(f"env[{key!r}] must not contain a NUL character")
        checked[key] = value
    return checked


# ---------------------------------------------------------------------- the bridge's import path


def _site_directories() -> set[str]:
    """This interpreter's site-packages directories (not the per-user one: a worker may have
    it switched off)."""
    return {os.path.realpath(p) for p in site.getsitepackages()}


def _is_this_interpreter(python: str) -> bool:
    """Whether ``python`` is this interpreter, in this environment (a venv's python links to
    its base interpreter, which does not see the venv's site-packages: compare the folder)."""
    found = shutil.which(python) if os.sep not in python else python
    if found is None:
        return False
    try:
        return os.path.dirname(os.path.abspath(found)) == os.path.dirname(
            os.path.abspath(sys.executable)
        ) and os.path.samefile(found, sys.executable)
    except OSError:
        return False


@functools.lru_cache(maxsize=8)
def _holds_only_the_bridge(directory: str) -> bool:
    """Whether ``snakepit_trio_bridge`` is the only thing importable from ``directory`` (a checkout's
    bridges/python, an editable install), so it can go on a worker's PYTHONPATH as it is."""
    suffixes = tuple(importlib.machinery.all_suffixes())
    try:
        names = os.listdir(directory)
    except OSError:
        return False
    for name in names:
        if name in ("snakepit_trio_bridge", "__pycache__") or name.startswith("."):
            continue
        path = os.path.join(directory, name)
        if os.path.isdir(path):
            importable = name.isidentifier()  # a package, or a namespace package
        else:
            importable = name.endswith(suffixes) and name.partition(".")[0].isidentifier()
        if importable:
            return False
    return True


def _bridge_launch(python: str) -> tuple[str, str | None]:
    """How a worker on ``python`` imports this process's ``snakepit_trio_bridge``: the ``-c``
    program, and the directory to put on its PYTHONPATH (None: nothing).

    Never a directory with other packages: a worker on another interpreter would import the
    pool's compiled packages, ahead of its own (issue 14).
    """
    root = str(Path(snakepit_trio_bridge.__file__).resolve().parent.parent)
    if _is_this_interpreter(python) and os.path.realpath(root) in _site_directories():
        return _BRIDGE_MAIN, None  # installed here: the worker finds it where we did
    if _holds_only_the_bridge(root):
        return _BRIDGE_MAIN, root
    return _BRIDGE_BY_PATH.format(root=root), None


def _with_pythonpath(env: dict[str, str], first: Iterable[str]) -> dict[str, str]:
    """``env`` with ``first`` ahead of its own PYTHONPATH entries (no duplicates)."""
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    ahead = [p for p in dict.fromkeys(first) if p not in parts]
    if ahead:
        env["PYTHONPATH"] = os.pathsep.join([*ahead, *parts])
    return env


# ---------------------------------------------------------------------- handlers

_HANDLER_FORMS = "'module:Class' or 'path/to/file.py:Class' (or the class itself)"


def _is_dotted_name(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def _module_root(module_name: str) -> str | None:
    """The sys.path entry that module ``module_name`` of this process was imported from."""
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if not isinstance(file, str):
        return None
    path = Path(os.path.abspath(file))  # as imported: a symlinked file keeps its place
    depth = module_name.count(".") + (2 if path.stem == "__init__" else 1)
    return str(path.parents[depth - 1])


def _handler_from_class(cls: type) -> tuple[str, str | None]:
    """``module:qualname`` of a handler class, and the folder a worker imports it from."""
    if not issubclass(cls, BaseCommandHandler):
        raise TypeError(f"{cls!r} is not a subclass of snakepit_trio_bridge.BaseCommandHandler")
    module, qualname = cls.__module__, cls.__qualname__
    spec = f"{module}:{qualname}"
    if "<locals>" in qualname:
        raise ValueError(
            f"handler {spec} is defined inside a function, so a worker cannot import it by "
            "name: define it at the top level of a module"
        )
    if module == "__main__":
        raise ValueError(
            f"handler {qualname} is defined in __main__ (the script being run), which a worker "
            "cannot import by name without running the script again: move it into a module "
            "and import it from there"
        )
    target: Any = sys.modules.get(module)
    for part in qualname.split("."):
        target = getattr(target, part, None)
    if target is not cls:
        raise ValueError(
            f"handler {spec} cannot be imported by name (no such attribute in module "
            f"{module!r}): define it at the top level of a module, under its own name"
        )
    root = _module_root(module)
    if root is not None and os.path.realpath(root) in _site_directories():
        root = None  # installed: a worker finds it in its own site-packages, or nowhere
    return spec, root


def _handler_from_file(spec: str, path_text: str, cls: str) -> tuple[str, str]:
    """``module:Class`` for ``path/to/file.py:Class``, and the file's folder."""
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"handler {spec!r}: no such file {path_text!r}")
    module = path.stem
    if path.suffix != ".py" or not module.isidentifier():
        raise ValueError(
            f"handler {spec!r}: {path.name!r} is not a valid module name (a worker imports "
            "the file by its name: use letters, digits and underscores, and .py)"
        )
    if module in sys.stdlib_module_names:
        raise ValueError(
            f"handler {spec!r}: {path.name!r} has the name of a standard library module, "
            "which it would hide in the worker: rename the file"
        )
    return f"{module}:{cls}", str(path.parent)


def _handler_spec(handler: object) -> tuple[str, str | None]:
    """The ``--handler`` argument for ``handler``, and a folder the worker must import from."""
    if isinstance(handler, type):
        return _handler_from_class(handler)
    if not isinstance(handler, str):
        raise TypeError(f"handler must be {_HANDLER_FORMS}, not {handler!r}")
    target, sep, cls = handler.rpartition(":")
    if not sep or not _is_dotted_name(cls):
        raise ValueError(f"handler must look like {_HANDLER_FORMS}, not {handler!r}")
    if target.endswith(".py") or os.sep in target:
        return _handler_from_file(handler, target, cls)
    if not _is_dotted_name(target):
        raise ValueError(f"handler must look like {_HANDLER_FORMS}, not {handler!r}")
    return handler, None


class PythonAdapter(Adapter):
    """Our Python bridge (what ``python -m snakepit_trio_bridge`` runs).

    ``handler`` is a ``BaseCommandHandler`` subclass, named ``"package.module:HandlerClass"``
    or ``"path/to/file.py:HandlerClass"`` (its folder goes on the worker's PYTHONPATH), or
    given as the class itself (it must be importable by name: not defined in ``__main__`` or
    inside a function). None runs the built-in generic commands. ``wire`` forces a codec but
    keeps negotiation, so the bridge's features (streaming, cancellation, multiplexing) stay
    on.

    ``python`` may be another interpreter (3.11+): the worker imports this package's bridge
    and nothing else of this environment; its own packages (msgpack: without it the wire is
    JSON, and a handler's installed dependencies) are whatever that interpreter has.

    ``enhanced=True`` runs ``snakepit_trio_bridge.enhanced:EnhancedCommandHandler`` instead: its
    ``call`` and ``pipeline`` commands import and call any Python code the caller names, so
    anyone who can send commands to the pool can run arbitrary code with the worker's rights.
    Use it only with trusted callers (docs/enhanced-bridge.md). It excludes ``handler``: to
    add commands to it, subclass ``EnhancedCommandHandler`` and pass that as ``handler``.
    """

    speaks_extensions = True
    #: The handler that ``enhanced=True`` selects.
    ENHANCED_HANDLER = "snakepit_trio_bridge.enhanced:EnhancedCommandHandler"

    def __init__(
        self,
        handler: str | type[BaseCommandHandler] | None = None,
        *,
        python: str | os.PathLike[str] = sys.executable,
        wire: Wire = "auto",
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        inherit_env: bool = True,
        max_concurrency: int | None = None,
        enhanced: bool = False,
    ) -> None:
        if not isinstance(enhanced, bool):
            raise TypeError(f"enhanced must be True or False, not {enhanced!r}")
        if max_concurrency is not None and (
            isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int)
        ):
            raise TypeError(f"max_concurrency must be an int >= 1 or None, not {max_concurrency!r}")
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(
                f"max_concurrency must be an int >= 1 or None, not {max_concurrency!r}"
            )
        python = _path_argument("python", python)
        spec: str | None = None
        handler_dir: str | None = None
        if enhanced:
            if handler is not None:
                raise ValueError(
                    "pass either enhanced=True or handler=, not both: to extend the enhanced "
                    "handler, subclass snakepit_trio_bridge.enhanced.EnhancedCommandHandler and "
                    "pass it as handler='package.module:YourHandler'"
                )
            spec = self.ENHANCED_HANDLER
        elif handler is not None:
            spec, handler_dir = _handler_spec(handler)
        label = "enhanced" if enhanced else spec or "generic"
        program, bridge_dir = _bridge_launch(python)
        # Not ``-m snakepit_trio_bridge``: runpy and what it imports cost ~3 ms per worker start.
        args = ["-c", program, "--mode", "pool-worker", "--protocol", "auto"]
        if spec is not None:
            args += ["--handler", spec]
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
        #: The ``--handler`` argument (``module:Class``), or None for the generic handler.
        self.handler: str | None = spec
        #: Whether the worker runs the enhanced handler.
        self.enhanced: bool = enhanced
        # Ahead of the user's PYTHONPATH: only the bridge's own folder, and the handler's.
        self._import_dirs = [d for d in (bridge_dir, handler_dir) if d is not None]

    def environment(self) -> dict[str, str]:
        """The base environment, with the bridge's (and the handler's) folder first on
        PYTHONPATH."""
        env = _with_pythonpath(super().environment(), self._import_dirs)
        # glibc hands allocations of 128 KiB and more back to the kernel when freed, so every
        # large payload costs hundreds of page faults to touch fresh memory (~1 ms per MiB
        # here). Keep up to 4 MiB blocks on the heap instead, unless the user tuned malloc.
        env.setdefault("GLIBC_TUNABLES", _MALLOC_TUNABLES)
        return env


def node_bridge_path() -> Path:
    """Where the Node bridge script is: inside the installed package, or in a checkout."""
    package_dir = Path(snakepit_trio_bridge.__file__).resolve().parent
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
        node: str | os.PathLike[str] = "node",
        wire: Wire = "auto",
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        inherit_env: bool = True,
    ) -> None:
        node = _path_argument("node", node)
        args = ["--mode", "pool-worker"]
        if script is not None:
            module = Path(_path_argument("script", script)).resolve()
            if not module.is_file():
                raise FileNotFoundError(f"NodeAdapter script: no such file {os.fspath(script)!r}")
            args += ["--module", str(module)]
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
        #: The user module the bridge loads (``script``), or None for the generic commands.
        self.user_module: str | None = None if script is None else os.fspath(script)
