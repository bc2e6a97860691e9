"""What both ends of the gRPC transport share: routes, payload encoding, the size-checked codec,
and the per-worker token.

The contract is ``proto/snakepit.proto``; its betterproto2 code is in ``_grpc_generated``.
Payloads (arguments, results, chunks) are MessagePack inside ``bytes`` fields, packed the way
the stdio codec packs them (``str`` as str, ``bytes`` as bin, integer map keys allowed).

The token: the pool makes a new random one for every worker process and hands it over in the
environment (``SNAKEPIT_GRPC_TOKEN``; never in argv, which any local user can read). Every
call carries it as ``authorization: Bearer <token>``; the worker answers a call without the
right one with ``UNAUTHENTICATED`` and nothing else. The other way round, the pool's first
call (``Info``) carries a random challenge, and the worker proves it holds the token by
answering with an HMAC of it, so the pool never talks to a process that squats a port the
worker held.
"""

from __future__ import annotations

import hmac
from typing import Any, Final

import msgpack
from grpclib.const import Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError

from .protocol.framing import DEFAULT_MAX_FRAME_SIZE

__all__ = [
    "CHALLENGE_KEY",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "ENV_CANCEL_GRACE",
    "ENV_MAX_MESSAGE_SIZE",
    "ENV_TOKEN",
    "EXECUTE",
    "EXECUTE_STREAM",
    "HEALTH",
    "INFO",
    "MIN_TOKEN_LENGTH",
    "PROOF_KEY",
    "SERVICE",
    "SHUTTING_DOWN_ERROR_TYPE",
    "TOKEN_KEY",
    "TOO_LARGE_ERROR_TYPE",
    "SizeLimitedCodec",
    "new_token",
    "pack",
    "proof",
    "token_matches",
    "token_metadata",
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
#: The worker's token (the pool sets it; the worker removes it from its environment).
ENV_TOKEN: Final = "SNAKEPIT_GRPC_TOKEN"
#: A worker refuses a shorter token (the pool's have 43 characters, 256 random bits).
MIN_TOKEN_LENGTH: Final = 32
#: Call metadata: the token (``Bearer <token>``), the pool's challenge and the worker's proof.
TOKEN_KEY: Final = "authorization"
CHALLENGE_KEY: Final = "snakepit-challenge"
PROOF_KEY: Final = "snakepit-proof"
_BEARER: Final = "Bearer "
_PROOF_LABEL: Final = b"snakepit-grpc worker proof\0"

SHUTTING_DOWN_ERROR_TYPE: Final = "ShuttingDown"
TOO_LARGE_ERROR_TYPE: Final = "MessageTooLarge"


def pack(value: Any) -> bytes:
    """MessagePack ``value`` (``TypeError`` or ``ValueError`` if it cannot travel)."""
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def unpack(data: bytes) -> Any:
    """Decode a MessagePack payload (``ValueError`` and friends if it is not one)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)


def new_token() -> str:
    """A fresh worker token: 256 random bits, URL-safe text."""
    import secrets

    return secrets.token_urlsafe(32)


def token_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token``."""
    return ((TOKEN_KEY, _BEARER + token),)


def token_matches(values: list[Any], expected: bytes) -> bool:
    """Whether the ``authorization`` values of a call are exactly one, the right one.

    Compared in constant time (as bytes: ``hmac.compare_digest`` refuses non-ASCII text).
    """
    if len(values) != 1 or not isinstance(values[0], str):
        return False
    given = values[0].encode("utf-8", "surrogatepass")
    return hmac.compare_digest(given, _BEARER.encode() + expected)


def proof(token: str, challenge: str) -> str:
    """What a worker holding ``token`` answers to ``challenge`` (an HMAC-SHA256, in hex)."""
    message = _PROOF_LABEL + challenge.encode("utf-8", "surrogatepass")
    return hmac.new(token.encode(), message, "sha256").hexdigest()


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
