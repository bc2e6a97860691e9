"""Results the codec cannot encode: the handler's ``default`` hook, or an error naming the path.

Real workers through a real pool (JSON and MessagePack over stdio, and gRPC, on both anyio
backends): a handler whose ``default`` converts dates, decimals, sets and NumPy values gets
them to the caller, in results and in stream chunks; a value it refuses, and any such value
of a handler without ``default``, fails the request with an error that names the value's path
and type, and the worker goes on. Below, the encoders themselves: the hook is never asked
about a value the codec carries, and they write the plain codecs' bytes.
"""

from __future__ import annotations

import datetime
import decimal
import importlib.util
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest
from snakepit_trio_bridge._responses import (
    DefaultingCodec,
    encoder,
    find_unencodable,
    unencodable,
)
from snakepit_trio_bridge.protocol.codecs import get_codec

import snakepit_trio as sp

HANDLERS = """
import datetime
import decimal

from snakepit_trio_bridge import BaseCommandHandler

WHEN = datetime.datetime(2026, 12, 7, 18, 30, tzinfo=datetime.timezone.utc)


class Values(BaseCommandHandler):
    def _register_commands(self):
        self.register_command("values", self.values)
        self.register_command("ticks", self.ticks)
        self.register_command("leftover", self.leftover)
        self.register_command("numbers", self.numbers)

    def values(self, args):
        return {
            "when": WHEN,
            "price": decimal.Decimal("19.90"),
            "tags": {"pear", "apple", "fig", "kiwi", "date"},
            "rows": [{"day": datetime.date(2026, 1, 2), "at": datetime.time(9, 30)}],
            "blob": b"\\x00\\xff",
            "pair": (1, 2.5),
        }

    def ticks(self, args):
        yield {"price": decimal.Decimal("1.5")}
        yield {"tags": frozenset({"b", "a", "c"})}
        return {"done": datetime.date(2026, 12, 7)}

    def leftover(self, args):
        return {"fine": [1, WHEN], "bad": [0, {"deep": complex(1, 2)}]}

    def numbers(self, args):
        import numpy

        return {"i": numpy.int64(7), "f": numpy.float32(0.5), "b": numpy.bool_(True),
                "a": numpy.arange(3), "wide": numpy.float64(0.25)}


class Converting(Values):
    def default(self, value):
        if isinstance(value, (datetime.date, datetime.time)):
            return value.isoformat()
        if isinstance(value, decimal.Decimal):
            return str(value)
        if isinstance(value, (set, frozenset)):
            return sorted(value)
        if type(value).__module__ == "numpy":
            return value.tolist()  # a NumPy scalar or array, as Python values
        return super().default(value)


class Plain(Values):
    pass
"""

WHEN = "2026-12-07T18:30:00+00:00"
CONVERTED = {
    "when": WHEN,
    "price": "19.90",
    "tags": ["apple", "date", "fig", "kiwi", "pear"],
    "rows": [{"day": "2026-01-02", "at": "09:30:00"}],
    "blob": b"\x00\xff",
    "pair": [1, 2.5],
}
CONFIG = sp.PoolConfig(shutdown_grace=1.0, kill_grace=1.0)
BOUND = 60.0
TRANSPORTS = ["json", "msgpack", "grpc"]
CODEC_NAMES = {"json": "JSON", "msgpack": "MessagePack", "grpc": "MessagePack"}

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def handlers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("encode-handlers")
    (folder / "encode_handlers.py").write_text(textwrap.dedent(HANDLERS))
    return folder


def adapter(handlers: Path, transport: str, handler: str) -> sp.Adapter:
    spec = f"encode_handlers:{handler}"
    env = {"PYTHONPATH": str(handlers)}
    if transport == "grpc":
        pytest.importorskip("grpclib")
        return sp.GrpcPythonAdapter(spec, env=env)
    wire: Literal["json", "msgpack"] = "json" if transport == "json" else "msgpack"
    return sp.PythonAdapter(spec, wire=wire, env=env)


async def stream_all(pool: Any, command: str) -> list[Any]:
    got: list[Any] = []
    async with pool.stream(command, timeout=20) as chunks:
        async for chunk in chunks:
            got.append(chunk)
    return got


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_default_converts_what_the_codec_cannot_encode(
    handlers: Path, transport: str
) -> None:
    with anyio.fail_after(BOUND):
        async with sp.open_pool(adapter(handlers, transport, "Converting"), size=1) as pool:
            if transport != "grpc":
                assert pool.workers()[0].protocol == transport
            assert await pool.execute("values", timeout=20) == CONVERTED
            # Chunks too; the stream's final value goes nowhere a caller sees, but it was sent
            # (a refused one would have failed the stream).
            assert await stream_all(pool, "ticks") == [{"price": "1.5"}, {"tags": ["a", "b", "c"]}]
            assert await pool.execute("ticks", timeout=20) == [
                {"price": "1.5"},
                {"tags": ["a", "b", "c"]},
            ]
            # A value default refuses: the path, the type, and default's own words.
            with pytest.raises(sp.CommandError) as info:
                await pool.execute("leftover", timeout=20)
            assert info.value.error_type == "TypeError"
            assert info.value.message == (
                "cannot send the result: result['bad'][1]['deep'] is a complex, which "
                f"{CODEC_NAMES[transport]} cannot encode (default() refused it: TypeError: "
                "complex has no wire form (override default() to give one))"
            )
            assert (await pool.execute("ping", timeout=20))["status"] == "ok"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_without_default_the_error_names_the_path(handlers: Path, transport: str) -> None:
    codec = CODEC_NAMES[transport]
    with anyio.fail_after(BOUND):
        async with sp.open_pool(adapter(handlers, transport, "Plain"), size=1) as pool:
            pid = pool.workers()[0].pid
            with pytest.raises(sp.CommandError) as info:
                await pool.execute("values", timeout=20)
            assert info.value.error_type == "TypeError"
            assert info.value.message == (
                f"cannot send the result: result['when'] is a datetime.datetime, which {codec} "
                "cannot encode"
            )
            with pytest.raises(sp.CommandError) as info:
                await stream_all(pool, "ticks")
            assert info.value.message == (
                f"cannot send chunk 0: data['price'] is a decimal.Decimal, which {codec} "
                "cannot encode"
            )
            assert (await pool.execute("ping", timeout=20))["status"] == "ok"
            assert pool.workers()[0].pid == pid  # no worker was lost to it


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_default_turns_numpy_values_into_python_ones(handlers: Path, transport: str) -> None:
    if importlib.util.find_spec("numpy") is None:
        pytest.skip("numpy is not installed (the workers use this interpreter)")
    with anyio.fail_after(BOUND):
        async with sp.open_pool(adapter(handlers, transport, "Converting"), size=1) as pool:
            assert await pool.execute("numbers", timeout=20) == {
                "i": 7,
                "f": 0.5,
                "b": True,
                "a": [0, 1, 2],
                "wide": 0.25,  # a float subclass: sent as it is
            }


# ------------------------------------------------------------------ the encoders, in process


def converting(calls: list[object]) -> Callable[[Any], Any]:
    def default(value: Any) -> Any:
        calls.append(value)
        if isinstance(value, decimal.Decimal):
            return str(value)
        raise TypeError(f"no rule for {type(value).__name__}")

    return default


NATIVE: dict[Any, Any] = {
    "none": None,
    "flags": [True, False],
    "numbers": [0, -1, 2**63, 1.5, -0.0],
    "text": "héllo \u2603",
    "blob": b"\x00\x01\xfe",
    "nested": {"list": [[], {}], "tuple": (1, "two")},
    7: "an int key",
}


@pytest.mark.parametrize("codec_name", ["json", "msgpack"])
@pytest.mark.parametrize("kind", ["encoder", "DefaultingCodec"])
def test_the_hook_is_not_asked_about_what_the_codec_carries(codec_name: str, kind: str) -> None:
    calls: list[object] = []
    if kind == "encoder":  # the gRPC worker's
        encode = encoder(codec_name, converting(calls))
    else:  # the stdio worker's
        encode = DefaultingCodec(get_codec(codec_name), converting(calls)).encode
    value: Any = NATIVE if codec_name == "msgpack" else {str(k): v for k, v in NATIVE.items()}
    assert encode(value) == get_codec(codec_name).encode(value)  # the same bytes
    assert calls == []
    assert get_codec(codec_name).decode(encode({"p": decimal.Decimal("2.50")})) == {"p": "2.50"}
    assert calls == [decimal.Decimal("2.50")]


@pytest.mark.parametrize("codec_name", ["json", "msgpack"])
def test_what_the_hook_returns_is_not_asked_about_again(codec_name: str) -> None:
    class Token:
        pass

    calls: list[object] = []

    def default(value: Any) -> Any:
        calls.append(value)
        return Token()  # not encodable: an endless chain if it were asked again

    with pytest.raises(TypeError):
        encoder(codec_name, default)({"x": datetime.date(2026, 1, 1)})
    assert calls == [datetime.date(2026, 1, 1)]
    found = find_unencodable({"x": datetime.date(2026, 1, 1)}, "result", codec_name, default)
    assert found is not None
    path, what, hooked = found
    assert (path, what) == ("result['x']", "a datetime.date")
    assert hooked.startswith(" (default() returned a ") and hooked.endswith("Token)")


def test_a_set_the_hook_refuses_is_still_a_list_under_json_and_an_error_under_msgpack() -> None:
    calls: list[object] = []
    hook = converting(calls)
    assert get_codec("json").decode(encoder("json", hook)({"s": {3}})) == {"s": [3]}
    with pytest.raises(TypeError):
        encoder("msgpack", hook)({"s": {3}})
    assert calls == [{3}, {3}]
    assert find_unencodable({"s": {3}}, "result", "json", hook) is None


def test_a_failing_hook_is_named_with_its_own_error() -> None:
    def broken(value: Any) -> Any:
        raise ZeroDivisionError("oops")

    value = {"rows": [decimal.Decimal(1)]}
    with pytest.raises(ZeroDivisionError) as info:
        encoder("msgpack", broken)(value)
    assert unencodable(info.value, value, "result", "msgpack", broken) == (
        "result['rows'][0] is a decimal.Decimal, which MessagePack cannot encode "
        "(default() failed: ZeroDivisionError: oops)"
    )


def test_a_big_int_goes_to_the_hook_under_msgpack_only() -> None:
    calls: list[object] = []
    hook = converting(calls)
    value = {"n": 2**70}
    assert get_codec("json").decode(encoder("json", hook)(value)) == value
    assert calls == []
    with pytest.raises(TypeError, match="no rule for int"):
        encoder("msgpack", hook)(value)
    assert calls == [2**70]
