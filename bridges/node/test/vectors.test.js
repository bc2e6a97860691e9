'use strict';
// The golden frames shared with the Python reference: each frame must decode to its message,
// and encoding the message must give exactly the frame. Requests must also be understood by the
// bridge itself.
//
// vectors/messages.json is a copy of tests/vectors/messages.json (written by
// tests/vectors/generate.py; docs/protocol.md section 8), kept here so that this suite reads
// nothing outside the package folder; tests/bridge/test_node_bridge.py checks that the copy
// is the same file. It is {"vectors": [{"name", "codec": "json"|"msgpack", "direction",
// "message", "frame_hex"}]}; bytes inside "message" are {"__bytes__": base64}.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { FrameDecoder } = require('../snakepit_bridge.js');
const { Harness, json, msgpack } = require('../test_support.js');

const VECTOR_DIR = path.join(__dirname, 'vectors');
const codecs = { json, msgpack };

function loadVectors() {
  const names = fs.readdirSync(VECTOR_DIR).filter((name) => name.endsWith('.json')).sort();
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

function skipReason(codecName) {
  if (!(codecName in codecs)) return `unknown codec ${codecName}`;
  return codecs[codecName] ? false : '@msgpack/msgpack is not installed (npm install in bridges/node)';
}

const vectors = loadVectors();

test('golden vectors are present', () => {
  assert.ok(vectors.length > 0, `no vectors in ${VECTOR_DIR}`);
});

for (const vector of vectors) {
  const label = `${vector.file}#${vector.index} ${vector.name} (${vector.codec})`;
  test(label, { skip: skipReason(vector.codec) }, () => {
    const codec = codecs[vector.codec];
    const frame = Buffer.from(vector.frame_hex, 'hex');
    const expected = expectedValue(vector.message);
    assert.deepEqual(decodeFrame(frame, codec), expected, 'decode');
    const ours = codec.frame(expected, 2 ** 32 - 1);
    assert.equal(ours.toString('hex'), vector.frame_hex, 'encode');
  });
}

const requests = vectors.filter(
  (v) => v.direction === 'pool_to_bridge' && v.message.type === undefined && !skipReason(v.codec),
);

const noRequests = requests.length === 0 && 'no request vectors';

test('the bridge answers every golden request frame', { skip: noRequests }, async () => {
  for (const vector of requests) {
    const h = new Harness({ protocol: vector.codec });
    h.bridge.feed(Buffer.from(vector.frame_hex, 'hex'));
    let [response] = await h.next(1);
    while (response.type === 'chunk') [response] = await h.next(1); // a stream ends with its response
    assert.equal(response.id, vector.message.id, vector.name);
    assert.equal(typeof response.success, 'boolean', vector.name);
  }
});
