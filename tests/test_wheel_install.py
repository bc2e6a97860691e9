"""Build a wheel from a clean clone at HEAD, install it in a fresh venv offline, run the CLI.

This catches what an editable install hides: files missing from the wheel (the Node bridge, the
bridge package, py.typed), a broken console script, imports of the source tree.

The dependencies are installed from wheels repacked from this environment's own installed
distributions, so the test needs no network. Building our wheel needs hatchling: from this
environment when it is there, else pip fetches it (skipped when that fails).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata as md
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

_SKIP_METADATA = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        argv, capture_output=True, text=True, timeout=300, env=env, **kwargs
    )


def _closure(root: str) -> list[md.Distribution]:
    """``root``'s installed dependencies, transitively, without extras (markers evaluated)."""
    from packaging.requirements import Requirement

    seen: dict[str, md.Distribution] = {}
    todo = [Requirement(r) for r in md.requires(root) or []]
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


def test_wheel_installs_and_runs(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    src, wheels, venv = tmp_path / "src", tmp_path / "wheels", tmp_path / "venv"
    wheels.mkdir()
    clone = _run(["git", "clone", "--quiet", str(ROOT), str(src)])
    assert clone.returncode == 0, clone.stderr

    build = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-w", str(wheels)]
    if importlib.util.find_spec("hatchling") is not None:
        build.append("--no-build-isolation")
    built = _run(build)
    if built.returncode != 0:
        if "--no-build-isolation" not in build:
            pytest.skip(f"cannot build the wheel without hatchling: {built.stderr[-500:]}")
        raise AssertionError(built.stdout + built.stderr)
    (ours,) = wheels.glob("snakepit_trio-*.whl")
    names = zipfile.ZipFile(ours).namelist()
    for expected in (
        "snakepit_trio/py.typed",
        "snakepit_trio/cli/__init__.py",
        "snakepit_bridge/__main__.py",
        "snakepit_bridge/node/snakepit_bridge.js",
    ):
        assert expected in names, f"{expected} is missing from the wheel"

    for dist in _closure("snakepit-trio"):
        _repack(dist, wheels)

    made = _run([sys.executable, "-m", "venv", str(venv)])
    assert made.returncode == 0, made.stderr
    bin_dir = venv / "bin"
    installed = _run(
        [
            str(bin_dir / "python"),
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

    where = _run(
        [str(bin_dir / "python"), "-c", "import snakepit_trio, sys; print(snakepit_trio.__file__)"],
        cwd=tmp_path,
    )
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr

    demo = _run([str(bin_dir / "snakepit-trio"), "demo"], cwd=tmp_path)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "demo finished" in demo.stdout
    assert "Traceback" not in demo.stderr
    if shutil.which("node"):
        assert "2 ** 10 = 1024" in demo.stdout, "the Node bridge did not run from the wheel"

    doctor = _run([str(bin_dir / "snakepit-trio"), "doctor"], cwd=tmp_path)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "everything essential works" in doctor.stdout
