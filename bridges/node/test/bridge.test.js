'use strict';
// The protocol engine in process: negotiation, requests, streams, credits, cancel, shutdown.

const test = require('node:test');
const assert = require('node:assert/strict');
const { collectCommands, encodeFrame, parseArgs, FEATURES } = require('../snakepit_bridge.js');
const { Harness, json, msgpack } = require('../test_support.js');

const noMsgpack = msgpack ? false : '@msgpack/msgpack is not installed (npm install in bridges/node)';

function negotiation(extra = {}) {
  return { type: 'protocol_negotiation', supported: ['msgpack', 'json'], preferred: 'msgpack', ...extra };
}

function userCommands(log) {
  return collectCommands({
    async slow(args, ctx) {
      await ctx.sleep(args.seconds);
      return { done: !ctx.cancelled };
    },
    stubborn() {
      return new Promise((resolve) => setTimeout(() => resolve('late'), 400));
    },
    async *numbers(args, ctx) {
      try {
        for (let i = 0; i < args.count; i++) {
          log.push(`yield ${i}`);
          yield i;
        }
        return 'all';
      } finally {
        log.push(`finally cancelled=${ctx.cancelled}`);
      }
    },
    *syncGen() {
      yield 'a';
      yield Promise.resolve('b');
    },
    async failing() {
      throw new TypeError('bad input');
    },
    throwsString() {
      throw 'plain string'; // eslint-disable-line no-throw-literal
    },
    nothing() {},
    huge() {
      return 'x'.repeat(2000);
    },
    nan() {
      return { value: NaN };
    },
    context(args, ctx) {
      return { id: ctx.id, command: ctx.command, session: ctx.sessionId, stream: ctx.stream };
    },
  });
}

test('negotiation picks msgpack when offered and available', { skip: noMsgpack }, async () => {
  const h = new Harness({ protocol: 'auto' });
  h.send(negotiation({ grace: 0.5, max_frame_size: 1 << 20 }), json);
  const [reply] = h.take(json);
  assert.equal(reply.type, 'protocol_selected');
  assert.equal(reply.protocol, 'msgpack');
  assert.deepEqual(reply.features, [...FEATURES]);
  assert.deepEqual([...reply.features].sort(), reply.features);
  assert.equal(reply.max_concurrency, 64);
  assert.equal(reply.info.bridge, 'snakepit_bridge.js');
  assert.equal(reply.info.language, 'node');
  assert.equal(reply.info.pid, process.pid);
  assert.ok(reply.info.commands.includes('ping_stream'));
  assert.equal(h.bridge.lifelineGrace, 0.5);
  assert.equal(h.bridge.decoder.maxFrameSize, 1 << 20);
  h.send({ id: 1, command: 'ping', args: {} }, msgpack);
  const [response] = await h.next(1);
  assert.equal(response.id, 1);
  assert.equal(response.success, true);
  assert.equal(response.result.status, 'ok');
});

test('negotiation falls back to json without msgpack, and honours a json-only offer', async () => {
  const bare = new Harness({ protocol: 'auto', msgpack: null });
  bare.send(negotiation(), json);
  assert.equal(bare.take(json)[0].protocol, 'json');
  assert.equal(bare.bridge.codec.name, 'json');
  const forced = new Harness({ protocol: 'auto' });
  forced.send(negotiation({ supported: ['json'], preferred: 'json' }), json);
  assert.equal(forced.take(json)[0].protocol, 'json');
  const prefers = new Harness({ protocol: 'auto' });
  prefers.send(negotiation({ preferred: 'json' }), json);
  assert.equal(prefers.take(json)[0].protocol, 'json');
});

test('a first frame that is not a negotiation is taken as a JSON request', async () => {
  const h = new Harness({ protocol: 'auto' });
  h.send({ id: 3, command: 'echo', args: { x: 1 } }, json);
  const [response] = await h.next(1);
  assert.equal(response.id, 3);
  assert.deepEqual(response.result.echoed, { x: 1 });
  assert.equal(h.bridge.codec.name, 'json');
});

test('a first frame in MessagePack is understood when msgpack is there', { skip: noMsgpack }, async () => {
  const h = new Harness({ protocol: 'auto' });
  h.send({ id: 4, command: 'echo', args: { b: Buffer.from('z') } }, msgpack);
  const [response] = await h.next(1);
  assert.equal(response.id, 4);
  assert.equal(response.result.echoed.b.toString(), 'z');
});

test('with --protocol, a negotiation that comes first is answered with that codec', async () => {
  const forcedJson = new Harness({ protocol: 'json' });
  forcedJson.send(negotiation(), json);
  assert.equal(forcedJson.take(json)[0].protocol, 'json');
  forcedJson.send({ id: 1, command: 'ping' }, json);
  assert.equal((await forcedJson.next(1))[0].id, 1);
  if (!msgpack) return;
  const forcedPack = new Harness({ protocol: 'msgpack' });
  forcedPack.send(negotiation({ preferred: 'json' }), json);
  assert.equal(forcedPack.take(json)[0].protocol, 'msgpack');
  forcedPack.send({ id: 2, command: 'ping' }, msgpack);
  assert.equal((await forcedPack.next(1))[0].id, 2);
  // Without a negotiation the first frame is already a request in that codec.
  const plain = new Harness({ protocol: 'msgpack' });
  plain.send({ id: 3, command: 'ping' }, msgpack);
  assert.equal((await plain.next(1))[0].id, 3);
});

test('built-in commands answer in the v0.3 shapes', async () => {
  const h = new Harness();
  h.send({ id: 1, command: 'compute', args: { operation: 'add', a: 2, b: 3 } });
  h.send({ id: 2, command: 'compute', args: { operation: 'power', a: 2, b: 10 } });
  h.send({ id: 3, command: 'compute', args: { operation: 'sqrt', a: 16 } });
  h.send({ id: 4, command: 'random', args: { type: 'integer', min: 3, max: 3 } });
  h.send({ id: 5, command: 'random', args: { type: 'normal', mean: 1, std: 0 } });
  h.send({ id: 6, command: 'info', args: {} });
  h.send({ id: 7, command: 'echo', args: { nested: { a: [1, 'b'] } } });
  h.send({ id: 8, command: 'ping', args: { worker_id: 'w1' } });
  const byId = Object.fromEntries((await h.next(8)).map((r) => [r.id, r]));
  assert.deepEqual(byId[1].result.inputs, { a: 2, b: 3 });
  assert.equal(byId[1].result.result, 5);
  assert.equal(byId[1].result.operation, 'add');
  assert.equal(byId[2].result.result, 1024);
  assert.equal(byId[3].result.result, 4);
  assert.equal(byId[4].result.value, 3);
  assert.equal(byId[4].result.type, 'integer');
  assert.equal(byId[5].result.value, 1);
  assert.ok(byId[6].result.bridge_info.supported_commands.includes('compute'));
  assert.equal(byId[6].result.system_info.node_version, process.version);
  assert.deepEqual(byId[7].result.echoed, { nested: { a: [1, 'b'] } });
  assert.equal(byId[8].result.worker_id, 'w1');
  for (const response of Object.values(byId)) {
    assert.equal(response.success, true);
    assert.match(response.timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  }
});

test('errors carry error_type and traceback; unknown commands are UnsupportedCommand', async () => {
  const h = new Harness({ commands: userCommands([]) });
  h.send({ id: 1, command: 'compute', args: { operation: 'divide', a: 1, b: 0 } });
  h.send({ id: 2, command: 'no_such_command', args: {} });
  h.send({ id: 3, command: 'failing', args: {} });
  h.send({ id: 4, command: 'throwsString', args: {} });
  h.send({ id: 5, command: 'compute', args: { operation: 'modulo' } });
  const byId = Object.fromEntries((await h.next(5)).map((r) => [r.id, r]));
  assert.equal(byId[1].success, false);
  assert.equal(byId[1].error_type, 'ZeroDivisionError');
  assert.match(byId[1].traceback, /ZeroDivisionError: Division by zero/);
  assert.equal(byId[2].error_type, 'UnsupportedCommand');
  assert.equal(byId[2].error, 'Unknown command: no_such_command');
  assert.equal(byId[3].error_type, 'TypeError');
  assert.equal(byId[3].error, 'bad input');
  assert.equal(byId[4].error, 'plain string');
  assert.equal(byId[4].traceback, undefined);
  assert.match(byId[5].error, /Unsupported operation: modulo/);
});

test('malformed input is answered, with a null id when the id is unknown', async () => {
  const h = new Harness();
  h.bridge.feed(encodeFrame(Buffer.from('{not json')));
  h.send([1, 2]);
  h.send({ command: 'ping' });
  h.send({ id: 9, args: {} });
  h.send({ id: 10, command: 'ping', args: [1] });
  const responses = await h.next(5);
  assert.deepEqual(
    responses.map((r) => [r.id, r.success, r.error_type]),
    [
      [null, false, 'ProtocolError'],
      [null, false, 'ProtocolError'],
      [null, false, 'ProtocolError'],
      [9, false, 'ProtocolError'],
      [10, false, 'ProtocolError'],
    ],
  );
  // Unknown frame types and stray cancels or credits are ignored.
  h.send({ type: 'from_the_future' });
  h.send({ type: 'cancel', id: 12345 });
  h.send({ type: 'credit', id: 12345, credits: 3 });
  await h.settle();
  assert.deepEqual(h.take(), []);
  h.send({ id: 11, command: 'ping' });
  assert.equal((await h.next(1))[0].success, true);
});

test('a frame over the limit is fatal: an error with a null id, then exit 1', async () => {
  const h = new Harness({ maxFrameSize: 300 });
  const header = Buffer.alloc(4);
  header.writeUInt32BE(301);
  h.bridge.feed(header);
  const [response] = h.take();
  assert.equal(response.id, null);
  assert.match(response.error, /over the limit of 300/);
  assert.equal(h.exitCode, 1);
});

test('a result over the limit or not encodable becomes an error response', async () => {
  const h = new Harness({ commands: userCommands([]), maxFrameSize: 1000 });
  h.send({ id: 1, command: 'huge' });
  h.send({ id: 2, command: 'nan' });
  const byId = Object.fromEntries((await h.next(2)).map((r) => [r.id, r]));
  assert.equal(byId[1].success, false);
  assert.equal(byId[1].error_type, 'ProtocolError');
  assert.match(byId[1].error, /exceeds the limit of 1000 bytes/);
  assert.equal(byId[2].error_type, 'RangeError');
  assert.match(byId[2].error, /NaN is not JSON compliant/);
});

test('requests run concurrently and responses are routed by id', async () => {
  const h = new Harness({ commands: userCommands([]) });
  h.send({ id: 1, command: 'slow', args: { seconds: 0.3 } });
  h.send({ id: 2, command: 'slow', args: { seconds: 0.1 } });
  h.send({ id: 3, command: 'ping' });
  const started = Date.now();
  const order = (await h.next(3)).map((r) => r.id);
  assert.deepEqual(order, [3, 2, 1]);
  assert.ok(Date.now() - started < 1000);
});

test('over max_concurrency requests wait for a slot; a waiting one can be cancelled', async () => {
  const h = new Harness({ commands: userCommands([]), maxConcurrency: 1 });
  h.send({ id: 1, command: 'slow', args: { seconds: 0.15 } });
  h.send({ id: 2, command: 'slow', args: { seconds: 0 } });
  h.send({ id: 3, command: 'slow', args: { seconds: 0 } });
  h.send({ type: 'cancel', id: 3 });
  const [first] = await h.next(1);
  assert.deepEqual([first.id, first.error_type], [3, 'Cancelled']);
  const rest = await h.next(2);
  assert.deepEqual(rest.map((r) => r.id), [1, 2]);
});

test('a stream sends chunks, then the return value; credits pause the generator', async () => {
  const log = [];
  const h = new Harness({ commands: userCommands(log) });
  h.send({ id: 5, command: 'numbers', args: { count: 4 }, stream: true, credits: 2 });
  const chunks = await h.next(2);
  assert.deepEqual(chunks, [
    { type: 'chunk', id: 5, seq: 0, data: 0 },
    { type: 'chunk', id: 5, seq: 1, data: 1 },
  ]);
  await h.settle(30);
  assert.deepEqual(h.take(), []);
  // Paused at a yield: one value ahead at most.
  assert.deepEqual(log, ['yield 0', 'yield 1', 'yield 2']);
  h.send({ type: 'credit', id: 5, credits: 10 });
  const rest = await h.next(3);
  assert.deepEqual(rest.slice(0, 2).map((c) => [c.seq, c.data]), [
    [2, 2],
    [3, 3],
  ]);
  assert.equal(rest[2].id, 5);
  assert.equal(rest[2].success, true);
  assert.equal(rest[2].result, 'all');
  assert.equal(log.at(-1), 'finally cancelled=false');
});

test('credits: 0 waits for the first credit frame', async () => {
  const h = new Harness({ commands: userCommands([]) });
  h.send({ id: 1, command: 'numbers', args: { count: 1 }, stream: true, credits: 0 });
  await h.settle(20);
  assert.deepEqual(h.take(), []);
  h.send({ type: 'credit', id: 1, credits: 1 });
  const [chunk, done] = await h.next(2);
  assert.equal(chunk.data, 0);
  assert.equal(done.result, 'all');
});

test('cancel closes a paused generator (finally runs) and confirms with Cancelled', async () => {
  const log = [];
  const h = new Harness({ commands: userCommands(log) });
  h.send({ id: 7, command: 'numbers', args: { count: 100 }, stream: true, credits: 1 });
  await h.next(1);
  h.send({ type: 'cancel', id: 7 });
  const [response] = await h.next(1);
  assert.deepEqual(
    [response.id, response.success, response.error, response.error_type],
    [7, false, 'cancelled', 'Cancelled'],
  );
  assert.equal(log.at(-1), 'finally cancelled=true');
  // The worker serves the next request.
  h.send({ id: 8, command: 'ping' });
  assert.equal((await h.next(1))[0].id, 8);
  // A late cancel for a finished request is ignored.
  h.send({ type: 'cancel', id: 7 });
  await h.settle();
  assert.deepEqual(h.take(), []);
});

test('cancel aborts ctx.signal; a cooperative handler is confirmed at once', async () => {
  const h = new Harness({ commands: userCommands([]) });
  h.send({ id: 1, command: 'sleep', args: { seconds: 10 } });
  h.send({ id: 2, command: 'slow', args: { seconds: 10 } });
  await h.settle(10);
  const started = Date.now();
  h.send({ type: 'cancel', id: 1 });
  h.send({ type: 'cancel', id: 2 });
  const responses = await h.next(2);
  assert.deepEqual(responses.map((r) => [r.id, r.error_type]), [
    [1, 'Cancelled'],
    [2, 'Cancelled'],
  ]);
  assert.ok(Date.now() - started < 100);
});

test('a handler that ignores the cancel is confirmed after a short wait', async () => {
  const h = new Harness({ commands: userCommands([]) });
  h.send({ id: 1, command: 'stubborn' });
  await h.settle(10);
  const started = Date.now();
  h.send({ type: 'cancel', id: 1 });
  const [response] = await h.next(1);
  const waited = Date.now() - started;
  assert.equal(response.error_type, 'Cancelled');
  assert.ok(waited >= 200 && waited < 390, `waited ${waited} ms`);
  await h.settle(250);
  assert.deepEqual(h.take(), []);
});

test('generator without stream gives the list; plain command with stream gives one chunk', async () => {
  const h = new Harness({ commands: userCommands([]) });
  h.send({ id: 1, command: 'numbers', args: { count: 3 } });
  h.send({ id: 2, command: 'syncGen' });
  const byId = Object.fromEntries((await h.next(2)).map((r) => [r.id, r]));
  assert.deepEqual(byId[1].result, [0, 1, 2]);
  assert.deepEqual(byId[2].result, ['a', 'b']);
  h.send({ id: 3, command: 'echo', args: { v: 1 }, stream: true });
  const [chunk, done] = await h.next(2);
  assert.equal(chunk.type, 'chunk');
  assert.deepEqual([chunk.id, chunk.seq], [3, 0]);
  assert.deepEqual(chunk.data.echoed, { v: 1 });
  assert.deepEqual([done.id, done.success, done.result], [3, true, null]);
  h.send({ id: 4, command: 'nothing' });
  assert.equal((await h.next(1))[0].result, null);
});

test('ping_stream streams count pings', async () => {
  const h = new Harness();
  h.send({ id: 1, command: 'ping_stream', args: { count: 3, interval: 0 }, stream: true });
  const frames = await h.next(4);
  assert.deepEqual(frames.slice(0, 3).map((c) => c.data.ping_number), [1, 2, 3]);
  assert.equal(frames[0].data.message, 'Ping 1 of 3');
  assert.deepEqual(frames[3].result, { status: 'ok', total: 3 });
});

test('the context carries id, command, session and stream', async () => {
  const h = new Harness({ commands: userCommands([]) });
  h.send({ id: 42, command: 'context', args: { session_id: 's-1' } });
  const [response] = await h.next(1);
  assert.deepEqual(response.result, { id: 42, command: 'context', session: 's-1', stream: false });
});

test('shutdown refuses new work, finishes running work, then exits 0', async () => {
  const h = new Harness({ commands: userCommands([]) });
  h.send({ id: 1, command: 'slow', args: { seconds: 0.1 } });
  h.send({ type: 'shutdown' });
  h.send({ id: 2, command: 'ping' });
  const [refused] = await h.next(1);
  assert.deepEqual([refused.id, refused.error_type], [2, 'ShuttingDown']);
  assert.equal(h.exitCode, undefined);
  const [done] = await h.next(1);
  assert.deepEqual([done.id, done.success], [1, true]);
  assert.equal(h.exitCode, 0);
});

test('end of input finishes running work, cancels credit-starved streams, then exits 0', async () => {
  const log = [];
  const h = new Harness({ commands: userCommands(log) });
  h.send({ id: 1, command: 'slow', args: { seconds: 0.05 } });
  h.send({ id: 2, command: 'numbers', args: { count: 5 }, stream: true, credits: 1 });
  await h.next(1);
  h.bridge.end();
  const responses = await h.next(2);
  const byId = Object.fromEntries(responses.map((r) => [r.id, r]));
  assert.equal(byId[1].success, true);
  assert.equal(byId[2].error_type, 'Cancelled');
  assert.equal(log.at(-1), 'finally cancelled=true');
  assert.equal(h.exitCode, 0);
});

test('end of input inside a frame still finishes, with exit code 1', () => {
  const h = new Harness();
  h.bridge.feed(Buffer.from([0, 0]));
  h.bridge.end();
  assert.equal(h.exitCode, 1);
});

test('collectCommands takes own functions and class methods', () => {
  class Handler {
    constructor() {
      this.factor = 3;
      this.field = 'not a command';
    }
    triple(args) {
      return args.x * this.factor;
    }
    _private() {}
  }
  const found = collectCommands(new Handler());
  assert.deepEqual([...found.keys()], ['triple']);
  const { fn, self } = found.get('triple');
  assert.equal(fn.call(self, { x: 2 }), 6);
  assert.deepEqual([...collectCommands({ a() {}, b: 1 }).keys()], ['a']);
  assert.throws(() => collectCommands(null), TypeError);
});

test('command-line flags', () => {
  assert.deepEqual(parseArgs([]), { mode: 'pool-worker', protocol: 'auto', module: null, maxConcurrency: 64 });
  const full = parseArgs(['--mode', 'pool-worker', '--protocol=json', '--module', 'x.js', '--max-concurrency', '8']);
  assert.deepEqual(full, { mode: 'pool-worker', protocol: 'json', module: 'x.js', maxConcurrency: 8 });
  assert.throws(() => parseArgs(['--protocol', 'xml']), /auto, json or msgpack/);
  assert.throws(() => parseArgs(['--max-concurrency', '0']), /positive integer/);
  assert.throws(() => parseArgs(['--mode', 'server']), /unsupported mode/);
  assert.throws(() => parseArgs(['--frobnicate']), /unknown argument/);
  assert.throws(() => parseArgs(['--module']), /needs a value/);
  assert.deepEqual(parseArgs(['--help']), { help: true });
});

test('random garbage never breaks the bridge', async () => {
  const { seededRandom, randomBytes } = require('../test_support.js');
  const random = seededRandom(7);
  const pick = (items) => items[Math.floor(random() * items.length)];
  const values = [null, true, 0, -1, 2 ** 31, 1.5, '', 'x', [], {}, [1, 'a'], { a: 1 }, Buffer.from('b')];
  const keys = ['id', 'type', 'command', 'args', 'stream', 'credits', 'session_id', 'seconds'];
  const types = [undefined, null, 'cancel', 'credit', 'shutdown-ish', 'chunk', 'heartbeat', 5];
  const commands = ['ping', 'echo', 'compute', 'random', 'sleep', 'ping_stream', 'info', 'nope', 3];
  const h = new Harness();
  const warn = process.stderr.write;
  process.stderr.write = () => true; // the bridge logs every ignored frame
  try {
    for (let i = 0; i < 300; i++) {
      if (random() < 0.2) {
        h.bridge.feed(encodeFrame(randomBytes(random, Math.floor(random() * 40))));
        continue;
      }
      const message = {};
      for (const key of keys) if (random() < 0.5) message[key] = pick(values);
      if (random() < 0.5) message.type = pick(types);
      if (random() < 0.7) message.command = pick(commands);
      if (random() < 0.6) message.id = 1000 + i;
      if (random() < 0.3) message.args = { seconds: 0, count: 2, interval: 0, operation: pick(['add', 'divide', 'sqrt', 9]) };
      h.send(message);
    }
    await h.settle(50);
    assert.equal(h.exitCode, undefined);
    h.send({ type: 'credit', id: 0, credits: 1 });
    for (const task of h.bridge.tasks.values()) h.send({ type: 'cancel', id: task.id });
    await h.settle(300);
    assert.equal(h.bridge.tasks.size, 0);
    h.take();
    h.send({ id: 1, command: 'ping' });
    const [response] = await h.next(1);
    assert.deepEqual([response.id, response.success], [1, true]);
  } finally {
    process.stderr.write = warn;
  }
});

test("Snakepit's other streaming demos stream and list", async () => {
  const h = new Harness();
  h.send({ id: 1, command: 'batch_inference', args: { items: ['a', 'b'] }, stream: true });
  const batch = await h.next(3);
  assert.deepEqual(batch.slice(0, 2).map((c) => [c.data.item, c.data.prediction]), [
    ['a', 'class_0'],
    ['b', 'class_1'],
  ]);
  assert.deepEqual(batch[2].result, { status: 'ok', total_items: 2 });
  h.send({ id: 2, command: 'process_large_dataset', args: { total_rows: 250, chunk_size: 100 } });
  const [dataset] = await h.next(1);
  assert.deepEqual(dataset.result.map((c) => c.processed_rows), [100, 200, 250]);
  h.send({ id: 3, command: 'tail_and_analyze', args: { lines: ['WARN: disk', 'all good', 'ERROR: boom'] }, stream: true });
  const tail = await h.next(4);
  assert.deepEqual(tail.slice(0, 3).map((c) => c.data.severity), ['WARN', 'INFO', 'ERROR']);
  assert.deepEqual(tail[3].result, { status: 'ok', lines: 3, severity_counts: { WARN: 1, INFO: 1, ERROR: 1 } });
  h.send({ id: 4, command: 'distributed_training', args: { epochs: 2 } });
  const [training] = await h.next(1);
  assert.deepEqual(training.result.map((e) => e.val_acc), [0.5, 0.725]);
  h.send({ id: 5, command: 'distributed_training', args: { epochs: 50, delay: 5 }, stream: true });
  await h.settle(10);
  h.send({ type: 'cancel', id: 5 });
  const [cancelled] = await h.next(1);
  assert.deepEqual([cancelled.id, cancelled.error_type], [5, 'Cancelled']);
});
