'use strict';
// What a caller or a user module can do to the bridge on purpose or by mistake: responses that
// cannot be sent, modules that load slowly or not at all, built-in commands asked for too much.
// Nothing here depends on where the checkout lies: long stacks are made, not found.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { collectCommands } = require('../snakepit_bridge.js');
const { Harness, json, msgpack } = require('../test_support.js');

function negotiation(extra = {}) {
  return { type: 'protocol_negotiation', supported: ['msgpack', 'json'], preferred: 'msgpack', ...extra };
}

const CODECS = msgpack ? ['json', 'msgpack'] : ['json'];

/** An error whose stack is far over any frame limit, as a deep stack at a long path gives. */
function errorWithHugeStack(Type, message) {
  const err = new Type(message);
  const frame = `    at handler (/${'deep/'.repeat(60)}module.js:12:34)\n`;
  err.stack = `${Type.name}: ${message}\n${frame.repeat(500)}`;
  return err;
}

const chunkLog = [];

function unsendable() {
  return collectCommands({
    longStack() {
      throw errorWithHugeStack(TypeError, 'short message');
    },
    longMessage() {
      throw new RangeError(`start ${'m'.repeat(20000)}`);
    },
    longBoth() {
      throw errorWithHugeStack(SyntaxError, `begin ${'q'.repeat(20000)}`);
    },
    longType() {
      const err = new Error('odd');
      err.name = 'N'.repeat(5000);
      throw err;
    },
    huge() {
      return 'x'.repeat(5000);
    },
    bigint() {
      return { rows: [1, 2n ** 70n] };
    },
    circular() {
      const root = { branch: { leaf: 1 } };
      root.branch.back = root;
      return root;
    },
    fn() {
      return { ok: true, callback() {} };
    },
    symbol() {
      return [Symbol('s')];
    },
    promise() {
      return { later: Promise.resolve(1) };
    },
    weird() {
      return { 'a key': { 7: new WeakMap() } };
    },
    async *bigChunk(args, ctx) {
      try {
        yield 'first';
        yield 'y'.repeat(5000);
        yield 'never';
      } finally {
        chunkLog.push(`finally cancelled=${ctx.cancelled}`);
      }
    },
    async *badChunk() {
      yield { fine: 1 };
      yield { n: 2n ** 70n };
    },
  });
}

for (const codec of CODECS) {
  const options = { commands: unsendable(), maxFrameSize: 1000, protocol: codec };

  test(`${codec}: an error response over the limit is cut to fit, stack first, then message`, async () => {
    const h = new Harness(options);
    h.send({ id: 1, command: 'longStack' });
    h.send({ id: 2, command: 'longMessage' });
    h.send({ id: 3, command: 'longBoth' });
    h.send({ id: 4, command: 'longType' });
    const byId = Object.fromEntries((await h.next(4)).map((r) => [r.id, r]));
    for (const frame of h.frames) assert.ok(frame.length <= 4 + 1000, `a frame of ${frame.length} bytes`);
    // The stack goes first: the message stays whole, the stack keeps its head.
    assert.equal(byId[1].success, false);
    assert.equal(byId[1].error, 'short message');
    assert.equal(byId[1].error_type, 'TypeError');
    assert.match(byId[1].traceback, /^TypeError: short message\n {4}at handler/);
    assert.match(byId[1].traceback, /truncated/);
    // Then the message: its head stays, with a note.
    assert.equal(byId[2].error_type, 'RangeError');
    assert.match(byId[2].error, /^start m+.*truncated/s);
    assert.equal(byId[3].error_type, 'SyntaxError');
    assert.match(byId[3].error, /^begin q+/);
    assert.ok(byId[4].error_type.length < 1000);
    assert.equal(byId[4].error, 'odd');
    h.send({ id: 5, command: 'ping' });
    assert.equal((await h.next(1))[0].success, true);
  });

  test(`${codec}: a result that cannot be sent is answered at once, naming type and path`, async () => {
    const h = new Harness(options);
    const names = ['huge', 'bigint', 'circular', 'fn', 'symbol', 'promise', 'weird'];
    names.forEach((command, i) => h.send({ id: i + 1, command }));
    const responses = await h.next(names.length);
    const by = Object.fromEntries(responses.map((r) => [names[r.id - 1], r]));
    for (const response of responses) {
      assert.equal(response.success, false);
      assert.match(response.error, /^the result could not be sent: /);
      assert.equal(response.traceback, undefined); // the bridge's own stack says nothing useful
    }
    assert.equal(by.huge.error_type, 'ProtocolError');
    assert.match(by.huge.error, /exceeds the limit of 1000 bytes/);
    assert.match(by.bigint.error, /BigInt .* at result\.rows\[1\]/);
    assert.match(by.circular.error, /circular .* at result\.branch\.back/);
    assert.match(by.fn.error, /a function .* at result\.callback/);
    assert.match(by.symbol.error, /a symbol .* at result\[0\]/);
    assert.match(by.promise.error, /a Promise .* at result\.later/);
    assert.match(by.weird.error, /a WeakMap .* at result\["a key"\]\["7"\]/);
    for (const name of ['fn', 'symbol', 'promise', 'weird']) assert.equal(by[name].error_type, 'TypeError');
  });

  test(`${codec}: a stream chunk that cannot be sent ends the stream with a short error`, async () => {
    const h = new Harness(options);
    h.send({ id: 1, command: 'bigChunk', stream: true });
    const [first, failed] = await h.next(2);
    assert.deepEqual([first.type, first.seq, first.data], ['chunk', 0, 'first']);
    assert.deepEqual([failed.id, failed.success, failed.error_type], [1, false, 'ProtocolError']);
    assert.match(failed.error, /chunk 1 could not be sent: .*exceeds the limit of 1000 bytes/);
    assert.equal(chunkLog.at(-1), 'finally cancelled=false');
    h.send({ id: 2, command: 'badChunk', stream: true });
    const [fine, bad] = await h.next(2);
    assert.deepEqual(fine.data, { fine: 1 });
    assert.match(bad.error, /chunk 1 could not be sent: BigInt .* at data\.n/);
    await h.settle(20);
    assert.deepEqual(h.take(), []);
  });
}

test('the negotiation reply fits a small max_frame_size', async () => {
  const many = {};
  for (let i = 0; i < 100; i++) many[`command_with_a_rather_long_name_number_${i}`] = () => i;
  const h = new Harness({ protocol: 'auto', commands: collectCommands(many) });
  h.send(negotiation({ max_frame_size: 400 }), json);
  const [reply] = h.take(json);
  assert.ok(reply, 'no negotiation reply');
  assert.equal(reply.type, 'protocol_selected');
  assert.ok(h.frames[0].length <= 404, `a reply of ${h.frames[0].length} bytes`);
  assert.ok(Array.isArray(reply.features));
  h.send({ id: 1, command: 'command_with_a_rather_long_name_number_7' });
  assert.equal((await h.next(1))[0].result, 7);
});

test('a frame that cannot be sent even when cut is still sent: the pool sees it at once', () => {
  const h = new Harness({ maxFrameSize: 10 });
  h.send({ id: 1, command: 'ping' }, json);
  // Nothing useful fits 10 bytes: the smallest error goes out anyway, never silence.
  assert.equal(h.frames.length, 1);
  const [answer] = h.take();
  assert.equal(answer.success, false);
});

// ------------------------------------------------------------------------ module loading

function gate() {
  let open;
  const promise = new Promise((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

test('negotiation is answered before the module loads; requests wait for it, in order', async () => {
  const loading = gate();
  let loads = 0;
  const h = new Harness({
    protocol: 'auto',
    loader: async () => {
      loads += 1;
      await loading.promise;
      return collectCommands({ hello: () => 'hi', ping: () => 'module ping' });
    },
  });
  assert.equal(loads, 0); // nothing is loaded before the first frame
  h.send(negotiation(), json);
  const [reply] = h.take(json);
  assert.equal(reply.type, 'protocol_selected');
  assert.equal(loads, 1);
  h.send({ id: 1, command: 'ping' });
  h.send({ id: 2, command: 'hello' });
  h.send({ id: 3, command: 'echo', args: { x: 1 } });
  await h.settle(30);
  assert.deepEqual(h.take(), [], 'a request was answered before the module was loaded');
  loading.open();
  const responses = await h.next(3);
  assert.deepEqual(
    responses.map((r) => [r.id, r.result.echoed ?? r.result]),
    [
      [1, 'module ping'],
      [2, 'hi'],
      [3, { x: 1 }],
    ],
  );
  h.send({ id: 4, command: 'info' });
  assert.ok((await h.next(1))[0].result.bridge_info.supported_commands.includes('hello'));
});

test('with an explicit protocol the module loads at once; a first request waits for it', async () => {
  const loading = gate();
  const loader = () => loading.promise.then(() => collectCommands({ hi: () => 1 }));
  const h = new Harness({ protocol: 'json', loader });
  h.send({ id: 1, command: 'hi' });
  await h.settle(20);
  assert.deepEqual(h.take(), []);
  loading.open();
  assert.equal((await h.next(1))[0].result, 1);
});

test('a cancel for a request held while the module loads is answered at once', async () => {
  const loading = gate();
  const h = new Harness({ protocol: 'auto', loader: () => loading.promise.then(() => new Map()) });
  h.send(negotiation(), json);
  h.take(json);
  h.send({ id: 1, command: 'ping' });
  h.send({ id: 2, command: 'ping' });
  h.send({ type: 'cancel', id: 1 });
  const [cancelled] = await h.next(1);
  assert.deepEqual([cancelled.id, cancelled.error_type], [1, 'Cancelled']);
  loading.open();
  const [served] = await h.next(1);
  assert.deepEqual([served.id, served.success], [2, true]);
});

test('end of input while the module loads: held requests are served, then exit 0', async () => {
  const loading = gate();
  const h = new Harness({ protocol: 'auto', loader: () => loading.promise.then(() => new Map()) });
  h.send(negotiation(), json);
  h.take(json);
  h.send({ id: 1, command: 'ping' });
  h.bridge.end();
  await h.settle(20);
  assert.equal(h.exitCode, undefined);
  loading.open();
  const [served] = await h.next(1);
  assert.equal(served.success, true);
  await h.settle(5);
  assert.equal(h.exitCode, 0);
});

function loadFailure() {
  const err = new Error('BROKEN-MODULE');
  err.stack = [
    'Error: BROKEN-MODULE',
    '    at Object.<anonymous> (/srv/app/broken.js:3:9)',
    '    at Module._compile (node:internal/modules/cjs/loader:1256:14)',
  ].join('\n');
  return err;
}

test('a module that fails to load: the requests get its cause, then the bridge exits 1', async () => {
  const h = new Harness({
    protocol: 'auto',
    modulePath: '/srv/app/broken.js',
    loader: async () => {
      throw loadFailure();
    },
  });
  const stderr = captureStderr();
  try {
    h.send(negotiation(), json);
    assert.equal(h.take(json)[0].type, 'protocol_selected');
    h.send({ id: 1, command: 'ping' });
    const [answer] = await h.next(1);
    assert.equal(answer.success, false);
    assert.equal(answer.error_type, 'ModuleLoadError');
    assert.match(answer.error, /\/srv\/app\/broken\.js/);
    assert.match(answer.error, /broken\.js:3:9/);
    assert.match(answer.error, /Error: BROKEN-MODULE/);
    assert.match(answer.traceback, /at Object.<anonymous>/);
    await h.settle(5);
    assert.equal(h.exitCode, 1);
  } finally {
    stderr.restore();
  }
  assert.match(stderr.text, /BROKEN-MODULE[\s\S]*broken\.js:3:9/);
});

test('a module that fails to load before any request waits briefly for the init ping', async () => {
  const h = new Harness({
    protocol: 'auto',
    modulePath: '/srv/app/broken.js',
    loader: async () => {
      throw loadFailure();
    },
  });
  const stderr = captureStderr();
  try {
    h.send(negotiation(), json);
    h.take(json);
    await h.settle(30);
    assert.equal(h.exitCode, undefined);
    h.send({ id: 9, command: 'anything' });
    const [answer] = await h.next(1);
    assert.deepEqual([answer.id, answer.error_type], [9, 'ModuleLoadError']);
    await h.settle(5);
    assert.equal(h.exitCode, 1);
  } finally {
    stderr.restore();
  }
});

function captureStderr() {
  const original = process.stderr.write;
  const captured = { text: '' };
  process.stderr.write = (chunk) => {
    captured.text += String(chunk);
    return true;
  };
  captured.restore = () => {
    process.stderr.write = original;
  };
  return captured;
}

// ------------------------------------------------------------------------ friction

test('an unknown command lists close matches', async () => {
  const h = new Harness();
  h.send({ id: 1, command: 'comput' });
  h.send({ id: 2, command: 'ping_streem' });
  h.send({ id: 3, command: 'xyzzy' });
  const byId = Object.fromEntries((await h.next(3)).map((r) => [r.id, r]));
  assert.equal(byId[1].error, 'Unknown command: comput (did you mean: compute?)');
  assert.equal(byId[1].error_type, 'UnsupportedCommand');
  assert.match(byId[2].error, /did you mean: ping_stream/);
  assert.equal(byId[3].error, 'Unknown command: xyzzy');
});

// ------------------------------------------------------------------------ built-in commands

test('tail_and_analyze reads no file, whatever the caller asks', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'snakepit-node-'));
  const secret = path.join(dir, 'secret.log');
  fs.writeFileSync(secret, 'ERROR: SECRET-CONTENT\n');
  const h = new Harness();
  h.send({ id: 1, command: 'tail_and_analyze', args: { path: secret } });
  h.send({ id: 2, command: 'tail_and_analyze', args: { path: '/proc/self/environ' }, stream: true });
  h.send({ id: 3, command: 'tail_and_analyze', args: { file: secret, filename: secret } });
  const frames = await h.next(3);
  const text = JSON.stringify(frames);
  assert.ok(!text.includes('SECRET-CONTENT'), text);
  for (const frame of frames.filter((f) => f.id !== 3)) {
    assert.equal(frame.success, false);
    assert.match(frame.error, /reads no file/);
  }
  // Generated data by default, the caller's own lines when given.
  h.send({ id: 4, command: 'tail_and_analyze', args: { count: 12 } });
  const [generated] = await h.next(1);
  assert.equal(generated.result.length, 12);
  h.send({ id: 5, command: 'tail_and_analyze', args: { lines: ['WARN: x', 'ok'] } });
  const [given] = await h.next(1);
  assert.deepEqual(given.result.map((e) => e.severity), ['WARN', 'INFO']);
});

test('built-in commands refuse sizes and times beyond their bounds', async () => {
  const h = new Harness();
  const over = [
    ['ping_stream', { count: 10001, interval: 0 }],
    ['ping_stream', { count: 2, interval: 61 }],
    ['process_large_dataset', { total_rows: 10001, chunk_size: 1 }],
    ['process_large_dataset', { total_rows: 1e15, chunk_size: 0 }],
    ['batch_inference', { items: new Array(10001).fill(0) }],
    ['distributed_training', { epochs: 10001 }],
    ['distributed_training', { epochs: 1, delay: 61 }],
    ['tail_and_analyze', { count: 10001 }],
    ['tail_and_analyze', { lines: new Array(10001).fill('x') }],
    ['sleep', { seconds: 3601 }],
    ['sleep', { seconds: -1 }],
  ];
  over.forEach(([command, args], i) => h.send({ id: i + 1, command, args }));
  const responses = await h.next(over.length);
  for (const response of responses) {
    assert.equal(response.success, false, JSON.stringify(over[response.id - 1]));
    assert.match(response.error_type, /RangeError|TypeError/);
  }
  // The bounds themselves are fine.
  h.send({ id: 100, command: 'process_large_dataset', args: { total_rows: 1e6, chunk_size: 1000 } });
  h.send({ id: 101, command: 'ping_stream', args: { count: 10000, interval: 0 } });
  const byId = Object.fromEntries((await h.next(2, 20000)).map((r) => [r.id, r]));
  assert.equal(byId[100].result.length, 1000);
  assert.equal(byId[101].result.length, 10000);
});

test('ctx.sleep beyond the timer range still sleeps (no overflow to 1 ms)', async () => {
  const h = new Harness({
    commands: collectCommands({
      async long(args, ctx) {
        return ctx.sleep(3e6);
      },
    }),
  });
  h.send({ id: 1, command: 'long' });
  await h.settle(30);
  assert.deepEqual(h.take(), []);
  h.send({ type: 'cancel', id: 1 });
  assert.equal((await h.next(1))[0].error_type, 'Cancelled');
});
