#!/usr/bin/env node
'use strict';
/**
 * snakepit_bridge.js: the Node.js worker of snakepit-trio.
 *
 * One file, no required dependency. It speaks the stdio wire protocol of docs/protocol.md:
 * 4-byte big-endian length-prefixed frames over stdin/stdout, JSON always, MessagePack when the
 * optional package `@msgpack/msgpack` can be required, negotiation, several requests in flight,
 * streams with credit-based backpressure, cancel and shutdown frames, and a lifeline.
 *
 *   node snakepit_bridge.js [--mode pool-worker] [--protocol auto|json|msgpack]
 *                           [--module /path/to/user_module.js] [--max-concurrency N]
 *
 * A user module adds commands (and may replace built-in ones):
 *
 *   module.exports = {
 *     commands: {
 *       greet: async (args, ctx) => ({ hello: args.name }),
 *       countdown: async function* (args, ctx) { for (let i = args.n; i > 0; i--) yield i; },
 *     },
 *   };
 *
 * `ctx` holds id, command, args, sessionId, stream, cancelled, signal (an AbortSignal that aborts
 * when the pool cancels the request) and sleep(seconds). A module may also export `init()`
 * (async or not), awaited before its first request. The module loads only after the
 * negotiation is answered; requests wait for it. See README.md beside this file.
 *
 * Required as a module (tests do), it only exports its pieces and starts nothing.
 */

const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const { Console } = require('node:console');
const { createRequire } = require('node:module');
const { fileURLToPath, pathToFileURL } = require('node:url');

const VERSION = '0.1.0'; // as in snakepit_trio/_version.py and package.json (tests/test_versions.py)
const BRIDGE_NAME = 'snakepit_bridge.js';
const HEADER_SIZE = 4;
const MAX_FRAME_LIMIT = 0xffffffff;
const DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024;
const DEFAULT_MAX_CONCURRENCY = 64;
const DEFAULT_LIFELINE_GRACE = 2;
const MAX_TIMER_MS = 0x7fffffff; // setTimeout's range
// A cancelled handler that has not unwound by then is confirmed anyway (well inside the pool's
// cancel_grace); it goes on in the background and its outcome is dropped.
const CANCEL_CONFIRM_MS = 250;
const MAX_NESTING = 512;
// A module that failed to load waits this long for the pool's init ping, to answer it.
const LOAD_FAILURE_LINGER_MS = 2000;
const FEATURES = Object.freeze(['cancel', 'credit', 'lifeline', 'multiplex', 'shutdown', 'stream']);
const BYTES_KEY = '__bytes__';
const MSGPACK_PACKAGE = '@msgpack/msgpack';

// ------------------------------------------------------------------------------ errors

function errorClass(name, Base = Error) {
  const cls = class extends Base {};
  Object.defineProperty(cls, 'name', { value: name });
  Object.defineProperty(cls.prototype, 'name', { value: name, writable: true, configurable: true });
  return cls;
}

/** The peer broke the wire protocol (bad frame, bad payload, bad message). */
const ProtocolError = errorClass('ProtocolError');
const ZeroDivisionError = errorClass('ZeroDivisionError', RangeError);
const UnsupportedCommand = errorClass('UnsupportedCommand');
const Cancelled = errorClass('Cancelled');
const ShuttingDown = errorClass('ShuttingDown');

/** A response the bridge could not send; its stack would only show the bridge's own frames. */
const UnsentError = errorClass('UnsentError');
const ModuleLoadError = errorClass('ModuleLoadError');

function errorType(err) {
  try {
    if (err instanceof Error) {
      if (err.name && err.name !== 'Error') return String(err.name);
      const ctor = err.constructor && err.constructor.name;
      return ctor ? String(ctor) : 'Error';
    }
  } catch {
    // a getter that throws: the plain name will do
  }
  return 'Error';
}

function errorMessage(err) {
  try {
    return err instanceof Error ? String(err.message) : String(err);
  } catch {
    return 'unprintable error';
  }
}

/** An error's stack as a string, or null (none, or a getter that throws). */
function errorStack(err) {
  try {
    return err instanceof Error && typeof err.stack === 'string' ? err.stack : null;
  } catch {
    return null;
  }
}

/** `cause` could not be sent: an error of the same name, with `what` in front of its message. */
function unsent(what, cause) {
  const err = new UnsentError(`${what}: ${errorMessage(cause)}`);
  err.name = errorType(cause);
  return err;
}

// ------------------------------------------------------------------------------ framing

function checkFrameLimit(limit) {
  if (!Number.isInteger(limit) || limit < 0 || limit > MAX_FRAME_LIMIT) {
    throw new RangeError(`max frame size must be an integer between 0 and ${MAX_FRAME_LIMIT}`);
  }
  return limit;
}

function frameTooLarge(size, limit) {
  return new ProtocolError(`frame of ${size} bytes exceeds the limit of ${limit} bytes`);
}

/** Return `payload` (Buffer or Uint8Array) with its 4-byte big-endian length in front. */
function encodeFrame(payload, maxFrameSize = DEFAULT_MAX_FRAME_SIZE) {
  const size = payload.length;
  if (size > maxFrameSize) throw frameTooLarge(size, maxFrameSize);
  const frame = Buffer.allocUnsafe(HEADER_SIZE + size);
  frame.writeUInt32BE(size, 0);
  frame.set(payload, HEADER_SIZE);
  return frame;
}

/**
 * Incremental frame decoder: feed() any chunking of the byte stream, get whole payloads back.
 *
 * Linear in the bytes fed: a payload that lies inside one chunk is returned as a view of it
 * (no copy); one that spans chunks is copied once into a buffer of its announced size. The
 * size limit is checked from the header, before any body byte is kept. After a ProtocolError
 * the decoder stays broken.
 */
class FrameDecoder {
  constructor(maxFrameSize = DEFAULT_MAX_FRAME_SIZE) {
    this._max = checkFrameLimit(maxFrameSize);
    this._header = Buffer.alloc(HEADER_SIZE);
    this._headerFill = 0;
    this._body = null;
    this._bodyFill = 0;
    this._error = null;
  }

  get maxFrameSize() {
    return this._max;
  }

  set maxFrameSize(limit) {
    this._max = checkFrameLimit(limit);
  }

  /** True when a frame has started (some of its bytes arrived) but is incomplete. */
  get inFrame() {
    return this._headerFill > 0 || this._body !== null;
  }

  /** Bytes received that are not yet part of a returned payload. */
  get buffered() {
    return this._body === null ? this._headerFill : HEADER_SIZE + this._bodyFill;
  }

  feed(data) {
    if (this._error) throw this._error;
    const frames = [];
    const end = data.length;
    let pos = 0;
    while (pos < end) {
      if (this._body !== null) {
        const body = this._body;
        const take = Math.min(body.length - this._bodyFill, end - pos);
        body.set(data.subarray(pos, pos + take), this._bodyFill);
        this._bodyFill += take;
        pos += take;
        if (this._bodyFill === body.length) {
          frames.push(body);
          this._body = null;
          this._bodyFill = 0;
        }
        continue;
      }
      let size;
      if (this._headerFill === 0 && end - pos >= HEADER_SIZE) {
        size = readUInt32BE(data, pos);
        pos += HEADER_SIZE;
      } else {
        const take = Math.min(HEADER_SIZE - this._headerFill, end - pos);
        this._header.set(data.subarray(pos, pos + take), this._headerFill);
        this._headerFill += take;
        pos += take;
        if (this._headerFill < HEADER_SIZE) break;
        this._headerFill = 0;
        size = this._header.readUInt32BE(0);
      }
      if (size > this._max) {
        this._error = new ProtocolError(
          `frame header announces ${size} bytes, over the limit of ${this._max} bytes`,
        );
        throw this._error;
      }
      if (end - pos >= size) {
        frames.push(toBuffer(data.subarray(pos, pos + size)));
        pos += size;
      } else {
        this._body = Buffer.allocUnsafe(size);
        this._bodyFill = 0;
      }
    }
    return frames;
  }

  /** Call at end of stream: throws ProtocolError if it cut a frame short. */
  checkEof() {
    if (this._error) throw this._error;
    if (this._body !== null) {
      throw new ProtocolError(
        `stream ended inside a frame (${this._bodyFill} of ${this._body.length} body bytes)`,
      );
    }
    if (this._headerFill > 0) {
      throw new ProtocolError(
        `stream ended inside a frame (${this._headerFill} of ${HEADER_SIZE} header bytes)`,
      );
    }
  }
}

function readUInt32BE(bytes, pos) {
  return (
    bytes[pos] * 0x1000000 + ((bytes[pos + 1] << 16) | (bytes[pos + 2] << 8) | bytes[pos + 3])
  );
}

function toBuffer(bytes) {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

// ------------------------------------------------------------------------------ values

const STRICT_BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

function decodeBase64(text) {
  if (text.length % 4 !== 0 || !STRICT_BASE64.test(text)) {
    throw new ProtocolError('invalid base64 in a {"__bytes__": ...} value');
  }
  return Buffer.from(text, 'base64');
}

function isPlainObject(value) {
  if (value === null || typeof value !== 'object') return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

// Where an unencodable value lies: keys pushed innermost first as the error unwinds.
const WIRE_PATH = Symbol('wirePath');
const TOO_DEEP = Symbol('tooDeep');

/** An error for a value no codec can carry; toWire's callers add where it lies. */
function unencodable(Type, what) {
  const err = new Type(what);
  err[WIRE_PATH] = [];
  return err;
}

function atKey(err, key) {
  if (err !== null && typeof err === 'object' && Array.isArray(err[WIRE_PATH])) err[WIRE_PATH].push(key);
  return err;
}

function bigintToNumber(value) {
  const number = Number(value);
  if (!Number.isSafeInteger(number)) {
    throw unencodable(RangeError, `BigInt ${value} does not fit a safe integer (send it as a string)`);
  }
  return number;
}

/** The kind of a value no codec carries, for an error message; null when it is carried. */
function refusedKind(value) {
  if (isThenable(value)) return 'a Promise (await it first)';
  if (value instanceof WeakMap || value instanceof WeakSet) return `a ${value.constructor.name}`;
  if (typeof WeakRef === 'function' && value instanceof WeakRef) return 'a WeakRef';
  if (value instanceof Error) return `an Error (${errorType(value)}; send its message)`;
  return null;
}

/**
 * Turn a handler's value into what the codecs carry, the same way for both:
 * bytes (any Uint8Array, Buffer, ArrayBuffer, DataView) stay bytes; other typed arrays and Sets
 * become arrays; Maps become maps with string keys; objects with toJSON (Date...) give its
 * value; safe BigInts become numbers; undefined is dropped from maps and becomes null in
 * arrays. For JSON, bytes become {"__bytes__": base64}. What cannot be carried is an error,
 * never a silent loss: NaN and the infinities in JSON, unsafe BigInts, functions, symbols,
 * promises, weak collections, errors, and values nested too deeply (or circular); the error
 * names the value's path (see explainWireError). Copy-on-write: an untouched subtree is
 * returned as it was.
 */
function toWire(value, json, depth = 0) {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return value;
    case 'number':
      if (json && !Number.isFinite(value)) throw unencodable(RangeError, `${value} is not JSON compliant`);
      return value;
    case 'bigint':
      return bigintToNumber(value);
    case 'undefined':
      return undefined;
    case 'function':
      throw unencodable(TypeError, `a function (${value.name || 'anonymous'}) cannot be encoded`);
    case 'symbol':
      throw unencodable(TypeError, `a symbol (${String(value)}) cannot be encoded`);
    default:
      break;
  }
  if (value === null) return null;
  if (depth > MAX_NESTING) {
    const err = unencodable(RangeError, `value is nested over ${MAX_NESTING} levels deep`);
    err[TOO_DEEP] = true;
    throw err;
  }
  if (value instanceof Uint8Array) {
    return json ? { [BYTES_KEY]: toBuffer(value).toString('base64') } : value;
  }
  if (Array.isArray(value)) return arrayToWire(value, json, depth);
  if (isPlainObject(value)) return objectToWire(value, json, depth);
  if (value instanceof ArrayBuffer || value instanceof DataView) {
    const bytes =
      value instanceof ArrayBuffer
        ? Buffer.from(value)
        : Buffer.from(value.buffer, value.byteOffset, value.byteLength);
    return toWire(bytes, json, depth);
  }
  if (ArrayBuffer.isView(value)) return arrayToWire(Array.from(value), json, depth);
  if (value instanceof Set) return arrayToWire(Array.from(value), json, depth);
  if (value instanceof Map) {
    const out = Object.create(null);
    for (const [key, item] of value) out[String(key)] = item;
    return objectToWire(out, json, depth);
  }
  if (typeof value.toJSON === 'function') return toWire(value.toJSON(''), json, depth + 1);
  const refused = refusedKind(value);
  if (refused) throw unencodable(TypeError, `${refused} cannot be encoded`);
  return objectToWire(value, json, depth);
}

function arrayToWire(array, json, depth) {
  let out = array;
  let i = 0;
  // One try per container, not per item: the path costs nothing on the way in.
  try {
    for (; i < array.length; i++) {
      const item = array[i];
      let wire = toWire(item, json, depth + 1);
      if (wire === undefined) wire = null;
      if (wire !== item) {
        if (out === array) out = array.slice();
        out[i] = wire;
      }
    }
  } catch (err) {
    throw atKey(err, i);
  }
  return out;
}

function objectToWire(object, json, depth) {
  // Copies get no prototype, so that a "__proto__" key stays an ordinary key.
  let out = isPlainObject(object) ? object : Object.create(null);
  const keys = Object.keys(object);
  let i = 0;
  try {
    for (; i < keys.length; i++) {
      const key = keys[i];
      const item = object[key];
      const wire = toWire(item, json, depth + 1);
      if (out === object) {
        if (wire === item) continue;
        out = Object.create(null);
        for (let j = 0; j < i; j++) out[keys[j]] = object[keys[j]];
      }
      if (wire !== undefined) out[key] = wire;
    }
  } catch (err) {
    throw atKey(err, keys[i]);
  }
  return out;
}

const IDENTIFIER = /^[A-Za-z_$][\w$]*$/;

/** `result.rows[1]["a key"]` from ['result', 'rows', 1, 'a key']; long paths keep both ends. */
function formatPath(path) {
  const parts = path.map((key, i) => {
    if (typeof key === 'number') return `[${key}]`;
    const text = String(key);
    if (IDENTIFIER.test(text)) return i === 0 ? text : `.${text}`;
    return `[${JSON.stringify(text.length > 40 ? `${text.slice(0, 40)}...` : text)}]`;
  });
  if (parts.length > 24) return `${parts.slice(0, 12).join('')}...${parts.slice(-8).join('')}`;
  return parts.join('');
}

/**
 * The containers toWire descends into, as [key, child] pairs (Maps by their string keys,
 * Sets and typed arrays by position, toJSON values in place of their object).
 */
function wireChildren(value) {
  if (value === null || typeof value !== 'object' || value instanceof Uint8Array) return [];
  if (Array.isArray(value)) return value.map((item, i) => [i, item]);
  if (value instanceof Set) return Array.from(value, (item, i) => [i, item]);
  if (value instanceof Map) return Array.from(value, ([key, item]) => [String(key), item]);
  if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) return [];
  if (!isPlainObject(value) && typeof value.toJSON === 'function') return [];
  return Object.keys(value).map((key) => [key, value[key]]);
}

/** The path of the first reference back to an enclosing object, or null (no cycle). */
function findCycle(root) {
  const ancestors = new Set();
  const cleared = new Set();
  const visit = (value, path) => {
    if (value === null || typeof value !== 'object' || cleared.has(value)) return null;
    if (ancestors.has(value)) return path;
    if (path.length > MAX_NESTING + 1) return null;
    ancestors.add(value);
    for (const [key, child] of wireChildren(value)) {
      const found = visit(child, [...path, key]);
      if (found) return found;
    }
    ancestors.delete(value);
    cleared.add(value);
    return null;
  };
  try {
    return visit(root, []);
  } catch {
    return null; // a getter that throws: no better answer than "too deep"
  }
}

/** Add to an error of toWire where the value lies in `message` (the whole frame's map). */
function explainWireError(err, message) {
  if (err === null || typeof err !== 'object' || !Array.isArray(err[WIRE_PATH])) return err;
  const where = err[WIRE_PATH].slice().reverse();
  err[WIRE_PATH] = null; // explained once
  const cycle = err[TOO_DEEP] ? findCycle(message) : null;
  if (cycle) {
    // JSON.stringify's own type for it.
    const what = 'a circular reference (a value that contains itself) cannot be encoded';
    return new TypeError(`${what} at ${formatPath(cycle)}`);
  }
  if (where.length > 0) err.message = `${err.message} at ${formatPath(where)}`;
  return err;
}

// ------------------------------------------------------------------------------ codecs

const utf8Strict = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function reviveBytes(key, value) {
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    let count = 0;
    for (const _ in value) {
      if (++count > 1) return value;
    }
    if (count === 1 && typeof value[BYTES_KEY] === 'string') return decodeBase64(value[BYTES_KEY]);
  }
  return value;
}

/** UTF-8 JSON; bytes as {"__bytes__": base64} both ways (decoded into Buffers). */
class JsonCodec {
  get name() {
    return 'json';
  }

  encode(value) {
    return Buffer.from(this._text(value), 'utf8');
  }

  /** Encode `value` straight into a frame (one allocation, header included). */
  frame(value, maxFrameSize = DEFAULT_MAX_FRAME_SIZE) {
    const text = this._text(value);
    const size = Buffer.byteLength(text, 'utf8');
    if (size > maxFrameSize) throw frameTooLarge(size, maxFrameSize);
    const frame = Buffer.allocUnsafe(HEADER_SIZE + size);
    frame.writeUInt32BE(size, 0);
    frame.write(text, HEADER_SIZE, 'utf8');
    return frame;
  }

  decode(payload) {
    let text;
    try {
      text = utf8Strict.decode(payload);
    } catch {
      throw new ProtocolError('invalid JSON payload: not valid UTF-8');
    }
    try {
      // The reviver costs a call per value: use it only when the text may hold a bytes object.
      if (text.includes(BYTES_KEY) || text.includes('\\u')) return JSON.parse(text, reviveBytes);
      return JSON.parse(text);
    } catch (err) {
      if (err instanceof ProtocolError) throw err;
      throw new ProtocolError(`invalid JSON payload: ${errorMessage(err)}`);
    }
  }

  _text(value) {
    let wire;
    try {
      wire = toWire(value, true);
    } catch (err) {
      throw explainWireError(err, value);
    }
    const text = JSON.stringify(wire);
    if (text === undefined) throw new TypeError(`${typeof value} is not JSON serializable`);
    return text;
  }
}

function buffersFromBin(value, depth = 0) {
  if (value === null || typeof value !== 'object') return value;
  if (value instanceof Uint8Array) return toBuffer(value);
  if (depth > MAX_NESTING) throw new ProtocolError('MessagePack payload is nested too deeply');
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const item = value[i];
      if (item !== null && typeof item === 'object') value[i] = buffersFromBin(item, depth + 1);
    }
    return value;
  }
  for (const key of Object.keys(value)) {
    const item = value[key];
    if (item !== null && typeof item === 'object') value[key] = buffersFromBin(item, depth + 1);
  }
  return value;
}

/** MessagePack through `@msgpack/msgpack`: str as str, bytes as bin (decoded into Buffers). */
class MsgpackCodec {
  constructor(lib) {
    if (!lib || typeof lib.Encoder !== 'function' || typeof lib.Decoder !== 'function') {
      throw new TypeError(`${MSGPACK_PACKAGE} is not usable`);
    }
    this._lib = lib;
    this._encoder = new lib.Encoder({ ignoreUndefined: true, maxDepth: MAX_NESTING + 8 });
    this._decoder = new lib.Decoder();
  }

  get name() {
    return 'msgpack';
  }

  _packed(value) {
    let wire;
    try {
      wire = toWire(value, false);
    } catch (err) {
      throw explainWireError(err, value);
    }
    const encoder = this._encoder;
    return typeof encoder.encodeSharedRef === 'function'
      ? encoder.encodeSharedRef(wire)
      : encoder.encode(wire);
  }

  encode(value) {
    return Buffer.from(this._packed(value));
  }

  frame(value, maxFrameSize = DEFAULT_MAX_FRAME_SIZE) {
    return encodeFrame(this._packed(value), maxFrameSize);
  }

  decode(payload) {
    let value;
    try {
      value = this._decoder.decode(payload);
    } catch (err) {
      throw new ProtocolError(`invalid MessagePack payload: ${errorMessage(err)}`);
    }
    return buffersFromBin(value);
  }
}

/**
 * Require `@msgpack/msgpack` if it can be found: beside this file (and the folders above it,
 * NODE_PATH, the global folders), then from each of `extraDirs`. Returns the module or null.
 */
function loadMsgpack(extraDirs = []) {
  const attempts = [() => require(MSGPACK_PACKAGE)];
  for (const dir of extraDirs) {
    if (dir) attempts.push(() => createRequire(path.join(path.resolve(dir), 'noop.js'))(MSGPACK_PACKAGE));
  }
  for (const attempt of attempts) {
    try {
      const lib = attempt();
      if (lib && typeof lib.Encoder === 'function' && typeof lib.Decoder === 'function') return lib;
    } catch {
      // not installed there
    }
  }
  return null;
}

function looksLikeMsgpackMap(payload) {
  if (payload.length === 0) return false;
  const first = payload[0];
  return (first >= 0x80 && first <= 0x8f) || first === 0xde || first === 0xdf;
}

// ------------------------------------------------------------------------------ fitting

// A response that cannot be sent whole is cut, never dropped: the caller must get an answer at
// once rather than wait for its timeout. Tracebacks go first, then messages.
const MAX_ERROR_TYPE = 200;
const CUT_SLACK = 48;

/** The head of `text`, `keep` characters long, with a note of what was cut. */
function cutText(text, keep) {
  let end = Math.max(0, Math.min(keep, text.length));
  const code = text.charCodeAt(end - 1);
  if (code >= 0xd800 && code <= 0xdbff) end -= 1; // never half a surrogate pair
  return `${text.slice(0, end)} ... [${text.length - end} characters truncated]`;
}

function tryFrame(codec, message, limit) {
  try {
    return codec.frame(message, limit);
  } catch {
    return null;
  }
}

/** A frame of `message` with `field` (a string) cut to fit `limit`; null if it cannot fit. */
function frameWithCut(codec, message, field, limit) {
  const text = message[field];
  let keep = Math.min(text.length, limit);
  for (let tries = 0; tries < 32 && keep >= 0; tries++) {
    const payload = codec.encode({ ...message, [field]: cutText(text, keep) });
    const over = payload.length - limit;
    if (over <= 0) return encodeFrame(payload, limit);
    if (keep === 0) return null;
    // A character is at least a byte: dropping `over` more of them (and some slack for the
    // note's digits) nearly always fits on the next try.
    keep = Math.max(0, Math.min(keep - over - CUT_SLACK, Math.floor(keep * 0.9)));
  }
  return null;
}

/**
 * Frame an error response within `limit`: whole if it fits, else with its traceback cut, then
 * without it and its message cut, then the bare minimum. The last resort is sent even over the
 * limit (a limit under ~80 bytes): the pool refuses it at once, which beats silence.
 */
function fitErrorFrame(codec, response, limit) {
  const errorType = String(response.error_type ?? 'Error');
  const base = {
    id: Number.isInteger(response.id) ? response.id : null,
    success: false,
    error: typeof response.error === 'string' ? response.error : errorMessage(response.error),
    error_type: errorType.length > MAX_ERROR_TYPE ? cutText(errorType, MAX_ERROR_TYPE) : errorType,
  };
  if (response.timestamp !== undefined) base.timestamp = response.timestamp;
  const traceback = typeof response.traceback === 'string' ? response.traceback : null;
  if (traceback !== null) {
    const whole = { ...base, traceback };
    const frame = tryFrame(codec, whole, limit) || frameWithCut(codec, whole, 'traceback', limit);
    if (frame) return frame;
  }
  const frame = tryFrame(codec, base, limit) || frameWithCut(codec, base, 'error', limit);
  if (frame) return frame;
  const least = {
    id: base.id,
    success: false,
    error: 'response too large',
    error_type: errorType.slice(0, 40),
  };
  return tryFrame(codec, least, limit) || codec.frame(least, MAX_FRAME_LIMIT);
}

/** Frame the negotiation reply within `limit`, dropping its informative parts if it must. */
function fitNegotiationFrame(codec, reply, limit) {
  const { commands, ...infoWithout } = reply.info || {};
  const tries = [
    reply,
    { ...reply, info: { ...infoWithout, commands_count: Array.isArray(commands) ? commands.length : 0 } },
    {
      type: reply.type,
      protocol: reply.protocol,
      features: reply.features,
      max_concurrency: reply.max_concurrency,
    },
  ];
  for (const candidate of tries) {
    const frame = tryFrame(codec, candidate, limit);
    if (frame) return frame;
  }
  return codec.frame(tries[tries.length - 1], MAX_FRAME_LIMIT);
}

// ------------------------------------------------------------------------------ output

function sleepSync(ms) {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * Writes whole frames to a file descriptor synchronously, so frames never interleave and a
 * frame is on the pipe before the next line of code runs. Copes with a non-blocking fd.
 */
class FrameWriter {
  constructor(fd) {
    this.fd = fd;
    this.closed = false;
  }

  write(frame) {
    let offset = 0;
    while (offset < frame.length) {
      try {
        offset += fs.writeSync(this.fd, frame, offset, frame.length - offset);
      } catch (err) {
        if (err.code === 'EAGAIN' || err.code === 'EWOULDBLOCK') {
          sleepSync(1);
          continue;
        }
        if (err.code === 'EINTR') continue;
        this.closed = true;
        throw err;
      }
    }
  }
}

// ------------------------------------------------------------------------------ commands

function nowSeconds() {
  return Date.now() / 1000;
}

/**
 * Resolve after `seconds`: true when the time ran out, false when `signal` aborted first.
 * Longer than setTimeout's range (24.8 days, beyond which Node fires after 1 ms) in steps.
 */
function sleep(seconds, signal) {
  return new Promise((resolve) => {
    if (signal && signal.aborted) {
      resolve(false);
      return;
    }
    const ms = Number(seconds) * 1000;
    const end = Date.now() + (ms > 0 ? ms : 0);
    let timer = null;
    const onAbort = () => {
      clearTimeout(timer);
      resolve(false);
    };
    const arm = () => {
      const left = end - Date.now();
      if (!(left > 0)) {
        if (signal) signal.removeEventListener('abort', onAbort);
        resolve(true);
        return;
      }
      timer = setTimeout(arm, Math.min(left, MAX_TIMER_MS));
    };
    if (signal) signal.addEventListener('abort', onAbort, { once: true });
    arm();
  });
}

/** A short description of a caller's value for an error message (it may be huge). */
function preview(value) {
  let text;
  try {
    text = typeof value === 'string' ? JSON.stringify(value.slice(0, 41)) : String(value);
  } catch {
    text = typeof value;
  }
  if (Array.isArray(value)) text = `a list of ${value.length}`;
  else if (value !== null && typeof value === 'object') text = 'a map';
  return text.length > 40 ? `${text.slice(0, 40)}...` : text;
}

function numberArg(args, key, fallback) {
  const value = args[key] === undefined || args[key] === null ? fallback : args[key];
  if (typeof value !== 'number' || Number.isNaN(value)) {
    throw new TypeError(`argument ${key} must be a number, not ${preview(value)}`);
  }
  return value;
}

function countArg(args, key, fallback, max = Number.MAX_SAFE_INTEGER) {
  const value = args[key] === undefined || args[key] === null ? fallback : args[key];
  if (!Number.isInteger(value) || value < 0) {
    throw new RangeError(`argument ${key} must be a non-negative integer, not ${preview(value)}`);
  }
  if (value > max) throw new RangeError(`argument ${key} is ${value}, over the limit of ${max}`);
  return value;
}

function secondsArg(args, key, fallback, max) {
  const value = numberArg(args, key, fallback);
  if (!(value >= 0 && value <= max)) {
    throw new RangeError(`argument ${key} must lie between 0 and ${max} seconds, not ${value}`);
  }
  return value;
}

// The built-ins do a bounded amount of work whatever the caller asks (issue 14): at most this
// many chunks (or items, rows / chunk_size, epochs, lines), this long between chunks, and this
// long a sleep. Longer work belongs to a user module, which sets its own bounds.
const MAX_DEMO_ITEMS = 10000;
const MAX_DEMO_DELAY = 60;
const MAX_SLEEP = 3600;

/** The built-in commands; `bridge` gives the counters and the command list. */
function builtinCommands(bridge) {
  return {
    ping(args) {
      return {
        status: 'ok',
        bridge_type: 'generic_javascript',
        uptime: bridge.uptime(),
        requests_handled: bridge.requestCount,
        timestamp: nowSeconds(),
        node_version: process.version,
        platform: process.platform,
        pid: process.pid,
        worker_id: args.worker_id || process.env.SNAKEPIT_WORKER_ID || 'unknown',
        echo: args,
      };
    },

    echo(args) {
      return { status: 'ok', echoed: args, timestamp: nowSeconds() };
    },

    compute(args) {
      const operation = args.operation === undefined ? 'add' : args.operation;
      const a = numberArg(args, 'a', 0);
      const b = numberArg(args, 'b', 0);
      let result;
      switch (operation) {
        case 'add':
          result = a + b;
          break;
        case 'subtract':
          result = a - b;
          break;
        case 'multiply':
          result = a * b;
          break;
        case 'divide':
          if (b === 0) throw new ZeroDivisionError('Division by zero');
          result = a / b;
          break;
        case 'power':
          result = a ** b;
          break;
        case 'sqrt':
          if (a < 0) throw new RangeError('Square root of negative number');
          result = Math.sqrt(a);
          break;
        default:
          throw new RangeError(`Unsupported operation: ${operation}`);
      }
      if (!Number.isFinite(result)) throw new RangeError(`Invalid result: ${result}`);
      return { status: 'ok', operation, inputs: { a, b }, result, timestamp: nowSeconds() };
    },

    random(args) {
      const type = args.type === undefined ? 'uniform' : args.type;
      let value;
      switch (type) {
        case 'uniform': {
          const min = numberArg(args, 'min', 0);
          const max = numberArg(args, 'max', 1);
          value = min + Math.random() * (max - min);
          break;
        }
        case 'integer': {
          const min = Math.ceil(numberArg(args, 'min', 0));
          const max = Math.floor(numberArg(args, 'max', 100));
          if (max < min) throw new RangeError(`empty range [${min}, ${max}]`);
          value = min + Math.floor(Math.random() * (max - min + 1));
          break;
        }
        case 'normal': {
          const mean = numberArg(args, 'mean', 0);
          const std = numberArg(args, 'std', 1);
          // Box-Muller; 1 - random() lies in (0, 1], so the logarithm stays finite.
          const u = 1 - Math.random();
          const v = Math.random();
          value = mean + std * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
          break;
        }
        default:
          throw new RangeError(`Unsupported random type: ${type}`);
      }
      return { status: 'ok', type, parameters: args, value, timestamp: nowSeconds() };
    },

    info() {
      return {
        status: 'ok',
        bridge_info: {
          name: BRIDGE_NAME,
          version: VERSION,
          language: 'node',
          protocol: bridge.codec ? bridge.codec.name : null,
          features: FEATURES.slice(),
          max_concurrency: bridge.maxConcurrency,
          supported_commands: bridge.commandNames(),
          uptime: bridge.uptime(),
          total_requests: bridge.requestCount,
        },
        system_info: {
          node_version: process.version,
          platform: process.platform,
          arch: process.arch,
          pid: process.pid,
          memory_usage: process.memoryUsage(),
        },
        timestamp: nowSeconds(),
      };
    },

    async sleep(args, ctx) {
      const seconds = secondsArg(args, 'seconds', 0.1, MAX_SLEEP);
      const started = Date.now();
      await ctx.sleep(seconds);
      return { status: 'ok', slept: (Date.now() - started) / 1000 };
    },

    async *ping_stream(args, ctx) {
      const count = countArg(args, 'count', 5, MAX_DEMO_ITEMS);
      const interval = secondsArg(args, 'interval', 0.1, MAX_DEMO_DELAY);
      for (let i = 1; i <= count; i++) {
        if (i > 1 && interval > 0 && !(await ctx.sleep(interval))) break;
        yield { ping_number: i, message: `Ping ${i} of ${count}`, timestamp: nowSeconds() };
      }
      return { status: 'ok', total: count };
    },

    // The other streaming demos of Snakepit v0.3, with the Python bridge's shapes. Each waits
    // `delay` seconds (default 0) before a chunk, and stops early when cancelled.

    async *batch_inference(args, ctx) {
      const items = args.items ?? args.batch_items ?? ['item1', 'item2', 'item3'];
      if (!Array.isArray(items)) throw new TypeError("'items' must be a list");
      if (items.length > MAX_DEMO_ITEMS) {
        throw new RangeError(`'items' holds ${items.length} items, over the limit of ${MAX_DEMO_ITEMS}`);
      }
      const delay = secondsArg(args, 'delay', 0, MAX_DEMO_DELAY);
      for (let i = 0; i < items.length; i++) {
        if (!(await pause(ctx, delay))) break;
        yield {
          item: items[i],
          index: i,
          prediction: `class_${i % 3}`,
          confidence: Math.round((0.85 + 0.05 * (i % 3)) * 100) / 100,
          progress: (i + 1) / items.length,
          processed_at: nowSeconds(),
        };
      }
      return { status: 'ok', total_items: items.length };
    },

    async *process_large_dataset(args, ctx) {
      const totalRows = countArg(args, 'total_rows', 1000);
      const chunkSize = Math.max(1, countArg(args, 'chunk_size', 100));
      const chunks = Math.ceil(totalRows / chunkSize);
      if (chunks > MAX_DEMO_ITEMS) {
        throw new RangeError(
          `total_rows / chunk_size gives ${chunks} chunks, over the limit of ${MAX_DEMO_ITEMS}`,
        );
      }
      const delay = secondsArg(args, 'delay', 0, MAX_DEMO_DELAY);
      let processed = 0;
      let chunkNumber = 0;
      while (processed < totalRows) {
        if (!(await pause(ctx, delay))) break;
        const size = Math.min(chunkSize, totalRows - processed);
        processed += size;
        chunkNumber += 1;
        yield {
          chunk_number: chunkNumber,
          chunk_size: size,
          processed_rows: processed,
          total_rows: totalRows,
          progress_percent: Math.round((1000 * processed) / totalRows) / 10,
        };
      }
      return { status: 'ok', total_rows: totalRows, chunks: chunkNumber };
    },

    // Demo data only: the caller's own `lines`, or generated ones. It never reads a file (it
    // once did, from a caller's `path`: /etc/shadow, /proc/self/environ).
    async *tail_and_analyze(args, ctx) {
      if (args.path !== undefined && args.path !== null) {
        throw new TypeError(
          "tail_and_analyze reads no file: pass 'lines' (a list of strings), or nothing for generated lines",
        );
      }
      let lines = args.lines;
      if (lines !== undefined && lines !== null) {
        if (!Array.isArray(lines)) throw new TypeError("'lines' must be a list of strings");
        if (lines.length > MAX_DEMO_ITEMS) {
          throw new RangeError(`'lines' holds ${lines.length} lines, over the limit of ${MAX_DEMO_ITEMS}`);
        }
      }
      const count = countArg(args, 'count', lines ? lines.length : SAMPLE_LOG.length, MAX_DEMO_ITEMS);
      if (!lines) lines = Array.from({ length: count }, (_, i) => SAMPLE_LOG[i % SAMPLE_LOG.length]);
      const delay = secondsArg(args, 'delay', 0, MAX_DEMO_DELAY);
      const counts = {};
      let seen = 0;
      for (const line of lines.slice(0, count)) {
        if (!(await pause(ctx, delay))) break;
        const text = typeof line === 'string' ? line : preview(line);
        const severity = severityOf(text);
        counts[severity] = (counts[severity] || 0) + 1;
        seen += 1;
        yield {
          entry_number: seen,
          log_entry: text,
          severity,
          length: codePoints(text),
          word_count: countWords(text),
          timestamp: nowSeconds(),
        };
      }
      return { status: 'ok', lines: seen, severity_counts: counts };
    },

    async *distributed_training(args, ctx) {
      const epochs = countArg(args, 'epochs', 5, MAX_DEMO_ITEMS);
      const delay = secondsArg(args, 'delay', 0, MAX_DEMO_DELAY);
      const round4 = (x) => Math.round(x * 10000) / 10000;
      let valAcc = 0;
      let done = 0;
      for (let epoch = 1; epoch <= epochs; epoch++) {
        if (!(await pause(ctx, delay))) break;
        valAcc = round4(0.95 - 0.45 / epoch);
        done = epoch;
        yield {
          epoch,
          total_epochs: epochs,
          train_loss: round4(1 / epoch),
          val_loss: round4(1.1 / epoch),
          val_acc: valAcc,
          progress: epoch / epochs,
        };
      }
      return {
        status: 'completed',
        epochs: done,
        final_val_acc: valAcc,
        final_model_path: `/tmp/snakepit_models/model_epoch_${done}.pt`,
      };
    },
  };
}

const SAMPLE_LOG = [
  'INFO: Application started',
  'DEBUG: Processing request',
  'ERROR: Database connection failed',
  'WARN: High memory usage detected',
  'INFO: Request completed',
];

// Counted without building arrays: a line may be megabytes long.
function codePoints(text) {
  let count = 0;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code < 0xdc00 || code > 0xdfff || i === 0) count += 1;
    else {
      const before = text.charCodeAt(i - 1);
      if (before < 0xd800 || before > 0xdbff) count += 1;
    }
  }
  return count;
}

function countWords(text) {
  const word = /\S+/g;
  let count = 0;
  while (word.exec(text) !== null) count += 1;
  return count;
}

function severityOf(line) {
  const upper = line.toUpperCase();
  return ['ERROR', 'WARN', 'DEBUG'].find((level) => upper.includes(level)) || 'INFO';
}

/** Wait `seconds` (none when 0); false when the request was cancelled. */
async function pause(ctx, seconds) {
  if (seconds > 0) return ctx.sleep(seconds);
  return !ctx.cancelled;
}

/**
 * name -> {fn, self} for every function of `source`: its own enumerable properties and, for a
 * class instance, the methods of its classes (not those of Object, not `constructor`, not
 * names starting with "_").
 */
function collectCommands(source) {
  const found = new Map();
  if (source === null || (typeof source !== 'object' && typeof source !== 'function')) {
    throw new TypeError('commands must be an object mapping names to functions');
  }
  for (const name of Object.keys(source)) {
    if (typeof source[name] === 'function') found.set(name, { fn: source[name], self: source });
  }
  let proto = Object.getPrototypeOf(source);
  while (proto && proto !== Object.prototype && proto !== Function.prototype) {
    for (const name of Object.getOwnPropertyNames(proto)) {
      if (name === 'constructor' || name.startsWith('_') || found.has(name)) continue;
      const descriptor = Object.getOwnPropertyDescriptor(proto, name);
      if (descriptor && typeof descriptor.value === 'function') {
        found.set(name, { fn: descriptor.value, self: source });
      }
    }
    proto = Object.getPrototypeOf(proto);
  }
  return found;
}

/**
 * Load a user module (CommonJS or ES module), await its `init()` if it exports one (a model
 * load, a connection...), and return its command map.
 */
async function loadUserModule(file) {
  const resolved = path.resolve(file);
  let exported;
  if (resolved.endsWith('.mjs')) {
    exported = await import(pathToFileURL(resolved).href);
  } else {
    try {
      exported = require(resolved);
    } catch (err) {
      if (err && err.code === 'ERR_REQUIRE_ESM') {
        exported = await import(pathToFileURL(resolved).href);
      } else {
        throw err;
      }
    }
  }
  let api = exported;
  if (api && !api.commands && !api.init && api.default) api = api.default;
  if (api && typeof api.init === 'function') await api.init();
  if (!api || !api.commands) {
    throw new TypeError(`${file} exports no "commands" object (see the bridge's README.md)`);
  }
  return collectCommands(api.commands);
}

function isIterator(value) {
  return (
    value !== null &&
    typeof value === 'object' &&
    typeof value.next === 'function' &&
    (typeof value[Symbol.asyncIterator] === 'function' || typeof value[Symbol.iterator] === 'function')
  );
}

function isThenable(value) {
  const kind = typeof value;
  return value !== null && (kind === 'object' || kind === 'function') && typeof value.then === 'function';
}

async function closeIterator(iterator) {
  if (typeof iterator.return !== 'function') return;
  try {
    await iterator.return(undefined);
  } catch (err) {
    logError('closing a generator failed', err);
  }
}

function logError(what, err) {
  const detail = err instanceof Error ? err.stack || err.message : String(err);
  try {
    process.stderr.write(`[snakepit_bridge.js] ${what}: ${detail}\n`);
  } catch {
    // stderr is gone too
  }
}

/** One line on stderr. */
function warn(message) {
  try {
    process.stderr.write(`[snakepit_bridge.js] ${message}\n`);
  } catch {
    // stderr is gone too
  }
}

function timestamp() {
  return new Date().toISOString();
}

const STACK_FRAME = /^\s*at (?:.*? \()?(.+?):(\d+):(\d+)\)?$/;
const SYNTAX_HEADER = /^((?:file:\/\/)?\/.*?):(\d+)$/;

/**
 * Where an error comes from, as "file:line[:column]": the header Node puts on a SyntaxError's
 * stack, else the first stack frame outside Node's internals and this bridge. Null if none.
 */
function errorLocation(err) {
  const stack = errorStack(err);
  if (stack === null) return null;
  const lines = stack.split('\n');
  const header = SYNTAX_HEADER.exec(lines[0]);
  if (header) return `${displayPath(header[1])}:${header[2]}`;
  for (const line of lines) {
    const frame = STACK_FRAME.exec(line);
    if (!frame) continue;
    const file = displayPath(frame[1]);
    if (file.startsWith('node:') || file === __filename || !file.includes('/')) continue;
    return `${file}:${frame[2]}:${frame[3]}`;
  }
  return null;
}

function displayPath(location) {
  if (!location.startsWith('file://')) return location;
  try {
    return fileURLToPath(location);
  } catch {
    return location;
  }
}

// Only names this long are compared (the distance costs their product).
const MAX_SUGGESTED_NAME = 64;

/** "Unknown command: comput (did you mean: compute?)"; the hint only when something is close. */
function unknownCommandMessage(command, names) {
  const shown = command.length > 100 ? `${command.slice(0, 100)}...` : command;
  const close = closeMatches(command, names);
  if (close.length === 0) return `Unknown command: ${shown}`;
  return `Unknown command: ${shown} (did you mean: ${close.join(', ')}?)`;
}

/** Up to `limit` names at least `cutoff` similar to `word` (1 - edit distance / length), best first. */
function closeMatches(word, names, limit = 3, cutoff = 0.6) {
  if (word.length === 0 || word.length > MAX_SUGGESTED_NAME) return [];
  const scored = [];
  for (const name of names) {
    if (name.length > MAX_SUGGESTED_NAME) continue;
    const distance = editDistance(word.toLowerCase(), name.toLowerCase());
    const score = 1 - distance / Math.max(word.length, name.length);
    if (score >= cutoff) scored.push([score, name]);
  }
  scored.sort((a, b) => b[0] - a[0] || (a[1] < b[1] ? -1 : 1));
  return scored.slice(0, limit).map(([, name]) => name);
}

/** Levenshtein distance (insertions, deletions, substitutions), two rows of memory. */
function editDistance(a, b) {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min(previous[j] + 1, current[j - 1] + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length];
}

// ------------------------------------------------------------------------------ the bridge

/** What a handler gets as its second argument. */
class CommandContext {
  constructor(task) {
    this._task = task;
    this.id = task.id;
    this.command = task.command;
    this.args = task.args;
    this.sessionId = task.args.session_id === undefined ? null : task.args.session_id;
    this.stream = task.stream;
    this.signal = task.controller.signal;
  }

  /** True once the pool cancelled this request. */
  get cancelled() {
    return this._task.cancelled;
  }

  /** Sleep `seconds`; resolves early (with false) when the request is cancelled. */
  sleep(seconds) {
    return sleep(seconds, this.signal);
  }
}

class Task {
  constructor(id, command, entry, args, stream, credits) {
    this.id = id;
    this.command = command;
    this.entry = entry;
    this.args = args;
    this.stream = stream;
    this.credits = credits;
    this.seq = 0;
    this.controller = new AbortController();
    this.started = false;
    this.cancelled = false;
    this.finished = false;
    this.creditWaiter = null;
    this.cancelTimer = null;
    this.ctx = new CommandContext(this);
  }

  wake() {
    const waiter = this.creditWaiter;
    this.creditWaiter = null;
    if (waiter) waiter();
  }
}

const CANCELLED = Symbol('cancelled');

/**
 * The protocol engine: frames in (feed), frames out (writer), handlers in between.
 * `exit(code)` is called once the bridge is done (stdin ended or shutdown, nothing running).
 */
class Bridge {
  constructor(options = {}) {
    this.protocol = options.protocol || 'auto';
    this.msgpack = options.msgpack || null;
    this.maxConcurrency = options.maxConcurrency || DEFAULT_MAX_CONCURRENCY;
    this.maxFrameSize = checkFrameLimit(options.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE);
    // Shared memory: the lifeline thread reads the grace even while this thread is stuck.
    this.graceCell = new Int32Array(new SharedArrayBuffer(4));
    this.lifelineGrace = options.lifelineGrace ?? DEFAULT_LIFELINE_GRACE;
    this.writer = options.writer || new FrameWriter(1);
    this.exit = options.exit || ((code) => process.exit(code));
    this.json = new JsonCodec();
    this.codecs = { json: this.json };
    if (this.msgpack) this.codecs.msgpack = new MsgpackCodec(this.msgpack);
    if (this.protocol !== 'auto' && !this.codecs[this.protocol]) {
      throw new Error(`protocol ${this.protocol} is not available`);
    }
    this.codec = this.protocol === 'auto' ? null : this.codecs[this.protocol];
    this.awaitingFirstFrame = true;
    this.decoder = new FrameDecoder(this.maxFrameSize);
    this.commands = collectCommands(builtinCommands(this));
    if (options.commands) this.addCommands(options.commands);
    // The user's module loads after the negotiation is answered (a model load may take longer
    // than the pool's negotiation_timeout); requests wait for it in `held`, so the pool's init
    // ping is answered once it is ready, under worker_init_timeout.
    this.loader = options.loader || null;
    this.modulePath = options.modulePath || null;
    this.loadState = this.loader ? 'waiting' : 'ready'; // -> 'loading' -> 'ready' | 'failed'
    this.loadFailure = null;
    this.lingerTimer = null;
    this.held = [];
    this.tasks = new Map();
    this.queue = [];
    this.running = 0;
    this.requestCount = 0;
    this.startTime = Date.now();
    this.inputEnded = false;
    this.shuttingDown = false;
    this.exitCode = 0;
    this.exited = false;
    if (this.loader && this.protocol !== 'auto') this.startLoading(); // no negotiation to answer first
  }

  addCommands(commands) {
    for (const [name, entry] of commands) this.commands.set(name, entry);
  }

  // -- the user's module

  startLoading() {
    if (this.loadState !== 'waiting') return;
    this.loadState = 'loading';
    let loading;
    try {
      loading = Promise.resolve(this.loader()); // a CommonJS module loads right here
    } catch (err) {
      loading = Promise.reject(err);
    }
    loading
      .then(
        (commands) => this.loaded(commands),
        (err) => this.loadFailed(err),
      )
      .catch((err) => logError('internal error after loading the module', err));
  }

  loaded(commands) {
    if (this.exited) return;
    if (commands) this.addCommands(commands);
    this.loadState = 'ready';
    const held = this.held;
    this.held = [];
    for (const message of held) {
      if (this.exited) return;
      this.dispatch(message);
    }
    this.maybeExit();
  }

  /**
   * The module could not load: its stack goes to stderr, and every request (the pool's init
   * ping first) is answered with the cause (file, line, message); then the bridge exits 1.
   */
  loadFailed(err) {
    if (this.exited) return;
    const file = this.modulePath || 'the module';
    logError(`could not load ${file}`, err);
    const where = errorLocation(err);
    const message = errorMessage(err).split('\n')[0];
    const failure = new ModuleLoadError(
      `could not load ${file}: ${where ? `${where}: ` : ''}${errorType(err)}: ${message}`,
    );
    const stack = errorStack(err);
    this.loadFailure = this.errorResponse(null, failure, false);
    if (stack !== null) this.loadFailure.traceback = stack;
    this.loadState = 'failed';
    const held = this.held;
    this.held = [];
    let answered = false;
    for (const message of held) answered = this.refuseForLoadFailure(message) || answered;
    if (answered || this.inputEnded) {
      this.finishProcess(1);
      return;
    }
    // No request yet: the pool's init ping is on its way; wait for it a little, not forever.
    this.lingerTimer = setTimeout(() => this.finishProcess(1), LOAD_FAILURE_LINGER_MS);
  }

  /** Answer a request with the load failure; true if `message` was a request. */
  refuseForLoadFailure(message) {
    if (message.type !== undefined && message.type !== null) return false;
    const id = Number.isInteger(message.id) ? message.id : null;
    this.send({ ...this.loadFailure, id });
    return true;
  }

  /** While the module loads, frames wait; a cancel for a waiting request is answered at once. */
  hold(message) {
    if (this.loadState === 'failed') {
      if (this.refuseForLoadFailure(message)) this.finishProcess(1);
      return;
    }
    if (message.type === 'cancel') {
      const isRequest = (m) => m.type === undefined || m.type === null;
      const index = this.held.findIndex((m) => isRequest(m) && m.id === message.id);
      if (index >= 0 && Number.isInteger(message.id)) {
        this.held.splice(index, 1);
        this.send({ id: message.id, success: false, error: 'cancelled', error_type: 'Cancelled' });
        return;
      }
    }
    this.held.push(message);
  }

  /** Seconds the lifeline waits, once the pool is gone, before it kills the process group. */
  get lifelineGrace() {
    return Atomics.load(this.graceCell, 0) / 1000;
  }

  set lifelineGrace(seconds) {
    Atomics.store(this.graceCell, 0, Math.min(MAX_TIMER_MS, Math.round(Math.max(0, seconds) * 1000)));
  }

  uptime() {
    return (Date.now() - this.startTime) / 1000;
  }

  commandNames() {
    return Array.from(this.commands.keys()).sort();
  }

  // -- input

  /** Feed bytes read from stdin. */
  feed(chunk) {
    if (this.exited) return;
    let payloads;
    try {
      payloads = this.decoder.feed(chunk);
    } catch (err) {
      this.fatal(err);
      return;
    }
    for (const payload of payloads) {
      if (this.exited) return;
      try {
        this.onPayload(payload);
      } catch (err) {
        logError('internal error on a frame', err);
      }
    }
  }

  /** Stdin ended: take no more work, finish what runs, then exit. */
  end() {
    if (this.inputEnded) return;
    this.inputEnded = true;
    try {
      this.decoder.checkEof();
    } catch (err) {
      warn(`input ended badly: ${errorMessage(err)}`);
      this.exitCode = 1;
    }
    // No credit frame can come any more: a stream waiting for one could never end.
    for (const task of this.tasks.values()) {
      if (task.creditWaiter) this.cancel(task);
    }
    this.maybeExit();
  }

  fatal(err) {
    warn(`unrecoverable input, stopping: ${errorMessage(err)}`);
    this.send({ id: null, success: false, error: errorMessage(err), error_type: errorType(err) });
    this.finishProcess(1);
  }

  onPayload(payload) {
    if (this.awaitingFirstFrame) {
      this.awaitingFirstFrame = false;
      this.onFirstPayload(payload);
      return;
    }
    let message;
    try {
      message = this.codec.decode(payload);
    } catch (err) {
      this.sendError(null, err);
      return;
    }
    this.dispatch(message);
  }

  onFirstPayload(payload) {
    let message;
    let decodeError = null;
    try {
      message = this.json.decode(payload);
    } catch (err) {
      decodeError = err;
    }
    if (decodeError === null && isPlainObject(message) && message.type === 'protocol_negotiation') {
      this.negotiate(message);
      this.startLoading(); // only now: the reply is already on its way
      return;
    }
    if (this.codec === null) {
      // Not a negotiation: be lenient and take it as the first request.
      const packed = decodeError !== null && this.codecs.msgpack && looksLikeMsgpackMap(payload);
      this.codec = packed ? this.codecs.msgpack : this.json;
    }
    if (this.codec !== this.json) this.onPayload(payload);
    else if (decodeError !== null) this.sendError(null, decodeError);
    else this.dispatch(message);
    this.startLoading();
  }

  /**
   * Answer the pool's negotiation (always in JSON). Started with an explicit --protocol, the
   * bridge still answers a negotiation that comes first, naming the codec it was told to use.
   */
  negotiate(message) {
    const offered = Array.isArray(message.supported) ? message.supported : ['json'];
    const usable = (name) => offered.includes(name) && Boolean(this.codecs[name]);
    let chosen = 'json';
    if (this.protocol !== 'auto') chosen = this.protocol;
    else if (typeof message.preferred === 'string' && usable(message.preferred)) chosen = message.preferred;
    else if (usable('msgpack')) chosen = 'msgpack';
    if (typeof message.grace === 'number' && Number.isFinite(message.grace) && message.grace >= 0) {
      this.lifelineGrace = message.grace;
    }
    const limit = message.max_frame_size;
    if (Number.isInteger(limit) && limit >= 0 && limit <= MAX_FRAME_LIMIT) {
      this.maxFrameSize = limit;
      this.decoder.maxFrameSize = limit;
    }
    const reply = {
      type: 'protocol_selected',
      protocol: chosen,
      features: FEATURES.slice(),
      max_concurrency: this.maxConcurrency,
      info: {
        bridge: BRIDGE_NAME,
        version: VERSION,
        language: 'node',
        pid: process.pid,
        node_version: process.version,
        msgpack: Boolean(this.codecs.msgpack),
        // The built-ins: the module loads after this reply (the `info` command lists all).
        commands: this.commandNames(),
        module: this.modulePath,
      },
    };
    if (!this.exited) this.write(fitNegotiationFrame(this.json, reply, this.maxFrameSize));
    this.codec = this.codecs[chosen];
  }

  dispatch(message) {
    if (!isPlainObject(message)) {
      const kind = Array.isArray(message) ? 'array' : message === null ? 'null' : typeof message;
      this.sendError(null, new ProtocolError(`message is a ${kind}, not a map`));
      return;
    }
    if (this.loadState !== 'ready' && message.type !== 'protocol_negotiation') {
      this.hold(message);
      return;
    }
    switch (message.type) {
      case undefined:
      case null:
        this.onRequest(message);
        return;
      case 'cancel': {
        const task = this.tasks.get(message.id);
        if (task) this.cancel(task);
        return;
      }
      case 'credit': {
        const task = this.tasks.get(message.id);
        const credits = message.credits;
        if (task && Number.isInteger(credits) && credits > 0) {
          task.credits += credits;
          task.wake();
        }
        return;
      }
      case 'shutdown':
        this.shuttingDown = true;
        this.maybeExit();
        return;
      case 'protocol_negotiation':
        warn('ignored a negotiation frame after the first frame');
        return;
      default:
        // A frame type from a newer pool: ignoring it keeps the connection alive.
        warn(`ignored a frame of unknown type ${JSON.stringify(message.type)}`);
    }
  }

  onRequest(message) {
    const id = Number.isInteger(message.id) ? message.id : null;
    if (id === null) {
      this.sendError(null, new ProtocolError('request has no integer id'));
      return;
    }
    if (this.tasks.has(id)) {
      this.sendError(id, new ProtocolError(`request id ${id} is already in flight`));
      return;
    }
    const command = message.command;
    let args = message.args;
    if (args === undefined || args === null) args = {};
    if (typeof command !== 'string') {
      this.sendError(id, new ProtocolError('request has no command name'));
      return;
    }
    if (!isPlainObject(args)) {
      this.sendError(id, new ProtocolError("request 'args' is not a map"));
      return;
    }
    if (this.shuttingDown) {
      this.sendError(id, new ShuttingDown('the bridge is shutting down'));
      return;
    }
    const entry = this.commands.get(command);
    if (!entry) {
      this.sendError(id, new UnsupportedCommand(unknownCommandMessage(command, this.commandNames())));
      return;
    }
    const credits = Number.isInteger(message.credits) ? Math.max(0, message.credits) : Infinity;
    const task = new Task(id, command, entry, args, message.stream === true, credits);
    this.tasks.set(id, task);
    if (this.running < this.maxConcurrency) this.start(task);
    else this.queue.push(task);
  }

  // -- running

  start(task) {
    task.started = true;
    this.running += 1;
    this.requestCount += 1;
    this.run(task).catch((err) => logError('internal error while running a request', err));
  }

  async run(task) {
    let response;
    try {
      const result = await this.execute(task);
      response = { id: task.id, success: true, result: result === undefined ? null : result };
    } catch (err) {
      response = err === CANCELLED ? null : this.errorResponse(task.id, err);
    }
    if (task.cancelled) response = this.cancelledResponse(task);
    this.finish(task, response);
  }

  async execute(task) {
    const { fn, self } = task.entry;
    let value = fn.call(self, task.args, task.ctx);
    if (!isIterator(value) && isThenable(value)) value = await value;
    if (isIterator(value)) return this.drive(task, value);
    if (task.cancelled) throw CANCELLED;
    if (task.stream) {
      await this.waitForCredit(task);
      if (task.cancelled) throw CANCELLED;
      this.sendChunk(task, value);
      return null;
    }
    return value;
  }

  /** Run a generator command: chunks for a stream, else the list of its values. */
  async drive(task, iterator) {
    const values = task.stream ? null : [];
    try {
      for (;;) {
        if (task.cancelled) throw CANCELLED;
        const step = await iterator.next();
        if (task.cancelled) throw CANCELLED;
        if (step.done) return task.stream ? step.value : values;
        let value = step.value;
        if (isThenable(value)) value = await value;
        if (!task.stream) {
          values.push(value);
          continue;
        }
        await this.waitForCredit(task);
        if (task.cancelled) throw CANCELLED;
        this.sendChunk(task, value);
      }
    } catch (err) {
      // Close the generator so that its finally blocks run (a no-op when it threw itself).
      await closeIterator(iterator);
      throw err;
    }
  }

  waitForCredit(task) {
    if (task.credits > 0 || task.cancelled) return undefined;
    if (this.inputEnded) {
      this.cancel(task);
      return undefined;
    }
    return new Promise((resolve) => {
      task.creditWaiter = resolve;
    }).then(() => this.waitForCredit(task));
  }

  sendChunk(task, data) {
    let frame;
    try {
      frame = this.codec.frame(
        { type: 'chunk', id: task.id, seq: task.seq, data: data === undefined ? null : data },
        this.maxFrameSize,
      );
    } catch (err) {
      // The stream ends with an error response (which is cut to fit, so it always goes out).
      throw unsent(`chunk ${task.seq} could not be sent`, err);
    }
    this.write(frame);
    task.seq += 1;
    task.credits -= 1;
  }

  cancel(task) {
    if (task.finished || task.cancelled) return;
    task.cancelled = true;
    task.controller.abort(new Cancelled('cancelled'));
    task.wake();
    if (!task.started) {
      const index = this.queue.indexOf(task);
      if (index >= 0) this.queue.splice(index, 1);
      this.finish(task, this.cancelledResponse(task));
      return;
    }
    task.cancelTimer = setTimeout(() => {
      warn(`request ${task.id} did not stop within ${CANCEL_CONFIRM_MS} ms of its cancel; confirmed anyway`);
      this.finish(task, this.cancelledResponse(task));
    }, CANCEL_CONFIRM_MS);
  }

  finish(task, response) {
    if (task.finished) return;
    task.finished = true;
    if (task.cancelTimer) clearTimeout(task.cancelTimer);
    this.tasks.delete(task.id);
    if (task.started) this.running -= 1;
    if (response) this.send(response);
    while (this.running < this.maxConcurrency && this.queue.length > 0) {
      this.start(this.queue.shift());
    }
    this.maybeExit();
  }

  maybeExit() {
    if (this.loadState === 'loading') return; // held requests are answered once it is done
    if (this.loadState === 'failed') {
      if (this.inputEnded) this.finishProcess(1);
      return;
    }
    if ((this.inputEnded || this.shuttingDown) && this.tasks.size === 0) {
      this.finishProcess(this.exitCode);
    }
  }

  finishProcess(code) {
    if (this.exited) return;
    this.exited = true;
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    this.exit(code);
  }

  // -- output

  cancelledResponse(task) {
    return { id: task.id, success: false, error: 'cancelled', error_type: 'Cancelled' };
  }

  /** The response for a handler's error (with its stack as the traceback). */
  errorResponse(id, err, traceback = true) {
    const response = { id, success: false, error: errorMessage(err), error_type: errorType(err) };
    const stack = traceback && !(err instanceof UnsentError) ? errorStack(err) : null;
    if (stack !== null) response.traceback = stack;
    return response;
  }

  /** Refuse a request or a frame (the bridge's own verdict: no traceback). */
  sendError(id, err) {
    this.send(this.errorResponse(id, err, false));
  }

  /**
   * Send a response (timestamp added). Never silent: a result that cannot be sent (over the
   * frame limit, or not encodable) becomes an error response saying why, and an error response
   * over the limit is cut to fit (traceback first, then message).
   */
  send(message) {
    if (this.exited) return;
    this.write(this.responseFrame({ ...message, timestamp: timestamp() }));
  }

  responseFrame(response) {
    const codec = this.codec || this.json;
    try {
      return codec.frame(response, this.maxFrameSize);
    } catch (err) {
      let failed = response;
      if (response.success !== false) {
        failed = this.errorResponse(response.id, unsent('the result could not be sent', err));
        failed.timestamp = response.timestamp;
      }
      return fitErrorFrame(codec, failed, this.maxFrameSize);
    }
  }

  write(frame) {
    if (this.writer.closed) return;
    try {
      this.writer.write(frame);
    } catch (err) {
      warn(`stdout is closed (${err.code || errorMessage(err)}), stopping`);
      this.finishProcess(this.inputEnded || this.shuttingDown ? 0 : 1);
    }
  }
}

// ------------------------------------------------------------------------------ process glue

/** Keep fd 1 for frames: console.* and process.stdout go to stderr from now on. */
function protectStdout() {
  const stderr = process.stderr;
  stderr.on('error', () => {});
  try {
    Object.defineProperty(process, 'stdout', { configurable: true, enumerable: true, get: () => stderr });
  } catch (err) {
    logError('could not redirect process.stdout', err);
  }
  const quiet = new Console({ stdout: stderr, stderr });
  for (const key of Object.keys(quiet)) {
    if (typeof quiet[key] === 'function') console[key] = quiet[key];
  }
}

// The lifeline watcher runs on a worker thread: a handler that never yields (a synchronous
// loop) blocks the main event loop, and a watcher there would never run. The thread has an
// event loop of its own, idle in epoll on the pipe: a blocking read would do the same, but Node
// joins its worker threads at exit, and a thread stuck in read() would then hold the exit.
// It writes to fd 2 itself (a worker's process.stderr goes through the main thread).
const LIFELINE_THREAD = `
'use strict';
const fs = require('node:fs');
const net = require('node:net');
const { parentPort, workerData } = require('node:worker_threads');
const { fd, graceCell, leaveMs } = workerData;
const say = (text) => {
  try { fs.writeSync(2, '[snakepit_bridge.js] ' + text + '\\n'); } catch {}
};
let fired = false;
const fire = () => {
  if (fired) return;
  fired = true;
  const grace = Atomics.load(graceCell, 0);
  setTimeout(() => {
    say('the pool is gone (lifeline closed); killing the process group');
    try {
      process.kill(-process.pid, 'SIGKILL');
    } catch {
      // ESRCH: we lead no process group. Let the main thread exit 1; if it is stuck, die.
      parentPort.postMessage('exit');
      setTimeout(() => process.kill(process.pid, 'SIGKILL'), leaveMs);
    }
  }, grace);
};
const pipe = new net.Socket({ fd, readable: true, writable: false, allowHalfOpen: true });
pipe.on('data', () => {});
pipe.on('end', fire);
pipe.on('close', fire);
pipe.on('error', fire);
`;

// How long a lifeline that leads no process group lets the main thread exit by itself.
const LIFELINE_LEAVE_MS = 300;

/**
 * Watch the pool's lifeline pipe (SNAKEPIT_LIFELINE_FD; the pool never writes to it). At its
 * end (the pool is gone, even SIGKILLed) wait the grace (read from `graceCell` then), then
 * SIGKILL our own process group when we lead one, else exit 1 (or SIGKILL ourselves if the
 * main thread is stuck). Works whatever the handlers do; never keeps the process alive.
 */
function startLifeline(fdText, graceCell) {
  const fd = Number(fdText);
  if (!Number.isInteger(fd) || fd < 0) {
    warn(`no lifeline: SNAKEPIT_LIFELINE_FD=${fdText} is not a file descriptor`);
    return null;
  }
  let kind;
  try {
    const stat = fs.fstatSync(fd);
    kind = stat.isFIFO() ? 'pipe' : stat.isSocket() ? 'socket' : 'other';
  } catch (err) {
    // A variable inherited from elsewhere, without its pipe: no lifeline rather than a kill.
    warn(`no lifeline: SNAKEPIT_LIFELINE_FD=${fdText} is not open (${err.code || err.message})`);
    return null;
  }
  if (kind === 'other') {
    warn(`no lifeline: SNAKEPIT_LIFELINE_FD=${fdText} is not a pipe`);
    return null;
  }
  let thread;
  try {
    const { Worker } = require('node:worker_threads');
    thread = new Worker(LIFELINE_THREAD, {
      eval: true,
      workerData: { fd, graceCell, leaveMs: LIFELINE_LEAVE_MS },
      argv: [],
      execArgv: [],
      stdout: true, // never onto fd 1 (the thread writes nothing there anyway)
    });
  } catch (err) {
    logError('no lifeline thread, watching on the main thread (a busy handler delays it)', err);
    return watchOnMainThread(fd, graceCell);
  }
  thread.on('message', (message) => {
    if (message === 'exit') process.exit(1);
  });
  thread.on('error', (err) => logError('the lifeline thread failed', err));
  thread.unref();
  return thread;
}

/** The fallback: the same watch on the main event loop (blocked while a handler spins). */
function watchOnMainThread(fd, graceCell) {
  let fired = false;
  const fire = () => {
    if (fired) return;
    fired = true;
    setTimeout(killOwnGroup, Atomics.load(graceCell, 0)).unref();
  };
  const stream = new net.Socket({ fd, readable: true, writable: false, allowHalfOpen: true });
  stream.unref();
  stream.on('data', () => {});
  stream.on('end', fire);
  stream.on('close', fire);
  stream.on('error', fire);
  return stream;
}

function killOwnGroup() {
  try {
    process.kill(-process.pid, 'SIGKILL');
  } catch {
    // ESRCH: we lead no process group.
  }
  process.exit(1);
}

const USAGE = `usage: node snakepit_bridge.js [--mode pool-worker] [--protocol auto|json|msgpack]
                          [--module FILE] [--max-concurrency N]

The snakepit-trio worker for Node.js: speaks length-prefixed frames on stdin/stdout.
  --mode pool-worker     the only mode (accepted for Snakepit compatibility)
  --protocol P           auto (default: expect a negotiation frame), json or msgpack
  --module FILE          a CommonJS or ES module exporting { commands: { name: fn, ... } }
  --max-concurrency N    requests run at the same time (default ${DEFAULT_MAX_CONCURRENCY})
  --version              print the version
MessagePack needs the optional package ${MSGPACK_PACKAGE}.
`;

function parseArgs(argv) {
  const options = {
    mode: 'pool-worker',
    protocol: 'auto',
    module: null,
    maxConcurrency: DEFAULT_MAX_CONCURRENCY,
  };
  const takesValue = {
    '--mode': 'mode',
    '--protocol': 'protocol',
    '--module': 'module',
    '--max-concurrency': 'maxConcurrency',
  };
  for (let i = 0; i < argv.length; i++) {
    let flag = argv[i];
    let value;
    const eq = flag.indexOf('=');
    if (flag.startsWith('--') && eq > 0) {
      value = flag.slice(eq + 1);
      flag = flag.slice(0, eq);
    }
    if (flag === '--help' || flag === '-h') return { help: true };
    if (flag === '--version') return { version: true };
    const key = takesValue[flag];
    if (!key) throw new Error(`unknown argument ${argv[i]}`);
    if (value === undefined) {
      if (i + 1 >= argv.length) throw new Error(`${flag} needs a value`);
      value = argv[++i];
    }
    options[key] = value;
  }
  if (options.mode !== 'pool-worker') throw new Error(`unsupported mode ${options.mode}`);
  if (!['auto', 'json', 'msgpack'].includes(options.protocol)) {
    throw new Error(`--protocol must be auto, json or msgpack, not ${options.protocol}`);
  }
  const limit = Number(options.maxConcurrency);
  if (!Number.isInteger(limit) || limit < 1) {
    throw new Error(`--max-concurrency must be a positive integer, not ${options.maxConcurrency}`);
  }
  options.maxConcurrency = limit;
  return options;
}

async function main(argv = process.argv.slice(2)) {
  let options;
  try {
    options = parseArgs(argv);
  } catch (err) {
    process.stderr.write(`snakepit_bridge.js: ${err.message}\n${USAGE}`);
    process.exit(2);
  }
  if (options.help || options.version) {
    process.stdout.write(options.help ? USAGE : `${BRIDGE_NAME} ${VERSION}\n`);
    return;
  }
  protectStdout();
  process.on('unhandledRejection', (reason) => logError('unhandled rejection', reason));

  const modulePath = options.module ? path.resolve(options.module) : null;
  const msgpack = loadMsgpack([modulePath && path.dirname(modulePath), process.cwd()]);
  if (options.protocol === 'msgpack' && !msgpack) {
    process.stderr.write(`snakepit_bridge.js: --protocol msgpack needs the package ${MSGPACK_PACKAGE}\n`);
    process.exit(2);
  }

  const envGrace = Number(process.env.SNAKEPIT_LIFELINE_GRACE);
  const bridge = new Bridge({
    protocol: options.protocol,
    msgpack,
    // Loaded after the negotiation is answered; see Bridge.startLoading.
    loader: modulePath ? () => loadUserModule(modulePath) : null,
    modulePath,
    maxConcurrency: options.maxConcurrency,
    lifelineGrace: Number.isFinite(envGrace) && envGrace >= 0 ? envGrace : DEFAULT_LIFELINE_GRACE,
  });
  // Before any user code runs (the module loads on a later turn of the event loop).
  if (process.env.SNAKEPIT_LIFELINE_FD) startLifeline(process.env.SNAKEPIT_LIFELINE_FD, bridge.graceCell);
  const stdin = process.stdin;
  stdin.on('data', (chunk) => bridge.feed(chunk));
  stdin.on('end', () => bridge.end());
  stdin.on('error', (err) => {
    logError('stdin failed', err);
    bridge.end();
  });
}

module.exports = {
  VERSION,
  FEATURES,
  HEADER_SIZE,
  DEFAULT_MAX_FRAME_SIZE,
  ProtocolError,
  FrameDecoder,
  FrameWriter,
  encodeFrame,
  JsonCodec,
  MsgpackCodec,
  loadMsgpack,
  toWire,
  collectCommands,
  loadUserModule,
  builtinCommands,
  Bridge,
  parseArgs,
  main,
};

if (require.main === module) {
  main().catch((err) => {
    logError('start-up failed', err);
    process.exit(1);
  });
}
