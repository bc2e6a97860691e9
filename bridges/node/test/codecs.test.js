'use strict';
// Codecs: JSON (bytes as {"__bytes__": base64}) and MessagePack (bytes as bin).

const test = require('node:test');
const assert = require('node:assert/strict');
const { ProtocolError, toWire } = require('../snakepit_bridge.js');
const { json, msgpack } = require('../test_support.js');

const noMsgpack = msgpack ? false : '@msgpack/msgpack is not installed (npm install in bridges/node)';

test('JSON: bytes travel as {"__bytes__": base64} and come back as Buffers', () => {
  const value = { id: 1, data: Buffer.from([0, 1, 254, 255]), list: [new Uint8Array([104, 105])] };
  const text = json.encode(value).toString();
  assert.equal(text, '{"id":1,"data":{"__bytes__":"AAH+/w=="},"list":[{"__bytes__":"aGk="}]}');
  const back = json.decode(Buffer.from(text));
  assert.ok(Buffer.isBuffer(back.data));
  assert.deepEqual([...back.data], [0, 1, 254, 255]);
  assert.equal(back.list[0].toString(), 'hi');
  assert.deepEqual(json.decode(Buffer.from('{"__bytes__":""}')), Buffer.alloc(0));
});

test('JSON: only a one-key object with a string is bytes', () => {
  const two = json.decode(Buffer.from('{"__bytes__":"aGk=","x":1}'));
  assert.deepEqual(two, { __bytes__: 'aGk=', x: 1 });
  const notString = json.decode(Buffer.from('{"__bytes__":5}'));
  assert.deepEqual(notString, { __bytes__: 5 });
  // An escaped key is the same key.
  const escaped = json.decode(Buffer.from('{"\\u005f_bytes__":"aGk="}'));
  assert.equal(escaped.toString(), 'hi');
});

test('JSON: bad base64, bad UTF-8 and bad syntax are ProtocolErrors', () => {
  for (const bad of ['{"__bytes__":"aGk"}', '{"__bytes__":"a$k="}', '{"__bytes__":"a=Gk"}']) {
    assert.throws(() => json.decode(Buffer.from(bad)), ProtocolError, bad);
  }
  assert.throws(() => json.decode(Buffer.from([0x22, 0xff, 0x22])), /not valid UTF-8/);
  assert.throws(() => json.decode(Buffer.from('{"a":')), /invalid JSON payload/);
  assert.throws(() => json.decode(Buffer.from('\ufeff{}')), ProtocolError);
});

test('JSON: NaN and the infinities are refused, not turned into null', () => {
  for (const bad of [NaN, Infinity, -Infinity]) {
    assert.throws(() => json.encode({ x: [bad] }), RangeError);
  }
});

test('JSON: compact, UTF-8, key order kept', () => {
  const text = json.encode({ b: 1, a: 'é€😀', c: [1.5, -2, null, true] }).toString('utf8');
  assert.equal(text, '{"b":1,"a":"é€😀","c":[1.5,-2,null,true]}');
});

test('values are normalised the same way for both codecs', () => {
  const when = new Date(Date.UTC(2026, 0, 2));
  const value = {
    set: new Set([1, 2]),
    map: new Map([
      [1, 'one'],
      ['k', new Set(['x'])],
    ]),
    date: when,
    big: 12n,
    floats: new Float64Array([0.5, 2]),
    gone: undefined,
    holes: [undefined, null],
    view: new DataView(new Uint8Array([9, 8]).buffer),
  };
  const expected = {
    set: [1, 2],
    map: { 1: 'one', k: ['x'] },
    date: '2026-01-02T00:00:00.000Z',
    big: 12,
    floats: [0.5, 2],
    holes: [null, null],
    view: Buffer.from([9, 8]),
  };
  assert.deepEqual({ ...json.decode(json.encode(value)) }, expected);
  if (msgpack) assert.deepEqual({ ...msgpack.decode(msgpack.encode(value)) }, expected);
  assert.throws(() => toWire(2n ** 60n, true), RangeError);
});

test("a class's own toJSON chooses what it sends, under both codecs (the Python default()'s counterpart)", () => {
  class Money {
    constructor(cents) {
      this.cents = cents;
    }
    toJSON() {
      return { amount: (this.cents / 100).toFixed(2), currency: 'EUR' };
    }
  }
  class Failure extends Error {
    toJSON() {
      return `failed: ${this.message}`;
    }
  }
  const value = { price: new Money(1990), rows: [new Money(5)], why: new Failure('late') };
  const expected = {
    price: { amount: '19.90', currency: 'EUR' },
    rows: [{ amount: '0.05', currency: 'EUR' }],
    why: 'failed: late', // an Error without toJSON is refused (next test)
  };
  assert.deepEqual(JSON.parse(JSON.stringify(json.decode(json.encode(value)))), expected);
  if (msgpack) assert.deepEqual(JSON.parse(JSON.stringify(msgpack.decode(msgpack.encode(value)))), expected);
});

test('what no codec carries is an error naming the value and its path, never dropped', () => {
  const cases = [
    [{ fn: () => 1 }, TypeError, /^a function \(fn\) cannot be encoded at fn$/],
    [{ list: [1, Symbol('s')] }, TypeError, /^a symbol \(Symbol\(s\)\) cannot be encoded at list\[1\]$/],
    [{ p: Promise.resolve() }, TypeError, /^a Promise \(await it first\) cannot be encoded at p$/],
    [{ m: new Map([[1, new WeakSet()]]) }, TypeError, /^a WeakSet cannot be encoded at m\["1"\]$/],
    [{ e: new RangeError('x') }, TypeError, /an Error \(RangeError; send its message\)/],
    [{ deep: { big: 2n ** 60n } }, RangeError, /^BigInt 1152921504606846976 .* at deep\.big$/],
    [{ 'odd key': NaN }, RangeError, /^NaN is not JSON compliant at \["odd key"\]$/],
  ];
  for (const [value, Type, pattern] of cases) {
    assert.throws(() => json.encode(value), (err) => err instanceof Type && pattern.test(err.message));
    if (msgpack && !Number.isNaN(value['odd key'])) {
      assert.throws(() => msgpack.encode(value), (err) => err instanceof Type && pattern.test(err.message));
    }
  }
  let deep = 'bottom';
  for (let i = 0; i < 600; i++) deep = [deep];
  assert.throws(() => json.encode({ deep }), /nested over 512 levels deep at deep\[0\]\[0\].*\.\.\./);
});

test('untouched values are not copied', () => {
  const inner = { a: [1, 2, { b: 'c' }] };
  const value = { inner, list: [inner] };
  assert.equal(toWire(value, true), value);
  assert.equal(toWire(value, false), value);
  const withBytes = { keep: inner, data: Buffer.from('x') };
  const wired = toWire(withBytes, true);
  assert.notEqual(wired, withBytes);
  assert.equal(wired.keep, inner);
});

test('a circular value is an error, not a stack overflow', () => {
  const loop = { name: 'loop' };
  loop.self = loop;
  loop.items = [{ back: loop }];
  const circular = /TypeError: a circular reference .* at self$/;
  assert.throws(() => json.encode(loop), circular);
  if (msgpack) assert.throws(() => msgpack.encode(loop), circular);
  const inner = { list: [] };
  inner.list.push(inner);
  assert.throws(() => json.encode({ outer: new Map([['k', inner]]) }), /circular .* at outer\.k\.list\[0\]$/);
});

test('a "__proto__" key stays a plain key', () => {
  const decoded = json.decode(Buffer.from('{"__proto__":{"polluted":1},"b":{"__bytes__":"aGk="}}'));
  assert.equal({}.polluted, undefined);
  const again = json.decode(json.encode(decoded));
  assert.deepEqual(Object.keys(again), ['__proto__', 'b']);
  assert.equal({}.polluted, undefined);
});

test('MessagePack: bytes as bin, strings as str, integers stay numbers', { skip: noMsgpack }, () => {
  const packed = msgpack.encode({ id: 7, b: Buffer.from('hi'), s: 'hi' });
  // fixmap(3) "id" 7 "b" bin8(2) 'hi' "s" fixstr(2) 'hi'
  assert.equal(packed.toString('hex'), '83a2696407a162c4026869a173a26869');
  const back = msgpack.decode(packed);
  assert.ok(Buffer.isBuffer(back.b));
  assert.equal(back.s, 'hi');
  for (const id of [0, 1, 127, 128, 2 ** 31, 2 ** 32 + 5, 2 ** 53 - 1, -1, -(2 ** 40)]) {
    const round = msgpack.decode(msgpack.encode({ id }));
    assert.equal(round.id, id);
    assert.equal(typeof round.id, 'number');
  }
  assert.equal(msgpack.decode(msgpack.encode({ f: 0.25 })).f, 0.25);
});

test('MessagePack: integer map keys and nested bins decode', { skip: noMsgpack }, () => {
  // {1: [bin(1) 0x2a]}
  const back = msgpack.decode(Buffer.from('8101' + '91' + 'c4012a', 'hex'));
  assert.deepEqual(Object.keys(back), ['1']);
  assert.ok(Buffer.isBuffer(back[1][0]));
  assert.equal(back[1][0][0], 42);
});

test('MessagePack: bad payloads are ProtocolErrors, a huge declared size costs nothing', { skip: noMsgpack }, () => {
  for (const hex of ['c1', 'dd7fffffff', 'df7fffffff', 'c6ffffffff00', '92', '']) {
    const started = Date.now();
    assert.throws(() => msgpack.decode(Buffer.from(hex, 'hex')), ProtocolError, hex);
    assert.ok(Date.now() - started < 500, hex);
  }
});
