'use strict';
// What the load generators (loadgen.js, windowgen.js, stormgen.js, eventsgen.js,
// presencegen.js) share: the JSON-lines protocol with the driver (events on stdout,
// commands on stdin, exit when stdin closes), the clock, quantiles, a fleet of DDP
// sessions (sockets that connect and answer pings, opened a bounded number at a time,
// all dropped at the end), sessions that subscribe once and, for loadgen.js,
// windowgen.js and eventsgen.js, when each session had each planned write.
//
// Must not: know what a session subscribes, what a write is, or what a report adds to
// the figures kept here.

const readline = require('readline');
const { performance } = require('perf_hooks');
const WebSocket = require('ws');

const CONNECT = '{"msg":"connect","version":"1","support":["1","pre2","pre1"]}';

// How a session speaks on its socket (opts.wire): `hello`, sent once the socket opens, and
// decode(ws, text), the message a frame carries in DDP's shape (null: nothing for the
// caller, e.g. a ping, answered here). Throws on a frame that is not JSON.
//   ddp:      DDP itself.
//   socketio: Engine.IO 4 / Socket.IO 5 packets (the `versus` reference peer,
//             loadtest/peers/socketio.js), read as DDP: CONNECT (40) is `connected`, the
//             ack of emit id k (43k[...]) is `ready` of sub k, an event ["changed", row]
//             is `changed` with the row as its fields, CONNECT_ERROR (44) is `error`.
const WIRES = {
  ddp: {
    hello: CONNECT,
    decode(ws, text) {
      const msg = JSON.parse(text);
      if (msg.msg === 'ping') {
        ws.send(msg.id === undefined ? '{"msg":"pong"}' : JSON.stringify({ msg: 'pong', id: msg.id }));
        return null;
      }
      return msg;
    },
  },
  socketio: {
    hello: null,
    decode(ws, text) {
      switch (text[0]) {
        case '0': // Engine.IO open: connect to the default namespace
          ws.send('40');
          return null;
        case '2': // Engine.IO ping
          ws.send('3');
          return null;
        case '4':
          break;
        default:
          return null;
      }
      const kind = text[1];
      if (kind === '0') return { msg: 'connected' };
      if (kind === '4') return { msg: 'error', error: { reason: text.slice(2) } };
      const body = text.indexOf('[');
      if (body < 0) return null;
      const args = JSON.parse(text.slice(body));
      if (kind === '3') return { msg: 'ready', subs: [text.slice(2, body)] };
      if (kind === '2' && args[0] === 'changed') return { msg: 'changed', fields: args[1] };
      return null;
    },
  },
};

function now() {
  return performance.timeOrigin + performance.now();
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function quantile(sorted, q) {
  // Nearest-rank on a sorted array (q in [0, 1]); null when empty (JSON has no NaN).
  if (sorted.length === 0) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i];
}

// Runs handlers[cmd.cmd](cmd) for each command line; onClose when the driver goes away.
function commands(handlers, onClose) {
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    let cmd;
    try {
      cmd = JSON.parse(line);
    } catch (e) {
      return;
    }
    const handler = handlers[cmd.cmd];
    if (handler) handler(cmd);
  });
  rl.on('close', onClose);
}

// Opens sessions 0..n-1, at most `concurrency` in flight: open(s, done) starts session s
// and calls done(ok) once (ready or failed); onRamped(timedOut) once all are done or
// after timeoutMs. Returns the counters ({ready, failed, inflight, next, ramped}); the
// first sessions open on the next tick, so the caller holds them before any callback.
function ramp(n, concurrency, timeoutMs, open, onRamped) {
  const stats = { ready: 0, failed: 0, inflight: 0, next: 0, ramped: false };
  let timer = null;
  function finish(timedOut) {
    if (stats.ramped) return;
    stats.ramped = true;
    clearTimeout(timer);
    onRamped(timedOut);
  }
  function pump() {
    while (!stats.ramped && stats.inflight < concurrency && stats.next < n) {
      const s = stats.next++;
      stats.inflight++;
      let settled = false;
      open(s, (ok) => {
        if (settled) return;
        settled = true;
        stats.inflight--;
        if (ok) stats.ready++;
        else stats.failed++;
        pump();
      });
    }
    if (!stats.ramped && stats.next >= n && stats.inflight === 0) finish(false);
  }
  timer = setTimeout(() => finish(true), timeoutMs);
  setImmediate(pump);
  return stats;
}

function noteError(errors, kind) {
  errors[kind] = (errors[kind] || 0) + 1;
}

// How windowgen.js and stormgen.js count a `nosub`, `error` or `failed`: with its reason.
function failure(msg) {
  return msg.msg + (msg.error && msg.error.reason ? ': ' + msg.error.reason : '');
}

// The sessions of one generator process. opts: url, sessions, concurrency, deflate,
// rampTimeoutMs. The fleet keeps sessions[s] (each with its `ws`), the error counts
// (`errors`), the ramp's counters (`stats`, from ramp) and every timer it started, so
// that close() stops them all.
function fleet(opts) {
  const f = {
    opts,
    n: opts.sessions,
    sessions: new Array(opts.sessions),
    errors: {},
    opened: 0, // sockets opened (handshake done)
    stats: null,
  };
  const host = new URL(opts.url).host;
  const timers = [];

  f.noteError = (kind) => noteError(f.errors, kind);
  f.every = (ms, fn) => {
    const timer = setInterval(fn, ms);
    timers.push(timer);
    return timer;
  };
  f.after = (ms, fn) => {
    const timer = setTimeout(fn, ms);
    timers.push(timer);
    return timer;
  };

  // Opens session.ws: `connect` once open, pings answered (opts.wire says how: WIRES);
  // every other message goes to onMessage(msg, t), t taken on arrival, before parsing. A frame that is not JSON and
  // a socket error are counted; onClose(code) when the socket closes. `url`: another
  // relay than opts.url's (presencegen.js spreads its sessions over several).
  const wire = WIRES[opts.wire || 'ddp'];
  f.socket = (session, onMessage, onClose, url = opts.url) => {
    const ws = new WebSocket(url, {
      perMessageDeflate: opts.deflate,
      handshakeTimeout: 30000,
    });
    session.ws = ws;
    ws.on('open', () => {
      f.opened++;
      if (wire.hello !== null) ws.send(wire.hello);
    });
    ws.on('message', (data) => {
      const t = now();
      let msg;
      try {
        msg = wire.decode(ws, data.toString());
      } catch (e) {
        f.noteError('bad json');
        return;
      }
      if (msg !== null) onMessage(msg, t);
    });
    ws.on('error', (err) => f.noteError(err.code || err.message || 'error'));
    ws.on('close', onClose);
    return ws;
  };

  // Opens every session (open(s, done) as for ramp), says `progress` every 2 s meanwhile,
  // then `ramped` (every session done, or rampTimeoutMs passed); then onRamped().
  f.ramp = (open, onRamped) => {
    const started = now();
    const progress = f.every(2000, () => {
      emit({
        event: 'progress',
        opened: f.opened,
        ready: f.stats.ready,
        failed: f.stats.failed,
        inflight: f.stats.inflight,
        host,
      });
    });
    f.stats = ramp(f.n, opts.concurrency, opts.rampTimeoutMs, open, (timedOut) => {
      clearInterval(progress);
      emit({
        event: 'ramped',
        sessions: f.n,
        ready: f.stats.ready,
        failed: f.n - f.stats.ready,
        timedOut,
        ms: Math.round(now() - started),
        errors: f.errors,
      });
      if (onRamped) onRamped();
    });
  };

  // Stops every timer, drops every socket, says `closed` and exits.
  f.close = () => {
    for (const timer of timers) clearTimeout(timer); // clears intervals too
    for (const session of f.sessions) {
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
  };

  return f;
}

// Returns open(s, done) for fleet.ramp: session s subscribes once connected and is ready
// at that sub's `ready`. spec: sub(s), the `sub` message as text (null: none, the session
// is ready once connected), subId (its id), kind(msg), how a `nosub`, `error` or `failed`
// is counted (one before ready fails the session), fields(), what else a session holds,
// and onMessage(s, session, msg, t), every other message. A ready session whose socket
// closes is lost for every later write (log.lost).
function subscriber(f, log, spec) {
  return (s, done) => {
    const session = { ready: false, ws: null, closedCounted: false };
    if (spec.fields) Object.assign(session, spec.fields());
    f.sessions[s] = session;
    f.socket(
      session,
      (msg, t) => {
        switch (msg.msg) {
          case 'connected': {
            const sub = spec.sub(s);
            if (sub !== null) {
              session.ws.send(sub);
            } else {
              session.ready = true; // --connect-only: a DDP session without subscriptions
              done(true);
            }
            break;
          }
          case 'ready':
            if (!session.ready && Array.isArray(msg.subs) && msg.subs.includes(spec.subId)) {
              session.ready = true;
              done(true);
            }
            break;
          case 'nosub':
          case 'error':
          case 'failed':
            f.noteError(spec.kind(msg));
            if (!session.ready) {
              done(false);
              session.ws.terminate();
            }
            break;
          default:
            spec.onMessage(s, session, msg, t);
        }
      },
      (code) => {
        if (session.ready) {
          log.lost(session, code);
        } else {
          f.noteError('closed before ready ' + code);
          done(false);
        }
      },
    );
  };
}

// When each session had each of `writes` planned writes (receive times, epoch ms): `all`
// once every live session (ready, not closed since) had write w, `delivered` (the total)
// every second once watch() was called; report() turns the times into latencies.
function deliveries(f, writes) {
  const n = f.n;
  const recv = new Float64Array(writes * n); // recv[w * n + s]: epoch ms (0: not yet)
  const counts = new Int32Array(writes);
  const announced = new Uint8Array(writes);
  const log = { delivered: 0, duplicates: 0, closedAfterReady: 0 };

  function checkAll(w) {
    const stats = f.stats;
    if (!announced[w] && stats && stats.ramped && counts[w] >= stats.ready - log.closedAfterReady) {
      announced[w] = 1;
      emit({ event: 'all', w });
    }
  }

  // Session s received write w at t; a second receipt is a duplicate.
  log.record = (w, s, t) => {
    const k = w * n + s;
    if (recv[k] !== 0) {
      log.duplicates++;
      return;
    }
    recv[k] = t;
    counts[w]++;
    log.delivered++;
    checkAll(w);
  };

  // A ready session's socket closed: every later write is lost to it, and no longer
  // awaited from it.
  log.lost = (session, code) => {
    if (session.closedCounted) return;
    session.closedCounted = true;
    log.closedAfterReady++;
    f.noteError('closed ' + code);
    for (let w = 0; w < writes; w++) checkAll(w);
  };

  log.watch = () => {
    f.every(1000, () => emit({ event: 'delivered', total: log.delivered }));
  };

  // The `report` event for commit times `commits` (epoch ms per write): per write the
  // sessions that had it and its latencies, over all deliveries p50 / p99 / max, missing
  // (ready sessions without a write). `middle` goes before the latencies, `tail` last.
  // `first`: commits[i] is write first + i (eventsgen.js reports events and renames apart).
  // `raw`: each write also carries its latencies (`lat`, sorted, 0.01 ms), for a driver
  // that merges the reports of several generators.
  log.report = (commits, middle, tail, first = 0, raw = false) => {
    const perWrite = [];
    const all = new Float64Array(commits.length * n);
    let total = 0;
    let missing = 0;
    for (let i = 0; i < commits.length && first + i < writes; i++) {
      const w = first + i;
      const lat = new Float64Array(n);
      let k = 0;
      for (let s = 0; s < n; s++) {
        const t = recv[w * n + s];
        if (t !== 0) lat[k++] = t - commits[i];
        else if (f.sessions[s] && f.sessions[s].ready) missing++;
      }
      const sorted = lat.subarray(0, k).sort();
      all.set(sorted, total);
      total += k;
      perWrite.push({
        w,
        received: k,
        first: k ? sorted[0] : null,
        p50: quantile(sorted, 0.5),
        p99: quantile(sorted, 0.99),
        last: k ? sorted[k - 1] : null,
        ...(raw ? { lat: Array.from(sorted, (x) => Math.round(x * 100) / 100) } : {}),
      });
    }
    const overall = all.subarray(0, total).sort();
    emit({
      event: 'report',
      sessions: n,
      ready: f.stats.ready,
      closedAfterReady: log.closedAfterReady,
      writes: commits.length,
      deliveries: total,
      missing,
      duplicates: log.duplicates,
      ...middle,
      p50: quantile(overall, 0.5),
      p99: quantile(overall, 0.99),
      max: total ? overall[total - 1] : null,
      perWrite,
      errors: f.errors,
      ...tail,
    });
  };

  return log;
}

// Whether a session's held ids (a Set) are exactly ``want`` (a Set).
function sameIds(held, want) {
  if (held.size !== want.size) return false;
  for (const id of want) {
    if (!held.has(id)) return false;
  }
  return true;
}

module.exports = { now, emit, quantile, commands, failure, fleet, subscriber, deliveries, sameIds };
