"""Developer tasks: `nox -s tests`, `nox -s lint`, `nox -s typecheck`, `nox -s bench`, ..."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """The whole suite, on both anyio backends and plain trio (parametrized inside)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("-e", ".[dev]")  # the pinned ruff
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the library and the Python bridge."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Benchmarks against the peers, side by side. `nox -s bench -- --quick` for ~3 minutes."""
    session.install("-e", ".[bench]")
    session.run("python", "bench/run.py", *session.posargs)


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    session.install("-e", ".")
    session.run("snakepit-trio", "demo")


@nox.session(python="3.11")
def soak(session: nox.Session) -> None:
    """The long chaos soak (CI runs a short one as part of the tests)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "tests/test_soak.py", env={"SNAKEPIT_SOAK": "full"})


@nox.session(python="3.11")
def proto(session: nox.Session) -> None:
    """Regenerate the gRPC code from proto/snakepit.proto."""
    session.install("-e", ".[dev]", "grpcio-tools")
    session.run("python", "proto/generate.py")
