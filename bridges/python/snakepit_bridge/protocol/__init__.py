"""The sans-IO wire protocol of snakepit-trio, importable without trio, anyio or attrs.

``framing`` and ``codecs`` are what a worker needs; ``messages`` (attrs classes and the
pool-side connection state machine) is imported on demand by the pool and by tests.
"""

from .codecs import CODECS, JSON, MSGPACK, Codec, get_codec
from .framing import DEFAULT_MAX_FRAME_SIZE, HEADER_SIZE, FrameDecoder, ProtocolError, encode_frame

__all__ = [
    "CODECS",
    "DEFAULT_MAX_FRAME_SIZE",
    "HEADER_SIZE",
    "JSON",
    "MSGPACK",
    "Codec",
    "FrameDecoder",
    "ProtocolError",
    "encode_frame",
    "get_codec",
]
