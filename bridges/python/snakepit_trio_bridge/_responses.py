"""Responses and errors, built in one place for both servers (stdio and gRPC).

- The failure responses of the stdio wire: :func:`failure`, :func:`cancelled`,
  :func:`error_response`, and :func:`replacements` for a response that cannot be sent.
- What both servers say about an exception a handler raised (:func:`error_fields`: its message,
  even when its ``str()`` fails, its type, and its traceback without the server's own frames),
  about an unknown command (:func:`unknown_command`), and about a value that cannot be sent
  (:func:`cannot_send`: the path and type of the value the codec cannot encode, with what the
  handler's ``default`` hook made of it, or the size over the limit).
- The codecs with the handler's ``default`` hook (:func:`encoder`, :class:`DefaultingCodec`),
  for a handler that has one.
- Errors that always fit: :func:`shorter_errors` gives ever shorter versions of an error, the
  best first (its traceback cut to its innermost end, then its message cut, each cut said in
  the text, then no traceback); each server sends the first one its size limit allows.

Import-light: the stdio server imports it at start-up, so it needs the protocol's constants
only, and ``traceback`` once a traceback is formatted.
"""

from __future__ import annotations

from .protocol.codecs import BYTES_KEY, Codec
from .protocol.constants import CANCELLED_ERROR_TYPE, UNSUPPORTED_ERROR_TYPE, utc_timestamp

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import TracebackType
    from typing import Any, Final

    from .handler import BaseCommandHandler

__all__ = [
    "CANCELLED_MESSAGE",
    "DefaultingCodec",
    "cancelled",
    "cannot_send",
    "clean",
    "cut",
    "cut_traceback",
    "encoder",
    "error_fields",
    "error_response",
    "exception_message",
    "failure",
    "find_unencodable",
    "format_traceback",
    "hook_of",
    "replacements",
    "shorter_errors",
    "too_large",
    "unencodable",
    "unknown_command",
]

CANCELLED_MESSAGE: Final = "cancelled"
# An error that cannot be sent whole keeps at most this much of its traceback (the innermost
# end, each line cut to LINE_CUT characters), then MESSAGE_CUT characters of its message.
TRACEBACK_CUT: Final = 8000
MESSAGE_CUT: Final = 2000
LINE_CUT: Final = 500
TYPE_CUT: Final = 200
# Looking for the value a codec cannot encode visits at most this many values, this deep.
_WALK_NODES: Final = 100_000
_WALK_DEPTH: Final = 200


# ---------------------------------------------------------------------- the stdio wire's responses


def failure(request_id: object, error: str, error_type: str) -> dict[str, Any]:
    return {
        "id": request_id,
        "success": False,
        "error": error,
        "error_type": error_type,
        "timestamp": utc_timestamp(),
    }


def cancelled(request_id: object) -> dict[str, Any]:
    return failure(request_id, CANCELLED_MESSAGE, CANCELLED_ERROR_TYPE)


def error_response(
    request_id: object, exc: BaseException, skip: str | tuple[str, ...]
) -> dict[str, Any]:
    """The failure response for ``exc``, raised by a handler (see :func:`error_fields`)."""
    message, error_type, traceback = error_fields(exc, skip)
    response = failure(request_id, message, error_type)
    response["traceback"] = traceback
    return response


def replacements(
    message: dict[str, Any],
    problem: BaseException | int,
    codec_name: str,
    limit: int,
    default: Callable[[Any], Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Ever shorter stand-ins for a response that cannot be sent, the best first.

    ``problem`` is what the codec raised, or the encoded size over ``limit``; ``default`` the
    codec's hook. An error keeps its type (see :func:`shorter_errors`); a result, or anything
    else, becomes an error that says why it could not be sent. The last ones are for a limit
    of a few dozen bytes.
    """
    request_id = message.get("id")
    if not isinstance(request_id, int) or isinstance(request_id, bool):
        request_id = None
    error = message.get("error")
    if message.get("success") is False and isinstance(error, str):
        traceback = message.get("traceback")
        error_type = str(message.get("error_type") or "Error")
        for text, kind, trace in shorter_errors(
            error, error_type, traceback if isinstance(traceback, str) else "", limit
        ):
            response = failure(request_id, text, kind)
            if trace:
                response["traceback"] = trace
            yield response
        yield {"id": request_id, "success": False, "error": cut(clean(error), 40)}
        return
    what = "the result" if "result" in message else "the response"
    error, error_type = cannot_send(
        what, problem, message.get("result"), "result", codec_name, limit, default
    )
    yield failure(request_id, error, error_type)
    yield failure(request_id, cut(error, 100), error_type)
    yield {"id": request_id, "success": False, "error": cut(error, 40)}


# ---------------------------------------------------------------------- errors, for both servers


def unknown_command(handler: BaseCommandHandler, command: str) -> tuple[str, str]:
    """The error (message, type) for a ``command`` that ``handler`` does not have."""
    from .handler import unknown_command_message

    known = handler.get_supported_commands()
    return unknown_command_message(command, known), UNSUPPORTED_ERROR_TYPE


def error_fields(exc: BaseException, skip: str | tuple[str, ...]) -> tuple[str, str, str]:
    """The message, type name and traceback of ``exc``, raised by a handler.

    ``skip``: the server's own file, and folders ending in a separator, whose frames are left
    out of the top of the traceback.
    """
    return exception_message(exc), type(exc).__name__, format_traceback(exc, skip)


def exception_message(exc: BaseException) -> str:
    """``str(exc)``, its type name when empty, and words for it when ``str()`` itself fails
    (a hostile or broken ``__str__`` must not cost the worker its life)."""
    name = type(exc).__name__
    try:
        return str(exc) or name
    except Exception as problem:
        try:
            why = f"{type(problem).__name__}: {problem}"
        except Exception:
            why = type(problem).__name__
        return f"<{name}: str() failed: {why}>"


def format_traceback(exc: BaseException, skip: str | tuple[str, ...]) -> str:
    """The traceback from the handler down: frames in ``skip`` are left out from the top."""
    import traceback

    tb: TracebackType | None = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(skip):
        tb = tb.tb_next
    try:
        return "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception:  # something of the exception's own broke the formatting: its type, then
        return f"{type(exc).__name__} (its traceback could not be formatted)\n"


def shorter_errors(
    message: str, error_type: str, traceback: str, limit: int
) -> Iterator[tuple[str, str, str]]:
    """Ever shorter versions (message, type, traceback) of an error that must fit in ``limit``
    bytes, the best first.

    Whole; then with its type and traceback cut (the traceback's innermost end is kept); then
    with its message cut too; then without traceback; then with a message of 100 characters.
    Text no codec can carry (lone surrogates) is escaped in all of them. A version whose text
    is over ``limit`` characters (and so bytes) is passed over.
    """
    message, error_type, traceback = clean(message), clean(error_type), clean(traceback)
    seen: tuple[str, str, str] | None = None
    for version in _versions(message, error_type, traceback):
        if version != seen and sum(map(len, version)) <= limit:
            seen = version
            yield version


def _versions(message: str, error_type: str, traceback: str) -> Iterator[tuple[str, str, str]]:
    yield message, error_type, traceback
    error_type = cut(error_type, TYPE_CUT)
    if traceback:
        traceback = cut_traceback(traceback)
        yield message, error_type, traceback
    note = f" [error message cut: it was {len(message)} characters]"
    short = cut(message, MESSAGE_CUT) + note if len(message) > MESSAGE_CUT else message
    if traceback:
        yield short, error_type, traceback
    yield short, error_type, ""
    yield cut(message, 100) + note if len(message) > 100 else message, error_type, ""


def clean(text: str) -> str:
    """``text`` without lone surrogates (no codec can carry them): escaped instead."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cut_traceback(text: str, limit: int = TRACEBACK_CUT) -> str:
    """The innermost end of a traceback (where the exception is) in at most about ``limit``
    characters: whole lines, each cut to ``LINE_CUT`` characters, under a line that says so."""
    if len(text) <= limit:
        return text
    kept: list[str] = []
    size = 0
    for line in reversed(text.rsplit("\n", limit)):  # no more lines than can fit are split
        line = cut(line, LINE_CUT)
        size += len(line) + 1
        if size > limit:
            break
        kept.append(line)
    body = "\n".join(reversed(kept))
    return f"[... {len(text) - len(body)} characters of traceback cut ...]\n{body}"


# ---------------------------------------------------------------------- the handler's default hook

# What the JSON encoder writes without help (bytes and sets go through its ``default``).
_JSON_NATIVE: Final = (dict, list, tuple, str, int, float, type(None))


def encoder(codec_name: str, default: Callable[[Any], Any]) -> Callable[[Any], bytes]:
    """An encode function for the codec ``codec_name`` ("json" or "msgpack") that packs as
    that codec does and asks ``default`` (the handler's) about each value it has no form for.

    The codec's own machinery calls ``default``, so values that encode as they are cost
    nothing more. What ``default`` returns is encoded in its place, and values inside it get
    the same treatment; the returned value itself is not asked about again (msgpack's rule,
    applied to JSON too, where it also stops an endless chain of new objects). Under JSON,
    bytes keep their ``{"__bytes__": base64}`` form, and a set that ``default`` refuses
    travels as a list, as it does without a hook. Thread-safe: a call shares nothing with
    another (MessagePack builds its packer per call, about half a microsecond; a
    :class:`DefaultingCodec` keeps one).
    """
    if codec_name == "msgpack":
        import msgpack

        def pack(value: Any) -> bytes:
            packed: bytes = msgpack.packb(value, use_bin_type=True, default=default)
            return packed

        return pack
    if codec_name != "json":
        raise ValueError(f"unknown codec {codec_name!r}")
    import base64
    import json

    def as_json(value: Any) -> Any:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return {BYTES_KEY: base64.b64encode(value).decode("ascii")}
        try:
            replacement = default(value)
        except TypeError:
            if isinstance(value, (set, frozenset)):
                return list(value)
            raise
        if isinstance(replacement, (bytes, bytearray, memoryview)):
            return {BYTES_KEY: base64.b64encode(replacement).decode("ascii")}
        if isinstance(replacement, (set, frozenset)):
            return list(replacement)
        if not isinstance(replacement, _JSON_NATIVE):
            raise TypeError(
                f"default() returned {_a(_type_name(replacement))} for "
                f"{_a(_type_name(value))}, which JSON cannot encode"
            )
        return replacement

    dumps = json.JSONEncoder(
        default=as_json, allow_nan=False, ensure_ascii=False, separators=(",", ":")
    ).encode

    def encode(value: Any) -> bytes:
        return dumps(value).encode("utf-8")

    return encode


def hook_of(codec: Codec) -> Callable[[Any], Any] | None:
    """The ``default`` hook ``codec`` asks, if any."""
    return codec.default if isinstance(codec, DefaultingCodec) else None


class DefaultingCodec(Codec):
    """``codec`` with the handler's ``default`` hook (see :func:`encoder`); it decodes as
    ``codec`` does. For one thread, as each codec is: MessagePack keeps one packer, so that
    encoding costs what the plain codec's does."""

    def __init__(self, codec: Codec, default: Callable[[Any], Any]) -> None:
        self.name = codec.name
        self.max_containers = codec.max_containers
        self.default = default
        self._codec = codec
        self._encode = encoder(codec.name, default)
        self._packer: Any = None
        if codec.name == "msgpack":
            import msgpack

            self._packer = msgpack.Packer(use_bin_type=True, autoreset=True, default=default)

    def encode(self, value: Any) -> bytes:
        packer = self._packer
        if packer is None:
            return self._encode(value)
        try:
            packed: bytes = packer.pack(value)
        except Exception:
            # A failed pack leaves the packer's buffer dirty: start over with a fresh one.
            self._packer = type(packer)(use_bin_type=True, autoreset=True, default=self.default)
            raise
        return packed

    def decode(self, payload: bytes) -> Any:
        return self._codec.decode(payload)


# ---------------------------------------------------------------------- values that cannot be sent


def cannot_send(
    what: str,
    problem: BaseException | int,
    value: object,
    root: str,
    codec_name: str,
    limit: int,
    default: Callable[[Any], Any] | None = None,
) -> tuple[str, str]:
    """The error (message, type) for ``value`` that cannot be sent as ``what`` ("the result",
    "chunk 3"): ``problem`` is what the codec raised, or the encoded size over ``limit``.
    ``root`` names ``value`` in the path of the culprit (``result['a'][3]``); ``default`` is
    the codec's hook (see :func:`find_unencodable`)."""
    if isinstance(problem, BaseException):
        why = unencodable(problem, value, root, codec_name, default)
        return f"cannot send {what}: {why}", type(problem).__name__
    return f"cannot send {what}: {too_large(problem, limit)}", "ProtocolError"


def too_large(size: int, limit: int) -> str:
    return f"it is {size} bytes, over the frame limit of {limit} bytes (max_frame_size)"


def unencodable(
    exc: BaseException,
    value: object,
    root: str,
    codec_name: str,
    default: Callable[[Any], Any] | None = None,
) -> str:
    """Why ``value`` could not be encoded: the path and type of the culprit when found."""
    try:
        found = find_unencodable(value, root, codec_name, default)
    except Exception:  # a value whose own methods fail: fall back on the codec's message
        found = None
    codec = "MessagePack" if codec_name == "msgpack" else "JSON"
    if found is None:
        return cut(f"{codec} cannot encode it: {type(exc).__name__}: {exc}", 500)
    path, what, hooked = found
    return f"{cut(path, 300)} is {what}, which {codec} cannot encode{hooked}"


def find_unencodable(
    value: object,
    root: str,
    codec_name: str,
    default: Callable[[Any], Any] | None = None,
) -> tuple[str, str, str] | None:
    """The first value (in encoding order) that the codec cannot carry: (path, description,
    what ``default`` made of it).

    ``default`` is the codec's hook (the handler's ``default``): it is asked about each value
    the codec has no form for, as the codec asks it, and what it returns is searched in turn.
    The third item is empty without a hook, else says how it failed (`` (default() refused
    it: TypeError: ...)``, or the type it returned, which is not passed to it again).
    Bounded (``_WALK_NODES`` values, ``_WALK_DEPTH`` levels): None when it finds nothing.
    """
    msgpack = codec_name == "msgpack"
    budget = [_WALK_NODES]
    active: set[int] = set()

    def scalar(item: object) -> str | None:
        """None if the codec carries ``item``; else what it is."""
        if item is None or isinstance(item, (bool, bytes, bytearray, memoryview)):
            return None
        if isinstance(item, int):
            if msgpack and not -(1 << 63) <= item < (1 << 64):
                return "an int outside MessagePack's 64-bit range"
            if not msgpack and item.bit_length() > 13_000:
                try:
                    str(item)
                except ValueError:
                    return "an int too long to convert to text"
            return None
        if isinstance(item, float):
            if not msgpack and item - item != 0.0:
                return f"a float {item!r} (JSON has no NaN or infinity)"
            return None
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "a str with a lone surrogate (not valid UTF-8)"
            return None
        return ""  # a container, or something else: see walk

    def converted(item: object, path: str, depth: int, what: str) -> tuple[str, str, str] | None:
        """``item`` (``what``) has no form in the codec: ask ``default`` (once), then search
        its answer."""
        if default is None:
            return path, what, ""
        try:
            replacement = default(item)
        except Exception as exc:
            if not msgpack and isinstance(item, (set, frozenset)) and isinstance(exc, TypeError):
                return members(item, path, depth)  # refused: JSON's own rule, a list
            verb = "refused it" if isinstance(exc, TypeError) else "failed"
            why = cut(f"{type(exc).__name__}: {exception_message(exc)}", 200)
            return path, what, f" (default() {verb}: {why})"
        problem = scalar(replacement)
        if problem is None:
            return None
        if not problem and isinstance(replacement, (dict, list, tuple)):
            return walk(replacement, path, depth + 1)
        if not problem and not msgpack and isinstance(replacement, (set, frozenset)):
            return members(replacement, path, depth)
        got = problem or _a(_type_name(replacement))
        return path, what, f" (default() returned {got})"

    def members(item: Any, path: str, depth: int) -> tuple[str, str, str] | None:
        """The items of a list, tuple or (under JSON) set, in order."""
        active.add(id(item))
        for index, sub in enumerate(item):
            bad = walk(sub, f"{path}[{index}]", depth + 1)
            if bad is not None:
                return bad
        active.discard(id(item))
        return None

    def walk(item: object, path: str, depth: int) -> tuple[str, str, str] | None:
        budget[0] -= 1
        if budget[0] < 0 or depth > _WALK_DEPTH:
            return None
        problem = scalar(item)
        if problem is None:
            return None
        if problem:
            if msgpack and default is not None and isinstance(item, int):
                return converted(item, path, depth, problem)  # msgpack asks about big ints too
            return path, problem, ""
        if id(item) in active:
            return path, f"{_a(_type_name(item))} that contains itself", ""
        if isinstance(item, dict):
            active.add(id(item))
            for key, sub in item.items():
                label = f"{path}[{cut(repr(key), 60)}]"
                if msgpack:
                    bad = walk(key, f"{label} (its key)", depth + 1)
                    if bad is not None:
                        return bad
                elif not (key is None or isinstance(key, (str, int, float))):
                    return label, f"a key of type {_type_name(key)} (JSON keys are strings)", ""
                elif scalar(key):
                    return label, f"a key that is {scalar(key)}", ""
                bad = walk(sub, label, depth + 1)
                if bad is not None:
                    return bad
            active.discard(id(item))
            return None
        if isinstance(item, (list, tuple)):
            return members(item, path, depth)
        if not msgpack and default is None and isinstance(item, (set, frozenset)):
            return members(item, path, depth)  # JSON sends a set as a list
        return converted(item, path, depth, _a(_type_name(item)))

    return walk(value, root, 0)


def _a(name: str) -> str:
    return f"an {name}" if name[:1] in ("a", "e", "i", "o", "u") else f"a {name}"


def _type_name(value: object) -> str:
    cls = type(value)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
