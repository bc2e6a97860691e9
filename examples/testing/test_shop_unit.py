"""Unit tests of the handler with the harness: plain test functions, no worker, no event loop."""

import time

import pytest
from shop import ShopHandler
from snakepit_trio_bridge.harness import CommandCancelled, CommandFailed, HandlerHarness


def test_quote(harness: HandlerHarness[ShopHandler]) -> None:
    assert harness.call("quote", {"item": "bread", "quantity": 2}) == {
        "item": "bread",
        "quantity": 2,
        "total": 4.5,
    }


def test_an_error_comes_back_as_the_bridge_reports_it(harness: HandlerHarness[ShopHandler]) -> None:
    with pytest.raises(CommandFailed) as failed:
        harness.call("quote", {"item": "caviar"})
    assert failed.value.error_type == "ValueError"
    assert failed.value.message == "we do not sell 'caviar'"
    assert "raise ValueError" in (failed.value.traceback or "")


def test_carts_are_kept_per_session(harness: HandlerHarness[ShopHandler]) -> None:
    harness.call("add_to_cart", {"item": "apple"}, session_id="ann")
    harness.call("add_to_cart", {"item": "apple", "quantity": 2}, session_id="ann")
    bob = harness.call("add_to_cart", {"item": "cheese"}, session_id="bob")
    assert bob == {"session": "bob", "cart": {"cheese": 1}}
    assert harness.handler.carts["ann"] == {"apple": 3}  # the handler instance, in this process


def test_async_command(harness: HandlerHarness[ShopHandler]) -> None:
    assert harness.call("check_stock", {"item": "apple"}) == {"item": "apple", "in_stock": True}


def test_receipt_streams_one_chunk_per_line(harness: HandlerHarness[ShopHandler]) -> None:
    lines = [{"item": "apple", "quantity": 4}, {"item": "cheese"}]
    with harness.stream("receipt", {"lines": lines}) as chunks:
        assert [chunk["total"] for chunk in chunks] == [2.0, 7.0]
    assert chunks.result == {"total": 9.0, "lines": 2}


def test_leaving_a_stream_early_closes_the_generator(harness: HandlerHarness[ShopHandler]) -> None:
    lines = [{"item": "apple"}] * 10
    with harness.stream("receipt", {"lines": lines}) as chunks:
        for _ in chunks:
            break
    # Leaving the block cancelled the stream and waited for the bridge to confirm it.
    assert harness.handler.receipts_closed == 1


def test_async_generator(harness: HandlerHarness[ShopHandler]) -> None:
    with harness.stream("track", {}) as steps:
        assert list(steps) == ["packed", "shipped", "delivered"]


def test_an_audit_can_be_cancelled(harness: HandlerHarness[ShopHandler]) -> None:
    running = harness.start("audit", {"seconds": 60})
    time.sleep(0.05)
    running.cancel()
    with pytest.raises(CommandCancelled):
        running.result(timeout=5)
    assert harness.call("quote", {"item": "apple"})["total"] == 0.5  # still serving
