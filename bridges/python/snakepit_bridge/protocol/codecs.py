"""Payload codecs: JSON and MessagePack.

Both turn a payload (``bytes``) into plain Python values and back. Every failure to decode is
a :class:`~snakepit_bridge.protocol.framing.ProtocolError`; nothing else escapes ``decode``.

Bytes: MessagePack carries them natively (bin). JSON has no bytes type, so a ``bytes`` value
travels as the one-key object ``{"__bytes__": "<base64>"}`` and is turned back into ``bytes``
on decode.
"""

from __future__ import annotations

from .framing import ProtocolError

# Worker start-up cost matters (see DESIGN.md): keep ``typing``, ``json`` and ``base64`` out of
# the import path. ``json`` is loaded on first use of a JSON codec, ``base64`` on first bytes.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import json
    from typing import Any, Final

try:
    import msgpack
except ImportError:  # pragma: no cover - a dependency; a bare interpreter still speaks JSON
    msgpack = None

MSGPACK_AVAILABLE: Final = msgpack is not None

__all__ = [
    "CODECS",
    "JSON",
    "MSGPACK",
    "MSGPACK_AVAILABLE",
    "Codec",
    "JsonCodec",
    "MsgpackCodec",
    "get_codec",
]

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
        import base64

        return {BYTES_KEY: base64.b64encode(value).decode("ascii")}
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)  # type: ignore[arg-type]
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _json_object_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and BYTES_KEY in obj:
        data = obj[BYTES_KEY]
        if isinstance(data, str):
            import base64

            return base64.b64decode(data, validate=True)
    return obj


class JsonCodec(Codec):
    """UTF-8 JSON; bytes as ``{"__bytes__": base64}``; NaN and infinities refused."""

    name = "json"

    def __init__(self) -> None:
        # Built on first use, so that importing this module does not import ``json``.
        self._encoder: json.JSONEncoder | None = None
        self._decoder: json.JSONDecoder | None = None

    def _load(self) -> tuple[json.JSONEncoder, json.JSONDecoder]:
        import json

        self._encoder = json.JSONEncoder(
            default=_json_default, allow_nan=False, ensure_ascii=False, separators=(",", ":")
        )
        self._decoder = json.JSONDecoder(object_hook=_json_object_hook)
        return self._encoder, self._decoder

    def encode(self, value: Any) -> bytes:
        encoder = self._encoder or self._load()[0]
        return encoder.encode(value).encode("utf-8")

    def decode(self, payload: bytes) -> Any:
        decoder = self._decoder or self._load()[1]
        try:
            return decoder.decode(payload.decode("utf-8"))
        except RecursionError:
            raise ProtocolError("JSON payload is nested too deeply") from None
        except Exception as exc:
            raise ProtocolError(f"invalid JSON payload: {exc}") from None


class MsgpackCodec(Codec):
    """MessagePack with str/bin distinction; unpacking is bounded by the payload size."""

    name = "msgpack"

    def __init__(self) -> None:
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True) if msgpack else None

    def encode(self, value: Any) -> bytes:
        if self._packer is None:
            raise ProtocolError("msgpack is not installed")
        try:
            packed: bytes = self._packer.pack(value)
            return packed
        except Exception:
            # A failed pack leaves the packer's buffer dirty; start over with a fresh one.
            self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)
            raise

    def decode(self, payload: bytes) -> Any:
        if msgpack is None:
            raise ProtocolError("msgpack is not installed")
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
