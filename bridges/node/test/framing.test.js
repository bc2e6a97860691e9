'use strict';
// Framing: encodeFrame and the incremental FrameDecoder, fed with random chunkings.

const test = require('node:test');
const assert = require('node:assert/strict');
const { FrameDecoder, ProtocolError, encodeFrame, HEADER_SIZE } = require('../snakepit_bridge.js');
const { seededRandom, randomBytes } = require('../test_support.js');

/** Cut `stream` at random places (sizes 1..maxPiece) and feed the pieces to a new decoder. */
function decodeInPieces(stream, random, maxPiece, decoder = new FrameDecoder()) {
  const payloads = [];
  let pos = 0;
  while (pos < stream.length) {
    const size = 1 + Math.floor(random() * maxPiece);
    payloads.push(...decoder.feed(stream.subarray(pos, pos + size)));
    pos += size;
  }
  decoder.checkEof();
  return payloads;
}

test('encodeFrame puts a big-endian length in front', () => {
  const frame = encodeFrame(Buffer.from('hello'));
  assert.deepEqual([...frame.subarray(0, HEADER_SIZE)], [0, 0, 0, 5]);
  assert.equal(frame.subarray(HEADER_SIZE).toString(), 'hello');
  assert.deepEqual([...encodeFrame(Buffer.alloc(0))], [0, 0, 0, 0]);
  const big = encodeFrame(Buffer.alloc(0x01020304 & 0xffff));
  assert.equal(big.readUInt32BE(0), 0x0304);
});

test('encodeFrame refuses a payload over the limit', () => {
  assert.throws(() => encodeFrame(Buffer.alloc(11), 10), ProtocolError);
  assert.equal(encodeFrame(Buffer.alloc(10), 10).length, 14);
});

test('random chunkings give back the same payloads', () => {
  for (let seed = 1; seed <= 40; seed++) {
    const random = seededRandom(seed);
    const payloads = [];
    const count = 1 + Math.floor(random() * 12);
    for (let i = 0; i < count; i++) {
      const kind = random();
      const size = kind < 0.2 ? 0 : kind < 0.8 ? Math.floor(random() * 64) : Math.floor(random() * 70000);
      payloads.push(randomBytes(random, size));
    }
    const stream = Buffer.concat(payloads.map((p) => encodeFrame(p)));
    // Byte-by-byte feeding is slow in bulk: only for the smaller streams.
    const pieces = stream.length < 20000 ? [1, 3, 7, 64, 4096, stream.length] : [7, 64, 4096, stream.length];
    for (const maxPiece of pieces) {
      const got = decodeInPieces(stream, random, maxPiece);
      assert.equal(got.length, payloads.length, `seed ${seed}, pieces up to ${maxPiece}`);
      got.forEach((payload, i) => assert.ok(payload.equals(payloads[i]), `seed ${seed} frame ${i}`));
    }
  }
});

test('a payload inside one chunk is a view of it, not a copy', () => {
  const chunk = encodeFrame(Buffer.from('abcdef'));
  const [payload] = new FrameDecoder().feed(chunk);
  assert.equal(payload.buffer, chunk.buffer);
  assert.ok(Buffer.isBuffer(payload));
});

test('a Uint8Array input gives Buffer payloads', () => {
  const frame = encodeFrame(Buffer.from('xyz'));
  const [payload] = new FrameDecoder().feed(new Uint8Array(frame));
  assert.ok(Buffer.isBuffer(payload));
  assert.equal(payload.toString(), 'xyz');
});

test('a big frame in small chunks decodes in linear time', () => {
  const size = 16 * 1024 * 1024;
  const body = Buffer.alloc(size, 7);
  const stream = encodeFrame(body);
  const decoder = new FrameDecoder();
  const started = process.hrtime.bigint();
  const got = [];
  for (let pos = 0; pos < stream.length; pos += 16384) {
    got.push(...decoder.feed(stream.subarray(pos, pos + 16384)));
  }
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  assert.equal(got.length, 1);
  assert.ok(got[0].equals(body));
  // Quadratic re-concatenation would copy ~8 GiB here; linear decoding copies 16 MiB once.
  assert.ok(ms < 2000, `took ${ms} ms`);
});

test('the limit is checked from the header, before any body byte', () => {
  const decoder = new FrameDecoder(100);
  const header = Buffer.alloc(4);
  header.writeUInt32BE(101);
  assert.throws(() => decoder.feed(header), /101 bytes, over the limit of 100/);
  // Broken for good: the stream has lost its framing.
  assert.throws(() => decoder.feed(encodeFrame(Buffer.from('ok'))), ProtocolError);
  assert.throws(() => decoder.checkEof(), ProtocolError);
  const exact = new FrameDecoder(100);
  assert.equal(exact.feed(encodeFrame(Buffer.alloc(100))).length, 1);
});

test('a header split across chunks is read correctly', () => {
  const decoder = new FrameDecoder();
  const frame = encodeFrame(Buffer.alloc(300, 1));
  assert.deepEqual(decoder.feed(frame.subarray(0, 1)), []);
  assert.deepEqual(decoder.feed(frame.subarray(1, 3)), []);
  assert.ok(decoder.inFrame);
  const got = decoder.feed(frame.subarray(3));
  assert.equal(got.length, 1);
  assert.equal(got[0].length, 300);
  assert.equal(decoder.inFrame, false);
});

test('the limit can change between frames (negotiation)', () => {
  const decoder = new FrameDecoder(10);
  assert.equal(decoder.maxFrameSize, 10);
  decoder.maxFrameSize = 1000;
  assert.equal(decoder.feed(encodeFrame(Buffer.alloc(500))).length, 1);
  assert.throws(() => {
    decoder.maxFrameSize = -1;
  }, RangeError);
  assert.throws(() => new FrameDecoder(2 ** 32), RangeError);
});

test('end of stream between frames is clean, inside one is a ProtocolError', () => {
  const frame = encodeFrame(Buffer.from('payload'));
  const clean = new FrameDecoder();
  clean.feed(frame);
  clean.checkEof();
  const inHeader = new FrameDecoder();
  inHeader.feed(frame.subarray(0, 2));
  assert.throws(() => inHeader.checkEof(), /2 of 4 header bytes/);
  const inBody = new FrameDecoder();
  inBody.feed(frame.subarray(0, 6));
  assert.equal(inBody.buffered, 6);
  assert.throws(() => inBody.checkEof(), /2 of 7 body bytes/);
});
