"""SessionStore: sessions with a TTL, per-session programs and global programs.

Times are monotonic (the pool passes its event loop's clock, so trio's MockClock drives
expiry in tests). Every read through ``get_session`` touches the session.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import attrs

from ._errors import SessionError

__all__ = ["Session", "SessionStore", "validate_session_id"]

_SESSION_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def validate_session_id(session_id: object) -> str:
    """Return ``session_id`` if it is a str of 1-128 safe characters, else raise SessionError."""
    if not isinstance(session_id, str):
        raise SessionError(f"session id must be a str, not {type(session_id).__name__}")
    if not _SESSION_ID.fullmatch(session_id):
        raise SessionError(
            f"invalid session id {session_id[:40]!r}: use 1-128 characters from "
            "A-Z a-z 0-9 . _ : @ / + = -"
        )
    return session_id


@attrs.define
class Session:
    """One session: its data, programs and the worker that served it last."""

    id: str
    created_at: float
    """When it was created, on the store's clock (monotonic seconds)."""
    last_accessed: float
    """When it was last read or used, on the store's clock."""
    ttl: float
    """Seconds it lives after its last access."""
    data: dict[str, Any] = attrs.field(factory=dict)
    """Free for the application's use."""
    programs: dict[str, Any] = attrs.field(factory=dict)
    """Its programs, by id (see ``create_program``)."""
    metadata: dict[str, Any] = attrs.field(factory=dict)
    last_worker_id: int | None = None
    """The worker that served it last (its calls go there first)."""

    def expires_at(self) -> float:
        """When it expires unless it is used again, on the store's clock."""
        return self.last_accessed + self.ttl


@attrs.define
class _Program:
    value: Any
    expires_at: float | None


class SessionStore:
    """In-memory session store. Not thread-safe: use it from the pool's event loop."""

    def __init__(
        self,
        *,
        default_ttl: float = 3600.0,
        max_sessions: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: Seconds a session lives after its last access, unless it was given its own ttl.
        self.default_ttl: float = default_ttl
        #: Most live sessions at once; None: no limit.
        self.max_sessions: int | None = max_sessions
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._global_programs: dict[str, _Program] = {}
        self._created = 0
        self._expired = 0
        self._deleted = 0

    # -- sessions
    def create_session(
        self,
        session_id: str,
        *,
        ttl: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Session:
        """Create ``session_id`` (or return it, touched, if it exists and is alive)."""
        validate_session_id(session_id)
        existing = self.get_session(session_id)
        if existing is not None:
            return existing
        if self.max_sessions is not None and len(self._sessions) >= self.max_sessions:
            self.cleanup_expired_sessions()
            if len(self._sessions) >= self.max_sessions:
                raise SessionError(f"session quota reached ({self.max_sessions} sessions)")
        now = self._clock()
        session = Session(
            id=session_id,
            created_at=now,
            last_accessed=now,
            ttl=self.default_ttl if ttl is None else ttl,
            metadata=dict(metadata or {}),
        )
        self._sessions[session_id] = session
        self._created += 1
        return session

    def get_session(self, session_id: str) -> Session | None:
        """The live session (touched), or None if it does not exist or has expired."""
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if now >= session.expires_at():
            del self._sessions[session_id]
            self._expired += 1
            return None
        session.last_accessed = now
        return session

    def update_session(self, session_id: str, fn: Callable[[Session], Session | None]) -> Session:
        """Apply ``fn`` to the session (it may mutate it or return a replacement)."""
        session = self.get_session(session_id)
        if session is None:
            raise SessionError(f"no session {session_id!r}")
        result = fn(session)
        if result is not None:
            if result.id != session_id:
                raise SessionError("update_session must not change the session id")
            self._sessions[session_id] = result
            session = result
        return session

    def delete_session(self, session_id: str) -> bool:
        """Remove the session; True if it existed."""
        if self._sessions.pop(session_id, None) is None:
            return False
        self._deleted += 1
        return True

    def session_exists(self, session_id: str) -> bool:
        """Whether the session exists and has not expired (it is not touched)."""
        session = self._sessions.get(session_id)
        return session is not None and self._clock() < session.expires_at()

    def list_sessions(self) -> list[str]:
        """The ids of the live sessions."""
        now = self._clock()
        return [sid for sid, s in self._sessions.items() if now < s.expires_at()]

    def cleanup_expired_sessions(self) -> int:
        """Drop expired sessions and global programs; returns how many sessions were dropped."""
        now = self._clock()
        expired = [sid for sid, s in self._sessions.items() if now >= s.expires_at()]
        for sid in expired:
            del self._sessions[sid]
        self._expired += len(expired)
        stale = [
            pid
            for pid, p in self._global_programs.items()
            if p.expires_at is not None and now >= p.expires_at
        ]
        for pid in stale:
            del self._global_programs[pid]
        return len(expired)

    # -- programs
    def store_program(self, session_id: str, program_id: str, program: Any) -> None:
        """Keep ``program`` as ``program_id`` in the session; SessionError if there is none."""
        session = self.get_session(session_id)
        if session is None:
            raise SessionError(f"no session {session_id!r}")
        session.programs[program_id] = program

    def get_program(self, session_id: str, program_id: str) -> Any | None:
        """The session's program ``program_id``, or None."""
        session = self.get_session(session_id)
        if session is None:
            return None
        return session.programs.get(program_id)

    def store_global_program(
        self, program_id: str, program: Any, *, ttl: float | None = None
    ) -> None:
        """Store a program visible to every session; ``ttl`` None keeps it until deleted."""
        expires = None if ttl is None else self._clock() + ttl
        self._global_programs[program_id] = _Program(program, expires)

    def get_global_program(self, program_id: str) -> Any | None:
        """The global program ``program_id``, or None if there is none or it expired."""
        entry = self._global_programs.get(program_id)
        if entry is None:
            return None
        if entry.expires_at is not None and self._clock() >= entry.expires_at:
            del self._global_programs[program_id]
            return None
        return entry.value

    def delete_global_program(self, program_id: str) -> bool:
        """Remove the global program; True if it existed."""
        return self._global_programs.pop(program_id, None) is not None

    # -- stats
    def get_stats(self) -> dict[str, int]:
        """Counts: live ``sessions``, sessions ``created``, ``expired`` and ``deleted`` so
        far, ``global_programs``, and ``programs`` held by sessions."""
        return {
            "sessions": len(self.list_sessions()),
            "created": self._created,
            "expired": self._expired,
            "deleted": self._deleted,
            "global_programs": len(self._global_programs),
            "programs": sum(len(s.programs) for s in self._sessions.values()),
        }

    def __len__(self) -> int:
        """The number of live sessions."""
        return len(self.list_sessions())
