"""Every example runs, every README block marked to run runs, and the README matches the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import anyio
import attrs
import pytest

import snakepit_trio as sp

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
RUN_MARKER = "<!-- run -->"

# examples/*.py, and examples/<folder>/run.py as each folder's entry point.
SCRIPTS = sorted(ROOT.glob("examples/*.py")) + sorted(ROOT.glob("examples/*/run.py"))
VARIANTS = [(path, ()) for path in SCRIPTS] + [
    (ROOT / "examples/python_basic.py", ("--wire", "json")),
    (ROOT / "examples/python_session.py", ("--wire", "json")),
    (ROOT / "examples/python_session.py", ("--wire", "msgpack")),
]


def run_python(argv: list[str], what: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"{what} failed:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.mark.parametrize(
    ("script", "args"),
    VARIANTS,
    ids=[str(p.relative_to(ROOT)) + "".join(" " + a for a in args) for p, args in VARIANTS],
)
def test_example_runs(script: Path, args: tuple[str, ...]) -> None:
    result = run_python([str(script), *args], str(script.relative_to(ROOT)))
    assert result.stdout.strip(), "an example should show what it did"


def test_the_examples_are_found() -> None:
    names = {str(p.relative_to(ROOT)) for p in SCRIPTS}
    assert {
        "examples/python_basic.py",
        "examples/python_session.py",
        "examples/node_basic.py",
        "examples/node_session.py",
        "examples/streaming.py",
        "examples/anyio_asyncio.py",
        "examples/custom_handler/run.py",
        "examples/protocol_worker/run.py",
    } <= names


def readme_blocks() -> list[str]:
    """The python blocks right after a ``<!-- run -->`` line."""
    pattern = re.compile(re.escape(RUN_MARKER) + r"\n```python\n(.*?)\n```", re.DOTALL)
    return pattern.findall(README)


BLOCKS = readme_blocks()


def test_every_run_marker_has_a_python_block() -> None:
    assert README.count(RUN_MARKER) == len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index: int) -> None:
    run_python(["-c", BLOCKS[index]], f"README block {index + 1}:\n{BLOCKS[index]}")


def _readme_default(value: object) -> str:
    return f'`"{value}"`' if isinstance(value, str) else f"`{value!r}`"


def test_configuration_table_matches_poolconfig() -> None:
    rows = dict(re.findall(r"^\| `(\w+)` \| (`[^`]*`) \|", README, re.MULTILINE))
    fields = attrs.fields(sp.PoolConfig)
    expected = {f.name: _readme_default(f.default) for f in fields}
    table = {name: rows.get(name) for name in expected}
    assert table == expected


def test_stats_keys_are_documented() -> None:
    section = README.split("## Telemetry and stats", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", section, re.MULTILINE))

    async def keys() -> set[str]:
        async with sp.open_pool(size=1) as pool:
            return set(pool.stats())

    assert anyio.run(keys, backend="trio") <= documented


def test_quick_start_has_the_install_demo_and_test_commands() -> None:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", section, re.DOTALL)
    assert commands == [
        "pip install snakepit-trio && snakepit-trio demo",
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/snakepit-trio demo",
        "python3 -m venv .venv && .venv/bin/pip install --upgrade pip && "
        ".venv/bin/pip install -e '.[grpc]' --group test && .venv/bin/python -m pytest",
    ]
