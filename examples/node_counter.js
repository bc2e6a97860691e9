'use strict';
// A user module for the Node bridge, used by node_session.py: per-session state that lives in
// the worker process. It is right only while each session keeps to one worker (affinity).

const tallies = new Map();

module.exports = {
  commands: {
    /** {amount}: add to this session's tally; returns the new tally and who holds it. */
    tally_add(args, ctx) {
      if (ctx.sessionId === null) throw new Error('tally_add needs a session');
      const total = (tallies.get(ctx.sessionId) ?? 0) + Number(args.amount ?? 1);
      tallies.set(ctx.sessionId, total);
      return { session: ctx.sessionId, total, pid: process.pid };
    },

    /** Forget this session's tally. */
    tally_reset(args, ctx) {
      return { session: ctx.sessionId, removed: tallies.delete(ctx.sessionId) };
    },
  },
};
