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

const WebSocket = require('ws');
const { now, emit, quantile, commands, ramp, noteError } = require('./gencommon.js');

const opts = JSON.parse(process.argv[2]);
const N = opts.sessions;
const W = Math.max(1, opts.maxWrites);
const COLLECTION = 'bookstore.book';
const HOST = new URL(opts.url).host;

const recv = new Float64Array(W * N); // recv[w * N + s]: epoch ms (0: not yet)
const counts = new Int32Array(W);
const announced = new Uint8Array(W);
const plan = new Map(); // book id -> {w, kind}
const sessions = new Array(N);
const errors = {};
let delivered = 0;
let duplicates = 0; // a planned event seen twice by one session
let badAdded = 0;
let badRemoved = 0;
let badChanged = 0;
let closedAfterReady = 0;
let opened = 0;
let rampStats = null;
let deliveredTimer = null;
let progressTimer = null;

function params(s) {
  return opts.distinct > 1 ? [opts.n, s % opts.distinct] : [opts.n];
}

function live() {
  return rampStats.ready - closedAfterReady;
}

function checkAll(w) {
  if (!announced[w] && rampStats && rampStats.ramped && counts[w] >= live()) {
    announced[w] = 1;
    emit({ event: 'all', w });
  }
}

function onPlanned(s, id, kind, t) {
  const p = plan.get(id);
  if (p === undefined || p.kind !== kind) return;
  const k = p.w * N + s;
  if (recv[k] !== 0) {
    duplicates++;
    return;
  }
  recv[k] = t;
  counts[p.w]++;
  delivered++;
  checkAll(p.w);
}

function open(s, done) {
  const session = { ready: false, docs: new Set(), ws: null, closedCounted: false };
  sessions[s] = session;
  const ws = new WebSocket(opts.url, { perMessageDeflate: opts.deflate, handshakeTimeout: 30000 });
  session.ws = ws;
  ws.on('open', () => {
    opened++;
    ws.send('{"msg":"connect","version":"1","support":["1","pre2","pre1"]}');
  });
  ws.on('message', (data) => {
    const t = now();
    let msg;
    try {
      msg = JSON.parse(data.toString());
    } catch (e) {
      noteError(errors, 'bad json');
      return;
    }
    switch (msg.msg) {
      case 'added':
        if (msg.collection !== COLLECTION) break;
        if (session.docs.has(msg.id)) badAdded++;
        else session.docs.add(msg.id);
        onPlanned(s, msg.id, 'added', t);
        break;
      case 'removed':
        if (msg.collection !== COLLECTION) break;
        if (!session.docs.delete(msg.id)) badRemoved++;
        onPlanned(s, msg.id, 'removed', t);
        break;
      case 'changed':
        if (msg.collection === COLLECTION && !session.docs.has(msg.id)) badChanged++;
        break;
      case 'ping':
        ws.send(msg.id === undefined ? '{"msg":"pong"}' : JSON.stringify({ msg: 'pong', id: msg.id }));
        break;
      case 'connected':
        ws.send(JSON.stringify({ msg: 'sub', id: 'w', name: opts.name, params: params(s) }));
        break;
      case 'ready':
        if (!session.ready && Array.isArray(msg.subs) && msg.subs.includes('w')) {
          session.ready = true;
          done(true);
        }
        break;
      case 'nosub':
      case 'error':
      case 'failed':
        noteError(errors, msg.msg + (msg.error && msg.error.reason ? ': ' + msg.error.reason : ''));
        if (!session.ready) {
          done(false);
          ws.terminate();
        }
        break;
      default:
        break;
    }
  });
  ws.on('error', (err) => noteError(errors, err.code || err.message || 'error'));
  ws.on('close', (code) => {
    if (session.ready) {
      if (!session.closedCounted) {
        session.closedCounted = true;
        closedAfterReady++;
        noteError(errors, 'closed ' + code);
        for (let w = 0; w < W; w++) checkAll(w);
      }
    } else {
      noteError(errors, 'closed before ready ' + code);
      done(false);
    }
  });
}

function report(commits) {
  const perWrite = [];
  const all = new Float64Array(commits.length * N);
  let n = 0;
  let missing = 0;
  for (let w = 0; w < commits.length && w < W; w++) {
    const lat = new Float64Array(N);
    let k = 0;
    for (let s = 0; s < N; s++) {
      const t = recv[w * N + s];
      if (t !== 0) lat[k++] = t - commits[w];
      else if (sessions[s] && sessions[s].ready) missing++;
    }
    const sorted = lat.subarray(0, k).sort();
    all.set(sorted, n);
    n += k;
    perWrite.push({
      w,
      received: k,
      first: k ? sorted[0] : null,
      p50: quantile(sorted, 0.5),
      p99: quantile(sorted, 0.99),
      last: k ? sorted[k - 1] : null,
    });
  }
  const overall = all.subarray(0, n).sort();
  emit({
    event: 'report',
    sessions: N,
    ready: rampStats.ready,
    closedAfterReady,
    writes: commits.length,
    deliveries: n,
    missing,
    duplicates,
    badAdded,
    badRemoved,
    badChanged,
    p50: quantile(overall, 0.5),
    p99: quantile(overall, 0.99),
    max: n ? overall[n - 1] : null,
    perWrite,
    errors,
  });
}

function verify(expected) {
  const sets = {};
  let checked = 0;
  let mismatched = 0;
  const examples = [];
  for (let s = 0; s < N; s++) {
    const session = sessions[s];
    if (!session || !session.ready || session.closedCounted) continue;
    const key = String(opts.n);
    if (!(key in sets)) sets[key] = new Set(expected[key] || []);
    const want = sets[key];
    checked++;
    let same = session.docs.size === want.size;
    if (same) {
      for (const id of want) {
        if (!session.docs.has(id)) {
          same = false;
          break;
        }
      }
    }
    if (!same) {
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

function closeAll() {
  clearInterval(progressTimer);
  clearInterval(deliveredTimer);
  for (const session of sessions) {
    if (session && session.ws) {
      try {
        session.ws.terminate();
      } catch (e) {
        // already gone
      }
    }
  }
  emit({ event: 'closed' });
  setTimeout(() => process.exit(0), 100);
}

commands(
  {
    plan: (cmd) => {
      plan.clear();
      (cmd.writes || []).forEach((write, w) => plan.set(write.id, { w, kind: write.kind }));
      emit({ event: 'planned', writes: plan.size });
    },
    report: (cmd) => report(cmd.commits || []),
    verify: (cmd) => verify(cmd.expected || {}),
    close: () => closeAll(),
  },
  () => closeAll(), // the driver went away: never outlive it
);

const rampStarted = now();
progressTimer = setInterval(() => {
  emit({
    event: 'progress',
    opened,
    ready: rampStats.ready,
    failed: rampStats.failed,
    inflight: rampStats.inflight,
    host: HOST,
  });
}, 2000);
rampStats = ramp(N, opts.concurrency, opts.rampTimeoutMs, open, (timedOut) => {
  clearInterval(progressTimer);
  deliveredTimer = setInterval(() => emit({ event: 'delivered', total: delivered }), 1000);
  emit({
    event: 'ramped',
    sessions: N,
    ready: rampStats.ready,
    failed: N - rampStats.ready,
    timedOut,
    ms: Math.round(now() - rampStarted),
    errors,
  });
});
