"""The snakepit-trio command line: every subcommand, bad input, exit codes, no tracebacks."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import snakepit_trio as sp
from snakepit_trio import cli

ROOT = Path(__file__).resolve().parents[1]
needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="node is not on PATH")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, fragment: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("snakepit-trio: error: "), err
    assert fragment in lines[0], err
    assert "Traceback" not in err


# ------------------------------------------------------------------ usage


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0
    assert out.strip() == f"snakepit-trio {sp.__version__}"
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for name in ("demo", "run", "stream", "bench", "doctor", "sweep"):
        assert name in out
    code, out, _ = run_cli(capsys, "run", "--help")
    assert code == 0 and "ARGS_JSON" in out and "--wire" in out


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ((), "required: COMMAND"),
        (("fly",), "invalid choice: 'fly'"),
        (("run",), "required: ADAPTER, COMMAND"),
        (("run", "ruby", "ping"), "unknown adapter 'ruby'"),
        (("run", "python", "ping", "{bad"), "ARGS_JSON is not valid JSON"),
        (("run", "python", "ping", "[1, 2]"), "ARGS_JSON must be a JSON object"),
        (("run", "python", "echo", '{"b": {"__bytes__": "!!"}}'), "invalid base64"),
        (("run", "python", "ping", "--workers", "0"), "must be at least 1"),
        (("run", "python", "ping", "--timeout", "-1"), "positive number of seconds"),
        (("run", "python", "ping", "--wire", "xml"), "invalid choice: 'xml'"),
        (("run", "python:no_class", "ping"), "python:MODULE:CLASS"),
        (("run", "python:missing_file.py:Cls", "ping"), "no such file"),
        (("run", "exec:", "ping"), "needs a program"),
        (("run", "exec:'unclosed", "ping"), "bad adapter"),
        (("stream", "python", "ping_stream", "nope"), "not valid JSON"),
        (("bench", "--concurrency", "x"), "not an integer"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], fragment: str
) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert out == ""
    assert_one_line_error(err, fragment)


@needs_node
def test_node_module_must_exist(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run", "node:/nonexistent/module.js", "ping")
    assert code == 2
    assert_one_line_error(err, "no such file")


# ------------------------------------------------------------------ run


def test_run_prints_the_result_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        capsys, "run", "python", "compute", '{"operation": "add", "a": 1, "b": 2}'
    )
    assert code == 0, err
    assert json.loads(out)["result"] == 3
    assert out.count("\n") > 3  # indented for people


@pytest.mark.parametrize("wire", ["auto", "json", "msgpack"])
def test_run_json_mode_and_bytes_round_trip(capsys: pytest.CaptureFixture[str], wire: str) -> None:
    args = '{"blob": {"__bytes__": "AAEC/w=="}, "n": 1}'
    code, out, err = run_cli(capsys, "run", "python", "echo", args, "--json", "--wire", wire)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 1
    echoed = json.loads(lines[0])["result"]["echoed"]
    assert echoed == {"blob": {"__bytes__": "AAEC/w=="}, "n": 1}


def test_run_in_a_session(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        capsys, "run", "python", "ping", "--session", "cli-test", "--workers", "2", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["result"]["echo"] == {"session_id": "cli-test"}


def test_unknown_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "run", "python", "no_such_command")
    assert code == 1
    assert out == ""
    assert_one_line_error(err, "no_such_command")


def test_json_mode_reports_errors_on_stdout_too(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "run", "python", "no_such_command", "--json")
    assert code == 1
    assert json.loads(out)["error"]["type"] == "UnsupportedCommand"
    assert_one_line_error(err, "no_such_command")


def test_a_command_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(
        capsys, "run", "python", "compute", '{"operation": "divide", "a": 1, "b": 0}'
    )
    assert code == 1
    assert_one_line_error(err, "the command failed: ZeroDivisionError: division by zero")


def test_debug_adds_the_tracebacks(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(
        capsys, "--debug", "run", "python", "compute", '{"operation": "divide", "a": 1, "b": 0}'
    )
    assert code == 1
    assert "remote traceback" in err
    assert "Traceback (most recent call last)" in err


def test_a_timeout_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run", "python", "sleep", '{"seconds": 10}', "--timeout", "0.2")
    assert code == 1
    assert_one_line_error(err, "did not finish within 0.2 s")


def test_a_worker_that_cannot_start_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run", "python:no_such_module_xyz:Handler", "ping")
    assert code == 1
    assert_one_line_error(err, "No module named 'no_such_module_xyz'")
    code, _, err = run_cli(capsys, "run", "exec:/nonexistent/program", "ping")
    assert code == 1
    assert_one_line_error(err, "No such file or directory")


def test_run_a_handler_given_as_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    spec = f"python:{ROOT / 'examples/custom_handler/text_handler.py'}:TextHandler"
    code, out, err = run_cli(capsys, "run", spec, "word_count", '{"text": "a b a"}', "--json")
    assert code == 0, err
    assert json.loads(out)["result"]["distinct"] == 2


def test_run_any_program_with_exec(capsys: pytest.CaptureFixture[str]) -> None:
    worker = ROOT / "examples/protocol_worker/worker.py"
    spec = f"exec:{sys.executable} {worker}"
    for wire in ("auto", "json"):
        code, out, err = run_cli(
            capsys, "run", spec, "reverse", '{"text": "abc"}', "--json", "--wire", wire
        )
        assert code == 0, err
        assert json.loads(out) == {"result": {"text": "cba"}}


@needs_node
def test_run_on_node(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        capsys, "run", "node", "compute", '{"operation": "power", "a": 2, "b": 10}', "--json"
    )
    assert code == 0, err
    assert json.loads(out)["result"]["result"] == 1024


@pytest.mark.skipif(
    not hasattr(sp, "GrpcPythonAdapter") or importlib.util.find_spec("grpclib") is None,
    reason="no gRPC adapter or no grpc extra",
)
def test_run_over_grpc(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        capsys, "run", "grpc", "echo", '{"b": {"__bytes__": "AAE="}}', "--json"
    )
    assert code == 0, err
    assert json.loads(out)["result"]["echoed"] == {"b": {"__bytes__": "AAE="}}
    code, _, err = run_cli(capsys, "run", "grpc", "ping", "--wire", "json")
    assert code == 2
    assert_one_line_error(err, "--wire does not apply")


# ------------------------------------------------------------------ stream


def test_stream_prints_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        capsys, "stream", "python", "ping_stream", '{"count": 3, "interval": 0.01}'
    )
    assert code == 0, err
    chunks = [json.loads(line) for line in out.splitlines()]
    assert [c["ping_number"] for c in chunks] == [1, 2, 3]
    assert "3 chunks" in err and '"total": 3' in err


def test_stream_json_mode(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        capsys, "stream", "python", "batch_inference", '{"items": ["a", "b"]}', "--json"
    )
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["chunk"]["item"] for line in lines[:-1]] == ["a", "b"]
    assert lines[-1] == {"result": {"status": "ok", "total_items": 2}, "chunks": 2}


def test_stream_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "stream", "python", "batch_inference", '{"items": 5}')
    assert code == 1
    assert_one_line_error(err, "TypeError: 'items' must be a list")


# ------------------------------------------------------------------ demo, bench, doctor, sweep


def test_demo(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    code, out, err = run_cli(capsys, "demo")
    assert code == 0, err
    assert time.monotonic() - started < 30
    for fragment in (
        "Python workers started concurrently",
        "concurrent sleep",
        "6 * 7 = 42",
        "CommandError(ZeroDivisionError",
        "echoed back identical",
        "both ran on worker pid",
        "batch_inference streamed 24 chunks",
        "and served the next request",
        "pool.stats()",
        "pool.workers()",
        "demo finished",
    ):
        assert fragment in out, out
    node_line = next(line for line in out.splitlines() if line.strip().startswith("node"))
    if shutil.which("node"):
        assert "2 ** 10 = 1024" in node_line
    else:
        assert "skipped" in node_line
    # Not a terminal: plain progress lines, no escape codes anywhere.
    assert "batch_inference: 24/24 (100%)" in err
    assert "\x1b" not in out + err


def test_bench_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        capsys, "bench", "--requests", "30", "--burst", "60", "--concurrency", "4", "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["sequential"]["requests"] == 30
    assert report["burst"]["requests"] == 60
    assert report["burst"]["per_second"] > 0
    assert report["stats"]["requests"] >= 90


def test_bench_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "bench", "--requests", "20", "--burst", "40")
    assert code == 0, err
    assert "sequential" in out and "burst" in out and "req/s" in out


def test_doctor(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "doctor", "--json")
    assert code == 0, out + err
    report = json.loads(out)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["ok"] is True
    assert checks["python worker"]["ok"] is True
    for name in ("python", "trio", "anyio", "msgpack", "node", "socket dir", "grpclib"):
        assert name in checks
    code, out, _ = run_cli(capsys, "doctor")
    assert code == 0
    assert "everything essential works" in out


def test_doctor_fails_when_a_python_worker_cannot_start(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sp, "PythonAdapter", lambda: sp.Adapter("/nonexistent/python"))
    code, out, _ = run_cli(capsys, "doctor")
    assert code == 1
    assert "FAIL  python worker" in out
    assert "essential check(s) failed" in out


def test_sweep_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "sweep", "--json")
    assert code == 0, err
    assert isinstance(json.loads(out), list)


def test_sweep_table_and_kill_flag(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bool] = []

    def fake_sweep(*, dry_run: bool = True) -> list[Any]:
        calls.append(dry_run)
        return [
            SimpleNamespace(pid=4242, run_id="1-2-ab", cmdline="python -m x", killed=not dry_run)
        ]

    monkeypatch.setattr(sp, "sweep_orphans", fake_sweep, raising=False)
    code, out, _ = run_cli(capsys, "sweep")
    assert code == 0
    assert "4242" in out and "dry run, nothing killed" in out
    code, out, _ = run_cli(capsys, "sweep", "--kill")
    assert code == 0
    assert "killed 1 of 1" in out
    assert calls == [True, False]


def test_sweep_not_available(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(sp, "sweep_orphans", raising=False)
    code, _, err = run_cli(capsys, "sweep")
    assert code == 1
    assert_one_line_error(err, "sweep is not available")


# ------------------------------------------------------------------ as a process


def test_module_and_console_script() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "snakepit_trio", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("snakepit-trio ")
    script = Path(sys.executable).with_name("snakepit-trio")
    if script.exists():
        result = subprocess.run([str(script), "run"], capture_output=True, text=True)
        assert result.returncode == 2
        assert_one_line_error(result.stderr, "required")


def _workers_of(pool_pid: int) -> list[int]:
    """Pids of live processes whose SNAKEPIT_RUN_ID names ``pool_pid`` as their pool."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        if f"SNAKEPIT_RUN_ID={pool_pid}-".encode() in environ and b") Z " not in stat:
            found.append(int(entry))
    return found


def test_ctrl_c_exits_130_and_leaves_no_worker() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakepit_trio", "run", "python", "sleep", '{"seconds": 30}'],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 20
        while not _workers_of(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _workers_of(proc.pid), "the worker never started"
        time.sleep(0.3)  # let the request reach the worker
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    deadline = time.monotonic() + 5
    while _workers_of(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _workers_of(proc.pid)
