"""A pool of Perl workers: bridge.pl speaks the protocol, an Adapter subclass shapes the calls.

    python examples/perl_bridge/run.py

Needs `perl` 5 with the core module JSON::PP on PATH; without them the example says so and
exits 0. First a plain ``sp.Adapter("perl", "bridge.pl")``, then ``PerlAdapter``, which uses
the adapter hooks to check and reshape calls on the pool side, before anything is queued.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal

import trio

import snakepit_trio as sp

BRIDGE = Path(__file__).resolve().with_name("bridge.pl")


def perl_missing(perl: str = "perl") -> str | None:
    """Why the Perl bridge cannot run here, or None when it can."""
    executable = shutil.which(perl)
    if executable is None:
        return f"{perl!r} is not on PATH"
    check = subprocess.run(
        [executable, "-MJSON::PP", "-e", "1"], capture_output=True, timeout=30, check=False
    )
    if check.returncode != 0:
        return "the Perl module JSON::PP is missing"
    return None


class PerlAdapter(sp.Adapter):
    """bridge.pl, with the calls it accepts checked and shaped on the pool side."""

    COMMANDS = frozenset({"ping", "echo", "compute", "reverse", "fail"})
    OPERATIONS = frozenset({"add", "subtract", "multiply", "divide"})

    def __init__(self, *, perl: str = "perl", wire: Literal["auto", "json"] = "auto") -> None:
        super().__init__(perl, BRIDGE, wire=wire, name="perl bridge")

    def supported_commands(self) -> Collection[str]:
        # Anything else is refused with UnsupportedCommand, never sent.
        return self.COMMANDS

    def validate_command(self, command: str, args: Mapping[str, Any]) -> None:
        super().validate_command(command, args)
        if command == "compute":
            operation = args.get("operation", "add")
            if operation not in self.OPERATIONS:
                raise ValueError(f"compute: unknown operation {operation!r}")
            for key in ("a", "b"):
                value = args.get(key, 0)
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise TypeError(f"compute: {key!r} must be a number, not {value!r}")

    def prepare_args(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        if command == "reverse":  # Perl would reverse anything; send it text
            args["text"] = str(args.get("text", ""))
        return args

    def process_response(self, command: str, result: Any) -> Any:
        if command == "compute":  # callers get the number, not the envelope
            return result["result"]
        return result

    def command_timeout(self, command: str, args: Mapping[str, Any]) -> float | None:
        return 5.0  # every command of this bridge is quick


async def plain() -> None:
    adapter = sp.Adapter("perl", BRIDGE, wire="auto")
    async with sp.open_pool(adapter, size=2) as pool:
        features = sorted(pool.features) or "none (the Snakepit v0.3 subset)"
        print(f"sp.Adapter: protocol {pool.workers()[0].protocol}, features {features}")
        pong = await pool.execute("ping")
        print(f"  ping: {pong['status']} from Perl {pong['perl_version']} (pid {pong['pid']})")
        total = await pool.execute("compute", {"operation": "add", "a": 2, "b": 3})
        print(f"  compute add(2, 3) -> {total}")
        echoed = await pool.execute("echo", {"text": "grüße ☃", "blob": b"\x00\xff"})
        print(f"  echo: {echoed['echoed']}")
        try:
            await pool.execute("compute", {"operation": "divide", "a": 1, "b": 0})
        except sp.CommandError as exc:
            print(f"  divide(1, 0) -> CommandError ({exc.error_type}): {exc.message}")
        try:
            await pool.execute("fly")
        except sp.UnsupportedCommand as exc:
            print(f"  fly -> UnsupportedCommand, from the bridge: {exc}")


async def shaped() -> None:
    async with sp.open_pool(PerlAdapter(), size=2) as pool:
        print("PerlAdapter (hooks):")
        products: list[Any] = []

        async def multiply(a: float, b: float) -> None:
            products.append(
                await pool.execute("compute", {"operation": "multiply", "a": a, "b": b})
            )

        async with trio.open_nursery() as nursery:
            for a in range(1, 5):
                nursery.start_soon(multiply, a, 2.5)
        print(f"  4 concurrent multiplies on 2 workers -> {sorted(products)}")
        print(f"  reverse(12345) -> {(await pool.execute('reverse', {'text': 12345}))['text']}")
        for command, args in (
            ("compute", {"operation": "modulo", "a": 7, "b": 2}),
            ("compute", {"operation": "add", "a": "7", "b": 2}),
            ("fly", {}),
        ):
            try:
                await pool.execute(command, args)
            except (ValueError, TypeError, sp.UnsupportedCommand) as exc:
                print(f"  {command} {args} -> refused before sending: {type(exc).__name__}: {exc}")
        try:
            await pool.execute("fail", {"message": "the Perl side died on purpose"})
        except sp.CommandError as exc:
            print(f"  fail -> CommandError: {exc.message}")
        print(f"  stats: {pool.stats()['requests']} requests, {pool.stats()['errors']} errors")


async def main() -> None:
    await plain()
    await shaped()


if __name__ == "__main__":
    reason = perl_missing()
    if reason is not None:
        print(f"skipping the Perl bridge example: {reason}")
        sys.exit(0)
    trio.run(main)
