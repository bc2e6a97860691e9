"""Run this folder's tests: a handler tested in-process and in real workers (docs/testing.md).

Run it with `python examples/testing/run.py` (extra arguments go to pytest).
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    command = [sys.executable, "-m", "pytest", str(HERE), "-v", *sys.argv[1:]]
    sys.exit(subprocess.run(command, cwd=HERE).returncode)
