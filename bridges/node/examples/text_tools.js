'use strict';
// An example user module for snakepit_bridge.js:
//
//   node snakepit_bridge.js --module examples/text_tools.js
//   sp.NodeAdapter("bridges/node/examples/text_tools.js")        # from snakepit-trio
//
// Each command gets (args, ctx). Return a value (or a promise of one) to answer; write a
// generator (async function*) to stream; throw to fail. console.log goes to stderr.

const crypto = require('node:crypto');

let calls = 0;

module.exports = {
  commands: {
    /** {text} -> counts of words, lines and characters. */
    word_count(args) {
      calls += 1;
      const text = String(args.text ?? '');
      const words = text.split(/\s+/).filter(Boolean);
      return { words: words.length, lines: text ? text.split('\n').length : 0, chars: [...text].length };
    },

    /** {data: bytes or string} -> sha256 digest as bytes and as hex. Bytes arrive as Buffers. */
    async digest(args) {
      calls += 1;
      const data = Buffer.isBuffer(args.data) ? args.data : Buffer.from(String(args.data ?? ''));
      const hash = crypto.createHash('sha256').update(data).digest();
      return { digest: hash, hex: hash.toString('hex'), size: data.length };
    },

    /** {from, interval}: streams from, from-1, ... 1; returns 'liftoff'. Stops early on cancel. */
    async *countdown(args, ctx) {
      calls += 1;
      const from = Number.isInteger(args.from) ? args.from : 3;
      const interval = typeof args.interval === 'number' ? args.interval : 0.05;
      try {
        for (let n = from; n > 0; n--) {
          yield { n };
          if (!(await ctx.sleep(interval))) return null;
        }
        return 'liftoff';
      } finally {
        console.log(`countdown ${ctx.id} closed (cancelled: ${ctx.cancelled})`);
      }
    },

    /** How many calls this worker served (module state lives as long as the worker). */
    calls() {
      return { calls, pid: process.pid };
    },
  },
};
