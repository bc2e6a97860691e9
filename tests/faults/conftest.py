"""Fixtures of the reliability suite (helpers live in faultkit.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from faultkit import FaultKit


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every fault test runs on both anyio backends."""
    return str(request.param)


@pytest.fixture
def kit(tmp_path: Path) -> FaultKit:
    return FaultKit(tmp_path)
