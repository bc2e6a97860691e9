'use strict';
// Shared by test/*.test.js (kept out of test/, where node --test would run it as a test file):
// a seeded random source, and an in-process bridge with captured output.

const { Bridge, JsonCodec, MsgpackCodec, loadMsgpack } = require('./snakepit_bridge.js');

/** A small deterministic generator of floats in [0, 1) (mulberry32). */
function seededRandom(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomBytes(random, size) {
  const bytes = Buffer.allocUnsafe(size);
  for (let i = 0; i < size; i++) bytes[i] = Math.floor(random() * 256);
  return bytes;
}

const msgpackLib = loadMsgpack();
const json = new JsonCodec();
const msgpack = msgpackLib ? new MsgpackCodec(msgpackLib) : null;

/**
 * A Bridge whose frames land in `frames` and whose exit code lands in `exitCode`.
 * `protocol` as on the command line; `frame(message, codec)` builds an input frame.
 */
class Harness {
  constructor(options = {}) {
    this.frames = [];
    this.exitCode = undefined;
    this.bridge = new Bridge({
      protocol: 'json',
      msgpack: msgpackLib,
      ...options,
      writer: { closed: false, write: (frame) => this.frames.push(frame) },
      exit: (code) => {
        this.exitCode = code;
      },
    });
    this.read = 0;
  }

  send(message, codec = this.bridge.codec || json) {
    this.bridge.feed(codec.frame(message));
  }

  /** Decode every frame written so far that was not taken yet. */
  take(codec = this.bridge.codec || json) {
    const out = [];
    while (this.read < this.frames.length) {
      out.push(codec.decode(this.frames[this.read++].subarray(4)));
    }
    return out;
  }

  /** Wait until `count` more frames were written (polling the event loop), then take them. */
  async next(count = 1, timeoutMs = 3000) {
    const deadline = Date.now() + timeoutMs;
    while (this.frames.length - this.read < count) {
      if (Date.now() > deadline) {
        throw new Error(`timed out waiting for ${count} frames; have ${this.take().map((m) => JSON.stringify(m))}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    const out = [];
    for (let i = 0; i < count; i++) {
      const codec = this.bridge.codec || json;
      out.push(codec.decode(this.frames[this.read++].subarray(4)));
    }
    return out;
  }

  async settle(ms = 20) {
    await new Promise((resolve) => setTimeout(resolve, ms));
  }
}

module.exports = { seededRandom, randomBytes, Harness, json, msgpack, msgpackLib };
