"""What both ends of the gRPC transport share: routes, payload encoding, the size-checked codec.

The contract is ``proto/snakepit.proto``; its betterproto2 code is in ``_grpc_generated``.
Payloads (arguments, results, chunks) are MessagePack inside ``bytes`` fields, packed the way
the stdio codec packs them (``str`` as str, ``bytes`` as bin, integer map keys allowed).
"""

from __future__ import annotations

from typing import Any, Final

import msgpack
from grpclib.const import Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError

from .protocol.framing import DEFAULT_MAX_FRAME_SIZE

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "ENV_CANCEL_GRACE",
    "ENV_MAX_MESSAGE_SIZE",
    "EXECUTE",
    "EXECUTE_STREAM",
    "HEALTH",
    "INFO",
    "SERVICE",
    "SHUTTING_DOWN_ERROR_TYPE",
    "TOO_LARGE_ERROR_TYPE",
    "SizeLimitedCodec",
    "pack",
    "unpack",
]

SERVICE: Final = "snakepit.v1.SnakepitBridge"
EXECUTE: Final = f"/{SERVICE}/Execute"
EXECUTE_STREAM: Final = f"/{SERVICE}/ExecuteStream"
HEALTH: Final = f"/{SERVICE}/Health"
INFO: Final = f"/{SERVICE}/Info"

#: The largest protobuf message either side sends or accepts (the pool passes its
#: ``max_frame_size`` to the worker in this variable).
ENV_MAX_MESSAGE_SIZE: Final = "SNAKEPIT_MAX_MESSAGE_SIZE"
#: How long a cancelled handler may take to stop before the worker exits (the pool passes
#: its ``cancel_grace``).
ENV_CANCEL_GRACE: Final = "SNAKEPIT_CANCEL_GRACE"
DEFAULT_MAX_MESSAGE_SIZE: Final = DEFAULT_MAX_FRAME_SIZE

SHUTTING_DOWN_ERROR_TYPE: Final = "ShuttingDown"
TOO_LARGE_ERROR_TYPE: Final = "MessageTooLarge"


def pack(value: Any) -> bytes:
    """MessagePack ``value`` (``TypeError`` or ``ValueError`` if it cannot travel)."""
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def unpack(data: bytes) -> Any:
    """Decode a MessagePack payload (``ValueError`` and friends if it is not one)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)


class SizeLimitedCodec(CodecBase):  # type: ignore[misc]
    """grpclib codec for betterproto2 messages that refuses messages over ``limit`` bytes.

    grpclib sets no limit of its own. A message may also be given already serialized
    (``bytes``), which lets the pool encode requests at the call site. The check on receipt
    runs once grpclib has buffered the message: the sender checks first, so this is a
    backstop against a misbehaving peer, not a memory bound.
    """

    __content_subtype__ = "proto"

    def __init__(self, limit: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.limit = limit

    def encode(self, message: Any, message_type: Any) -> bytes:
        data = bytes(message)
        if len(data) > self.limit:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"message of {len(data)} bytes is over the limit of {self.limit} bytes",
            )
        return data

    def decode(self, data: bytes, message_type: Any) -> Any:
        if len(data) > self.limit:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"received a message of {len(data)} bytes, over the limit of {self.limit} bytes",
            )
        return message_type.parse(data)
