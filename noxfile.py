"""Developer tasks: `nox -s tests`, `nox -s lint`, `nox -s typecheck`, `nox -s docs`, ...

Each session installs what it needs from the PEP 735 dependency groups of pyproject.toml, so a
session's environment is exactly what CI uses. `nox -s tests` runs the suite on every supported
Python (`nox -s tests-3.12` on one); `.ci/run` runs the same sessions.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).resolve().parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
SUPPORTED = ["3.11", "3.12", "3.13"]
OLDEST = SUPPORTED[0]


def _let_pyenv_find_every_supported_python() -> None:
    """Under pyenv, `python3.12` is a shim that fails unless 3.12 is a selected version: select
    the newest installed patch release of each supported Python after the current selection, so
    that `python3` stays what it was and each session finds its interpreter."""
    pyenv = shutil.which("pyenv")
    if pyenv is None:
        return

    def ask(*argv: str) -> str:
        done = subprocess.run([pyenv, *argv], capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    selected = [v for v in ask("version-name").split(":") if v]
    for minor in SUPPORTED:
        latest = ask("latest", minor)
        if latest and latest not in selected:
            selected.append(latest)
    if selected:
        os.environ["PYENV_VERSION"] = ":".join(selected)


_let_pyenv_find_every_supported_python()


def group(name: str) -> tuple[str, ...]:
    """The requirements of one dependency group (its included groups resolved)."""
    return nox.project.dependency_groups(PYPROJECT, name)


@nox.session(python=SUPPORTED)
def tests(session: nox.Session) -> None:
    """The whole suite, on both anyio backends and plain trio (parametrized inside)."""
    session.install("-e", ".[grpc]", *group("test"))
    # Exit 5 means pytest collected nothing (a -k or a path that matches no test): not a
    # failure, as in .ci/run; pytest says "no tests ran".
    session.run("python", "-m", "pytest", *session.posargs, success_codes=[0, 5])


@nox.session(python=OLDEST)
def lint(session: nox.Session) -> None:
    """ruff (the pinned version): lint and formatting."""
    session.install(*group("lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=OLDEST)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the library and the Python bridge."""
    session.install("-e", ".[grpc]", *group("typecheck"))
    session.run("mypy")


@nox.session(python=OLDEST)
def docs(session: nox.Session) -> None:
    """The documentation site, warnings as errors. `nox -s docs -- --site-dir DIR` elsewhere."""
    if not (ROOT / "mkdocs.yml").is_file():
        session.skip("no mkdocs.yml in this checkout: nothing to build")
    session.install("-e", ".[grpc]", *group("docs"))
    session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session(python=OLDEST)
def package(session: nox.Session) -> None:
    """Build the sdist and the wheel (the wheel from the sdist) and check them as PyPI would."""
    session.install(*group("package"))
    outdir = Path(session.create_tmp()) / "dist"
    shutil.rmtree(outdir, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(outdir), ".")
    built = sorted(str(path) for path in outdir.iterdir())
    session.run("twine", "check", "--strict", *built)


@nox.session(python=OLDEST)
def bench(session: nox.Session) -> None:
    """Benchmarks against the peers, side by side. `nox -s bench -- --quick` for ~3 minutes."""
    session.install("-e", ".", *group("bench"))
    session.run("python", "bench/run.py", *session.posargs)


@nox.session(python=OLDEST)
def demo(session: nox.Session) -> None:
    """The tour of the pool that the Quick start shows."""
    session.install("-e", ".")
    session.run("snakepit-trio", "demo")


@nox.session(python=OLDEST)
def soak(session: nox.Session) -> None:
    """The long chaos soak (CI runs a short one as part of the tests)."""
    session.install("-e", ".[grpc]", *group("test"))
    session.run("python", "-m", "pytest", "tests/test_soak.py", env={"SNAKEPIT_SOAK": "full"})


@nox.session(python=OLDEST)
def proto(session: nox.Session) -> None:
    """Regenerate the gRPC code from proto/; `nox -s proto -- --check` only checks it."""
    session.install("-e", ".[grpc]", *group("proto"))
    session.run("python", "proto/generate.py", *session.posargs)
