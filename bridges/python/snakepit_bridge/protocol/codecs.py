"""Payload codecs: JSON and MessagePack.

Both turn a payload (``bytes``) into plain Python values and back. Every failure to decode is
a :class:`~snakepit_bridge.protocol.framing.ProtocolError`; nothing else escapes ``decode``.

Bytes: MessagePack carries them natively (bin). JSON has no bytes type, so a ``bytes`` value
travels as the one-key object ``{"__bytes__": "<base64>"}`` and is turned back into ``bytes``
on decode.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Final

import msgpack

from .framing import ProtocolError

__all__ = ["CODECS", "JSON", "MSGPACK", "Codec", "JsonCodec", "MsgpackCodec", "get_codec"]

BYTES_KEY: Final = "__bytes__"


class Codec:
    """Interface of a payload codec."""

    name: str = ""

    def encode(self, value: Any) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, payload: bytes) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {BYTES_KEY: base64.b64encode(value).decode("ascii")}
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)  # type: ignore[arg-type]
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _json_object_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and BYTES_KEY in obj:
        data = obj[BYTES_KEY]
        if isinstance(data, str):
            return base64.b64decode(data, validate=True)
    return obj


class JsonCodec(Codec):
    """UTF-8 JSON; bytes as ``{"__bytes__": base64}``; NaN and infinities refused."""

    name = "json"

    def __init__(self) -> None:
        self._encoder = json.JSONEncoder(
            default=_json_default, allow_nan=False, ensure_ascii=False, separators=(",", ":")
        )
        self._decoder = json.JSONDecoder(object_hook=_json_object_hook)

    def encode(self, value: Any) -> bytes:
        return self._encoder.encode(value).encode("utf-8")

    def decode(self, payload: bytes) -> Any:
        try:
            return self._decoder.decode(payload.decode("utf-8"))
        except RecursionError:
            raise ProtocolError("JSON payload is nested too deeply") from None
        except Exception as exc:
            raise ProtocolError(f"invalid JSON payload: {exc}") from None


class MsgpackCodec(Codec):
    """MessagePack with str/bin distinction; unpacking is bounded by the payload size."""

    name = "msgpack"

    def __init__(self) -> None:
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)

    def encode(self, value: Any) -> bytes:
        try:
            return self._packer.pack(value)
        except Exception:
            # A failed pack leaves the packer's buffer dirty; start over with a fresh one.
            self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)
            raise

    def decode(self, payload: bytes) -> Any:
        try:
            # unpackb bounds container sizes by the payload length, so a five-byte payload
            # that declares a billion-element array fails at once instead of allocating.
            return msgpack.unpackb(payload, raw=False, strict_map_key=False, use_list=True)
        except Exception as exc:
            raise ProtocolError(f"invalid MessagePack payload: {exc!r}") from None


JSON: Final[Codec] = JsonCodec()
MSGPACK: Final[Codec] = MsgpackCodec()
CODECS: Final[dict[str, Codec]] = {"json": JSON, "msgpack": MSGPACK}


def get_codec(name: str) -> Codec:
    """Return a fresh codec instance (each owns its packer; use one per thread)."""
    if name == "json":
        return JsonCodec()
    if name == "msgpack":
        return MsgpackCodec()
    raise ProtocolError(f"unknown codec {name!r} (expected 'json' or 'msgpack')")
