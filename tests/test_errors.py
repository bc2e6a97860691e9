"""The errors callers see: short to print, complete on their attributes."""

from __future__ import annotations

import pickle
import shutil

import pytest

import snakepit_trio as sp

PY_TRACEBACK = """\
Traceback (most recent call last):
  File "/srv/app/handlers.py", line 12, in handle_outer
    inner()
  File "/srv/app/helpers.py", line 40, in inner
    result = a / b
             ~~^~~
ZeroDivisionError: division by zero
"""

CHAINED = """\
Traceback (most recent call last):
  File "/srv/app/a.py", line 3, in load
    open(path)
FileNotFoundError: [Errno 2] No such file or directory: 'x'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/srv/app/a.py", line 5, in load
    raise RuntimeError("cannot load")
RuntimeError: cannot load
"""

JS_STACK = """\
TypeError: x is not a function
    at Object.handler (/srv/app/mod.js:10:5)
    at Bridge.execute (/srv/bridge.js:1211:20)
"""


def test_str_is_the_message_and_where_it_happened() -> None:
    error = sp.CommandError("division by zero", "ZeroDivisionError", PY_TRACEBACK)
    text = str(error)
    assert text == (
        'ZeroDivisionError: division by zero (at "/srv/app/helpers.py", line 40, in inner)'
    )
    assert error.traceback == PY_TRACEBACK  # the whole remote traceback stays available
    assert error.message == "division by zero"
    assert error.error_type == "ZeroDivisionError"


@pytest.mark.parametrize(
    ("traceback", "where"),
    [
        (CHAINED, '(at "/srv/app/a.py", line 5, in load)'),
        (JS_STACK, "(at Object.handler (/srv/app/mod.js:10:5))"),
        ("some text a bridge sent\nwith no frame in it", ""),
        ("", ""),
        (None, ""),
    ],
)
def test_where_for_each_kind_of_traceback(traceback: str | None, where: str) -> None:
    text = str(sp.CommandError("boom", "E", traceback))
    assert text == f"E: boom {where}".rstrip()
    assert "Traceback" not in text


def test_a_huge_traceback_stays_out_of_str() -> None:
    frames = "".join(
        f'  File "/srv/deep.py", line {i}, in f{i}\n    f{i + 1}()\n' for i in range(5000)
    )
    error = sp.CommandError("RecursionError", None, "Traceback:\n" + frames + "RecursionError\n")
    text = str(error)
    assert text == 'RecursionError (at "/srv/deep.py", line 4999, in f4999)'
    assert len(text) < 200


def test_errors_survive_pickling() -> None:
    error = sp.CommandError("boom", "ValueError", PY_TRACEBACK)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.message, copy.error_type, copy.traceback) == ("boom", "ValueError", PY_TRACEBACK)
    assert str(copy) == str(error)
    crashed = pickle.loads(pickle.dumps(sp.WorkerCrashed("gone", exit_code=3, stderr_tail="x")))
    assert (crashed.exit_code, crashed.stderr_tail) == (3, "x")


@pytest.mark.anyio
async def test_a_python_workers_error_prints_short() -> None:
    async with sp.open_pool(sp.PythonAdapter(), size=1) as pool:
        with pytest.raises(sp.CommandError) as info:
            await pool.execute("compute", {"operation": "divide", "a": 1, "b": 0}, timeout=30)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith("ZeroDivisionError: division by zero (at ")
    assert "in handle_compute)" in text
    assert info.value.traceback is not None
    assert info.value.traceback.startswith("Traceback (most recent call last)")


@pytest.mark.anyio
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not on PATH")
async def test_a_node_workers_error_prints_short() -> None:
    async with sp.open_pool(sp.NodeAdapter(), size=1) as pool:
        with pytest.raises(sp.CommandError) as info:
            await pool.execute("compute", {"operation": "divide", "a": 1, "b": 0}, timeout=30)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith("ZeroDivisionError: Division by zero (at ")
    assert info.value.traceback is not None and "\n    at " in info.value.traceback
