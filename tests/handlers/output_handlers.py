"""A handler whose results, errors or chunks cannot be sent as they are.

Sizes come from the arguments, so a test makes them big on purpose (never by depending on
the length of the checkout's path).
"""

from __future__ import annotations

import datetime
from collections.abc import Generator
from decimal import Decimal
from typing import Any

from snakepit_trio_bridge import BaseCommandHandler


class OutputHandler(BaseCommandHandler):
    def _register_commands(self) -> None:
        for name in (
            "big_result",
            "big_message",
            "big_traceback",
            "unencodable",
            "unencodable_key",
            "bad_text",
            "big_chunk",
            "unencodable_chunk",
        ):
            self.register_command(name, getattr(self, name))

    def big_result(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"blob": "x" * int(args["size"])}

    def big_message(self, args: dict[str, Any]) -> None:
        raise ValueError("M" * int(args["size"]))

    def big_traceback(self, args: dict[str, Any]) -> None:
        """A short message on top of a traceback of ``size`` characters (a chain of causes)."""
        cause: BaseException | None = None
        links = max(1, int(args["size"]) // 1000)
        for i in range(links):
            try:
                raise KeyError(f"link {i} " + "t" * 1000) from cause
            except KeyError as exc:
                cause = exc
        raise RuntimeError("the short message at the end") from cause

    def unencodable(self, args: dict[str, Any]) -> dict[str, Any]:
        value = {"datetime": datetime.datetime(2020, 1, 2), "decimal": Decimal("1.5")}
        return {"ok": 1, "a": [1, 2, 3, value[args.get("kind", "datetime")]]}

    def unencodable_key(self, args: dict[str, Any]) -> dict[Any, Any]:
        return {"fine": {(1, 2): "a tuple key"}}

    def bad_text(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"text": "lone surrogate: \ud800"}

    def big_chunk(self, args: dict[str, Any]) -> Generator[dict[str, Any], None, None]:
        yield {"small": True}
        yield {"blob": "x" * int(args["size"])}
        yield {"never": True}

    def unencodable_chunk(self, args: dict[str, Any]) -> Generator[dict[str, Any], None, None]:
        yield {"small": True}
        yield {"when": datetime.date(2020, 1, 2)}
        yield {"never": True}
