"""``python -m snakepit_trio``: the same command line as ``snakepit-trio``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
