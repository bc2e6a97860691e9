"""One version everywhere: snakepit_trio/_version.py is the source, the bridges carry copies.

The build reads the version from ``snakepit_trio/_version.py`` (``[tool.hatch.version]``). The
Python bridge, the Node bridge and the Node package carry it as literals (the bridges must stay
import-light and work without this package), so these tests fail as soon as one of them differs.
A bump is: edit the four literals, run this file.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import snakepit_trio_bridge
from packaging.version import Version

import snakepit_trio

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "bridges" / "node"
BRIDGE_INIT = Path(snakepit_trio_bridge.__file__)

# Semantic Versioning 2.0.0 (npm refuses anything else in package.json), anchored.
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)


def only_literal(path: Path, pattern: str) -> str:
    """The one version literal of ``path``: exactly one line may match ``pattern``."""
    found = re.findall(pattern, path.read_text(encoding="utf-8"), re.MULTILINE)
    assert len(found) == 1, f"{path}: expected one version literal, found {found}"
    return str(found[0])


def source_version() -> str:
    return only_literal(ROOT / "snakepit_trio" / "_version.py", r'^__version__ = "([^"]+)"')


def test_the_build_reads_the_version_from_version_py() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" in pyproject["project"]["dynamic"]
    assert "version" not in pyproject["project"]
    assert pyproject["tool"]["hatch"]["version"]["path"] == "snakepit_trio/_version.py"
    assert snakepit_trio.__version__ == source_version()


def test_the_version_is_both_pep440_and_semver() -> None:
    version = source_version()
    # Canonical PEP 440 (what the package index shows) and SemVer (what npm accepts) at once:
    # X.Y.Z, which every release so far has been.
    assert str(Version(version)) == version
    assert SEMVER.match(version), version


def test_the_python_bridge_carries_the_same_version() -> None:
    literal = only_literal(BRIDGE_INIT, r'^__version__ = "([^"]+)"')
    assert literal == source_version()
    assert snakepit_trio_bridge.__version__ == source_version()


def test_the_node_bridge_carries_the_same_version() -> None:
    literal = only_literal(NODE_DIR / "snakepit_bridge.js", r"^const VERSION = '([^']+)';")
    assert literal == source_version()


def test_package_json_carries_the_same_version() -> None:
    package = json.loads((NODE_DIR / "package.json").read_text(encoding="utf-8"))
    assert package["version"] == source_version()


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not on PATH")
def test_the_node_bridge_reports_the_same_version() -> None:
    done = subprocess.run(
        ["node", str(NODE_DIR / "snakepit_bridge.js"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["snakepit_bridge.js", source_version()]
