"""The version of snakepit-trio: the one source of it.

The build (hatch, ``[tool.hatch.version]``) reads it from here. The bridges carry the same
number as literals, so that they stay import-light and work outside this package:
``bridges/python/snakepit_trio_bridge/__init__.py``, ``bridges/node/snakepit_bridge.js`` and
``bridges/node/package.json``; ``tests/test_versions.py`` fails when one of them differs.
"""

__version__ = "0.1.0"
