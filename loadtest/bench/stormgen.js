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
const { now, emit, commands, ramp, noteError } = require('./gencommon.js');

const opts = JSON.parse(process.argv[2]);
const N = opts.sessions;
const HOST = new URL(opts.url).host;
const sessions = new Array(N);
const errors = {};
let opened = 0;
let rampStats = null;
let progressTimer = null;
let storming = false;
let stormDone = false;
let stormTimer = null;
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
      case 'connected':
        session.connected = true;
        done(true);
        break;
      case 'added':
        session.docs++;
        break;
      case 'ready':
        if (session.sentAt && !session.readyAt && Array.isArray(msg.subs) && msg.subs.includes('s')) {
          session.readyAt = t;
          if (opts.expectDocs !== null && session.docs !== opts.expectDocs) docsWrong++;
          settle(session, true);
        }
        break;
      case 'ping':
        ws.send(msg.id === undefined ? '{"msg":"pong"}' : JSON.stringify({ msg: 'pong', id: msg.id }));
        break;
      case 'nosub':
      case 'error':
      case 'failed':
        noteError(errors, msg.msg + (msg.error && msg.error.reason ? ': ' + msg.error.reason : ''));
        if (!session.connected) done(false);
        else if (storming) settle(session, false);
        break;
      default:
        break;
    }
  });
  ws.on('error', (err) => noteError(errors, err.code || err.message || 'error'));
  ws.on('close', (code) => {
    noteError(errors, (session.connected ? 'closed ' : 'closed before connected ') + code);
    if (!session.connected) done(false);
    else if (storming) settle(session, false);
  });
}

function go() {
  if (storming) return;
  storming = true;
  const text = JSON.stringify({ msg: 'sub', id: 's', name: opts.name, params: opts.params || [] });
  const live = [];
  for (const session of sessions) {
    if (session && session.connected && session.ws.readyState === WebSocket.OPEN) live.push(session);
  }
  connectedAtGo = live.length;
  stormTimer = setTimeout(() => finishStorm(true), opts.stormTimeoutMs);
  progressTimer = setInterval(() => emit({ event: 'storming', ready, failed }), 2000);
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
  clearInterval(progressTimer);
  const readyAt = [];
  const subToReady = [];
  for (const session of sessions) {
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
    errors,
  });
}

function closeAll() {
  clearInterval(progressTimer);
  clearTimeout(stormTimer);
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

commands({ go: () => go(), close: () => closeAll() }, () => closeAll());

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
