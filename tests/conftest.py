"""Make the bridge package importable from a source checkout (it may not be installed)."""

import sys
from pathlib import Path

_BRIDGE = Path(__file__).resolve().parents[1] / "bridges" / "python"
if str(_BRIDGE) not in sys.path:
    sys.path.insert(0, str(_BRIDGE))
