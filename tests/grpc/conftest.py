"""Fixtures of the gRPC transport tests: real worker processes, real gRPC servers."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Each ``@pytest.mark.anyio`` test runs on both anyio backends."""
    return str(request.param)
