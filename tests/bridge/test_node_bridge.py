"""The Node bridge (bridges/node/snakepit_bridge.js) as the pool sees it: a subprocess on pipes.

Plain synchronous tests: each starts ``node snakepit_bridge.js`` and talks to it through the
sans-IO ``ClientConnection``. MessagePack needs the optional npm package ``@msgpack/msgpack``:
it is used from ``bridges/node/node_modules`` when installed there (``npm install`` in
bridges/node), else installed once into a temporary folder (``SNAKEPIT_TEST_NO_NPM=1`` stops
that); the msgpack tests skip when neither works. The "bare" bridge is a copy of the script in
an empty folder, where the package cannot be found: the bridge must work without it.

The folder is an npm package too: what ``npm pack`` puts in it, that the packed bridge runs,
and that the node suites read nothing outside it (they run from a copy of the folder alone,
with their own copy of the golden vectors, checked here against tests/vectors).
"""

from __future__ import annotations

import collections
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proc_support import kill_quietly, pid_alive, wait_dead

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bridges" / "python"))

from snakepit_trio_bridge.protocol import FrameDecoder, encode_frame, get_codec  # noqa: E402
from snakepit_trio_bridge.protocol.messages import (  # noqa: E402
    ClientConnection,
    ProtocolNegotiation,
    Request,
    Response,
    StreamChunk,
    parse_negotiation_reply,
)

NODE = shutil.which("node")
NPM = shutil.which("npm")
BRIDGE = REPO / "bridges" / "node" / "snakepit_bridge.js"
EXAMPLE = REPO / "bridges" / "node" / "examples" / "text_tools.js"
MSGPACK_PACKAGE = "@msgpack/msgpack"
NO_NODE_PATH = {"NODE_PATH": ""}  # require() then looks in no folder of the caller's
TIMEOUT = 5.0

pytestmark = [
    pytest.mark.node,
    pytest.mark.skipif(NODE is None, reason="node is not installed: the Node bridge cannot run"),
]

# A user module for the tests: noise on every console channel, a generator whose finally
# block reports on stderr, and a command that starts a grandchild process.
TEST_MODULE = r"""
'use strict';
console.log('MODULE-LOADED');
module.exports = {
  commands: {
    noisy() {
      console.log('LOG-NOISE');
      console.info('INFO-NOISE');
      console.debug('DEBUG-NOISE');
      console.dir({ dir: 'DIR-NOISE' });
      console.table([{ t: 'TABLE-NOISE' }]);
      process.stdout.write('STDOUT-NOISE\n');
      return { quiet: true };
    },
    async *ticker(args, ctx) {
      try {
        for (let i = 0; ; i++) {
          yield { tick: i };
          await ctx.sleep(args.interval || 0);
        }
      } finally {
        console.log(`FINALLY ${ctx.id} cancelled=${ctx.cancelled}`);
      }
    },
    spawn_sleeper() {
      const child = require('node:child_process').spawn('sleep', ['60'], { stdio: 'ignore' });
      return { pid: child.pid };
    },
    ping() {
      return 'overridden';
    },
    spin(args) {
      // A synchronous loop: the event loop never runs again.
      require('node:fs').writeFileSync(args.marker, 'spinning');
      for (;;) {}
    },
    deep(args) {
      // A real stack, as long as the caller asks, whatever the checkout's path.
      Error.stackTraceLimit = Infinity;
      const diveSync = (n) => {
        if (n === 0) throw new Error(`DEEP-FAILURE ${'m'.repeat(args.message || 0)}`);
        return diveSync(n - 1) + 1;
      };
      return diveSync(args.depth);
    },
    huge(args) {
      return 'x'.repeat(args.size);
    },
    big_int() {
      return { rows: [1, 2n ** 70n] };
    },
  },
};
"""

# A module that answers nothing until the test opens its gate (a file): it proves the order of
# negotiation and loading without a clock.
GATED_MODULE = r"""
'use strict';
const fs = require('node:fs');
const gate = process.env.GATE_FILE;
const nap = new Int32Array(new SharedArrayBuffer(4));
while (!fs.existsSync(gate)) Atomics.wait(nap, 0, 0, 10);
let ready = false;
module.exports = {
  async init() {
    await new Promise((resolve) => setTimeout(resolve, 10));
    ready = true;
  },
  commands: { ready: () => ready },
};
"""


class Worker:
    """One bridge process, with threads draining its stdout (frames) and stderr (text)."""

    def __init__(
        self,
        *flags: str,
        script: Path = BRIDGE,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        pass_fds: tuple[int, ...] = (),
        new_session: bool = False,
    ) -> None:
        self.proc = subprocess.Popen(
            [str(NODE), str(script), "--mode", "pool-worker", *flags],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            pass_fds=pass_fds,
            start_new_session=new_session,
            bufsize=0,
        )
        self._chunks: queue.Queue[bytes] = queue.Queue()
        self._stderr = bytearray()
        self._decoder = FrameDecoder(1 << 30)
        self._payloads: collections.deque[bytes] = collections.deque()
        self.seen: list[bytes] = []  # every payload taken, in order
        self.conn: ClientConnection | None = None
        self._ids = iter(range(1, 1 << 30))
        threading.Thread(
            target=self._drain, args=(self.proc.stdout, self._chunks.put), daemon=True
        ).start()
        threading.Thread(
            target=self._drain, args=(self.proc.stderr, self._stderr.extend), daemon=True
        ).start()

    @staticmethod
    def _drain(pipe: Any, sink: Any) -> None:
        while True:
            data = os.read(pipe.fileno(), 65536)
            sink(data)
            if not data:
                return

    @property
    def stderr(self) -> str:
        return self._stderr.decode("utf-8", "replace")

    # -- output of the bridge
    def payload(self, timeout: float = TIMEOUT) -> bytes | None:
        """The next frame's payload; None at end of stdout."""
        deadline = time.monotonic() + timeout
        while not self._payloads:
            try:
                chunk = self._chunks.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no frame from the bridge within {timeout} s; stderr:\n{self.stderr}")
            if not chunk:
                self._chunks.put(b"")
                return None
            self._payloads.extend(self._decoder.feed(chunk))
        payload = self._payloads.popleft()
        self.seen.append(payload)
        return payload

    def quiet(self, seconds: float) -> bool:
        """True if no frame arrives within ``seconds``."""
        try:
            chunk = self._chunks.get(timeout=seconds)
        except queue.Empty:
            return not self._payloads
        self._payloads.extend(self._decoder.feed(chunk))
        if not chunk:
            self._chunks.put(b"")
        return False

    def events(self, count: int = 1, timeout: float = TIMEOUT) -> list[Any]:
        assert self.conn is not None
        out: list[Any] = []
        while len(out) < count:
            payload = self.payload(timeout)
            assert payload is not None, f"the bridge closed its stdout; stderr:\n{self.stderr}"
            out += self.conn.receive_data(encode_frame(payload, 1 << 30))
        return out

    def message(self) -> dict[str, Any]:
        """The next frame decoded as it is (no id tracking)."""
        assert self.conn is not None
        payload = self.payload()
        assert payload is not None
        decoded: dict[str, Any] = self.conn.codec.decode(payload)
        return decoded

    # -- input of the bridge
    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)

    def negotiate(
        self, offer: tuple[str, ...] = ("msgpack", "json"), **extra: Any
    ) -> dict[str, Any]:
        hello = ProtocolNegotiation(supported=offer, preferred=offer[0], **extra)
        self.write(encode_frame(json.dumps(hello.to_wire()).encode()))
        payload = self.payload()
        assert payload is not None, self.stderr
        reply: dict[str, Any] = json.loads(payload)
        selected = parse_negotiation_reply(payload, offer)
        self.use(selected.protocol if selected else "json")
        return reply

    def use(self, codec: str) -> None:
        self.conn = ClientConnection(get_codec(codec))

    def request(self, command: str, args: dict[str, Any] | None = None, **options: Any) -> int:
        assert self.conn is not None
        request_id = next(self._ids)
        self.write(self.conn.send_request(Request(request_id, command, args or {}, **options)))
        return request_id

    def call(self, command: str, args: dict[str, Any] | None = None) -> Response:
        request_id = self.request(command, args)
        (event,) = self.events(1)
        assert isinstance(event, Response) and event.id == request_id
        return event

    def cancel(self, request_id: int) -> None:
        assert self.conn is not None
        self.write(self.conn.send_cancel(request_id))

    def credit(self, request_id: int, credits: int) -> None:
        assert self.conn is not None
        self.write(self.conn.send_credit(request_id, credits))

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait(self, timeout: float = TIMEOUT) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def start() -> Iterator[Any]:
    workers: list[Worker] = []

    def starter(*flags: str, **options: Any) -> Worker:
        worker = Worker(*flags, **options)
        workers.append(worker)
        return worker

    yield starter
    for worker in workers:
        worker.stop()


def long_folder(base: Path) -> Path:
    """A folder about 1,000 characters below ``base``: stacks that name it are long."""
    folder = base.joinpath(*(letter * 200 for letter in "abcde"))
    folder.mkdir(parents=True)
    return folder


@pytest.fixture(scope="session")
def bare_bridge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the bridge in an empty folder: @msgpack/msgpack cannot be found from there.

    The folder lies at a long path, so that every test here sees the long stacks a deep
    checkout gives (the bridge's frames are in every traceback).
    """
    folder = long_folder(tmp_path_factory.mktemp("bare-node-bridge"))
    copy = folder / "snakepit_bridge.js"
    shutil.copyfile(BRIDGE, copy)
    return copy


def _resolves(package: str, folder: Path, env: dict[str, str] | None = None) -> bool:
    probe = f"require.resolve({json.dumps(package)}, {{ paths: [{json.dumps(str(folder))}] }})"
    done = subprocess.run(
        [str(NODE), "-e", probe], env={**os.environ, **(env or {})}, capture_output=True
    )
    return done.returncode == 0


@pytest.fixture(scope="session")
def msgpack_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment under which the bridge finds @msgpack/msgpack (or skip)."""
    if _resolves(MSGPACK_PACKAGE, BRIDGE.parent):
        return {}
    npm = shutil.which("npm")
    if npm is None or os.environ.get("SNAKEPIT_TEST_NO_NPM"):
        pytest.skip(f"{MSGPACK_PACKAGE} is not installed and npm may not be used")
    prefix = tmp_path_factory.mktemp("node-msgpack")
    try:
        subprocess.run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--no-save",
                "--prefix",
                str(prefix),
                MSGPACK_PACKAGE,
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"could not install {MSGPACK_PACKAGE}: {exc}")
    env = {"NODE_PATH": str(prefix / "node_modules")}
    if not _resolves(MSGPACK_PACKAGE, BRIDGE.parent, env):
        pytest.skip(f"{MSGPACK_PACKAGE} was installed but cannot be required")
    return env


@pytest.fixture(scope="session")
def msgpack_folder(msgpack_env: dict[str, str]) -> Path:
    """The folder of an installed @msgpack/msgpack (to link into a project's node_modules)."""
    probe = f"process.stdout.write(require.resolve({json.dumps(MSGPACK_PACKAGE)}))"
    entry = subprocess.run(
        [str(NODE), "-e", probe],
        cwd=BRIDGE.parent,
        env={**os.environ, **msgpack_env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    folder = Path(entry[: entry.rindex(f"/node_modules/{MSGPACK_PACKAGE}/")]) / "node_modules"
    return folder / MSGPACK_PACKAGE


def project_with_msgpack(base: Path, msgpack_folder: Path) -> Path:
    """A folder as `npm install @msgpack/msgpack` leaves it (the package linked, not fetched)."""
    project = base / "project"
    (project / "node_modules" / "@msgpack").mkdir(parents=True)
    (project / "node_modules" / MSGPACK_PACKAGE).symlink_to(msgpack_folder)
    return project


@pytest.fixture
def test_module(tmp_path: Path) -> Path:
    path = tmp_path / "test_module.js"
    path.write_text(TEST_MODULE)
    return path


# ----------------------------------------------------------------------------- negotiation


def test_negotiation_without_msgpack_selects_json(start: Any, bare_bridge: Path) -> None:
    worker = start(script=bare_bridge, cwd=bare_bridge.parent)
    reply = worker.negotiate(grace=1.0, max_frame_size=1 << 20)
    assert reply["type"] == "protocol_selected"
    assert reply["protocol"] == "json"
    assert set(reply["features"]) == {
        "cancel",
        "credit",
        "lifeline",
        "multiplex",
        "shutdown",
        "stream",
    }
    assert reply["max_concurrency"] == 64
    info = reply["info"]
    assert (info["bridge"], info["language"], info["pid"]) == (
        "snakepit_bridge.js",
        "node",
        worker.proc.pid,
    )
    assert info["version"] and "ping_stream" in info["commands"]
    response = worker.call("echo", {"blob": b"\x00\xff", "n": 1})
    assert response.success and response.result["echoed"] == {"blob": b"\x00\xff", "n": 1}


def test_msgpack_offer_to_a_bridge_without_it_gets_json(start: Any, bare_bridge: Path) -> None:
    worker = start(script=bare_bridge, cwd=bare_bridge.parent)
    reply = worker.negotiate(offer=("msgpack",))
    # The pool did not offer json: parse_negotiation_reply says "fall back", and JSON it is.
    assert reply["protocol"] == "json"
    assert worker.call("ping").success


def test_negotiation_selects_msgpack_when_available(
    start: Any, msgpack_env: dict[str, str]
) -> None:
    worker = start("--max-concurrency", "8", env=msgpack_env)
    reply = worker.negotiate()
    assert reply["protocol"] == "msgpack"
    assert reply["max_concurrency"] == 8
    assert reply["info"]["msgpack"] is True
    big = 2**40 + 3
    response = worker.call("echo", {"blob": bytes(range(256)), "big": big, "f": 0.5, "s": "é"})
    assert response.result["echoed"] == {"blob": bytes(range(256)), "big": big, "f": 0.5, "s": "é"}
    assert isinstance(response.result["echoed"]["blob"], bytes)
    stream_id = worker.request("ping_stream", {"count": 2, "interval": 0}, stream=True)
    events = worker.events(3)
    assert [type(e) for e in events] == [StreamChunk, StreamChunk, Response]
    assert all(e.id == stream_id for e in events)


def test_msgpack_installed_in_the_working_directory_is_found(
    start: Any, bare_bridge: Path, msgpack_folder: Path, tmp_path: Path
) -> None:
    """What `doctor` advises: `npm install @msgpack/msgpack` in the project the workers run in
    (here the bridge's own folder has no node_modules, as in site-packages)."""
    project = project_with_msgpack(tmp_path, msgpack_folder)
    worker = start(script=bare_bridge, cwd=project, env=NO_NODE_PATH)
    reply = worker.negotiate()
    assert reply["protocol"] == "msgpack" and reply["info"]["msgpack"] is True
    assert worker.call("echo", {"blob": b"\x01"}).result["echoed"] == {"blob": b"\x01"}


def test_msgpack_installed_beside_the_user_module_is_found(
    start: Any, bare_bridge: Path, msgpack_folder: Path, tmp_path: Path
) -> None:
    project = project_with_msgpack(tmp_path, msgpack_folder)
    module = project / "commands.js"
    module.write_text("module.exports = { commands: { twice: (args) => args.x * 2 } };\n")
    worker = start(
        "--module", str(module), script=bare_bridge, cwd=bare_bridge.parent, env=NO_NODE_PATH
    )
    assert worker.negotiate()["protocol"] == "msgpack"
    assert worker.call("twice", {"x": 21}).result == 42


def test_json_flag_skips_negotiation(start: Any, bare_bridge: Path) -> None:
    as_json = start("--protocol", "json", script=bare_bridge, cwd=bare_bridge.parent)
    as_json.use("json")
    assert as_json.call("compute", {"operation": "add", "a": 1, "b": 2}).result["result"] == 3


def test_msgpack_flag_skips_negotiation(start: Any, msgpack_env: dict[str, str]) -> None:
    as_msgpack = start("--protocol", "msgpack", env=msgpack_env)
    as_msgpack.use("msgpack")
    assert as_msgpack.call("echo", {"b": b"xy"}).result["echoed"] == {"b": b"xy"}


def test_msgpack_flag_without_the_package_fails_at_start(start: Any, bare_bridge: Path) -> None:
    worker = start("--protocol", "msgpack", script=bare_bridge, cwd=bare_bridge.parent)
    assert worker.wait() == 2
    assert MSGPACK_PACKAGE in worker.stderr


def test_first_frame_that_is_not_a_negotiation_is_a_json_request(
    start: Any, bare_bridge: Path
) -> None:
    worker = start(script=bare_bridge, cwd=bare_bridge.parent)
    worker.use("json")
    assert worker.call("ping").result["status"] == "ok"


# ----------------------------------------------------------------------------- commands


def test_builtin_commands(start: Any, bare_bridge: Path) -> None:
    worker = start(script=bare_bridge, cwd=bare_bridge.parent)
    worker.negotiate()
    ping = worker.call("ping", {"worker_id": "w7"}).result
    assert (ping["status"], ping["bridge_type"], ping["worker_id"]) == (
        "ok",
        "generic_javascript",
        "w7",
    )
    compute = worker.call("compute", {"operation": "multiply", "a": 6, "b": 7}).result
    assert compute["result"] == 42 and compute["inputs"] == {"a": 6, "b": 7}
    assert worker.call("compute", {"operation": "power", "a": 2, "b": 8}).result["result"] == 256
    assert worker.call("compute", {"operation": "sqrt", "a": 2.25}).result["result"] == 1.5
    assert worker.call("compute", {"operation": "divide", "a": 1, "b": 4}).result["result"] == 0.25
    uniform = worker.call("random", {"type": "uniform", "min": 2, "max": 3}).result
    assert 2 <= uniform["value"] < 3 and uniform["type"] == "uniform"
    integer = worker.call("random", {"type": "integer", "min": 1, "max": 6}).result["value"]
    assert integer in range(1, 7)
    assert isinstance(worker.call("random", {"type": "normal"}).result["value"], float)
    info = worker.call("info").result
    assert info["bridge_info"]["supported_commands"] == sorted(
        info["bridge_info"]["supported_commands"]
    )
    assert info["bridge_info"]["protocol"] == "json"
    slept = worker.call("sleep", {"seconds": 0.05}).result
    assert slept["status"] == "ok" and slept["slept"] >= 0.04
    assert worker.call("ping_stream", {"count": 3, "interval": 0}).result == [
        {
            "ping_number": n,
            "message": f"Ping {n} of 3",
            "timestamp": pytest.approx(time.time(), abs=60),
        }
        for n in (1, 2, 3)
    ]


def test_errors(start: Any, bare_bridge: Path) -> None:
    worker = start(script=bare_bridge, cwd=bare_bridge.parent)
    worker.negotiate()
    divided = worker.call("compute", {"operation": "divide", "a": 1, "b": 0})
    assert not divided.success
    assert divided.error == "Division by zero"
    assert divided.error_type == "ZeroDivisionError"
    assert divided.traceback and "snakepit_bridge.js" in divided.traceback
    unknown = worker.call("frobnicate")
    assert (unknown.error_type, unknown.error) == (
        "UnsupportedCommand",
        "Unknown command: frobnicate",
    )
    bad_arg = worker.call("compute", {"operation": "add", "a": "x"})
    assert bad_arg.error_type == "TypeError"
    assert worker.call("random", {"type": "cauchy"}).error_type == "RangeError"
    assert worker.call("ping").success  # still serving


def test_undecodable_payload_gets_a_null_id(start: Any, bare_bridge: Path) -> None:
    worker = start(script=bare_bridge, cwd=bare_bridge.parent)
    worker.negotiate()
    worker.write(encode_frame(b"\xff\xfe not json"))
    answer = worker.message()
    assert answer["id"] is None and answer["success"] is False
    assert "invalid JSON" in answer["error"]
    assert worker.call("ping").success


def test_oversized_frame_is_fatal(start: Any, bare_bridge: Path) -> None:
    worker = start(script=bare_bridge, cwd=bare_bridge.parent)
    worker.negotiate(max_frame_size=1024)
    worker.write((2048).to_bytes(4, "big"))
    answer = worker.message()
    assert answer["id"] is None and "over the limit of 1024" in answer["error"]
    assert worker.wait() == 1


def _frames_fit(worker: Worker, limit: int) -> None:
    for payload in worker.seen:
        assert len(payload) <= limit, f"a frame of {len(payload)} bytes over the limit of {limit}"


def test_an_error_response_over_the_limit_is_cut_and_sent_at_once(
    start: Any, test_module: Path, bare_bridge: Path
) -> None:
    worker = start("--module", str(test_module), script=bare_bridge, cwd=bare_bridge.parent)
    worker.negotiate(max_frame_size=2048)
    # A stack of 300 frames at a long path: tens of kilobytes of traceback.
    deep = worker.call("deep", {"depth": 300})
    assert not deep.success and deep.error_type == "Error"
    assert deep.error.startswith("DEEP-FAILURE")
    assert deep.traceback is not None and "truncated" in deep.traceback
    # A long message too: the stack goes first, then the message is cut.
    wordy = worker.call("deep", {"depth": 50, "message": 10000})
    assert wordy.error.startswith("DEEP-FAILURE mmm") and "truncated" in wordy.error
    huge = worker.call("huge", {"size": 5000})
    assert (huge.success, huge.error_type) == (False, "ProtocolError")
    assert "exceeds the limit of 2048 bytes" in huge.error
    big = worker.call("big_int")
    assert big.error_type == "RangeError" and "result.rows[1]" in big.error
    _frames_fit(worker, 2048)
    assert worker.call("echo", {"still": "serving"}).success


def test_the_negotiation_reply_fits_a_small_frame_limit(start: Any, bare_bridge: Path) -> None:
    worker = start(script=bare_bridge, cwd=bare_bridge.parent)
    reply = worker.negotiate(max_frame_size=200)
    assert reply["type"] == "protocol_selected" and reply["protocol"] == "json"
    _frames_fit(worker, 200)


def test_unknown_command_lists_close_matches(start: Any, bare_bridge: Path) -> None:
    worker = start(script=bare_bridge, cwd=bare_bridge.parent)
    worker.negotiate()
    typo = worker.call("comput")
    assert typo.error_type == "UnsupportedCommand"
    assert typo.error == "Unknown command: comput (did you mean: compute?)"


@pytest.mark.parametrize("asked", ["/etc/passwd", "/proc/self/environ", "SECRET"])
def test_demo_commands_read_no_file(
    start: Any, bare_bridge: Path, tmp_path: Path, asked: str
) -> None:
    secret = tmp_path / "secret.log"
    secret.write_text("ERROR: SECRET-CONTENT root:x:0:0\n")
    path = str(secret) if asked == "SECRET" else asked
    worker = start(script=bare_bridge, cwd=bare_bridge.parent, env={"CANARY": "ENV-CANARY"})
    worker.negotiate()
    for stream in (False, True):
        request_id = worker.request("tail_and_analyze", {"path": path}, stream=stream)
        (answer,) = worker.events(1)
        assert isinstance(answer, Response) and answer.id == request_id
        assert not answer.success and "reads no file" in (answer.error or "")
    seen = repr(worker.seen)
    assert "SECRET-CONTENT" not in seen and "root:x" not in seen and "ENV-CANARY" not in seen


# ----------------------------------------------------------------------------- concurrency


def test_concurrent_requests_are_routed_by_id(start: Any, bare_bridge: Path) -> None:
    worker = start(script=bare_bridge, cwd=bare_bridge.parent)
    worker.negotiate()
    started = time.monotonic()
    slow = worker.request("sleep", {"seconds": 0.4})
    medium = worker.request("sleep", {"seconds": 0.2})
    fast = worker.request("compute", {"operation": "add", "a": 1, "b": 1})
    events = worker.events(3)
    assert [e.id for e in events] == [fast, medium, slow]
    assert all(e.success for e in events)
    assert time.monotonic() - started < 0.9  # together, not one after the other


def test_stream_credits_and_cancel(start: Any, test_module: Path, bare_bridge: Path) -> None:
    worker = start("--module", str(test_module), script=bare_bridge, cwd=bare_bridge.parent)
    worker.negotiate()
    stream = worker.request("ticker", {"interval": 0}, stream=True, credits=2)
    first = worker.events(2)
    assert [(c.id, c.seq, c.data) for c in first] == [
        (stream, 0, {"tick": 0}),
        (stream, 1, {"tick": 1}),
    ]
    assert worker.quiet(0.2), "the bridge sent a chunk without credit"
    worker.credit(stream, 3)
    more = worker.events(3)
    assert [c.seq for c in more] == [2, 3, 4]
    assert worker.quiet(0.1)
    worker.cancel(stream)
    (confirmation,) = worker.events(1)
    assert confirmation.id == stream and confirmation.cancelled
    assert confirmation.error == "cancelled"
    # The generator was closed: its finally block ran (and its console.log went to stderr).
    deadline = time.monotonic() + TIMEOUT
    while f"FINALLY {stream} cancelled=true" not in worker.stderr and time.monotonic() < deadline:
        time.sleep(0.01)
    assert f"FINALLY {stream} cancelled=true" in worker.stderr
    assert worker.call("echo", {"after": "cancel"}).success


def test_cancel_stops_a_sleep_at_once(start: Any, bare_bridge: Path) -> None:
    worker = start(script=bare_bridge, cwd=bare_bridge.parent)
    worker.negotiate()
    sleeper = worker.request("sleep", {"seconds": 30})
    time.sleep(0.05)
    started = time.monotonic()
    worker.cancel(sleeper)
    (response,) = worker.events(1)
    assert response.id == sleeper and response.error_type == "Cancelled"
    assert time.monotonic() - started < 0.5


# ----------------------------------------------------------------------------- stdout hygiene


def test_console_output_does_not_corrupt_frames(
    start: Any, test_module: Path, bare_bridge: Path
) -> None:
    worker = start("--module", str(test_module), script=bare_bridge, cwd=bare_bridge.parent)
    worker.negotiate()
    for _ in range(3):
        assert worker.call("noisy").result == {"quiet": True}
    assert worker.call("ping").result == "overridden"  # a module may replace a built-in
    worker.close_stdin()
    assert worker.wait() == 0
    for noise in (
        "MODULE-LOADED",
        "LOG-NOISE",
        "INFO-NOISE",
        "DEBUG-NOISE",
        "DIR-NOISE",
        "TABLE-NOISE",
        "STDOUT-NOISE",
    ):
        assert noise in worker.stderr


# ----------------------------------------------------------------------------- lifecycle


def test_stdin_eof_finishes_running_work_then_exits_0(start: Any, bare_bridge: Path) -> None:
    worker = start(script=bare_bridge, cwd=bare_bridge.parent)
    worker.negotiate()
    sleeper = worker.request("sleep", {"seconds": 0.2})
    worker.close_stdin()
    (response,) = worker.events(1)
    assert response.id == sleeper and response.success
    assert worker.wait() == 0


def test_shutdown_frame(start: Any, bare_bridge: Path) -> None:
    worker = start(script=bare_bridge, cwd=bare_bridge.parent)
    worker.negotiate()
    sleeper = worker.request("sleep", {"seconds": 0.2})
    assert worker.conn is not None
    worker.write(worker.conn.send_shutdown())
    late = worker.request("ping")
    first, second = worker.events(2)
    assert (first.id, first.error_type) == (late, "ShuttingDown")
    assert (second.id, second.success) == (sleeper, True)
    assert worker.wait() == 0  # stdin still open: the shutdown frame alone ends it


def test_sigterm_exits_promptly(start: Any, bare_bridge: Path) -> None:
    worker = start(script=bare_bridge, cwd=bare_bridge.parent)
    worker.negotiate()
    worker.request("sleep", {"seconds": 30})
    time.sleep(0.05)
    started = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait(2) == -signal.SIGTERM
    assert time.monotonic() - started < 1.0


def _lifeline(
    start: Any, module: Path, bare_bridge: Path, *, env_grace: str, new_session: bool
) -> tuple[Worker, int]:
    read_end, write_end = os.pipe()
    try:
        worker = start(
            "--module",
            str(module),
            script=bare_bridge,
            cwd=bare_bridge.parent,
            env={"SNAKEPIT_LIFELINE_FD": str(read_end), "SNAKEPIT_LIFELINE_GRACE": env_grace},
            pass_fds=(read_end,),
            new_session=new_session,
        )
    finally:
        os.close(read_end)
    return worker, write_end


def test_lifeline_kills_the_process_group(start: Any, test_module: Path, bare_bridge: Path) -> None:
    # The env says 30 s; the negotiation's grace (0.2 s) wins.
    worker, write_end = _lifeline(start, test_module, bare_bridge, env_grace="30", new_session=True)
    worker.negotiate(grace=0.2)
    grandchild = worker.call("spawn_sleeper").result["pid"]
    assert pid_alive(grandchild)
    started = time.monotonic()
    os.close(write_end)  # the pool is gone
    assert worker.wait() == -signal.SIGKILL
    assert time.monotonic() - started >= 0.15
    deadline = started + TIMEOUT
    while pid_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pid_alive(grandchild), "the bridge's child survived the lifeline"


def test_lifeline_without_a_group_exits_the_bridge(
    start: Any, bare_bridge: Path, test_module: Path
) -> None:
    worker, write_end = _lifeline(start, test_module, bare_bridge, env_grace="0", new_session=False)
    worker.negotiate()
    worker.request("sleep", {"seconds": 30})
    os.close(write_end)
    assert worker.wait() == 1


def test_lifeline_does_not_hold_a_graceful_exit(
    start: Any, bare_bridge: Path, test_module: Path
) -> None:
    worker, write_end = _lifeline(start, test_module, bare_bridge, env_grace="30", new_session=True)
    try:
        worker.negotiate()
        assert worker.call("ping").success
        worker.close_stdin()
        assert worker.wait() == 0
    finally:
        os.close(write_end)


@pytest.mark.parametrize("new_session", [True, False], ids=["group", "no-group"])
def test_lifeline_fires_while_a_handler_spins(
    start: Any, test_module: Path, bare_bridge: Path, tmp_path: Path, new_session: bool
) -> None:
    worker, write_end = _lifeline(
        start, test_module, bare_bridge, env_grace="30", new_session=new_session
    )
    worker.negotiate(grace=0.3)
    grandchild = worker.call("spawn_sleeper").result["pid"]
    marker = tmp_path / "spinning"
    worker.request("spin", {"marker": str(marker)})
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker.exists(), worker.stderr
    os.close(write_end)  # the pool is gone while the event loop is stuck
    # The point is the bound: the grace, plus one second.
    assert worker.wait(0.3 + 1.0) == -signal.SIGKILL
    if new_session:
        assert wait_dead([grandchild], 1.0) == [], "the bridge's child survived the lifeline"
    else:
        kill_quietly(grandchild)  # not in a group of its own: not the bridge's to kill


def test_a_stale_lifeline_variable_is_ignored(start: Any, bare_bridge: Path) -> None:
    # The variable names no open pipe (inherited from elsewhere): no lifeline, and no kill.
    worker = start(
        script=bare_bridge,
        cwd=bare_bridge.parent,
        env={"SNAKEPIT_LIFELINE_FD": "97", "SNAKEPIT_LIFELINE_GRACE": "0"},
    )
    worker.negotiate()
    assert worker.call("ping").success
    worker.close_stdin()
    assert worker.wait() == 0
    assert "no lifeline" in worker.stderr


# ----------------------------------------------------------------------------- user modules


def test_example_user_module(start: Any, bare_bridge: Path) -> None:
    worker = start("--module", str(EXAMPLE), script=bare_bridge, cwd=bare_bridge.parent)
    reply = worker.negotiate()
    # The module loads after the reply: it names the module; `info` lists its commands.
    assert reply["info"]["module"] == str(EXAMPLE)
    listed = set(worker.call("info").result["bridge_info"]["supported_commands"])
    assert {"word_count", "digest", "countdown", "calls", "ping"} <= listed
    assert worker.call("word_count", {"text": "a b\nc"}).result == {
        "words": 3,
        "lines": 2,
        "chars": 5,
    }
    digest = worker.call("digest", {"data": b"abc"}).result
    assert digest["hex"].startswith("ba7816bf") and digest["digest"] == bytes.fromhex(digest["hex"])
    countdown = worker.request("countdown", {"from": 3, "interval": 0}, stream=True, credits=10)
    events = worker.events(4)
    assert [e.data for e in events[:3]] == [{"n": 3}, {"n": 2}, {"n": 1}]
    assert events[3].id == countdown and events[3].result == "liftoff"
    assert worker.call("calls").result["calls"] == 3


def _load_failure(
    start: Any, bare_bridge: Path, module: Path, *where: str
) -> tuple[Response, Worker]:
    """Start on a module that cannot load: negotiation first, then the init ping's error."""
    worker = start("--module", str(module), script=bare_bridge, cwd=bare_bridge.parent)
    assert worker.negotiate()["type"] == "protocol_selected"
    answer = worker.call("ping")
    assert not answer.success and answer.error_type == "ModuleLoadError"
    assert answer.error is not None
    for text in (str(module), *where):
        assert text in answer.error, answer.error
    assert worker.wait() == 1
    return answer, worker


def test_a_module_that_throws_at_load_names_its_file_line_and_message(
    start: Any, tmp_path: Path, bare_bridge: Path
) -> None:
    broken = tmp_path / "broken.js"
    broken.write_text("'use strict';\n\nthrow new Error('BROKEN-MODULE');\n")
    answer, worker = _load_failure(
        start, bare_bridge, broken, f"{broken}:3", "Error: BROKEN-MODULE"
    )
    assert answer.traceback and "BROKEN-MODULE" in answer.traceback
    assert "BROKEN-MODULE" in worker.stderr and f"{broken}:3" in worker.stderr


def test_a_module_with_a_syntax_error_names_its_line(
    start: Any, tmp_path: Path, bare_bridge: Path
) -> None:
    broken = tmp_path / "syntax.js"
    broken.write_text("module.exports = {\n  commands: {\n    a() { return ); },\n  },\n};\n")
    _load_failure(start, bare_bridge, broken, f"{broken}:3", "SyntaxError")


def test_a_missing_module_names_its_path(start: Any, tmp_path: Path, bare_bridge: Path) -> None:
    _load_failure(start, bare_bridge, tmp_path / "no_such_module.js", "Cannot find module")


def test_a_module_without_commands_says_what_is_expected(
    start: Any, tmp_path: Path, bare_bridge: Path
) -> None:
    empty = tmp_path / "empty.js"
    empty.write_text("module.exports = {};\n")
    _load_failure(start, bare_bridge, empty, 'exports no "commands"')


def test_negotiation_is_answered_before_the_module_loads(
    start: Any, tmp_path: Path, bare_bridge: Path
) -> None:
    module = tmp_path / "gated.js"
    module.write_text(GATED_MODULE)
    gate = tmp_path / "gate"
    worker = start(
        "--module",
        str(module),
        script=bare_bridge,
        cwd=bare_bridge.parent,
        env={"GATE_FILE": str(gate)},
    )
    # The module's load cannot finish before the gate opens: this reply came first.
    reply = worker.negotiate()
    assert reply["type"] == "protocol_selected"
    ready = worker.request("ready")
    assert worker.quiet(0.2), "a request was answered before the module was loaded"
    gate.write_text("open")
    (answer,) = worker.events(1)
    assert answer.id == ready and answer.result is True  # its async init was awaited


def test_es_module(start: Any, tmp_path: Path, bare_bridge: Path) -> None:
    module = tmp_path / "tools.mjs"
    module.write_text("export const commands = { twice: (args) => args.x * 2 };\n")
    worker = start("--module", str(module), script=bare_bridge, cwd=bare_bridge.parent)
    worker.negotiate()
    assert worker.call("twice", {"x": 21}).result == 42


# ----------------------------------------------------------------------------- with the pool


def test_through_the_pool() -> None:
    """End to end through the public API: sp.NodeAdapter with the example module."""
    trio = pytest.importorskip("trio")
    sp = pytest.importorskip("snakepit_trio")

    async def main() -> None:
        with trio.fail_after(20):
            async with sp.open_pool(sp.NodeAdapter(EXAMPLE), size=2) as pool:
                added = await pool.execute("compute", {"operation": "add", "a": 2, "b": 3})
                assert added["result"] == 5
                assert (await pool.execute("digest", {"data": b"abc"}))["size"] == 3
                with pytest.raises(sp.CommandError) as caught:
                    await pool.execute("compute", {"operation": "divide", "a": 1, "b": 0})
                assert caught.value.error_type == "ZeroDivisionError"
                seen = []
                async with pool.stream("countdown", {"from": 50, "interval": 0.01}) as chunks:
                    async for chunk in chunks:
                        seen.append(chunk["n"])
                        if len(seen) == 3:
                            break
                assert seen == [50, 49, 48]
                async with trio.open_nursery() as nursery:
                    for _ in range(6):
                        nursery.start_soon(pool.execute, "sleep", {"seconds": 0.1})
                stats = pool.stats()
                assert stats["workers"] == 2 and stats["errors"] == 1

    trio.run(main)


# ----------------------------------------------------------------------------- node's own suite


def _run_node_suite(node_dir: Path) -> None:
    done = subprocess.run(
        [str(NODE), "--test", str(node_dir / "test")],
        capture_output=True,
        text=True,
        cwd=node_dir,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "# fail 0" in done.stdout


def test_node_test_suite_passes() -> None:
    """The node:test suites (framing with random chunking, codecs, golden vectors, engine)."""
    _run_node_suite(BRIDGE.parent)


def test_node_test_suite_passes_at_a_long_path_with_nothing_around(tmp_path: Path) -> None:
    """The same suites from a copy of the package folder alone, about 1,000 characters deep
    (issue 14): they read nothing outside the package."""
    node_dir = long_folder(tmp_path) / "snakepit-bridge-node"
    shutil.copytree(
        BRIDGE.parent, node_dir, ignore=shutil.ignore_patterns("node_modules"), symlinks=True
    )
    if (BRIDGE.parent / "node_modules").is_dir():
        (node_dir / "node_modules").symlink_to(BRIDGE.parent / "node_modules")
    _run_node_suite(node_dir)


def test_the_node_suite_has_the_reference_golden_vectors() -> None:
    """vectors.test.js reads a copy inside the package: it must be tests/vectors' file."""
    reference = REPO / "tests" / "vectors" / "messages.json"
    copy = BRIDGE.parent / "test" / "vectors" / "messages.json"
    assert copy.read_bytes() == reference.read_bytes(), (
        f"{copy.relative_to(REPO)} is out of date: copy {reference.relative_to(REPO)} over it"
    )


# ----------------------------------------------------------------------------- the npm package

needs_npm = pytest.mark.skipif(NPM is None, reason="npm is not installed")
PACKAGE_FILES = {"package.json", "README.md", "snakepit_bridge.js"}


def _package_json() -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((BRIDGE.parent / "package.json").read_text())
    return manifest


def _packed_files(listing: dict[str, Any]) -> set[str]:
    return {entry["path"] for entry in listing["files"]}


@needs_npm
def test_npm_pack_holds_the_bridge_and_its_readme_only() -> None:
    done = subprocess.run(
        [str(NPM), "pack", "--dry-run", "--json", "--ignore-scripts"],
        cwd=BRIDGE.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    (listing,) = json.loads(done.stdout)
    # LICENSE is packed whenever the folder has one (npm always includes it).
    expected = PACKAGE_FILES | ({"LICENSE"} if (BRIDGE.parent / "LICENSE").exists() else set())
    assert _packed_files(listing) == expected


def test_package_json_points_at_the_bridge() -> None:
    manifest = _package_json()
    assert "private" not in manifest  # publishable
    assert manifest["main"] == "snakepit_bridge.js"
    assert manifest["exports"]["."] == "./snakepit_bridge.js"
    assert set(manifest["bin"].values()) == {"snakepit_bridge.js"}
    assert manifest["files"] == ["snakepit_bridge.js"]
    assert manifest["engines"] == {"node": ">=18"}
    assert BRIDGE.read_text().startswith("#!/usr/bin/env node\n")  # runs as the bin


@needs_npm
def test_the_packed_bridge_runs_and_is_what_require_finds(start: Any, tmp_path: Path) -> None:
    """`npm pack` for real, unpacked in an empty folder: the bridge in it serves requests
    (JSON: the optional @msgpack/msgpack is not installed there), and requiring the package
    by its folder, or its package.json, gives the bridge."""
    done = subprocess.run(
        [str(NPM), "pack", "--json", "--ignore-scripts", "--pack-destination", str(tmp_path)],
        cwd=BRIDGE.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    (listing,) = json.loads(done.stdout)
    with tarfile.open(tmp_path / listing["filename"]) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    package = tmp_path / "unpacked" / "package"
    assert {str(p.relative_to(package)) for p in package.rglob("*")} == _packed_files(listing)
    probe = (
        "const dir = process.argv[1];"
        "process.stdout.write(JSON.stringify([require.resolve(dir),"
        " typeof require(dir).Bridge, require(dir + '/package.json').name]))"
    )
    found = subprocess.run(
        [str(NODE), "-e", probe, str(package)], capture_output=True, text=True, check=True
    )
    assert json.loads(found.stdout) == [
        str(package / "snakepit_bridge.js"),
        "function",
        _package_json()["name"],
    ]
    worker = start(script=package / "snakepit_bridge.js", cwd=package, env=NO_NODE_PATH)
    assert worker.negotiate()["protocol"] == "json"
    assert worker.call("compute", {"operation": "add", "a": 2, "b": 3}).result["result"] == 5
