"""Length-prefixed framing: a 4-byte big-endian unsigned length, then the payload.

Pure and synchronous: feed bytes in, take whole payloads out. The size limit is checked
from the header, before any of the body is buffered, so a hostile length costs nothing.
"""

from __future__ import annotations

import struct

TYPE_CHECKING = False  # no ``typing`` import at run time (worker start-up)
if TYPE_CHECKING:
    from typing import NoReturn

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "HEADER_SIZE",
    "FrameDecoder",
    "ProtocolError",
    "encode_frame",
    "encode_frame_parts",
]

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024
_pack_header = HEADER.pack
_unpack_header = HEADER.unpack_from


class ProtocolError(Exception):
    """The peer broke the wire protocol (bad frame, bad payload, bad message).

    ``events``: when ``ClientConnection.receive_data`` raises it, the valid events that the
    same call completed before the violation, in order (they are answered, not lost).
    """

    events: tuple[object, ...] = ()


def encode_frame(payload: bytes, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """Return ``payload`` with its length header in front."""
    size = len(payload)
    if size > max_frame_size:
        raise ProtocolError(f"frame of {size} bytes exceeds the limit of {max_frame_size} bytes")
    return _pack_header(size) + payload


def encode_frame_parts(
    payload: bytes, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
) -> tuple[bytes, bytes]:
    """``(header, payload)``, for writers that send both with one ``writev``."""
    size = len(payload)
    if size > max_frame_size:
        raise ProtocolError(f"frame of {size} bytes exceeds the limit of {max_frame_size} bytes")
    return _pack_header(size), payload


class FrameDecoder:
    """Incremental decoder: ``feed()`` any chunking of the stream, get whole payloads back.

    After a :class:`ProtocolError` the decoder stays broken: the stream has lost its framing
    and nothing after the error can be trusted.
    """

    __slots__ = ("_buffer", "_error", "_max_frame_size", "_need")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if max_frame_size < 0 or max_frame_size > 0xFFFFFFFF:
            raise ValueError("max_frame_size must be between 0 and 2**32 - 1")
        self._max_frame_size = max_frame_size
        self._buffer = bytearray()
        # Length of the body being waited for, or -1 while waiting for a header.
        self._need = -1
        self._error: ProtocolError | None = None

    @property
    def max_frame_size(self) -> int:
        return self._max_frame_size

    @property
    def buffered(self) -> int:
        """Bytes received that are not yet part of a returned payload."""
        return len(self._buffer)

    @property
    def in_frame(self) -> bool:
        """True when a frame has started (some of its bytes arrived) but is incomplete."""
        # A parsed header leaves the buffer (only the body is kept), hence the _need check.
        return self._need >= 0 or bool(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add bytes from the stream; return the payloads they completed, in order.

        An oversize header raises :class:`ProtocolError` whose ``events`` are the payloads this
        call completed before it.
        """
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        if not buffer and type(data) is bytes:
            return self._feed_bytes(data)
        buffer += data
        frames: list[bytes] = []
        pos = 0
        end = len(buffer)
        need = self._need
        # Slicing a memoryview copies a payload once; slicing the bytearray would copy twice.
        view = memoryview(buffer)
        try:
            while True:
                if need < 0:
                    if end - pos < HEADER_SIZE:
                        break
                    (need,) = _unpack_header(buffer, pos)
                    if need > self._max_frame_size:
                        self._oversize(need, frames)
                    pos += HEADER_SIZE
                if end - pos < need:
                    break
                frames.append(view[pos : pos + need].tobytes())
                pos += need
                need = -1
        finally:
            view.release()
            if self._error is not None:
                self._buffer = bytearray()
        if pos:
            del buffer[:pos]
        self._need = need
        return frames

    def _oversize(self, need: int, frames: list[bytes]) -> NoReturn:
        """Break the decoder on a header over the limit; the frames before it go with the error."""
        self._error = ProtocolError(
            f"frame header announces {need} bytes, over the limit of {self._max_frame_size} bytes"
        )
        completed = ProtocolError(*self._error.args)
        completed.events = tuple(frames)
        raise completed

    def _feed_bytes(self, data: bytes) -> list[bytes]:
        """``feed`` when nothing is buffered (the common case: a read that starts on a frame
        boundary): slice the payloads straight out of ``data``, buffer only its tail."""
        frames: list[bytes] = []
        pos = 0
        end = len(data)
        need = self._need
        max_frame_size = self._max_frame_size
        while True:
            if need < 0:
                if end - pos < HEADER_SIZE:
                    break
                (need,) = _unpack_header(data, pos)
                if need > max_frame_size:
                    self._oversize(need, frames)
                pos += HEADER_SIZE
            if end - pos < need:
                break
            frames.append(data[pos : pos + need])
            pos += need
            need = -1
        if pos < end:
            if pos:
                with memoryview(data) as view:
                    self._buffer += view[pos:]
            else:
                self._buffer += data
        self._need = need
        return frames

    def check_eof(self) -> None:
        """Call at end of stream: raises :class:`ProtocolError` if it cut a frame short."""
        if self._error is not None:
            raise self._error
        if self.in_frame:
            have = len(self._buffer)
            if self._need >= 0:
                detail = f"{have} of {self._need} body bytes"
            else:
                detail = f"{have} of {HEADER_SIZE} header bytes"
            raise ProtocolError(f"stream ended inside a frame ({detail})")
