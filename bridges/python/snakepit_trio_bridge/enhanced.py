"""The enhanced handler: call any importable Python code in the worker, keep objects per session.

OPT-IN, and for trusted callers only: whoever can send ``call`` or ``pipeline`` to such a worker
runs arbitrary code with the worker's rights (``call {"target": "os.system", ...}``). Start it
with ``sp.PythonAdapter(enhanced=True)`` (or ``--handler
snakepit_trio_bridge.enhanced:EnhancedCommandHandler``). See docs/enhanced-bridge.md.

Commands (besides the generic handler's):

=================  ======================================================================
``call``           call ``target`` (``"pkg.mod:qual.name"``, ``"pkg.mod.func"`` or a
                   builtin such as ``"len"``), or ``method`` of the stored ``object``, with
                   ``args`` and ``kwargs``; ``store_as`` keeps the result in the session
``store``          keep ``value`` as ``name`` in the session
``retrieve``       the object ``name`` (a ref path: ``"fit.slope"``, ``"rows.0"``)
``list_stored``    the session's objects: name, type and length
``delete_stored``  drop ``name``, ``names`` or (``all: true``) every object of the session
``inspect``        type, truncated repr, length, shape, attributes, signature and doc of the
                   stored ``name`` or of the import path ``target``
``pipeline``       run ``steps`` (each a ``call`` spec, optionally ``name``-d) in order; the
                   result is the last step's value, or the ``output`` ref(s)
=================  ======================================================================

References: anywhere in ``args``, ``kwargs``, ``value`` (and in ``object``, which is a ref
path), ``{"$ref": "name.part.0"}`` stands for a pipeline step's result or a stored object,
then the keys, indexes or attributes that follow the dots; ``{"$import": "pkg.mod:name"}``
for an importable object, uncalled (``{"$import": "float"}`` to pass ``float`` to ``map``).
``{"$literal": x}`` passes ``x`` without looking for refs in it.

Results go back wire-safe: a value neither JSON nor MessagePack can carry (a ``Decimal``, a
non-finite float, an object) becomes ``{"__type__": "decimal.Decimal", "repr": "..."}``.
Named tuples become maps. Store the object (``store_as``) to keep it whole.

The store lives in this worker process: it is lost when the worker restarts or is recycled,
and it reaches only calls routed to this worker, so use ``PoolConfig(affinity="strict")``.
A session's objects are freed once no command of this handler has used them for the pool's
session TTL (``SNAKEPIT_SESSION_TTL``, which the pool sets; 3600 s without it), at the next
command after that (late by at most half the TTL or a minute).
"""

from __future__ import annotations

import os
import time

from .context import current_context
from .generic import GenericCommandHandler
from .protocol.constants import ENV_SESSION_TTL

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

__all__ = [
    "ENHANCED_COMMANDS",
    "EnhancedCommandHandler",
    "ObjectNotFound",
    "PipelineError",
    "TargetNotFound",
    "describe",
    "to_wire",
]

#: The commands this handler adds to the generic ones.
ENHANCED_COMMANDS = (
    "call",
    "store",
    "retrieve",
    "list_stored",
    "delete_stored",
    "inspect",
    "pipeline",
)
REF = "$ref"
IMPORT = "$import"
LITERAL = "$literal"
_MAX_DEPTH = 100
_DEFAULT_REPR = 200
_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1
_MAX_ATTRIBUTES = 100
_DEFAULT_SESSION_TTL = 3600.0
_MAX_SWEEP_INTERVAL = 60.0


class TargetNotFound(LookupError):
    """An import path names no importable module or attribute."""


class ObjectNotFound(LookupError):
    """A ref or name matches no pipeline result and no object stored in the session."""


class PipelineError(Exception):
    """A pipeline step failed; the message names the step, the cause is chained."""


# ---------------------------------------------------------------------- wire safety


def _type_name(value: object) -> str:
    cls = type(value)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _short_repr(value: object, limit: int) -> str:
    try:
        text = repr(value)
    except Exception as exc:
        text = f"<{_type_name(value)}: repr() failed: {exc!r}>"
    if len(text) > limit:
        text = text[: max(0, limit - 3)] + "..."
    return text


def _opaque(value: object) -> dict[str, str]:
    return {"__type__": _type_name(value), "repr": _short_repr(value, _DEFAULT_REPR)}


def to_wire(value: Any, _depth: int = 0) -> Any:
    """``value`` as plain data both codecs carry; what they cannot becomes ``{"__type__", "repr"}``.

    Tuples and sets become lists, named tuples maps, subclasses of str/int/float/dict/list
    their base type, bytearray and memoryview bytes. Map keys that are not str, int, float,
    bool or None become their repr.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value) if _INT_MIN <= value <= _INT_MAX else _opaque(value)
    if isinstance(value, float):
        return float(value) if value - value == 0.0 else _opaque(value)  # NaN, inf: not JSON
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if _depth >= _MAX_DEPTH:
        return _opaque(value)
    depth = _depth + 1
    if isinstance(value, dict):
        return {_wire_key(k): to_wire(v, depth) for k, v in value.items()}
    fields = getattr(type(value), "_fields", None) if isinstance(value, tuple) else None
    if fields is not None:  # a named tuple
        return {str(k): to_wire(v, depth) for k, v in zip(fields, value, strict=False)}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_wire(v, depth) for v in value]
    return _opaque(value)


def _wire_key(key: object) -> object:
    if key is None or isinstance(key, (str, int, float)):
        wired = to_wire(key)
        if not isinstance(wired, dict):
            return wired
    return _short_repr(key, _DEFAULT_REPR)


def describe(value: object, *, max_repr: int = 500, attributes: bool = True) -> dict[str, Any]:
    """What ``inspect`` reports about an object (wire-safe)."""
    info: dict[str, Any] = {
        "type": _type_name(value),
        "repr": _short_repr(value, max_repr),
        "callable": callable(value),
    }
    try:
        info["len"] = len(value)  # type: ignore[arg-type]
    except Exception:
        pass
    shape = getattr(value, "shape", None) if not isinstance(value, type) else None
    if shape is not None:
        info["shape"] = to_wire(shape)
    doc = getattr(value, "__doc__", None)
    if isinstance(doc, str) and doc.strip() and not isinstance(value, (str, bytes, int, float)):
        info["doc"] = doc.strip().splitlines()[0]
    if callable(value):
        import inspect

        try:
            info["signature"] = str(inspect.signature(value))
        except (TypeError, ValueError):
            pass
    if attributes:
        try:
            names = [n for n in dir(value) if not n.startswith("_")]
        except Exception:
            names = []
        info["attributes"] = names[:_MAX_ATTRIBUTES]
        if len(names) > _MAX_ATTRIBUTES:
            info["attributes_truncated"] = len(names)
    return info


# ---------------------------------------------------------------------- resolution


def _import_target(path: object) -> Any:
    """The object at ``"pkg.mod:qual.name"``, ``"pkg.mod.name"`` or a builtin ``"name"``."""
    if not isinstance(path, str) or not path.strip():
        raise TypeError(f"'target' must be a non-empty import path, not {path!r}")
    import importlib

    module_name, sep, attr_path = path.partition(":")
    if sep:
        if not module_name or not attr_path:
            raise TargetNotFound(f"cannot resolve {path!r}: use 'package.module:name'")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise TargetNotFound(f"cannot import {path!r}: {exc}") from exc
        return _attributes(module, attr_path.split("."), path)
    parts = path.split(".")
    if len(parts) == 1:
        import builtins

        return _attributes(builtins, parts, path)
    for cut in range(len(parts) - 1, 0, -1):  # the longest importable prefix is the module
        name = ".".join(parts[:cut])
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if name == missing or name.startswith(missing + "."):
                continue
            raise  # the module exists but one of its own imports is missing
        return _attributes(module, parts[cut:], path)
    raise TargetNotFound(f"cannot import {path!r}: no module named {parts[0]!r}")


def _attributes(obj: Any, names: list[str], path: str) -> Any:
    for name in names:
        try:
            obj = getattr(obj, name)
        except AttributeError as exc:
            raise TargetNotFound(f"cannot resolve {path!r}: {exc}") from exc
    return obj


def _step_into(obj: Any, part: str, path: str) -> Any:
    """``obj[part]`` for a mapping, ``obj[int(part)]`` for a sequence, else ``obj.part``."""
    try:
        if isinstance(obj, dict):
            return obj[part]
        if isinstance(obj, (list, tuple)) and part.lstrip("-").isdigit():
            return obj[int(part)]
        return getattr(obj, part)
    except (KeyError, IndexError, AttributeError) as exc:
        raise ObjectNotFound(f"{path!r}: cannot get {part!r} from a {_type_name(obj)}") from exc


class _Scope:
    """Where refs are looked up: pipeline results, then pending stores, then the session."""

    def __init__(self, *layers: Mapping[str, Any]) -> None:
        self.layers = layers

    def lookup(self, path: object) -> Any:
        if not isinstance(path, str) or not path:
            raise TypeError(f"a ref must be a non-empty string, not {path!r}")
        head, *rest = path.split(".")
        for layer in self.layers:
            if head in layer:
                obj = layer[head]
                break
        else:
            raise ObjectNotFound(f"no object named {head!r} in this session")
        for part in rest:
            obj = _step_into(obj, part, path)
        return obj

    def resolve(self, value: Any) -> Any:
        """``value`` with every ``$ref`` and ``$import`` replaced by what it names."""
        if isinstance(value, dict):
            if len(value) == 1:
                if REF in value:
                    return self.lookup(value[REF])
                if IMPORT in value:
                    return _import_target(value[IMPORT])
                if LITERAL in value:
                    return value[LITERAL]
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        return value


def _name(value: object, what: str = "name") -> str:
    if not isinstance(value, str) or not value or "." in value or len(value) > 200:
        raise ValueError(f"{what!r} must be a non-empty string without dots, not {value!r}")
    return value


def _check_cancelled() -> None:
    try:
        ctx = current_context()
    except RuntimeError:  # called outside a server (tests, scripts)
        return
    ctx.check_cancelled()


# ---------------------------------------------------------------------- the handler


class EnhancedCommandHandler(GenericCommandHandler):
    """The generic handler plus ``call``, a per-session object store, ``inspect`` and
    ``pipeline``. Runs arbitrary code on request: for trusted callers only."""

    bridge_type = "enhanced"

    def __init__(self, *, session_ttl: float | None = None) -> None:
        #: session id -> name -> object. A session unused for ``session_ttl`` seconds is freed.
        self.stores: dict[str, dict[str, Any]] = {}
        self.session_ttl = _session_ttl_from_env() if session_ttl is None else session_ttl
        self._last_used: dict[str, float] = {}
        self._next_sweep = 0.0
        super().__init__()

    def _register_commands(self) -> None:
        super()._register_commands()
        for name in ENHANCED_COMMANDS:
            self.register_command(name, getattr(self, f"handle_{name}"))

    # -- helpers
    @staticmethod
    def _clock() -> float:
        return time.monotonic()

    def _touch(self, session_id: str) -> None:
        """Mark the session used now, and free the stores of sessions that have expired."""
        now = self._clock()
        if now >= self._next_sweep:  # before this access counts: it may find its own expired
            self._next_sweep = now + min(self.session_ttl / 2, _MAX_SWEEP_INTERVAL)
            cutoff = now - self.session_ttl
            for sid in [sid for sid, used in self._last_used.items() if used <= cutoff]:
                del self._last_used[sid]
                self.stores.pop(sid, None)
        self._last_used[session_id] = now

    def _store(self, args: Mapping[str, Any], command: str, *, create: bool) -> dict[str, Any]:
        session_id = args.get("session_id")
        if not isinstance(session_id, str) or not session_id:
            raise ValueError(
                f"{command!r} keeps objects per session: run it with "
                "pool.execute_in_session(session_id, ...)"
            )
        self._touch(session_id)
        if create:
            return self.stores.setdefault(session_id, {})
        return self.stores.get(session_id, {})

    def _session_layer(self, args: Mapping[str, Any]) -> dict[str, Any]:
        session_id = args.get("session_id")
        if not isinstance(session_id, str) or not session_id:
            return {}
        self._touch(session_id)
        return self.stores.get(session_id, {})

    def _run_call(self, spec: Mapping[str, Any], scope: _Scope) -> Any:
        """Resolve the callable and its arguments of one call spec, and call it."""
        if not isinstance(spec, dict):
            raise TypeError(f"a call spec must be a map, not {type(spec).__name__}")
        if ("target" in spec) == ("object" in spec):
            raise ValueError("a call needs exactly one of 'target' (import path) or 'object'")
        if "target" in spec:
            function = _import_target(spec["target"])
            label = str(spec["target"])
        else:
            function = scope.lookup(spec["object"])
            label = str(spec["object"])
            method = spec.get("method")
            if method is not None:
                if not isinstance(method, str) or not method:
                    raise TypeError(f"'method' must be a non-empty string, not {method!r}")
                label = f"{label}.{method}"
                for part in method.split("."):
                    try:
                        function = getattr(function, part)
                    except AttributeError as exc:
                        raise ObjectNotFound(f"{label!r}: {exc}") from exc
        call_args = scope.resolve(spec.get("args", []))
        call_kwargs = scope.resolve(spec.get("kwargs", {}))
        if not isinstance(call_args, list):
            raise TypeError(f"'args' must be a list, not {type(call_args).__name__}")
        if not isinstance(call_kwargs, dict) or not all(isinstance(k, str) for k in call_kwargs):
            raise TypeError("'kwargs' must be a map with string keys")
        if not callable(function):
            raise TypeError(f"{label!r} is a {_type_name(function)}, which is not callable")
        return function(*call_args, **call_kwargs)

    @staticmethod
    def _stored_summary(name: str, value: object) -> dict[str, Any]:
        summary: dict[str, Any] = {"name": name, "type": _type_name(value)}
        try:
            summary["len"] = len(value)  # type: ignore[arg-type]
        except Exception:
            pass
        return summary

    # -- commands
    def handle_call(self, args: dict[str, Any]) -> dict[str, Any]:
        """Call ``target`` or ``object``'s ``method`` with ``args``/``kwargs``; see module doc."""
        store_as = args.get("store_as")
        if store_as is None:
            result = self._run_call(args, _Scope(self._session_layer(args)))
            return {"status": "ok", "result": to_wire(result)}
        _name(store_as, "store_as")
        store = self._store(args, "call", create=True)
        result = self._run_call(args, _Scope(store))
        store[store_as] = result
        summary = self._stored_summary(store_as, result)
        summary["repr"] = _short_repr(result, _DEFAULT_REPR)
        return {"status": "ok", "stored": summary}

    def handle_store(self, args: dict[str, Any]) -> dict[str, Any]:
        """Keep ``value`` (refs resolved) as ``name`` in the session's store."""
        name = _name(args.get("name"))
        if "value" not in args:
            raise ValueError("'store' needs a 'value'")
        store = self._store(args, "store", create=True)
        value = _Scope(store).resolve(args["value"])
        replaced = name in store
        store[name] = value
        return {"status": "ok", "stored": self._stored_summary(name, value), "replaced": replaced}

    def handle_retrieve(self, args: dict[str, Any]) -> dict[str, Any]:
        """The stored object ``name`` (a ref path), wire-safe."""
        name = args.get("name")
        value = _Scope(self._store(args, "retrieve", create=False)).lookup(name)
        return {"status": "ok", "name": name, "value": to_wire(value)}

    def handle_list_stored(self, args: dict[str, Any]) -> dict[str, Any]:
        """Name, type and (when it has one) length of every object in the session."""
        store = self._store(args, "list_stored", create=False)
        objects = [self._stored_summary(name, value) for name, value in store.items()]
        return {"status": "ok", "objects": objects, "count": len(objects)}

    def handle_delete_stored(self, args: dict[str, Any]) -> dict[str, Any]:
        """Drop ``name``, the list ``names``, or every object with ``all: true``."""
        store = self._store(args, "delete_stored", create=False)
        if args.get("all") is True:
            names = list(store)
        elif "names" in args:
            raw = args["names"]
            if not isinstance(raw, list):
                raise TypeError("'names' must be a list of names")
            names = [_name(n) for n in raw]
        elif "name" in args:
            names = [_name(args["name"])]
        else:
            raise ValueError("'delete_stored' needs 'name', 'names' or 'all': true")
        deleted = [n for n in names if store.pop(n, _MISSING) is not _MISSING]
        session_id = args["session_id"]
        if not store:
            self.stores.pop(session_id, None)
            self._last_used.pop(session_id, None)
        return {
            "status": "ok",
            "deleted": deleted,
            "missing": [n for n in names if n not in deleted],
        }

    def handle_inspect(self, args: dict[str, Any]) -> dict[str, Any]:
        """Describe the stored ``name`` (a ref path) or the import path ``target``."""
        max_repr = args.get("max_repr", 500)
        if not isinstance(max_repr, int) or isinstance(max_repr, bool) or max_repr < 10:
            raise ValueError("'max_repr' must be an integer of at least 10")
        if ("name" in args) == ("target" in args):
            raise ValueError("'inspect' needs exactly one of 'name' or 'target'")
        if "target" in args:
            value = _import_target(args["target"])
            found: dict[str, Any] = {"target": args["target"]}
        else:
            value = _Scope(self._store(args, "inspect", create=False)).lookup(args["name"])
            found = {"name": args["name"]}
        found.update(describe(value, max_repr=min(max_repr, 100_000)))
        return {"status": "ok", **found}

    def handle_pipeline(self, args: dict[str, Any]) -> dict[str, Any]:
        """Run ``steps`` in order, each a call spec; a failed pipeline stores nothing."""
        steps = args.get("steps")
        if not isinstance(steps, list) or not steps:
            raise ValueError("'pipeline' needs 'steps': a non-empty list of call specs")
        results: dict[str, Any] = {}
        pending: dict[str, Any] = {}
        scope = _Scope(results, pending, self._session_layer(args))
        last: Any = None
        for index, step in enumerate(steps):
            _check_cancelled()
            label = f"step {index}"
            try:
                if not isinstance(step, dict):
                    raise TypeError(f"a step must be a map, not {type(step).__name__}")
                if "name" in step:
                    label += f" ({_name(step['name'])})"
                last = self._run_call(step, scope)
                if "name" in step:
                    results[step["name"]] = last
                if step.get("store_as") is not None:
                    self._store(args, "pipeline", create=False)  # refuse before running on
                    pending[_name(step["store_as"], "store_as")] = last
            except Exception as exc:
                raise PipelineError(f"{label} failed: {type(exc).__name__}: {exc}") from exc
        if pending:
            self._store(args, "pipeline", create=True).update(pending)
        output = args.get("output")
        if output is None:
            final = steps[-1].get("store_as")
            result = {"stored": self._stored_summary(final, last)} if final else to_wire(last)
        elif isinstance(output, list):
            result = {str(ref): to_wire(scope.lookup(ref)) for ref in output}
        else:
            result = to_wire(scope.lookup(output))
        return {
            "status": "ok",
            "steps": len(steps),
            "result": result,
            "stored": sorted(pending),
        }


def _session_ttl_from_env() -> float:
    raw = os.environ.get(ENV_SESSION_TTL)
    if raw is None:
        return _DEFAULT_SESSION_TTL
    try:
        ttl = float(raw)
    except ValueError:
        raise ValueError(f"{ENV_SESSION_TTL}={raw!r} is not a number of seconds") from None
    if not ttl >= 0:  # NaN fails too; inf means never
        raise ValueError(f"{ENV_SESSION_TTL}={raw!r} must be a number of seconds >= 0")
    return ttl


_MISSING = object()
