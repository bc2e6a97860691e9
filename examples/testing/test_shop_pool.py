"""The same handler in a real worker, through the pool: anyio's plugin (both backends)."""

import pytest

import snakepit_trio as sp


@pytest.mark.anyio
async def test_quote_in_a_worker(pool: sp.Pool) -> None:
    assert (await pool.execute("quote", {"item": "cheese", "quantity": 3}))["total"] == 21.0


@pytest.mark.anyio
async def test_an_error_in_a_worker(pool: sp.Pool) -> None:
    with pytest.raises(sp.CommandError) as failed:
        await pool.execute("quote", {"item": "caviar"})
    assert failed.value.error_type == "ValueError"
    assert failed.value.message == "we do not sell 'caviar'"


@pytest.mark.anyio
async def test_a_session_keeps_its_cart(pool: sp.Pool) -> None:
    await pool.execute_in_session("ann", "add_to_cart", {"item": "bread"})
    cart = await pool.execute_in_session("ann", "add_to_cart", {"item": "bread"})
    assert cart == {"session": "ann", "cart": {"bread": 2}}


@pytest.mark.anyio
async def test_a_receipt_streams(pool: sp.Pool) -> None:
    lines = [{"item": "apple"}, {"item": "bread"}]
    async with pool.stream("receipt", {"lines": lines}) as chunks:
        totals = [chunk["total"] async for chunk in chunks]
    assert totals == [0.5, 2.25]
    assert chunks.result == {"total": 2.75, "lines": 2}


@pytest.mark.anyio
async def test_a_slow_audit_times_out(pool: sp.Pool) -> None:
    with pytest.raises(sp.WorkerTimeout):
        await pool.execute("audit", {"seconds": 60}, timeout=0.2)
    assert await pool.execute("audit", {"seconds": 0.01}) == {"audited": True}
