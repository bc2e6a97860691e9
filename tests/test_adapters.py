"""Adapters: what a worker gets on its import path, handlers given as classes or files, and
clear errors for every argument the pool could not use.

The import path tests start real workers, on this interpreter and on other Pythons found under
pyenv (skipped when there are none).
"""

from __future__ import annotations

import os
import shutil
import site
import sys
from pathlib import Path
from typing import Any

import pytest
import snakepit_trio_bridge
from snakepit_trio_bridge import BaseCommandHandler

import snakepit_trio as sp
from snakepit_trio import _adapters

ROOT = Path(__file__).resolve().parents[1]
PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"


def _other_pythons() -> list[Any]:
    """Interpreters other than this one (3.11+ is what the bridge supports)."""
    found = []
    for version in ("3.12", "3.13"):
        candidates = sorted(PYENV.glob(f"{version}.*/bin/python{version}"))
        marks = () if candidates else (pytest.mark.skip(reason=f"no Python {version} in pyenv"),)
        found.append(
            pytest.param(str(candidates[-1]) if candidates else "", id=version, marks=marks)
        )
    return found


# A handler that reports what the worker can import. It lives in a directory that the test
# passes on PYTHONPATH through the adapter's env, so a user's PYTHONPATH is exercised too.
PROBE = """
import importlib.util
import os
import sys

import snakepit_trio_bridge
from snakepit_trio_bridge import BaseCommandHandler


class Probe(BaseCommandHandler):
    def _register_commands(self):
        self.register_command("where", self.where)

    def where(self, args):
        return {
            "sys_path": sys.path,
            "pythonpath": os.environ.get("PYTHONPATH", ""),
            "version": list(sys.version_info[:2]),
            "bridge": snakepit_trio_bridge.__file__,
            "pool_only": importlib.util.find_spec("pool_only_module") is not None,
            "msgpack": importlib.util.find_spec("msgpack") is not None,
        }
"""


def _write_probe(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "probe_handler.py").write_text(PROBE)
    return folder


def _fake_wheel_install(base: Path) -> Path:
    """A copy of the bridge package inside a directory that holds other packages too, as
    site-packages does after ``pip install snakepit-trio``. Returns its __init__.py."""
    packages = base / "site-packages"
    shutil.copytree(
        Path(snakepit_trio_bridge.__file__).parent,
        packages / "snakepit_trio_bridge",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    # Stands for the pool's own (compiled) packages, which a worker must never see.
    (packages / "pool_only_module.py").write_text("raise ImportError('the pool only')\n")
    (packages / "other_package").mkdir()
    (packages / "other_package" / "__init__.py").write_text("")
    return packages / "snakepit_trio_bridge" / "__init__.py"


def _sees_pool_site_packages(sys_path: list[str]) -> bool:
    pool = {os.path.realpath(p) for p in site.getsitepackages()}
    return bool({os.path.realpath(p) for p in sys_path if p} & pool)


BRIDGE_DIR = str(Path(snakepit_trio_bridge.__file__).resolve().parents[1])
BRIDGE_INIT = str(Path(snakepit_trio_bridge.__file__).resolve())


async def _where(adapter: sp.Adapter) -> tuple[dict[str, Any], str]:
    async with sp.open_pool(adapter, size=1) as pool:
        found = await pool.execute("where", timeout=30)
        return found, pool.workers()[0].protocol


# ------------------------------------------------------------------ what the worker imports


@pytest.mark.anyio
@pytest.mark.parametrize("python", _other_pythons())
async def test_a_worker_on_another_python_gets_none_of_the_pools_packages(
    python: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _fake_wheel_install(tmp_path)
    monkeypatch.setattr(snakepit_trio_bridge, "__file__", str(fake))
    handlers = _write_probe(tmp_path / "handlers")
    adapter = sp.PythonAdapter(
        "probe_handler:Probe", python=python, env={"PYTHONPATH": str(handlers)}
    )
    found, protocol = await _where(adapter)
    version = Path(python).name.removeprefix("python")
    assert ".".join(map(str, found["version"])) == version
    # It runs the pool's bridge (the copy), yet sees nothing else of the pool's packages.
    assert found["bridge"] == str(fake)
    assert found["pool_only"] is False
    assert str(fake.parents[1]) not in found["sys_path"]
    assert not _sees_pool_site_packages(found["sys_path"])
    # The user's PYTHONPATH still works (the probe handler came from it).
    assert str(handlers) in found["pythonpath"].split(os.pathsep)
    # msgpack is whatever that interpreter has: without it, the bridge speaks JSON.
    assert protocol == ("msgpack" if found["msgpack"] else "json")


@pytest.mark.anyio
@pytest.mark.parametrize("python", _other_pythons())
async def test_a_worker_on_another_python_with_a_source_checkout(
    python: str, tmp_path: Path
) -> None:
    """A checkout (or an editable install): the bridge's own directory holds only the
    bridge, so it is all that goes on the worker's path."""
    handlers = _write_probe(tmp_path / "handlers")
    adapter = sp.PythonAdapter(
        "probe_handler:Probe", python=python, env={"PYTHONPATH": str(handlers)}
    )
    found, protocol = await _where(adapter)
    assert found["bridge"] == BRIDGE_INIT
    assert found["pythonpath"].split(os.pathsep) == [BRIDGE_DIR, str(handlers)]
    assert not _sees_pool_site_packages(found["sys_path"])
    assert protocol == ("msgpack" if found["msgpack"] else "json")


@pytest.mark.anyio
async def test_a_worker_on_this_python_with_the_bridge_among_other_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bridge in a directory with other packages, not one of this interpreter's site
    directories: the worker gets the bridge, not the directory."""
    fake = _fake_wheel_install(tmp_path)
    monkeypatch.setattr(snakepit_trio_bridge, "__file__", str(fake))
    handlers = _write_probe(tmp_path / "handlers")
    adapter = sp.PythonAdapter("probe_handler:Probe", env={"PYTHONPATH": str(handlers)})
    found, protocol = await _where(adapter)
    assert found["bridge"] == str(fake)
    assert found["pool_only"] is False
    assert found["pythonpath"].split(os.pathsep) == [str(handlers)]
    assert protocol == "msgpack"


def test_nothing_is_added_when_this_python_imports_the_bridge_from_its_site_packages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wheel installed into this interpreter: the worker, on the same interpreter, finds the
    bridge where the pool does, so its PYTHONPATH is left alone."""
    site_dir = site.getsitepackages()[0]
    monkeypatch.setattr(
        snakepit_trio_bridge, "__file__", f"{site_dir}/snakepit_trio_bridge/__init__.py"
    )
    monkeypatch.delenv("PYTHONPATH", raising=False)
    adapter = sp.PythonAdapter()
    assert "PYTHONPATH" not in adapter.environment()
    assert adapter.argv()[1:3] == ["-c", _adapters._BRIDGE_MAIN]
    # Another interpreter does not share those site-packages: the bridge goes by its path.
    other = sp.PythonAdapter(python="/usr/bin/python3")
    assert "PYTHONPATH" not in other.environment()
    assert site_dir in other.argv()[2]


# ------------------------------------------------------------------ handlers as classes and files


class NestedOuter:
    class Inner(BaseCommandHandler):
        pass


def test_a_handler_class_becomes_its_import_name() -> None:
    from snakepit_trio_bridge.testing import TestingHandler

    adapter = sp.PythonAdapter(TestingHandler)
    assert adapter.handler == "snakepit_trio_bridge.testing:TestingHandler"
    assert adapter.argv()[-2:] == ["--handler", "snakepit_trio_bridge.testing:TestingHandler"]
    nested = sp.PythonAdapter(NestedOuter.Inner)
    assert nested.handler == f"{__name__}:NestedOuter.Inner"


@pytest.mark.anyio
async def test_a_handler_class_from_a_module_only_the_pool_can_see(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The class's module is on the pool's sys.path only: the worker is given its folder."""
    _write_probe(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "probe_handler", raising=False)
    import probe_handler  # type: ignore[import-not-found]

    adapter = sp.PythonAdapter(probe_handler.Probe, cwd="/")
    assert adapter.handler == "probe_handler:Probe"
    found, _ = await _where(adapter)
    assert str(tmp_path) in found["pythonpath"].split(os.pathsep)


def test_a_handler_class_a_worker_cannot_import_is_refused() -> None:
    class Local(BaseCommandHandler):
        pass

    with pytest.raises(ValueError, match="defined inside a function"):
        sp.PythonAdapter(Local)
    in_main = type("Script", (BaseCommandHandler,), {"__module__": "__main__"})
    with pytest.raises(ValueError, match="__main__"):
        sp.PythonAdapter(in_main)
    renamed = type("Ghost", (BaseCommandHandler,), {"__module__": __name__})
    with pytest.raises(ValueError, match="cannot be imported by name"):
        sp.PythonAdapter(renamed)
    with pytest.raises(TypeError, match=r"subclass of snakepit_trio_bridge\.BaseCommandHandler"):
        sp.PythonAdapter(dict)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="handler must be"):
        sp.PythonAdapter(NestedOuter.Inner())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="handler must be"):
        sp.PythonAdapter(42)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_a_handler_given_as_a_file() -> None:
    path = ROOT / "examples" / "custom_handler" / "text_handler.py"
    adapter = sp.PythonAdapter(f"{path}:TextHandler", cwd="/")
    assert adapter.handler == "text_handler:TextHandler"
    assert str(path.parent) in adapter.environment()["PYTHONPATH"].split(os.pathsep)
    async with sp.open_pool(adapter, size=1) as pool:
        counted = await pool.execute("word_count", {"text": "a b a"}, timeout=30)
    assert counted["distinct"] == 2


def test_a_handler_file_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mine.py").write_text("")
    monkeypatch.chdir(tmp_path)
    adapter = sp.PythonAdapter("sub/mine.py:Handler")
    assert adapter.handler == "mine:Handler"
    assert str(tmp_path / "sub") in adapter.environment()["PYTHONPATH"].split(os.pathsep)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("no_class", "'module:Class' or 'path/to/file.py:Class'"),
        ("module:", "'module:Class' or 'path/to/file.py:Class'"),
        (":Class", "'module:Class' or 'path/to/file.py:Class'"),
        ("a b:Class", "'module:Class' or 'path/to/file.py:Class'"),
        ("mod:Cl ass", "'module:Class' or 'path/to/file.py:Class'"),
        ("mod:1Class", "'module:Class' or 'path/to/file.py:Class'"),
        ("/no/such/file.py:Handler", "no such file"),
        ("", "'module:Class' or 'path/to/file.py:Class'"),
    ],
)
def test_a_bad_handler_string_says_what_is_expected(spec: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="handler") as info:
        sp.PythonAdapter(spec)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("name", "fragment"), [("my-handler.py", "not a valid module name"), ("json.py", "standard")]
)
def test_a_handler_file_that_cannot_be_imported_by_its_name(
    tmp_path: Path, name: str, fragment: str
) -> None:
    (tmp_path / name).write_text("")
    with pytest.raises(ValueError, match=fragment):
        sp.PythonAdapter(f"{tmp_path / name}:Handler")


def test_a_module_name_is_not_checked_in_the_pool() -> None:
    """The module may exist only where the worker runs: the worker reports it if not."""
    assert sp.PythonAdapter("only_in_the_worker:Handler").handler == "only_in_the_worker:Handler"


# ------------------------------------------------------------------ argument checks


@pytest.mark.parametrize(
    ("kwargs", "kind", "fragment"),
    [
        ({"executable": ""}, ValueError, "executable must not be empty"),
        ({"executable": None}, TypeError, "executable"),
        ({"executable": 7}, TypeError, "executable"),
        ({"executable": "py\0thon"}, ValueError, "NUL"),
        ({"executable": "x", "script": ""}, ValueError, "script must not be empty"),
        ({"executable": "x", "script": 3}, TypeError, "script"),
        ({"executable": "x", "script_args": "--flag"}, TypeError, "a list of arguments"),
        ({"executable": "x", "script_args": b"--flag"}, TypeError, "a list of arguments"),
        ({"executable": "x", "script_args": 5}, TypeError, "script_args"),
        ({"executable": "x", "script_args": ["a", None]}, TypeError, "script_args[1]"),
        ({"executable": "x", "script_args": ["a", True]}, TypeError, "script_args[1]"),
        ({"executable": "x", "script_args": ["a\0b"]}, ValueError, "NUL"),
        ({"executable": "x", "wire": "bogus"}, ValueError, "wire must be one of"),
        ({"executable": "x", "wire": None}, ValueError, "wire must be one of"),
        ({"executable": "x", "env": ["A=1"]}, TypeError, "env must be a mapping"),
        ({"executable": "x", "env": {"A": 1}}, TypeError, "env['A']"),
        ({"executable": "x", "env": {"A": None}}, TypeError, "env['A']"),
        ({"executable": "x", "env": {1: "a"}}, TypeError, "env key"),
        ({"executable": "x", "env": {"": "a"}}, ValueError, "env key"),
        ({"executable": "x", "env": {"A=B": "a"}}, ValueError, "env key"),
        ({"executable": "x", "env": {"A": "a\0b"}}, ValueError, "NUL"),
        ({"executable": "x", "cwd": 5}, TypeError, "cwd"),
        ({"executable": "x", "cwd": ""}, ValueError, "cwd must not be empty"),
        ({"executable": "x", "inherit_env": "no"}, TypeError, "inherit_env"),
        ({"executable": "x", "name": 5}, TypeError, "name"),
    ],
)
def test_adapter_arguments_are_checked_up_front(
    kwargs: dict[str, Any], kind: type[Exception], fragment: str
) -> None:
    with pytest.raises(kind) as info:
        sp.Adapter(**kwargs)
    assert fragment in str(info.value)


def test_adapter_accepts_paths_and_numbers_in_its_arguments(tmp_path: Path) -> None:
    adapter = sp.Adapter(Path("/bin/cat"), tmp_path / "s", [tmp_path, 8080, "-v"], cwd=tmp_path)
    assert adapter.argv() == ["/bin/cat", str(tmp_path / "s"), str(tmp_path), "8080", "-v"]
    assert adapter.cwd == str(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "kind", "fragment"),
    [
        ({"python": ""}, ValueError, "python must not be empty"),
        ({"max_concurrency": 0}, ValueError, "max_concurrency"),
        ({"max_concurrency": True}, TypeError, "max_concurrency"),
        ({"max_concurrency": "4"}, TypeError, "max_concurrency"),
        ({"enhanced": "yes"}, TypeError, "enhanced"),
        ({"wire": "xml"}, ValueError, "wire must be one of"),
        ({"env": {"PYTHONPATH": 3}}, TypeError, "env['PYTHONPATH']"),
    ],
)
def test_python_adapter_arguments_are_checked_up_front(
    kwargs: dict[str, Any], kind: type[Exception], fragment: str
) -> None:
    with pytest.raises(kind) as info:
        sp.PythonAdapter(**kwargs)
    assert fragment in str(info.value)


def test_node_adapter_arguments_are_checked_up_front(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        sp.NodeAdapter(tmp_path / "missing.js")
    with pytest.raises(ValueError, match="node must not be empty"):
        sp.NodeAdapter(node="")
    with pytest.raises(TypeError, match="script"):
        sp.NodeAdapter(5)  # type: ignore[arg-type]
