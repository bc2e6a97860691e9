"""Fixtures for the shop's tests: a pool of real workers, and the in-process harness."""

import pytest
from shop import ShopHandler

import snakepit_trio as sp
from snakepit_trio.testing import harness_fixture, pool_fixture

# A pool of one real worker per test (opened on the test's event loop, closed after it).
pool = pool_fixture(sp.PythonAdapter(ShopHandler), size=1)

# The bridge's server in a thread of the test process: no worker, no event loop.
harness = harness_fixture(ShopHandler)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test on both backends (anyio's default: asyncio)."""
    return str(request.param)
