"""A handler to test: the worker-side code of this example (see docs/testing.md).

Each kind of command a handler can have, once: a plain function (``quote``), one that keeps
per-session state (``add_to_cart``), an async one (``check_stock``), a generator that streams
(``receipt``), an async generator (``track``), and long work that honours cancellation
(``audit``). It imports snakepit_trio_bridge only: it runs in a worker, or in the test process
under ``snakepit_trio_bridge.harness.HandlerHarness``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Generator
from typing import Any

from snakepit_trio_bridge import BaseCommandHandler, current_context

PRICES = {"apple": 0.5, "bread": 2.25, "cheese": 7.0}


class ShopHandler(BaseCommandHandler):
    """A small shop: prices, carts per session, stock, receipts, deliveries, audits."""

    def __init__(self) -> None:
        # One instance per worker process: what it holds lives as long as the worker.
        self.carts: dict[str, dict[str, int]] = {}
        self.receipts_closed = 0
        super().__init__()

    def _register_commands(self) -> None:
        self.register_command("quote", self.quote)
        self.register_command("add_to_cart", self.add_to_cart)
        self.register_command("check_stock", self.check_stock)
        self.register_command("receipt", self.receipt)
        self.register_command("track", self.track)
        self.register_command("audit", self.audit)

    def quote(self, args: dict[str, Any]) -> dict[str, Any]:
        """The price of ``quantity`` of ``item``; ValueError for an item not sold here."""
        item = args["item"]
        quantity = args.get("quantity", 1)
        if item not in PRICES:
            raise ValueError(f"we do not sell {item!r}")
        if not isinstance(quantity, int) or quantity < 1:
            raise ValueError(f"quantity must be a positive integer, not {quantity!r}")
        return {"item": item, "quantity": quantity, "total": round(PRICES[item] * quantity, 2)}

    def add_to_cart(self, args: dict[str, Any]) -> dict[str, Any]:
        """Add to the cart of the caller's session (``pool.execute_in_session``)."""
        session = current_context().session_id
        if session is None:
            raise ValueError("add_to_cart needs a session")
        cart = self.carts.setdefault(session, {})
        cart[args["item"]] = cart.get(args["item"], 0) + args.get("quantity", 1)
        return {"session": session, "cart": cart}

    async def check_stock(self, args: dict[str, Any]) -> dict[str, Any]:
        """Async: runs on the worker's asyncio loop; a cancel cancels it like a task."""
        await asyncio.sleep(args.get("delay", 0.01))  # stands for a database or HTTP call
        return {"item": args["item"], "in_stock": args["item"] in PRICES}

    def receipt(self, args: dict[str, Any]) -> Generator[dict[str, Any], None, dict[str, Any]]:
        """A generator: one chunk per line when streamed, the total as its final value."""
        total = 0.0
        try:
            for line in args["lines"]:
                priced = self.quote(line)
                total += priced["total"]
                yield priced
            return {"total": round(total, 2), "lines": len(args["lines"])}
        finally:
            # Runs also when the caller stops the stream early: the worker closes the generator.
            self.receipts_closed += 1

    async def track(self, args: dict[str, Any]) -> AsyncIterator[str]:
        """An async generator: a delivery's steps, ``delay`` seconds apart."""
        for step in ("packed", "shipped", "delivered"):
            await asyncio.sleep(args.get("delay", 0.0))
            yield step

    def audit(self, args: dict[str, Any]) -> dict[str, Any]:
        """Long synchronous work checks for cancellation now and then."""
        context = current_context()
        deadline = time.monotonic() + args.get("seconds", 0.05)
        while time.monotonic() < deadline:
            context.check_cancelled()  # raises Cancelled once the caller cancelled
            time.sleep(0.002)
        return {"audited": True}
