"""Payload codecs: JSON and MessagePack.

Both turn a payload (``bytes``) into plain Python values and back. Every failure to decode is
a :class:`~snakepit_trio_bridge.protocol.framing.ProtocolError`; nothing else escapes ``decode``.

Bytes: MessagePack carries them natively (bin). JSON has no bytes type, so a ``bytes`` value
travels as the one-key object ``{"__bytes__": "<base64>"}`` and is turned back into ``bytes``
on decode.

Limits: a payload decodes to at most ``max_containers`` maps and arrays in all, nested at most
:data:`MAX_DEPTH` deep; beyond either it is a ``ProtocolError``. A payload no longer than
``min(max_containers, CHECKED_OVER)`` bytes cannot break the count (each container takes a
byte at least) and takes the plain C decoder. A longer one takes the checked path: the count
is kept as containers are built, and the work is cut into slices of about :data:`SLICE` bytes
with Python code in between, so that decoding it in a thread lets other threads (the pool's
event loop) run: one call into a C decoder holds the GIL for all of its work.
"""

from __future__ import annotations

from .framing import ProtocolError

# Worker start-up cost matters (see DESIGN.md): keep ``typing``, ``json``, ``re`` and ``base64``
# out of the import path. ``json`` is loaded on first use of a JSON codec, ``re`` on the first
# big JSON payload, ``base64`` on first bytes.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import json
    from collections.abc import Callable
    from typing import Any, Final

try:
    import msgpack
except ImportError:  # pragma: no cover - a dependency; a bare interpreter still speaks JSON
    msgpack = None

MSGPACK_AVAILABLE: Final = msgpack is not None

__all__ = [
    "CHECKED_OVER",
    "CODECS",
    "DEFAULT_MAX_CONTAINERS",
    "JSON",
    "MAX_DEPTH",
    "MSGPACK",
    "MSGPACK_AVAILABLE",
    "SLICE",
    "Codec",
    "JsonCodec",
    "MsgpackCodec",
    "get_codec",
]

BYTES_KEY: Final = "__bytes__"

#: Maps and arrays one payload may decode to, in all (the root and every nested one).
DEFAULT_MAX_CONTAINERS: Final = 1 << 20
#: Deepest nesting of maps and arrays: MessagePack's own limit (its C unpacker keeps a
#: 1024-entry stack), which the checked JSON path applies too. Plain JSON decoding stops a
#: little earlier, at the interpreter's recursion limit.
MAX_DEPTH: Final = 1024
#: Payloads longer than this (or than ``max_containers``) take the checked path.
CHECKED_OVER: Final = 256 * 1024
#: About how many payload bytes the checked path hands to a C decoder at once. A slice of
#: the slowest scalars holds the GIL for a few ms (64 KiB of one-byte integers: ~4 ms);
#: containers go through a Python hook anyway.
SLICE: Final = 64 * 1024


class Codec:
    """Interface of a payload codec."""

    name: str = ""
    max_containers: int = DEFAULT_MAX_CONTAINERS

    def encode(self, value: Any) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, payload: bytes) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def plain_decoder(self) -> tuple[Callable[[bytes], Any], int]:
        """``(decode, size)``: a function that decodes payloads of at most ``size`` bytes as
        :meth:`decode` does, without checking their size (for a caller that has its length
        at hand already, such as ``ClientConnection``)."""
        return self.decode, 1 << 63

    def decodes_quickly(self, payload: bytes) -> bool:
        """True when decoding ``payload``, however long, costs about a copy of it, so that
        moving it to a thread would cost more than it saves (a MessagePack value of a few
        items, such as a response whose result is one big bin)."""
        return False


def _check_limit(max_containers: int) -> int:
    if type(max_containers) is not int or max_containers < 1:
        raise ValueError(f"max_containers must be a positive integer, not {max_containers!r}")
    return max_containers


def _too_many(codec: str, max_containers: int) -> ProtocolError:
    what = "maps, arrays and ext values" if codec == "MessagePack" else "maps and arrays"
    return ProtocolError(
        f"{codec} payload holds more than {max_containers} {what} "
        "(the limit per frame, max_containers)"
    )


def _too_deep(codec: str) -> ProtocolError:
    return ProtocolError(f"{codec} payload is nested deeper than {MAX_DEPTH} levels")


# --------------------------------------------------------------------------- JSON


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

    def __init__(self, max_containers: int = DEFAULT_MAX_CONTAINERS) -> None:
        self.max_containers = _check_limit(max_containers)
        # JSON needs two bytes a container ("[]"), so shorter payloads cannot break the count.
        self._checked_over = min(2 * max_containers, CHECKED_OVER)
        self._window = SLICE
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
        try:
            if len(payload) > self._checked_over or _maybe_too_deep(payload):
                return _JsonParser(payload.decode("utf-8"), self).parse()
            decoder = self._decoder or self._load()[1]
            return decoder.decode(payload.decode("utf-8"))
        except Exception as exc:
            raise _json_error(exc) from None

    def plain_decoder(self) -> tuple[Callable[[bytes], Any], int]:
        return self._decode_plain, self._checked_over

    def _decode_plain(self, payload: bytes) -> Any:
        if _maybe_too_deep(payload):
            return self.decode(payload)
        try:
            decoder = self._decoder or self._load()[1]
            return decoder.decode(payload.decode("utf-8"))
        except Exception as exc:
            raise _json_error(exc) from None


def _maybe_too_deep(payload: bytes) -> bool:
    """Whether a JSON payload could nest deeper than ``MAX_DEPTH``: then the checked parser
    decodes it. The C decoder stopped at the recursion limit (~1000) up to Python 3.12; from
    3.13 it goes far deeper, so the limit must be checked. Two ``count`` calls, and only for
    payloads long enough to hold that many brackets."""
    return len(payload) > 2 * MAX_DEPTH and payload.count(b"[") + payload.count(b"{") > MAX_DEPTH


def _json_error(exc: Exception) -> ProtocolError:
    if isinstance(exc, ProtocolError):
        return exc
    if isinstance(exc, RecursionError):
        return ProtocolError("JSON payload is nested too deeply")
    return ProtocolError(f"invalid JSON payload: {exc}")


class _JsonParser:
    """The checked JSON path: maps and arrays are opened here, in Python, and runs of their
    members are handed to the C decoder a window at a time.

    A run is the text from a member's start to a comma before the window's end where every
    kind of bracket opened in the run is closed again (so, barring brackets inside strings, a
    whole number of members). Wrapped in the container's own brackets it decodes only if it
    really is whole members: a cut inside a string, a number or a nested container leaves the
    wrapper unbalanced. A run that does not decode is parsed member by member here, which
    finds the real error if there is one, and runs resume after it: each byte goes through
    the C decoder at most twice.

    Counting: maps the C decoder builds go through its hook. Arrays in a run are counted by
    the run's ``[`` characters, an upper bound (a string may hold some); only when the bounds
    would break the limit are the runs walked to count them exactly.
    """

    def __init__(self, text: str, codec: JsonCodec) -> None:
        import json
        import re
        import sys

        self.text = text
        self.end = len(text)
        self.window = codec._window
        self.max_containers = codec.max_containers
        self.count = 0  # containers counted exactly
        self.bound = 0  # plus at most this many arrays, in the runs listed in ``unsure``
        self.unsure: list[tuple[Any, int]] = []
        self.run_maps = 0  # maps the hook counted in the run being decoded
        self.no_runs_before = 0  # a run failed: parse up to here member by member
        self.recursion_limit = sys.getrecursionlimit()
        self.whitespace = re.compile(r"[ \t\n\r]*").match
        self.number = re.compile(r"(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][-+]?[0-9]+)?").match
        try:
            from _json import scanstring
        except ImportError:  # pragma: no cover - not CPython
            scanstring = vars(json.decoder)["scanstring"]
        self.scanstring = scanstring
        self.decode_run = json.JSONDecoder(object_hook=self.counted_map).decode

    def parse(self) -> Any:
        text, skip_ws = self.text, self.skip_ws
        # Open containers, innermost last; for each map, the key waiting for its value.
        stack: list[Any] = []
        keys: list[str] = []
        pos = skip_ws(text, 0)
        while True:
            # A value starts at ``pos``.
            char = text[pos : pos + 1]
            value: Any
            if char == "[" or char == "{":
                self.charge(1)
                if len(stack) >= MAX_DEPTH:
                    raise _too_deep("JSON")
                pos = skip_ws(text, pos + 1)
                if char == "[":
                    if text.startswith("]", pos):
                        value, pos = [], pos + 1
                    else:
                        stack.append([])
                        pos = self.run(stack[-1], pos, len(stack))
                        continue
                elif text.startswith("}", pos):
                    value, pos = _json_object_hook({}), pos + 1
                else:
                    stack.append({})
                    key, pos = self.key(pos)
                    keys.append(key)
                    continue
            elif char == '"':
                value, pos = self.scanstring(text, pos + 1, True)
            else:
                value, pos = self.scalar(pos)
            # Store the value, then close every container that ends right after it.
            while True:
                pos = skip_ws(text, pos)
                if not stack:
                    if pos != self.end:
                        raise ValueError(f"extra data at char {pos}")
                    return value
                top = stack[-1]
                char = text[pos : pos + 1]
                if type(top) is list:
                    top.append(value)
                    if char == ",":
                        pos = self.run(top, skip_ws(text, pos + 1), len(stack))
                        break
                    if char != "]":
                        raise ValueError(f"expecting ',' or ']' at char {pos}")
                    value = stack.pop()
                else:
                    top[keys[-1]] = value
                    if char == ",":
                        pos = self.run(top, skip_ws(text, pos + 1), len(stack))
                        keys[-1], pos = self.key(pos)
                        break
                    if char != "}":
                        raise ValueError(f"expecting ',' or '}}' at char {pos}")
                    stack.pop()
                    keys.pop()
                    value = _json_object_hook(top)
                pos += 1

    def skip_ws(self, text: str, pos: int) -> int:
        """Where the first character that is not JSON whitespace is, from ``pos`` on."""
        match = self.whitespace(text, pos)
        return pos if match is None else match.end()  # it matches "" at least

    def charge(self, containers: int) -> None:
        """Count ``containers`` more; raise once the limit is certainly broken."""
        self.count += containers
        if self.count + self.bound > self.max_containers:
            if self.unsure:
                unsure, self.unsure, self.bound = self.unsure, [], 0
                for part, depth in unsure:
                    self.walk(part, depth)
            if self.count > self.max_containers:
                raise _too_many("JSON", self.max_containers)

    def counted_map(self, obj: dict[str, Any]) -> Any:
        """The hook of the maps the C decoder builds in a run."""
        self.run_maps += 1
        self.charge(1)
        return _json_object_hook(obj)

    def key(self, pos: int) -> tuple[str, int]:
        text = self.text
        if not text.startswith('"', pos):
            raise ValueError(f"expecting a property name in double quotes at char {pos}")
        key, pos = self.scanstring(text, pos + 1, True)
        pos = self.skip_ws(text, pos)
        if not text.startswith(":", pos):
            raise ValueError(f"expecting ':' at char {pos}")
        return key, self.skip_ws(text, pos + 1)

    def scalar(self, pos: int) -> tuple[Any, int]:
        text = self.text
        match = self.number(text, pos)
        if match is not None:
            integer, frac, exp = match.groups()
            if frac or exp:
                return float(integer + (frac or "") + (exp or "")), match.end()
            return int(integer), match.end()
        for word, value in _JSON_WORDS:
            if text.startswith(word, pos):
                return value, pos + len(word)
        raise ValueError(f"expecting value at char {pos}")

    def run(self, container: list[Any] | dict[str, Any], pos: int, depth: int) -> int:
        """Decode whole members of ``container`` (open at ``depth``) from ``pos`` with one C
        call, if a run is found there; return where parsing goes on (``pos`` when nothing was
        decoded)."""
        if pos < self.no_runs_before:
            return pos
        text = self.text
        count = text.count
        is_list = type(container) is list
        limit = min(pos + self.window, self.end)
        # Where no run is found, parse member by member up to ``limit`` before trying again
        # (so that a window is searched once, not once per member).
        self.no_runs_before = limit
        # A closing bracket of the container's kind before any opening one is (unless a
        # string holds it) the container's own end: the run stops there.
        opener, closer = ("[", "]") if is_list else ("{", "}")
        closed = text.find(closer, pos, limit)
        if closed >= 0 and text.find(opener, pos, closed) < 0:
            limit = closed
        cut = text.rfind(",", pos, limit)
        if cut <= pos:
            return pos
        maps, arrays = count("{", pos, cut), count("[", pos, cut)
        ends = count("}", pos, cut), count("]", pos, cut)
        for _ in range(32):
            if (maps, arrays) == ends:
                break
            # The cut is inside a member: back off to the end of a member that is a
            # container, else to the comma before.
            previous = max(text.rfind("],", pos, cut), text.rfind("},", pos, cut)) + 1
            if previous <= pos:
                previous = text.rfind(",", pos, cut)
            if previous <= pos:
                return pos
            maps -= count("{", previous, cut)
            arrays -= count("[", previous, cut)
            ends = ends[0] - count("}", previous, cut), ends[1] - count("]", previous, cut)
            cut = previous
        else:
            return pos
        self.run_maps = 0
        if not is_list:
            self.count -= 1  # the wrapper map goes through the hook too
        try:
            if is_list:
                part: Any = self.decode_run("[" + text[pos:cut] + "]")
            else:
                part = self.decode_run("{" + text[pos:cut] + "}")
                if type(part) is not dict:  # the wrapper read as {"__bytes__": ...}
                    raise ValueError("not a run of members")
        except (ValueError, RecursionError):
            self.no_runs_before = cut
            # The member by member pass counts those maps again.
            self.count -= self.run_maps - (0 if is_list else 1)
            return pos
        # The run nests no deeper than its brackets, nor (in C) than the recursion limit.
        if depth + min(maps + arrays, self.recursion_limit) > MAX_DEPTH:
            self.walk(part, depth)
        elif arrays:
            self.unsure.append((part, depth))
            self.bound += arrays
            self.charge(0)
        if type(container) is list:
            container.extend(part)
        elif type(container) is dict:
            container.update(part)
        self.no_runs_before = 0
        return self.skip_ws(text, cut + 1)

    def walk(self, part: list[Any] | dict[str, Any], depth: int) -> None:
        """Count the arrays in what a run decoded and check how deep they nest (its maps went
        through the hook); ``part`` is the run's wrapper, which stands at ``depth``. Types are
        counted at C speed; only non-empty containers are visited one by one."""
        todo: list[tuple[Any, int]] = [(part, depth)]
        while todo:
            value, level = todo.pop()
            members = value if type(value) is list else list(value.values())
            kinds = list(map(type, members))
            arrays, maps = kinds.count(list), kinds.count(dict)
            if not arrays and not maps:
                continue  # scalars only (a row of floats, say)
            if level >= MAX_DEPTH:
                raise _too_deep("JSON")
            if arrays:
                self.charge(arrays)
            todo.extend(
                (member, level + 1)
                for member in filter(None, members)  # an empty container holds nothing more
                if type(member) is list or type(member) is dict
            )


_JSON_WORDS: Final = (
    ("null", None),
    ("true", True),
    ("false", False),
    ("NaN", float("nan")),
    ("Infinity", float("inf")),
    ("-Infinity", float("-inf")),
)


# --------------------------------------------------------------------------- MessagePack


def _msgpack_missing(*args: Any, **kwargs: Any) -> Any:
    raise ProtocolError("msgpack is not installed")


_unpackb: Final[Callable[..., Any]] = msgpack.unpackb if msgpack else _msgpack_missing

# How the MessagePack types 0xc4 to 0xdf go on after their type byte, for _few_items:
# (what follows, bytes before the data or the next item, width of the length field).
_DATA, _FIXED, _ARRAY, _MAP = range(4)
_MSGPACK_TYPES: Final = (
    *((_DATA, 1 + w, w) for w in (1, 2, 4)),  # bin 8, 16, 32
    *((_DATA, 2 + w, w) for w in (1, 2, 4)),  # ext 8, 16, 32 (then the ext type)
    (_FIXED, 5, 0),  # float 32
    (_FIXED, 9, 0),  # float 64
    *((_FIXED, 1 + w, 0) for w in (1, 2, 4, 8)),  # uint 8 to 64
    *((_FIXED, 1 + w, 0) for w in (1, 2, 4, 8)),  # int 8 to 64
    *((_FIXED, 2 + w, 0) for w in (1, 2, 4, 8, 16)),  # fixext 1 to 16
    *((_DATA, 1 + w, w) for w in (1, 2, 4)),  # str 8, 16, 32
    *((_ARRAY, 1 + w, w) for w in (2, 4)),  # array 16, 32
    *((_MAP, 1 + w, w) for w in (2, 4)),  # map 16, 32
)


def _few_items(payload: bytes, most: int) -> bool:
    """Whether ``payload`` holds one MessagePack value of at most ``most`` items in all, read
    from its type bytes and lengths only (a str or bin is stepped over, not read). Then
    ``unpackb`` cannot build more than ``most`` containers whatever it finds, and the checked
    path would only add copies (a 1 MiB bin through the streaming unpacker: +70%)."""
    size = len(payload)
    pos = 0
    todo = 1  # items still to read
    for _ in range(most):
        if pos >= size:
            return False
        kind = payload[pos]
        todo -= 1
        if kind <= 0x7F or 0xC0 <= kind <= 0xC3 or kind >= 0xE0:
            pos += 1
        elif kind <= 0x8F:
            todo += 2 * (kind & 0x0F)
            pos += 1
        elif kind <= 0x9F:
            todo += kind & 0x0F
            pos += 1
        elif kind <= 0xBF:
            pos += 1 + (kind & 0x1F)
        else:
            what, header, width = _MSGPACK_TYPES[kind - 0xC4]
            count = int.from_bytes(payload[pos + 1 : pos + 1 + width], "big")
            pos += header
            if what == _DATA:
                pos += count
            elif what == _ARRAY:
                todo += count
            elif what == _MAP:
                todo += 2 * count
        if todo == 0:
            return True
    return False


def _msgpack_error(exc: Exception) -> ProtocolError:
    if isinstance(exc, ProtocolError):
        return exc
    if msgpack is None:
        return ProtocolError("msgpack is not installed")
    if isinstance(exc, msgpack.StackError):
        return _too_deep("MessagePack")
    return ProtocolError(f"invalid MessagePack payload: {exc!r}")


def _counters(max_containers: int) -> tuple[Callable[[Any], Any], Callable[[int, bytes], Any]]:
    """Unpacker hooks that count the maps, arrays and ext values the unpacker builds, raising
    once there are more than ``max_containers``: one for maps and arrays (returned as they
    are), one for ext values (made into ``ExtType``, as without a hook). An ext value costs
    about what a small map does (a tuple the garbage collector tracks, built by Python code)."""
    count = 0

    def counted(value: Any) -> Any:
        nonlocal count
        count += 1
        if count > max_containers:
            raise _too_many("MessagePack", max_containers)
        return value

    def counted_ext(code: int, data: bytes) -> Any:
        return counted(msgpack.ExtType(code, data))

    return counted, counted_ext


class MsgpackCodec(Codec):
    """MessagePack with str/bin distinction; unpacking is bounded by the payload size."""

    name = "msgpack"

    def __init__(self, max_containers: int = DEFAULT_MAX_CONTAINERS) -> None:
        self.max_containers = _check_limit(max_containers)
        self._checked_over = min(max_containers, CHECKED_OVER)
        self._slice = SLICE
        # A big payload of no more items than this takes unpackb: it cannot break the limit.
        self._few = min(64, max_containers)
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
        if len(payload) <= self._checked_over:
            try:
                # unpackb bounds container sizes by the payload length, so a five-byte payload
                # that declares a billion-element array fails at once instead of allocating.
                return _unpackb(payload, raw=False, strict_map_key=False, use_list=True)
            except Exception as exc:
                raise _msgpack_error(exc) from None
        return self._decode_big(payload)

    def plain_decoder(self) -> tuple[Callable[[bytes], Any], int]:
        return self._decode_plain, self._checked_over

    def _decode_plain(self, payload: bytes) -> Any:
        try:
            return _unpackb(payload, raw=False, strict_map_key=False, use_list=True)
        except Exception as exc:
            raise _msgpack_error(exc) from None

    def decodes_quickly(self, payload: bytes) -> bool:
        return _few_items(payload, self._few)

    def _decode_big(self, payload: bytes) -> Any:
        try:
            if _few_items(payload, self._few):  # say a response whose result is one big bin
                return _unpackb(payload, raw=False, strict_map_key=False, use_list=True)
            return self._decode_checked(payload)
        except Exception as exc:
            raise _msgpack_error(exc) from None

    def _decode_checked(self, payload: bytes) -> Any:
        """Unpack ``payload`` a slice at a time, counting maps and arrays as they complete.

        The streaming unpacker resumes a half-built value where the last slice stopped, so
        this is no slower than ``unpackb``; the counting hook and the loop are Python code,
        where another thread can take the GIL.
        """
        size = len(payload)
        counted, counted_ext = _counters(self.max_containers)
        unpacker = msgpack.Unpacker(
            raw=False,
            strict_map_key=False,
            use_list=True,
            max_buffer_size=size,  # and so at most size elements, as unpackb allows
            list_hook=counted,
            object_hook=counted,
            ext_hook=counted_ext,
        )
        step = self._slice
        with memoryview(payload) as view:
            for start in range(0, size, step):
                unpacker.feed(view[start : start + step])
                try:
                    value = unpacker.unpack()
                except msgpack.OutOfData:
                    continue
                if start + step < size or unpacker.tell() != size:
                    raise ProtocolError("invalid MessagePack payload: extra data after the value")
                return value
        raise ProtocolError("invalid MessagePack payload: it ends inside a value")


JSON: Final[Codec] = JsonCodec()
MSGPACK: Final[Codec] = MsgpackCodec()
CODECS: Final[dict[str, Codec]] = {"json": JSON, "msgpack": MSGPACK}


def get_codec(name: str, max_containers: int = DEFAULT_MAX_CONTAINERS) -> Codec:
    """Return a fresh codec instance (each owns its packer; use one per thread)."""
    if name == "json":
        return JsonCodec(max_containers)
    if name == "msgpack":
        return MsgpackCodec(max_containers)
    raise ProtocolError(f"unknown codec {name!r} (expected 'json' or 'msgpack')")
