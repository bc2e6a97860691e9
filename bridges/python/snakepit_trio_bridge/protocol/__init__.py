"""The sans-IO wire protocol of snakepit-trio, importable without trio, anyio or attrs.

``framing`` and ``codecs`` are what a worker needs; ``messages`` (attrs classes and the
pool-side connection state machine, with ``PendingFrame`` for decoding big frames off the
event loop) is imported on demand by the pool and by tests.
"""

from .codecs import CODECS, DEFAULT_MAX_CONTAINERS, JSON, MAX_DEPTH, MSGPACK, Codec, get_codec
from .framing import DEFAULT_MAX_FRAME_SIZE, HEADER_SIZE, FrameDecoder, ProtocolError, encode_frame

__all__ = [
    "CODECS",
    "DEFAULT_MAX_CONTAINERS",
    "DEFAULT_MAX_FRAME_SIZE",
    "HEADER_SIZE",
    "JSON",
    "MAX_DEPTH",
    "MSGPACK",
    "Codec",
    "FrameDecoder",
    "ProtocolError",
    "encode_frame",
    "get_codec",
]
