'use strict';
// The window benchmark's load generator: N DDP sessions, each subscribed to a sorted,
// limited publication of books, recording when each session receives each planned
// window change and keeping each session's view of bookstore.book to check it at the end.
//
// Started by loadtest/bench/window.py (never by hand): `node windowgen.js '<options JSON>'`
// with NODE_PATH pointing at a node_modules that holds `ws`. Options: url, sessions,
// concurrency, deflate, rampTimeoutMs, maxWrites, name, n, distinct. Session s subscribes
// `name` with params [n] when distinct is 1, else [n, s % distinct].
//
// Protocol: JSON lines (gencommon.js). Events: progress, ramped, then delivered (once a
// second), planned, all (every live session had write w), report, verified, closed.
// Commands:
//   {"cmd":"plan","writes":[{"kind":"added"|"removed","id":...}, ...]}: write w is the
//      `added` (or `removed`) of that book id in bookstore.book;
//   {"cmd":"report","commits":[epoch ms per write]}: latencies, as loadgen.js reports;
//   {"cmd":"verify","expected":{"<n>":[ids]}}: does every live session hold exactly the
//      ids of its window (as a set)?
//   {"cmd":"close"}.
// A session's view is kept from its own messages: an `added` of a book it holds, or a
// `removed`/`changed` of one it does not, is a protocol error (counted, reported).
// Must not: decide what a window should hold (the driver asks the database) or outlive
// the driver (it exits when stdin closes).

const {
  commands,
  deliveries,
  emit,
  failure,
  fleet,
  sameIds,
  subscriber,
} = require('./gencommon.js');

const opts = JSON.parse(process.argv[2]);
const N = opts.sessions;
const COLLECTION = 'bookstore.book';

const f = fleet(opts);
const log = deliveries(f, Math.max(1, opts.maxWrites));
const plan = new Map(); // book id -> {w, kind}
let badAdded = 0;
let badRemoved = 0;
let badChanged = 0;

function params(s) {
  return opts.distinct > 1 ? [opts.n, s % opts.distinct] : [opts.n];
}

function onPlanned(s, id, kind, t) {
  const p = plan.get(id);
  if (p === undefined || p.kind !== kind) return;
  log.record(p.w, s, t);
}

const open = subscriber(f, log, {
  sub: (s) => JSON.stringify({ msg: 'sub', id: 'w', name: opts.name, params: params(s) }),
  subId: 'w',
  kind: failure,
  fields: () => ({ docs: new Set() }),
  onMessage: (s, session, msg, t) => {
    if (msg.collection !== COLLECTION) return;
    switch (msg.msg) {
      case 'added':
        if (session.docs.has(msg.id)) badAdded++;
        else session.docs.add(msg.id);
        onPlanned(s, msg.id, 'added', t);
        break;
      case 'removed':
        if (!session.docs.delete(msg.id)) badRemoved++;
        onPlanned(s, msg.id, 'removed', t);
        break;
      case 'changed':
        if (!session.docs.has(msg.id)) badChanged++;
        break;
      default:
        break;
    }
  },
});

function verify(expected) {
  const sets = {};
  let checked = 0;
  let mismatched = 0;
  const examples = [];
  for (let s = 0; s < N; s++) {
    const session = f.sessions[s];
    if (!session || !session.ready || session.closedCounted) continue;
    const key = String(opts.n);
    if (!(key in sets)) sets[key] = new Set(expected[key] || []);
    const want = sets[key];
    checked++;
    if (!sameIds(session.docs, want)) {
      mismatched++;
      if (examples.length < 3) {
        examples.push({
          session: s,
          params: params(s),
          missing: [...want].filter((id) => !session.docs.has(id)).slice(0, 5),
          extra: [...session.docs].filter((id) => !want.has(id)).slice(0, 5),
          size: session.docs.size,
        });
      }
    }
  }
  emit({ event: 'verified', checked, mismatched, examples });
}

commands(
  {
    plan: (cmd) => {
      plan.clear();
      (cmd.writes || []).forEach((write, w) => plan.set(write.id, { w, kind: write.kind }));
      emit({ event: 'planned', writes: plan.size });
    },
    report: (cmd) => log.report(cmd.commits || [], { badAdded, badRemoved, badChanged }, {}),
    verify: (cmd) => verify(cmd.expected || {}),
    close: () => f.close(),
  },
  () => f.close(), // the driver went away: never outlive it
);

f.ramp(open, () => log.watch());
