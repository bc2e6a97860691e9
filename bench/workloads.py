"""The work every contender does, and the payloads they carry.

Child processes of the peers (ProcessPoolExecutor, multiprocessing.Pool, trio-parallel,
anyio.to_process) import this module to find ``echo``; keep it free of trio and anyio.
"""

from __future__ import annotations

from typing import Any

SMALL: dict[str, Any] = {
    "id": 123456,
    "user": "snakepit",
    "op": "echo",
    "values": [1.5, 2.5, 3.5, 4.5],
    "flags": {"fast": True, "retry": False},
    "tags": ["bench", "trio", "stdio"],
    "note": "a small request of about 100 bytes",
}
"""The small request: about 100 bytes as MessagePack."""

MIB = 1 << 20


def big_payload(size: int = MIB) -> dict[str, bytes]:
    """The large request: one ``bytes`` value (incompressible pattern, not zeros)."""
    block = bytes(range(256))
    return {"data": (block * (size // len(block) + 1))[:size]}


def echo(value: Any) -> Any:
    """The whole job: hand the argument back (the peers call this in their workers)."""
    return value
