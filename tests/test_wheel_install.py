"""Build the sdist and wheel from a clean clone at HEAD, install the wheel in a fresh venv
outside the checkout, offline, and run it: the CLI, a Node worker, ``pip check``.

This catches what an editable install hides: files missing from the wheel (the Node bridge, the
bridge package, py.typed, LICENSE), a broken console script, imports of the source tree,
undeclared dependencies, and a README that reads wrongly on the package index.

The dependencies are installed from wheels repacked from this environment's own installed
distributions, so the test needs no network. Building needs ``build``, hatchling and
hatch-fancy-pypi-readme (the test dependency group has them); without them ``build`` fetches
them (skipped when that fails).
"""

from __future__ import annotations

import ast
import base64
import csv
import email.parser
import email.policy
import hashlib
import importlib.metadata as md
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOME = "https://github.com/snakepit-trio/snakepit-trio"
# Imported by modules that only a user who already has the package imports: pytest by
# snakepit_trio.testing (fixtures for the user's own test suite).
BROUGHT_BY_THE_USER = {"pytest"}

COUNTER_JS = """\
module.exports = {
  commands: {
    add: (args) => ({ sum: args.a + args.b }),
    countdown: async function* (args) {
      for (let n = args.from; n > 0; n--) yield { n };
    },
  },
};
"""

USE_NODE = """\
import trio

import snakepit_trio as sp


async def main() -> None:
    print(sp.node_bridge_path())
    async with sp.open_pool(sp.NodeAdapter("counter.js"), size=1) as pool:
        print((await pool.execute("add", {"a": 2, "b": 3}))["sum"])
        async with pool.stream("countdown", {"from": 3}) as chunks:
            print([chunk["n"] async for chunk in chunks])


trio.run(main)
"""

_SKIP_METADATA = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        argv, capture_output=True, text=True, timeout=300, env=env, **kwargs
    )


def _closure(requirements: list[str]) -> list[md.Distribution]:
    """The installed distributions that ``requirements`` need, transitively, without extras
    (markers evaluated)."""
    from packaging.requirements import Requirement

    seen: dict[str, md.Distribution] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name in seen:
            continue
        dist = md.distribution(req.name)
        seen[name] = dist
        todo += [Requirement(r) for r in dist.requires or []]
    return list(seen.values())


def _repack(dist: md.Distribution, out: Path) -> Path:
    """Rebuild the wheel ``dist`` was installed from, out of its installed files (RECORD)."""
    files = [f for f in dist.files or [] if not str(f).startswith("..") and f.suffix != ".pyc"]
    wheel_meta = next(f for f in files if f.name == "WHEEL")
    tags = [
        line.split(":", 1)[1].strip().split("-")
        for line in wheel_meta.read_text().splitlines()
        if line.startswith("Tag:")
    ]
    # The compressed tag set of the file name, e.g. py2.py3-none-any.
    tag = "-".join(".".join(dict.fromkeys(t[i] for t in tags)) for i in range(3))
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    target = out / f"{name}-{dist.version}-{tag}.whl"
    records = []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            path = Path(str(f.locate()))
            if f.name in _SKIP_METADATA and f.parent.name.endswith(".dist-info"):
                continue
            if not path.is_file():
                continue
            data = path.read_bytes()
            zf.writestr(str(f), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            records.append((str(f), f"sha256={digest.decode()}", str(len(data))))
        record = wheel_meta.parent / "RECORD"
        rows = [*records, (str(record), "", "")]
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        zf.writestr(str(record), buffer.getvalue())
    return target


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _third_party_imports() -> set[str]:
    """The top-level modules that the wheel's packages import, less the stdlib and their own."""
    packages = [
        ROOT / p for p in _pyproject()["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    ]
    own = {p.name for p in packages}
    found: set[str] = set()
    for package in packages:
        for path in package.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names and name not in own}


def test_every_imported_distribution_is_declared() -> None:
    """A module the package imports comes from a declared requirement (some of them only with
    an extra), not from whatever another requirement happens to pull in."""
    from packaging.requirements import Requirement

    project = _pyproject()["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    declared = {_canonical(Requirement(r).name) for r in requirements}
    imports = _third_party_imports()
    assert {"trio", "anyio", "sniffio"} <= imports  # the scan itself works
    providers = md.packages_distributions()
    undeclared = {
        module: sorted(providers.get(module, [module]))
        for module in sorted(imports - BROUGHT_BY_THE_USER)
        if not {_canonical(d) for d in providers.get(module, [module])} & declared
    }
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def _build(src: Path, out: Path) -> None:
    """The sdist, then the wheel from the sdist: what `python -m build` makes for the index."""
    offline = all(
        importlib.util.find_spec(module) is not None
        for module in ("build", "hatchling", "hatch_fancy_pypi_readme")
    )
    if importlib.util.find_spec("build") is None:
        pytest.skip("the build package is missing (pip install --group test)")
    argv = [sys.executable, "-m", "build", "--outdir", str(out), str(src)]
    built = _run([*argv, "--no-isolation"] if offline else argv)
    if built.returncode != 0 and not offline:
        pytest.skip(f"cannot fetch the build backend: {built.stderr[-500:]}")
    assert built.returncode == 0, built.stdout + built.stderr


def _heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of ``markdown`` (outside code blocks)."""
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    headings = re.findall(r"^#{1,6} +(.+?) *$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def _check_description(description: str, readme: str, src: Path) -> None:
    """The README as the index shows it: the same text and code, every link absolute and alive."""
    fences = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
    for block in fences.findall(readme):
        assert block in description, (
            f"a README code block changed on its way to the index:\n{block}"
        )
    links = re.compile(r"\]\(([^)\s]+)\)")
    ours = links.findall(fences.sub("", readme))
    theirs = links.findall(fences.sub("", description))
    assert len(theirs) == len(ours) > 0
    assert any(not t.startswith(("https:", "http:")) for t in ours)  # there was work to do
    anchors = _heading_anchors(readme)
    for target in theirs:
        assert target.startswith(("https://", "http://", "mailto:")), f"relative link: {target}"
        if target.startswith(HOME + "#"):
            assert target.removeprefix(HOME + "#") in anchors, f"no such heading: {target}"
        elif target.startswith(HOME + "/"):
            path = re.sub(r"^(blob|tree)/main/", "", target.removeprefix(HOME + "/"))
            assert (src / path.split("#")[0]).exists(), f"link to a missing file: {target}"


@pytest.mark.slow
def test_wheel_installs_and_runs(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    src, wheels, venv, user = (tmp_path / d for d in ("src", "wheels", "venv", "user"))
    wheels.mkdir()
    user.mkdir()
    clone = _run(["git", "clone", "--quiet", str(ROOT), str(src)])
    assert clone.returncode == 0, clone.stderr
    version_py = (src / "snakepit_trio" / "_version.py").read_text(encoding="utf-8")
    (version,) = re.findall(r'^__version__ = "([^"]+)"', version_py, re.MULTILINE)

    _build(src, wheels)
    (sdist,) = wheels.glob("snakepit_trio-*.tar.gz")
    (ours,) = wheels.glob("snakepit_trio-*.whl")
    assert ours.name == f"snakepit_trio-{version}-py3-none-any.whl"
    with tarfile.open(sdist) as tar:
        assert f"snakepit_trio-{version}/LICENSE" in tar.getnames()
    with zipfile.ZipFile(ours) as zf:
        names = zf.namelist()
        raw_metadata = zf.read(f"snakepit_trio-{version}.dist-info/METADATA")
    for expected in (
        "snakepit_trio/py.typed",
        "snakepit_trio/cli/__init__.py",
        "snakepit_trio_bridge/__main__.py",
        "snakepit_trio_bridge/node/snakepit_bridge.js",
        f"snakepit_trio-{version}.dist-info/licenses/LICENSE",
    ):
        assert expected in names, f"{expected} is missing from the wheel"
    metadata = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw_metadata)
    assert metadata["Version"] == version
    assert metadata["License-Expression"] == "MIT"
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    assert set(urls) == {"Homepage", "Documentation", "Changelog", "Issues"}
    assert metadata["Description-Content-Type"] == "text/markdown"
    description = metadata.get_payload()
    assert isinstance(description, str)
    _check_description(description, (src / "README.md").read_text(encoding="utf-8"), src)

    # What the wheel itself declares (not what an older install of it declared).
    for dist in _closure(metadata.get_all("Requires-Dist") or []):
        _repack(dist, wheels)

    made = _run([sys.executable, "-m", "venv", str(venv)])
    assert made.returncode == 0, made.stderr
    bin_dir = venv / "bin"
    python = str(bin_dir / "python")
    installed = _run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--find-links",
            str(wheels),
            "--disable-pip-version-check",
            "snakepit-trio",
        ]
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    check = _run([python, "-m", "pip", "check", "--disable-pip-version-check"])
    assert check.returncode == 0, check.stdout + check.stderr

    where = _run(
        [python, "-c", "import snakepit_trio, sys; print(snakepit_trio.__file__)"], cwd=user
    )
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr

    reported = _run([str(bin_dir / "snakepit-trio"), "--version"], cwd=user)
    assert reported.stdout.strip() == f"snakepit-trio {version}", reported.stdout + reported.stderr

    demo = _run([str(bin_dir / "snakepit-trio"), "demo"], cwd=user)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "demo finished" in demo.stdout
    assert "Traceback" not in demo.stderr
    if shutil.which("node"):
        assert "2 ** 10 = 1024" in demo.stdout, "the Node bridge did not run from the wheel"

    doctor = _run([str(bin_dir / "snakepit-trio"), "doctor"], cwd=user)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "everything essential works" in doctor.stdout

    if shutil.which("node"):
        # A user's own Node module, outside any checkout, served by the wheel's bridge script.
        (user / "counter.js").write_text(COUNTER_JS, encoding="utf-8")
        (user / "use_node.py").write_text(USE_NODE, encoding="utf-8")
        node = _run([python, "use_node.py"], cwd=user)
        assert node.returncode == 0, node.stdout + node.stderr
        bridge, added, counted = node.stdout.splitlines()
        assert bridge.startswith(str(venv)), bridge
        assert (added, counted) == ("5", "[3, 2, 1]")
