"""Programs: named command templates kept in the pool's session store and run on demand.

A program is a command and its arguments, stored once (per session, or globally) and run
many times with different inputs. ``{"$input": "name"}`` anywhere in the arguments is
replaced by ``inputs["name"]`` on the pool side when the program runs; everything else
(the enhanced bridge's ``{"$ref": ...}`` included) travels as written.

Definitions accepted by :func:`create_program` (all plain data):

- ``{"command": "compute", "args": {...}}``: any command, for any bridge;
- ``{"steps": [...], "output": ...}``: the enhanced bridge's ``pipeline``;
- ``{"target": "pkg.mod:func", "args": [...], ...}`` or ``{"object": ..., "method": ...}``:
  the enhanced bridge's ``call``.

Each may carry ``"timeout"`` (seconds), the default timeout of its runs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio.lowlevel
import attrs

from ._errors import SessionError
from ._sessions import validate_session_id

if TYPE_CHECKING:
    from ._pool import Pool

__all__ = ["INPUT", "Program", "create_global_program", "create_program", "execute_program"]

#: The placeholder key: ``{"$input": "name"}`` stands for ``inputs["name"]``.
INPUT = "$input"


@attrs.frozen
class Program:
    """A stored command template; see the module doc for how one is defined."""

    command: str
    args: dict[str, Any]
    timeout: float | None = None

    @classmethod
    def from_definition(cls, definition: Mapping[str, Any] | Program) -> Program:
        """Normalize a definition (a copy is kept: later changes to it do not leak in)."""
        if isinstance(definition, Program):
            return definition
        if not isinstance(definition, Mapping):
            raise TypeError(f"a program must be a mapping, not {type(definition).__name__}")
        spec = copy.deepcopy(dict(definition))
        timeout = spec.pop("timeout", None)
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            raise ValueError(f"a program's timeout must be a positive number, not {timeout!r}")
        if "command" in spec:
            command, args = spec.pop("command"), spec.pop("args", {})
            if spec:
                raise ValueError(f"unexpected keys beside 'command' and 'args': {sorted(spec)}")
            if not isinstance(command, str) or not command:
                raise TypeError(f"'command' must be a non-empty str, not {command!r}")
            if not isinstance(args, Mapping):
                raise TypeError(f"'args' of a command program must be a mapping, not {args!r}")
            return cls(command, dict(args), timeout)
        if "steps" in spec:
            if not isinstance(spec["steps"], list) or not spec["steps"]:
                raise ValueError("'steps' must be a non-empty list of call specs")
            return cls("pipeline", spec, timeout)
        if "target" in spec or "object" in spec:
            return cls("call", spec, timeout)
        raise ValueError(
            "a program needs 'command' (any command), 'steps' (a pipeline) or "
            "'target'/'object' (a call)"
        )

    def inputs(self) -> set[str]:
        """The names of the ``{"$input": name}`` placeholders in the arguments."""
        found: set[str] = set()
        _substitute(self.args, None, found)
        return found

    def bind(self, inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The arguments with every placeholder replaced; ``KeyError`` names a missing input."""
        bound: dict[str, Any] = _substitute(self.args, inputs or {}, set())
        return bound


def _substitute(value: Any, inputs: Mapping[str, Any] | None, seen: set[str]) -> Any:
    """Replace placeholders (``inputs`` None: only collect their names into ``seen``)."""
    if isinstance(value, dict):
        if len(value) == 1 and INPUT in value:
            name = value[INPUT]
            if not isinstance(name, str):
                raise TypeError(f"an {INPUT} placeholder needs a str name, not {name!r}")
            seen.add(name)
            if inputs is None:
                return value
            if name not in inputs:
                raise KeyError(f"the program needs the input {name!r}")
            return inputs[name]
        return {k: _substitute(v, inputs, seen) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, inputs, seen) for v in value]
    return value


def create_program(
    pool: Pool, session_id: str, program_id: str, program: Mapping[str, Any] | Program
) -> Program:
    """Store ``program`` as ``program_id`` in the session (created if needed); replaces any."""
    validate_session_id(session_id)
    normalized = Program.from_definition(program)
    pool.sessions.create_session(session_id)
    pool.sessions.store_program(session_id, _program_id(program_id), normalized)
    return normalized


def create_global_program(
    pool: Pool,
    program_id: str,
    program: Mapping[str, Any] | Program,
    *,
    ttl: float | None = None,
) -> Program:
    """Store ``program`` for every session (``ttl`` seconds, or until replaced)."""
    normalized = Program.from_definition(program)
    pool.sessions.store_global_program(_program_id(program_id), normalized, ttl=ttl)
    return normalized


async def execute_program(
    pool: Pool,
    session_id: str,
    program_id: str,
    inputs: Mapping[str, Any] | None = None,
    *,
    timeout: float | None = None,
) -> Any:
    """Run the session's program ``program_id`` (else the global one) on the session's worker.

    ``inputs`` fill the ``{"$input": name}`` placeholders. Raises ``SessionError`` when no
    such program exists and ``ValueError`` when an input is missing; otherwise it behaves like
    ``pool.execute_in_session`` (same errors, same ``timeout``; default: the program's).
    """
    try:
        validate_session_id(session_id)
        stored = pool.sessions.get_program(session_id, program_id)
        if stored is None:
            stored = pool.sessions.get_global_program(program_id)
        if stored is None:
            raise SessionError(
                f"no program {program_id!r} in session {session_id!r}, and no global one"
            )
        program = Program.from_definition(stored)
        try:
            args = program.bind(inputs)
        except KeyError as exc:
            raise ValueError(f"program {program_id!r}: {exc.args[0]}") from None
    except Exception:
        # Fail as trio's own calls do: after a checkpoint, so that a call made in a
        # cancelled scope raises Cancelled.
        await anyio.lowlevel.checkpoint()
        raise
    return await pool.execute_in_session(
        session_id,
        program.command,
        args,
        timeout=timeout if timeout is not None else program.timeout,
    )


def _program_id(program_id: object) -> str:
    if not isinstance(program_id, str) or not program_id:
        raise TypeError(f"a program id must be a non-empty str, not {program_id!r}")
    return program_id
