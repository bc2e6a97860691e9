"""Make the bridge package importable from a source checkout (it may not be installed)."""

import sys
from pathlib import Path

_BRIDGE = Path(__file__).resolve().parents[1] / "bridges" / "python"
if str(_BRIDGE) not in sys.path:
    sys.path.insert(0, str(_BRIDGE))

import os  # noqa: E402
import signal  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every ``@pytest.mark.anyio`` test runs on both of anyio's backends."""
    return str(request.param)


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie counts as dead: this sandbox reaps lazily)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3] != b"Z"


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
