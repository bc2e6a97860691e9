'use strict';
// The shared golden vectors (tests/vectors/*.json), written by the Python reference: every frame
// must decode to its message, and every message must encode to its frame.
//
// A vector file is {"vectors": [{"name", "codec": "json"|"msgpack", "message", "frame_hex"}]}
// (or a bare list of such vectors); bytes inside "message" are {"__bytes__": base64}. A vector
// with "error": true (or "valid": false) is a frame that must be refused with a ProtocolError.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { FrameDecoder, ProtocolError } = require('../snakepit_bridge.js');
const { json, msgpack } = require('../test_support.js');

const VECTOR_DIR =
  process.env.SNAKEPIT_VECTORS_DIR || path.resolve(__dirname, '..', '..', '..', 'tests', 'vectors');
const codecs = { json, msgpack };

function loadVectors() {
  let names = [];
  try {
    names = fs.readdirSync(VECTOR_DIR).filter((name) => name.endsWith('.json')).sort();
  } catch {
    return [];
  }
  const vectors = [];
  for (const name of names) {
    const document = JSON.parse(fs.readFileSync(path.join(VECTOR_DIR, name), 'utf8'));
    const list = Array.isArray(document) ? document : document.vectors;
    if (!Array.isArray(list)) continue;
    list.forEach((vector, index) => vectors.push({ file: name, index, ...vector }));
  }
  return vectors;
}

/** The message as the bridge sees it: {"__bytes__": base64} objects become Buffers. */
function expectedValue(message) {
  return json.decode(Buffer.from(JSON.stringify(message)));
}

function decodeFrame(frame, codec) {
  const payloads = new FrameDecoder(2 ** 32 - 1).feed(frame);
  assert.equal(payloads.length, 1, 'one frame');
  return codec.decode(payloads[0]);
}

/** Python writes 1.0 as a float, JavaScript (one number type) as an integer. */
function mayDifferInFloats(frame, codecName) {
  const payload = frame.subarray(4);
  if (codecName === 'json') return /\d[.eE]/.test(payload.toString('utf8'));
  return payload.includes(0xcb) || payload.includes(0xca);
}

const vectors = loadVectors();

test('golden vectors are present', { skip: vectors.length === 0 && `no vectors in ${VECTOR_DIR} yet` }, () => {
  assert.ok(vectors.length > 0);
});

for (const vector of vectors) {
  const codecName = vector.codec || vector.encoding;
  const label = `${vector.file}#${vector.index} ${vector.name || ''} (${codecName})`;
  const codec = codecs[codecName];
  const skip = !(codecName in codecs)
    ? `unknown codec ${codecName}`
    : codec
      ? false
      : '@msgpack/msgpack is not installed (npm install in bridges/node)';
  test(label, { skip }, () => {
    const hex = vector.frame_hex ?? vector.frame;
    const frame = Buffer.from(hex, 'hex');
    if (vector.error === true || vector.valid === false) {
      assert.throws(() => decodeFrame(frame, codec), ProtocolError);
      return;
    }
    const expected = expectedValue(vector.message);
    assert.deepEqual(decodeFrame(frame, codec), expected, 'decode');
    const ours = codec.frame(expected, 2 ** 32 - 1);
    if (!ours.equals(frame)) {
      assert.ok(mayDifferInFloats(frame, codecName), `encode: ${ours.toString('hex')} != ${hex}`);
      assert.deepEqual(decodeFrame(ours, codec), expected, 'encode, then decode');
    }
  });
}
