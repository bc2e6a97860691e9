"""Make the bridge package importable from a source checkout (it may not be installed)."""

import sys
from pathlib import Path

_BRIDGE = Path(__file__).resolve().parents[1] / "bridges" / "python"
if str(_BRIDGE) not in sys.path:
    sys.path.insert(0, str(_BRIDGE))

import pytest  # noqa: E402


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every ``@pytest.mark.anyio`` test runs on both of anyio's backends."""
    return str(request.param)


# Older tests import these from conftest; new ones import proc_support (unambiguous when
# several conftest modules exist).
from proc_support import kill_quietly, pid_alive  # noqa: E402, F401
