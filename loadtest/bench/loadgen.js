'use strict';
// The benchmark's load generator: N idle DDP sessions on one relay, each subscribed to
// books.all, recording when each session receives each benchmark write.
//
// Started by loadtest/bench/generator.py (never by hand): `node loadgen.js '<options JSON>'`
// with NODE_PATH pointing at a node_modules that holds `ws` (tests/e2e/node/node_modules).
// Options: url, sessions, concurrency, deflate, subscribe, prefix, maxWrites, rampTimeoutMs.
//
// Protocol: JSON lines. stdout carries events to the driver, stdin carries commands.
//   events:   {"event":"progress",...} during the ramp, {"event":"ramped",...} once every
//             session is ready (or failed, or the ramp timed out), then once a second
//             {"event":"delivered","total":n}, {"event":"all","w":i} when every live
//             session has received write i, {"event":"report",...}, {"event":"closed"}.
//   commands: {"cmd":"report","commits":[epoch ms per write]} and {"cmd":"close"}.
//
// A write is recognised by the `changed` message of bookstore.book whose `title` is
// `<prefix><write index>`; the receive time is taken on arrival, before parsing.
// Everything here is bounded: the ramp by rampTimeoutMs, the run by the driver, and the
// process exits when stdin closes (the driver died).

const WebSocket = require('ws');
const readline = require('readline');
const { performance } = require('perf_hooks');

const opts = JSON.parse(process.argv[2]);
const N = opts.sessions;
const W = Math.max(1, opts.maxWrites);
const PREFIX = opts.prefix;
const HOST = new URL(opts.url).host;

// recv[w * N + s]: epoch ms when session s got write w (0 = not yet).
const recv = new Float64Array(W * N);
const counts = new Int32Array(W);
const announced = new Uint8Array(W);
let delivered = 0; // benchmark writes received, all sessions together
let duplicates = 0;
let foreign = 0; // benchmark-looking titles with an index outside [0, W)

let opened = 0; // sockets opened (handshake done)
let ready = 0; // sessions whose books.all is ready
let failed = 0; // sessions that never became ready
let closedAfterReady = 0; // ready sessions that closed later (a loss for every later write)
let inflight = 0;
let next = 0;
let ramped = false;
const errors = {};
const sessions = new Array(N);

function now() {
  return performance.timeOrigin + performance.now();
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function noteError(kind) {
  errors[kind] = (errors[kind] || 0) + 1;
}

function live() {
  return ready - closedAfterReady;
}

function checkAll(w) {
  if (!announced[w] && ramped && counts[w] >= live()) {
    announced[w] = 1;
    emit({ event: 'all', w });
  }
}

function onWrite(s, title, t) {
  const w = Number(title.slice(PREFIX.length));
  if (!Number.isInteger(w) || w < 0 || w >= W) {
    foreign++;
    return;
  }
  const k = w * N + s;
  if (recv[k] !== 0) {
    duplicates++;
    return;
  }
  recv[k] = t;
  counts[w]++;
  delivered++;
  checkAll(w);
}

function finishOne(session, ok) {
  if (session.done) return;
  session.done = true;
  inflight--;
  if (ok) ready++;
  else failed++;
  pump();
}

function open(s) {
  const session = { ready: false, done: false };
  sessions[s] = session;
  inflight++;
  const ws = new WebSocket(opts.url, {
    perMessageDeflate: opts.deflate,
    handshakeTimeout: 30000,
  });
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
      noteError('bad json');
      return;
    }
    switch (msg.msg) {
      case 'changed':
        if (msg.fields && typeof msg.fields.title === 'string' &&
            msg.fields.title.startsWith(PREFIX)) {
          onWrite(s, msg.fields.title, t);
        }
        break;
      case 'ping':
        ws.send(msg.id === undefined ? '{"msg":"pong"}' :
          JSON.stringify({ msg: 'pong', id: msg.id }));
        break;
      case 'connected':
        if (opts.subscribe) {
          ws.send('{"msg":"sub","id":"b","name":"books.all","params":[]}');
        } else {
          session.ready = true; // --connect-only: a DDP session without subscriptions
          finishOne(session, true);
        }
        break;
      case 'ready':
        if (!session.ready && Array.isArray(msg.subs) && msg.subs.includes('b')) {
          session.ready = true;
          finishOne(session, true);
        }
        break;
      case 'nosub':
      case 'error':
      case 'failed':
        noteError(msg.msg);
        if (!session.ready) {
          finishOne(session, false);
          ws.terminate();
        }
        break;
      default:
        break; // added (the initial books and authors), result, updated...
    }
  });
  ws.on('error', (err) => {
    noteError(err.code || err.message || 'error');
  });
  ws.on('close', (code) => {
    if (session.ready) {
      if (!session.closedCounted) {
        session.closedCounted = true;
        closedAfterReady++;
        noteError('closed ' + code);
        for (let w = 0; w < W; w++) checkAll(w);
      }
    } else {
      noteError('closed before ready ' + code);
      finishOne(session, false);
    }
  });
}

function pump() {
  while (!ramped && inflight < opts.concurrency && next < N) {
    open(next++);
  }
  if (!ramped && next >= N && inflight === 0) finishRamp(false);
}

let rampStarted = 0;
let rampTimer = null;
let progressTimer = null;

let deliveredTimer = null;

function finishRamp(timedOut) {
  if (ramped) return;
  ramped = true;
  clearTimeout(rampTimer);
  clearInterval(progressTimer);
  // From now on, the deliveries so far once a second: the driver waits while they grow.
  deliveredTimer = setInterval(() => emit({ event: 'delivered', total: delivered }), 1000);
  emit({
    event: 'ramped',
    sessions: N,
    ready,
    failed: N - ready,
    timedOut,
    ms: Math.round(now() - rampStarted),
    errors,
  });
}

function quantile(sorted, q) {
  // Nearest-rank on a sorted array (q in [0, 1]); NaN when empty.
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i];
}

function report(commits) {
  const perWrite = [];
  const all = new Float64Array(commits.length * N);
  let n = 0;
  let missing = 0;
  for (let w = 0; w < commits.length && w < W; w++) {
    const c = commits[w];
    const lat = new Float64Array(N);
    let k = 0;
    for (let s = 0; s < N; s++) {
      const t = recv[w * N + s];
      if (t !== 0) {
        lat[k++] = t - c;
      } else if (sessions[s] && sessions[s].ready) {
        missing++;
      }
    }
    const sorted = lat.subarray(0, k).sort();
    all.set(sorted, n);
    n += k;
    perWrite.push({
      w,
      received: k,
      first: k ? sorted[0] : null,
      p50: k ? quantile(sorted, 0.5) : null,
      p99: k ? quantile(sorted, 0.99) : null,
      last: k ? sorted[k - 1] : null,
    });
  }
  const overall = all.subarray(0, n).sort();
  emit({
    event: 'report',
    sessions: N,
    ready,
    closedAfterReady,
    writes: commits.length,
    deliveries: n,
    missing,
    duplicates,
    foreign,
    p50: quantile(overall, 0.5),
    p99: quantile(overall, 0.99),
    max: n ? overall[n - 1] : null,
    perWrite,
    errors,
    cpuUser: process.cpuUsage().user / 1000,
    cpuSystem: process.cpuUsage().system / 1000,
    rssBytes: process.memoryUsage().rss,
  });
}

function closeAll() {
  clearTimeout(rampTimer);
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

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    return;
  }
  if (cmd.cmd === 'report') report(cmd.commits || []);
  else if (cmd.cmd === 'close') closeAll();
});
rl.on('close', () => closeAll()); // the driver went away: never outlive it

rampStarted = now();
rampTimer = setTimeout(() => finishRamp(true), opts.rampTimeoutMs);
progressTimer = setInterval(() => {
  emit({ event: 'progress', opened, ready, failed, inflight, host: HOST });
}, 2000);
pump();
