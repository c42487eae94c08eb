'use strict';
// The storm benchmark's load generator: N DDP sessions connect (without subscribing),
// then on the driver's `go` every one of them sends the same `sub` at once, as a fleet
// of clients does after a deploy; records when each sub was sent and its `ready` came.
//
// Started by loadtest/bench/storm.py (never by hand), possibly several at once (one
// storm split over several processes): `node stormgen.js '<options JSON>'` with NODE_PATH
// holding `ws`. Options: url, sessions, concurrency, deflate, rampTimeoutMs,
// stormTimeoutMs, name, params, expectDocs (the `added` messages each session must get
// before its `ready`; null: not checked).
//
// Protocol: JSON lines (gencommon.js). Events: progress and ramped (every session
// connected, or failed, or the ramp timed out), storming (every 2 s during the storm),
// storm (every sub answered, or stormTimeoutMs passed), closed. Commands: {"cmd":"go"},
// {"cmd":"close"}. Times are epoch milliseconds, so the driver can merge processes.
// Must not: compute the figures (the driver merges every process's times first) or
// outlive the driver.

const WebSocket = require('ws');
const { commands, emit, failure, fleet, now } = require('./gencommon.js');

const opts = JSON.parse(process.argv[2]);
const N = opts.sessions;
const f = fleet(opts);
let storming = false;
let stormDone = false;
let stormTimer = null;
let stormingTimer = null;
let settled = 0;
let ready = 0;
let failed = 0;
let docsWrong = 0;
let connectedAtGo = 0;
let firstSent = null;
let lastSent = null;

function settle(session, ok) {
  if (session.settled) return;
  session.settled = true;
  settled++;
  if (ok) ready++;
  else failed++;
  if (settled >= connectedAtGo) finishStorm(false);
}

function open(s, done) {
  const session = { connected: false, ws: null, docs: 0, sentAt: 0, readyAt: 0, settled: false };
  f.sessions[s] = session;
  f.socket(
    session,
    (msg, t) => {
      switch (msg.msg) {
        case 'connected':
          session.connected = true;
          done(true);
          break;
        case 'added':
          session.docs++;
          break;
        case 'ready':
          if (session.sentAt && !session.readyAt && Array.isArray(msg.subs) &&
              msg.subs.includes('s')) {
            session.readyAt = t;
            if (opts.expectDocs !== null && session.docs !== opts.expectDocs) docsWrong++;
            settle(session, true);
          }
          break;
        case 'nosub':
        case 'error':
        case 'failed':
          f.noteError(failure(msg));
          if (!session.connected) done(false);
          else if (storming) settle(session, false);
          break;
        default:
          break;
      }
    },
    (code) => {
      f.noteError((session.connected ? 'closed ' : 'closed before connected ') + code);
      if (!session.connected) done(false);
      else if (storming) settle(session, false);
    },
  );
}

function go() {
  if (storming) return;
  storming = true;
  const text = JSON.stringify({ msg: 'sub', id: 's', name: opts.name, params: opts.params || [] });
  const live = [];
  for (const session of f.sessions) {
    if (session && session.connected && session.ws.readyState === WebSocket.OPEN) live.push(session);
  }
  connectedAtGo = live.length;
  stormTimer = f.after(opts.stormTimeoutMs, () => finishStorm(true));
  stormingTimer = f.every(2000, () => emit({ event: 'storming', ready, failed }));
  for (const session of live) {
    session.sentAt = now();
    session.ws.send(text);
  }
  if (live.length) {
    firstSent = live[0].sentAt;
    lastSent = live[live.length - 1].sentAt;
  }
  if (connectedAtGo === 0) finishStorm(false);
}

function finishStorm(timedOut) {
  if (stormDone) return;
  stormDone = true;
  clearTimeout(stormTimer);
  clearInterval(stormingTimer);
  const readyAt = [];
  const subToReady = [];
  for (const session of f.sessions) {
    if (session && session.readyAt) {
      readyAt.push(Math.round(session.readyAt * 100) / 100);
      subToReady.push(Math.round((session.readyAt - session.sentAt) * 100) / 100);
    }
  }
  emit({
    event: 'storm',
    sessions: N,
    connected: connectedAtGo,
    ready,
    failed: connectedAtGo - ready,
    timedOut,
    firstSent,
    lastSent,
    readyAt,
    subToReady,
    docsWrong,
    errors: f.errors,
  });
}

commands({ go: () => go(), close: () => f.close() }, () => f.close());

f.ramp(open);
