"""Just enough JSON for the negotiation handshake, without importing :mod:`json`.

The handshake is always JSON, but a worker that then speaks MessagePack never needs the
``json`` package, whose import (with ``re`` and ``enum``) costs ~8 ms, a third of a bare
interpreter's start-up. CPython's C accelerator ``_json`` parses and quotes strings without
those imports; anything it cannot do makes :func:`loads` return ``None`` and the caller falls
back to the real codec.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["dumps", "loads"]

_WHITESPACE = " \t\n\r"


class _ScanOptions:
    """The attributes ``_json.make_scanner`` reads: plain JSON, no hooks."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float


def loads(data: bytes) -> object | None:
    """Decode one JSON document, or return None when this fast path cannot."""
    try:
        from _json import make_scanner

        text = data.decode("utf-8")
        start = len(text) - len(text.lstrip(_WHITESPACE))
        value, end = make_scanner(_ScanOptions)(text, start)  # type: ignore[arg-type]
        if text[end:].strip(_WHITESPACE):
            return None
        return value  # type: ignore[no-any-return]
    except Exception:
        return None


def dumps(value: object) -> bytes:
    """Encode maps, lists, strings, finite numbers, booleans and None as compact JSON."""
    try:
        from _json import encode_basestring_ascii
    except ImportError:  # pragma: no cover - not CPython
        import json

        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("ascii")
    return _dump(value, encode_basestring_ascii).encode("ascii")


def _dump(value: object, quote: Callable[[str], str]) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("NaN and infinities are not JSON")
        return repr(value)
    if isinstance(value, dict):
        items = (f"{quote(str(k))}:{_dump(v, quote)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_dump(v, quote) for v in value) + "]"
    raise TypeError(f"{type(value).__name__} is not supported by the handshake encoder")
