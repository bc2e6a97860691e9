"""The pool fixture for users' tests: under anyio's plugin (both backends) and pytest-trio here,
in this suite's own mode; in generated projects under each plugin mode (marks, anyio's auto
mode, pytest-trio's trio_mode), hand-written as docs/testing.md shows it and from
``snakepit_trio.testing``; and docs/testing.md shows the code that runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sniffio
from snakepit_trio_bridge.harness import HandlerHarness
from snakepit_trio_bridge.testing import TestingHandler

import snakepit_trio as sp
from snakepit_trio.testing import harness_fixture, pool_fixture

ROOT = Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")

# ---------------------------------------------------------------------- in this suite's mode

pool = pool_fixture(sp.PythonAdapter(TestingHandler), size=2)
harness = harness_fixture(TestingHandler)


async def _serves(pool: sp.Pool, backend: str) -> None:
    assert sniffio.current_async_library() == backend
    workers = pool.workers()
    assert len(workers) == 2
    answer = await pool.execute("getpid")
    assert answer["pid"] in {worker.pid for worker in workers}
    async with pool.stream("count_stream", {"count": 3}) as chunks:
        assert [chunk["i"] async for chunk in chunks] == [0, 1, 2]


@pytest.mark.anyio
async def test_the_pool_fixture_under_anyio(pool: sp.Pool, anyio_backend: str) -> None:
    await _serves(pool, anyio_backend)


@pytest.mark.trio
async def test_the_pool_fixture_under_pytest_trio(pool: sp.Pool) -> None:
    await _serves(pool, "trio")


def test_the_harness_fixture(harness: HandlerHarness[TestingHandler]) -> None:
    assert type(harness.handler) is TestingHandler
    assert harness.call("getpid")["pid"] == os.getpid()  # in this process: no worker


def test_pool_fixture_refuses_what_is_not_an_adapter() -> None:
    with pytest.raises(TypeError, match="Adapter"):
        pool_fixture("python")  # type: ignore[arg-type]


def test_importing_the_library_does_not_import_pytest() -> None:
    code = (
        "import sys, snakepit_trio; "
        "print(sorted(m for m in ('pytest', 'snakepit_trio.testing', 'snakepit_trio_bridge.harness') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------- generated projects

# Records each test's worker pids; the last test checks that they are gone, i.e. that the
# fixture closed the pool of every test before the next one ran.
CHECKS = """
import os

import sniffio

PIDS = []


async def check(pool, backend):
    assert sniffio.current_async_library() == backend
    [worker] = pool.workers()
    assert (await pool.execute("echo", {"on": backend}))["echoed"] == {"on": backend}
    os.kill(worker.pid, 0)  # alive while the test runs
    PIDS.append(worker.pid)


def check_gone(expected):
    assert len(PIDS) == expected
    for pid in PIDS:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"worker {pid} outlived its test")
"""

# Beside the guide's hand-written ``pool``, the same from snakepit_trio.testing.
FACTORY = """
from snakepit_trio.testing import pool_fixture

pool_from_factory = pool_fixture(sp.PythonAdapter())
"""

BOTH_BACKENDS = """

@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param
"""

# mode: (ini lines, extra conftest, test module, tests that pass)
MODES = {
    "marks": (
        "",
        BOTH_BACKENDS,
        """
        import pytest
        from checks import check, check_gone

        @pytest.mark.anyio
        async def test_on_anyio(pool, pool_from_factory, anyio_backend):
            await check(pool, anyio_backend)
            await check(pool_from_factory, anyio_backend)

        @pytest.mark.trio
        async def test_on_pytest_trio(pool, pool_from_factory):
            await check(pool, "trio")
            await check(pool_from_factory, "trio")

        def test_their_workers_are_gone():
            check_gone(6)
        """,
        4,
    ),
    "anyio_mode=auto": (
        "anyio_mode = auto",
        BOTH_BACKENDS,
        """
        from checks import check, check_gone

        async def test_unmarked(pool, pool_from_factory, anyio_backend):
            await check(pool, anyio_backend)
            await check(pool_from_factory, anyio_backend)

        def test_their_workers_are_gone():
            check_gone(4)
        """,
        3,
    ),
    "trio_mode": (
        "trio_mode = true",
        "",
        """
        from checks import check, check_gone

        async def test_unmarked(pool, pool_from_factory):
            await check(pool, "trio")
            await check(pool_from_factory, "trio")

        async def test_unmarked_again(pool):
            await check(pool, "trio")

        def test_their_workers_are_gone():
            check_gone(3)
        """,
        3,
    ),
}


def guide_blocks(kind: str) -> list[tuple[str, str]]:
    """(name, code) of each python block after a ``<!-- kind: name -->`` line."""
    pattern = re.compile(rf"<!-- {kind}: (\S+) -->\n```python\n(.*?)\n```", re.DOTALL)
    return pattern.findall(GUIDE)


def the_guides_recipe() -> str:
    [(name, code)] = guide_blocks("run")
    assert name == "conftest.py"
    return code + "\n"


@pytest.mark.parametrize("mode", list(MODES))
def test_the_fixtures_in_a_project_of_their_own(tmp_path: Path, mode: str) -> None:
    ini, extra, tests, passing = MODES[mode]
    conftest = the_guides_recipe() + FACTORY + extra
    (tmp_path / "pytest.ini").write_text(f"[pytest]\n{ini}\n")
    (tmp_path / "conftest.py").write_text(conftest)
    (tmp_path / "checks.py").write_text(CHECKS)
    (tmp_path / "test_project.py").write_text(textwrap.dedent(tests))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-W", "error"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert re.search(rf"\b{passing} passed\b", report), report
    assert "failed" not in report and "error" not in report.lower(), report


# ---------------------------------------------------------------------- the guide


def test_the_guide_shows_the_code_that_runs() -> None:
    """Each excerpt in docs/testing.md is in its file, word for word (the files run: as
    examples/testing/run.py in tests/test_examples.py, and below under pytest-trio's mode)."""
    excerpts = guide_blocks("from")
    assert len(excerpts) >= 8
    for path, code in excerpts:
        source = (ROOT / path).read_text(encoding="utf-8")
        assert code in source, f"docs/testing.md shows code that is not in {path}:\n{code}"


def test_the_example_project_runs_in_trio_mode() -> None:
    """examples/testing under pytest-trio's trio_mode (its anyio-marked tests left out: in
    that mode pytest-trio takes every async test)."""
    here = ROOT / "examples" / "testing"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-o",
            "trio_mode=true",
            "test_shop_trio.py",
            "test_shop_unit.py",
        ],
        cwd=here,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert re.search(r"\b10 passed\b", report), report
