"""Pytest helpers: a fixture that opens a pool for each test, and one for the handler harness.

::

    # conftest.py
    import snakepit_trio as sp
    from snakepit_trio.testing import harness_fixture, pool_fixture

    from myapp.handlers import MyHandler

    pool = pool_fixture(sp.PythonAdapter(MyHandler))
    harness = harness_fixture(MyHandler)

A fixture is named after the variable it is assigned to. ``pool`` is an async fixture, opened
on the event loop of the test that asks for it and closed after that test (every worker
stopped). It works with the two pytest plugins for async tests:

- anyio's plugin: tests marked ``@pytest.mark.anyio`` run on each backend that the
  ``anyio_backend`` fixture gives (asyncio only, unless you override that fixture);
- pytest-trio: tests marked ``@pytest.mark.trio``, or every async test in its ``trio_mode``.

``harness`` is a plain fixture: a :class:`~snakepit_trio_bridge.harness.HandlerHarness`, the
bridge's own server in a thread of the test process, for unit tests with no worker process
and no event loop. See docs/testing.md.

This module imports pytest, so ``import snakepit_trio`` does not import it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from snakepit_trio_bridge.harness import HandlerHarness

from ._adapters import Adapter
from ._config import PoolConfig
from ._pool import Pool, open_pool

if TYPE_CHECKING:
    from snakepit_trio_bridge.harness import HandlerSource

__all__ = ["harness_fixture", "pool_fixture"]


def pool_fixture(
    adapter: Adapter | None = None, *, size: int = 1, config: PoolConfig | None = None
) -> Callable[..., AsyncIterator[Pool]]:
    """A function-scoped fixture that yields ``open_pool(adapter, size=size, config=config)``.

    ``size`` defaults to one worker: each test starts its own pool, so tests never see each
    other's worker state (one Python worker took 0.2 to 0.3 s to start and 0.05 s to stop on
    a busy 2-core machine). The same fixture serves
    anyio's plugin and pytest-trio; it is an async fixture, so only async tests may use it.
    """
    if adapter is not None and not isinstance(adapter, Adapter):
        raise TypeError(f"adapter must be an Adapter, not {type(adapter).__name__}")

    # An async generator, as both plugins want: anyio's plugin runs it on the test's backend
    # when the test uses ``anyio_backend``, pytest-trio in the test's trio run when the test
    # is a trio test. The pool's task group lives in the fixture's task across the yield,
    # which both plugins allow (each keeps the fixture's task alive until teardown).
    async def pool() -> AsyncIterator[Pool]:
        async with open_pool(adapter, size=size, config=config) as opened:
            yield opened

    return pytest.fixture(pool)


def harness_fixture(
    handler: HandlerSource = None, *, wire: str = "auto", timeout: float | None = 30.0
) -> Callable[..., Iterator[HandlerHarness[Any]]]:
    """A function-scoped fixture that yields ``HandlerHarness(handler, wire=, timeout=)`` and
    closes it after the test (a fresh handler instance per test when given a class)."""

    def harness() -> Iterator[HandlerHarness[Any]]:
        with HandlerHarness(handler, wire=wire, timeout=timeout) as opened:
            yield opened

    return pytest.fixture(harness)
