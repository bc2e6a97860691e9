"""The same pool fixture under pytest-trio: tests marked ``trio`` (or all, in trio_mode)."""

import pytest
import trio

import snakepit_trio as sp


@pytest.mark.trio
async def test_concurrent_quotes(pool: sp.Pool) -> None:
    totals: list[float] = []

    async def quote(item: str) -> None:
        totals.append((await pool.execute("quote", {"item": item}))["total"])

    async with trio.open_nursery() as nursery:
        for item in ("apple", "bread", "cheese"):
            nursery.start_soon(quote, item)
    assert sorted(totals) == [0.5, 2.25, 7.0]


@pytest.mark.trio
async def test_tracking_streams_under_trio(pool: sp.Pool) -> None:
    async with pool.stream("track", {"delay": 0.01}) as steps:
        assert [step async for step in steps] == ["packed", "shipped", "delivered"]
