"""The snakepit-trio command line: every subcommand, bad input, exit codes, no tracebacks."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from proc_support import pid_alive

import snakepit_trio as sp
from snakepit_trio import cli
from snakepit_trio._progress import Progress
from snakepit_trio.cli import _options, _run

ROOT = Path(__file__).resolve().parents[1]
needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="node is not on PATH")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, fragment: str) -> None:
    """The error is one line, the last; before it only the workers' output may come, which
    the CLI relays line by line with the same prefix (never a traceback of the CLI itself)."""
    lines = err.strip().splitlines()
    assert lines, err
    assert lines[-1].startswith("snakepit-trio: error: "), err
    assert fragment in lines[-1], err
    assert "Traceback" not in lines[-1], err
    for line in lines[:-1]:
        assert line.startswith("snakepit-trio: "), err
        assert not line.startswith("snakepit-trio: error"), err


def assert_usage_error(err: str, fragment: str) -> None:
    """A usage error starts no worker: one line and nothing else."""
    assert len(err.strip().splitlines()) == 1, err
    assert_one_line_error(err, fragment)


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
        (("run", "python", "ping", "--workers", "100000"), "--workers must be an int from 1 to"),
        (("demo", "--workers", "100000"), "--workers must be an int from 1 to"),
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
    assert_usage_error(err, fragment)


@needs_node
def test_node_module_must_exist(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run", "node:/nonexistent/module.js", "ping")
    assert code == 2
    assert_usage_error(err, "no such file")


def test_every_subcommand_has_a_description(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser()
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(subparsers.choices) == {"demo", "run", "stream", "bench", "doctor", "sweep"}
    for name, sub in subparsers.choices.items():
        assert sub.description and len(sub.description) > 40, name
        code, out, _ = run_cli(capsys, name, "--help")
        assert code == 0
        assert sub.description.split()[0] in out, name


def test_pool_options_reach_the_config() -> None:
    ns = cli.build_parser().parse_args(
        [
            "run",
            "python",
            "ping",
            "--startup-timeout",
            "61",
            "--worker-init-timeout",
            "62.5",
            "--negotiation-timeout",
            "7",
            "--command-timeout",
            "8",
            "--max-frame-size",
            "16MiB",
        ]
    )
    config = _options.pool_config(ns)
    assert config.startup_timeout == 61
    assert config.worker_init_timeout == 62.5
    assert config.negotiation_timeout == 7
    assert config.command_timeout == 8
    assert config.max_frame_size == 16 * 2**20
    defaults = _options.pool_config(cli.build_parser().parse_args(["run", "python", "ping"]))
    assert defaults == sp.PoolConfig()
    for flags in (["bench"], ["stream", "python", "ping_stream"]):
        ns = cli.build_parser().parse_args([*flags, "--max-frame-size", "65536"])
        assert _options.pool_config(ns).max_frame_size == 65536


@pytest.mark.parametrize(
    ("text", "size"), [("65536", 65536), ("64k", 65536), ("64KiB", 65536), ("1G", 2**30)]
)
def test_sizes_take_units(text: str, size: int) -> None:
    assert _options.byte_size(text) == size


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (("--max-frame-size", "1"), "--max-frame-size must be an int from 4096 to 4294967295"),
        (("--max-frame-size", "8G"), "--max-frame-size must be an int from 4096 to 4294967295"),
        (("--max-frame-size", "lots"), "is not a size in bytes"),
        (("--max-frame-size", "-5"), "is not a size in bytes"),
        (("--startup-timeout", "nan"), "positive number of seconds"),
        (("--worker-init-timeout", "inf"), "positive number of seconds"),
        (("--negotiation-timeout", "0"), "positive number of seconds"),
        (("--command-timeout", "soon"), "not a number of seconds"),
        (("--command-timeout", "1e9"), "positive number of seconds, at most 31536000"),
        (("--timeout", "1e300"), "positive number of seconds, at most 31536000"),
    ],
)
def test_pool_options_out_of_range_are_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], fragment: str
) -> None:
    code, out, err = run_cli(capsys, "run", "python", "ping", *argv)
    assert code == 2
    assert out == ""
    assert_usage_error(err, fragment)


def test_exec_adapters_say_what_is_wrong_with_the_program(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    plain = tmp_path / "worker.py"
    plain.write_text("print('hi')\n")
    plain.chmod(0o644)
    for spec, fragment in (
        ("exec:no_such_program_xyz --flag", "'no_such_program_xyz' is not found on PATH"),
        (f"exec:{tmp_path}", "is a directory, not a program"),
        (f"exec:{plain}", "is not executable (Permission denied; chmod +x it, or name its"),
        (f"exec:{tmp_path / 'missing'}", "No such file or directory"),
    ):
        code, out, err = run_cli(capsys, "run", spec, "ping")
        assert code == 1, err
        assert out == ""
        assert_usage_error(err, fragment)  # refused before any worker started


def test_a_handler_file_the_worker_cannot_import_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "my-handler.py"
    bad.write_text("")
    code, _, err = run_cli(capsys, "run", f"python:{bad}:Handler", "ping")
    assert code == 2
    assert_usage_error(err, "not a valid module name")


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


def test_the_command_timeout_option_bounds_a_call(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(
        capsys, "run", "python", "sleep", '{"seconds": 30}', "--command-timeout", "0.3"
    )
    assert code == 1
    assert_one_line_error(err, "did not finish within 0.3 s")


def test_the_max_frame_size_option_bounds_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    big = json.dumps({"text": "x" * 10_000})
    code, _, err = run_cli(capsys, "run", "python", "echo", big, "--max-frame-size", "4k")
    assert code == 1
    assert_one_line_error(err, "exceeds the limit of 4096 bytes")
    code, out, err = run_cli(capsys, "run", "python", "echo", big, "--max-frame-size", "64k")
    assert code == 0, err
    assert json.loads(out)["echoed"]["text"] == "x" * 10_000


SLOW_HANDLER = """
import time
from snakepit_trio_bridge import BaseCommandHandler

class SlowStart(BaseCommandHandler):
    def __init__(self):
        time.sleep(3)  # a model load
        super().__init__()
"""


def test_the_start_up_options_let_a_slow_handler_start(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "slow_start.py").write_text(SLOW_HANDLER)
    spec = f"python:{tmp_path / 'slow_start.py'}:SlowStart"
    # A bound shorter than the handler's start: the worker cannot start.
    code, _, err = run_cli(capsys, "run", spec, "ping", "--worker-init-timeout", "0.5")
    assert code == 1
    assert_one_line_error(err, "no worker could be started")
    code, out, err = run_cli(
        capsys,
        "run",
        spec,
        "ping",
        "--json",
        "--worker-init-timeout",
        "60",
        "--startup-timeout",
        "60",
    )
    assert code == 0, err
    assert json.loads(out)["result"]["status"] == "ok"


PRINTING_HANDLER = """
import sys
from snakepit_trio_bridge import BaseCommandHandler

class Chatty(BaseCommandHandler):
    def _register_commands(self):
        self.register_command("say", self.say)

    def say(self, args):
        print("hello from the handler", args["n"])
        return {"said": args["n"]}
"""


def test_a_handlers_print_shows_on_the_clis_stderr(tmp_path: Path) -> None:
    """In a process of its own: what the pool relays must reach the CLI's stderr."""
    (tmp_path / "chatty.py").write_text(PRINTING_HANDLER)
    spec = f"python:{tmp_path / 'chatty.py'}:Chatty"
    for command in ("run", "stream"):
        result = subprocess.run(
            [sys.executable, "-m", "snakepit_trio", command, spec, "say", '{"n": 7}', "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if command == "run":
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout) == {"result": {"said": 7}}
        assert "hello from the handler" in result.stderr, result.stderr
        for line in result.stderr.strip().splitlines():
            assert line.startswith("snakepit-trio: "), result.stderr


def test_the_cli_shows_worker_output_but_not_the_pools_chatter(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What the pool relays of the workers' stderr shows (at WARNING, or at INFO on the
    ``snakepit_trio.worker.stderr`` logger); its INFO bookkeeping does not; --debug leaves it
    to the root logger; and nothing stays configured afterwards."""
    worker_log = logging.getLogger("snakepit_trio.worker")
    stderr_log = logging.getLogger("snakepit_trio.worker.stderr")
    level_before = stderr_log.level
    undo = _run.show_worker_output(debug=False)
    try:
        assert stderr_log.isEnabledFor(logging.INFO)
        stderr_log.info("worker %d (pid %d): %s", 0, 42, "a line\nand another")
        worker_log.warning("worker %d (pid %d) wrote on stderr: %s", 0, 42, "first")
        worker_log.info("worker %d (pid %d): stopping: %s", 0, 42, "the pool is closing")
    finally:
        undo()
    stderr_log.info("after the command: not shown")
    assert stderr_log.level == level_before
    _, err = capsys.readouterr()
    assert err.splitlines() == [
        "snakepit-trio: worker 0 (pid 42): a line",
        "snakepit-trio: and another",
        "snakepit-trio: worker 0 (pid 42) wrote on stderr: first",
    ]
    assert _run.show_worker_output(debug=True)() is None
    assert not worker_log.handlers


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
    assert_usage_error(err, "--wire does not apply")


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
    assert_one_line_error(err, "'items' must be a list")
    assert "TypeError" in err


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
    # Not a terminal: no progress at all, no escape codes anywhere.
    assert "batch_inference" not in err
    assert "\x1b" not in out + err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    for stream, shown in ((io.StringIO(), False), (_Terminal(), True)):
        with Progress("work", 4, stream=stream) as bar:
            for done in range(1, 5):
                bar.update(done, f"item {done}")
        text = stream.getvalue()
        assert ("4/4" in text) is shown, text
        assert (text == "") is not shown, text
    monkeypatch.setenv("TERM", "dumb")
    dumb = _Terminal()
    with Progress("work", 4, stream=dumb) as bar:
        bar.update(4)
    assert dumb.getvalue() == ""


def _bench_run_module(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_run", module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_bench_suite_ends_with_a_note_without_matplotlib(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run = _bench_run_module(monkeypatch)
    sample = {
        "scenario": "throughput",
        "contender": "snakepit-trio",
        "workers": 1,
        "callers": 16,
        "n": 10,
        "elapsed_s": 0.01,
        "rate_per_s": 1000.0,
        "median_us": 100.0,
        "p99_us": 200.0,
        "parent_cpu_us_per_req": 50.0,
        "worker_cpu_us_per_req": 40.0,
    }
    results: dict[str, Any] = {
        "mode": "quick",
        "plan": dataclasses.asdict(run.QUICK),
        "machine": run.machine_info(None),
        "errors": {},
        "wall_s": 1.0,
        "latency": {},
        "throughput": {"1": {"snakepit-trio": sample}},
        "big": {},
    }
    results["targets"] = run.evaluate_targets(results)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    written = run.write_results(results, tmp_path)
    assert [p.name for p in written] == ["latest.md", "latest.json"]
    assert json.loads((tmp_path / "latest.json").read_text())["throughput"]["1"]
    out, err = capsys.readouterr()
    assert "# snakepit-trio benchmark" in out
    assert "no plot:" in err and "pip install matplotlib" in err


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


@needs_node
def test_doctor_finds_msgpack_as_the_node_bridge_does_and_advises_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The advice never points into the installation (site-packages is pip's); once the
    package is in the project, the bridge's own lookup finds it there."""
    from snakepit_trio.cli import _doctor

    installed = tmp_path / "site-packages" / "snakepit_trio_bridge" / "node" / "snakepit_bridge.js"
    installed.parent.mkdir(parents=True)
    shutil.copyfile(sp.node_bridge_path(), installed)
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.setattr(sp, "node_bridge_path", lambda: installed)
    monkeypatch.delenv("NODE_PATH", raising=False)
    monkeypatch.chdir(project)

    def msgpack_check() -> _doctor.Check:
        (check,) = [c for c in _doctor._check_node() if c.name == "@msgpack/msgpack"]
        return check

    missing = msgpack_check()
    assert not missing.ok and missing.detail.startswith("missing")
    assert "`npm install @msgpack/msgpack` in your project directory" in missing.fix
    assert "site-packages" not in missing.fix and "NODE_PATH" in missing.fix
    # What `npm install` in the project leaves (a stand-in: the lookup checks for these two).
    package = project / "node_modules" / "@msgpack" / "msgpack"
    package.mkdir(parents=True)
    (package / "package.json").write_text('{"name": "@msgpack/msgpack", "main": "index.js"}')
    (package / "index.js").write_text("exports.Encoder = class {};\nexports.Decoder = class {};\n")
    found = msgpack_check()
    assert found.ok and found.detail.startswith(f"found in {package}:"), found.detail


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
    calls: list[tuple[bool, bool]] = []

    def fake_sweep(*, dry_run: bool = True, all_users: bool = False) -> list[Any]:
        calls.append((dry_run, all_users))
        return [
            SimpleNamespace(pid=4242, run_id="1-2-ab", cmdline="python -m x", killed=not dry_run)
        ]

    monkeypatch.setattr(sp, "sweep_orphans", fake_sweep)
    code, out, _ = run_cli(capsys, "sweep")
    assert code == 0
    assert "4242" in out and "dry run, nothing killed" in out
    code, out, _ = run_cli(capsys, "sweep", "--kill")
    assert code == 0
    assert "killed 1 of 1" in out
    code, out, _ = run_cli(capsys, "sweep", "--all-users")
    assert code == 0
    assert calls == [(True, False), (False, False), (True, True)]


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
        assert_usage_error(result.stderr, "required")


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


@pytest.mark.parametrize(
    ("sig", "code", "said"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_ctrl_c_or_sigterm_closes_the_pool_and_leaves_no_worker(
    sig: signal.Signals, code: int, said: str
) -> None:
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
        workers = _workers_of(proc.pid)
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert said in err and "Traceback" not in err
    # The pool closed through its ladder before the command exited: no worker is left, not
    # even for its lifeline to find later.
    assert not [pid for pid in workers if pid_alive(pid)]
