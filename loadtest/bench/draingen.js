'use strict';
// The drain benchmark's load generator: N DDP sessions on one relay (A), each subscribed
// to books.all; when A drains and closes them, each reconnects to another relay, round
// robin (an ALB without stickiness), and asks for its session back as Meteor 3.5 does.
//
// Started by loadtest/bench/drain.py (never by hand): `node draingen.js '<options JSON>'`
// with NODE_PATH holding `ws`. Options: urls (urls[0] is A, the others take the
// reconnects in turn), sessions, concurrency, deflate, rampTimeoutMs, prefix (of the
// writes' titles), maxWrites, resend (re-send `sub` behind `connect`, as Meteor does),
// maxAttempts (reconnects of one session before it counts as failed), retryMs,
// connectTimeoutMs (a reconnect without `connected` by then is dropped and retried),
// reconnectSpreadMs (each closed session waits a random delay below it before its first
// reconnect; 0, the default: at once, as Meteor's client does).
//
// Each session counts what it receives as Meteor 3.5's client does (every message but
// ping and pong, `connected` included; a new session id starts again at 1) and keeps its
// DDP session id. Once armed, a closed socket (any code: the close code and reason are
// counted) is reconnected at once to the next relay of urls[1..]: `connect` with
// `session` and `receivedCount`, then (resend) the same `sub`, both before `connected`.
// `connected` with the same id: resumed; with another id: NOT resumed (the session
// starts afresh: its count and its view are reset). A socket that fails, closes or
// gets no `connected` within connectTimeoutMs is retried on the next relay after
// retryMs, up to maxAttempts.
//
// Writes: a `changed` of bookstore.book whose title is `<prefix><w>` is write w. Per
// session and write: how often it came (once is exact); per session and book: the last
// write it had (a write of a book older than one already held is out of order). The view
// of each session (the titles of its bookstore.book documents) is kept from added /
// changed / removed, to compare with the database's.
//
// Protocol: JSON lines (gencommon.js). Events: progress, ramped, armed, status, views,
// report, closed. Commands:
//   {"cmd":"arm"}: from now on a closed socket is the drain's and is reconnected;
//   {"cmd":"status"}: counts so far (delivered writes, closed, resumed, not resumed...);
//   {"cmd":"views","titles":[...]}: how many live sessions hold exactly these titles;
//   {"cmd":"report","writes":W,"titles":[...]}: the figures over writes 0..W-1;
//   {"cmd":"close"}.
// Times are epoch milliseconds (the driver compares them with its SIGTERM).
// Must not: decide what the figures mean (the driver does) or outlive the driver.

const WebSocket = require('ws');
const { commands, emit, fleet, now, quantile } = require('./gencommon.js');

const opts = JSON.parse(process.argv[2]);
const N = opts.sessions;
const URLS = opts.urls;
const TARGETS = URLS.length - 1;
const W = Math.max(1, opts.maxWrites);
const PREFIX = opts.prefix;
const COLLECTION = 'bookstore.book';
const SUB_ID = 'b';
const SUB = JSON.stringify({ msg: 'sub', id: SUB_ID, name: 'books.all', params: [] });

const f = fleet({ ...opts, url: URLS[0] });
const recv = new Uint8Array(W * N); // recv[w * N + s]: how often session s had write w
const writeDoc = new Array(W).fill(null); // the book each write renamed (learned on receipt)
let armed = false;
let rr = 0; // the next reconnect's relay, round robin over urls[1..]
let delivered = 0;
let duplicates = 0;
let outOfOrder = 0;
let foreign = 0;
let lostBeforeArm = 0;
const closeCodes = {};
const closeReasons = {};
let firstClose = null;
let lastClose = null;
let firstReconnect = null;

function noteCount(table, key) {
  table[key] = (table[key] || 0) + 1;
}

// A session's view and its writes (one place for added / changed / removed).
function onData(session, msg) {
  if (msg.collection !== COLLECTION) return;
  if (msg.msg === 'removed') {
    session.titles.delete(msg.id);
    return;
  }
  const title = msg.fields && typeof msg.fields.title === 'string' ? msg.fields.title : null;
  if (title === null) return;
  session.titles.set(msg.id, title);
  if (msg.msg !== 'changed' || !title.startsWith(PREFIX)) return;
  const w = Number(title.slice(PREFIX.length));
  if (!Number.isInteger(w) || w < 0 || w >= W) {
    foreign++;
    return;
  }
  if (writeDoc[w] === null) writeDoc[w] = msg.id;
  const last = session.lastWrite.get(msg.id);
  if (last !== undefined && last > w) outOfOrder++;
  else session.lastWrite.set(msg.id, w);
  const k = w * N + session.s;
  if (recv[k] > 0) duplicates++;
  else delivered++;
  if (recv[k] < 255) recv[k]++;
}

function onMessage(session, msg, t, done) {
  if (msg.msg === 'pong') return; // not counted (Meteor 3.5's receivedCount)
  session.received++;
  switch (msg.msg) {
    case 'connected':
      if (session.state === 'opening') {
        session.id = msg.session;
        session.state = 'subscribing';
        session.ws.send(SUB);
      } else if (session.state === 'reconnecting') {
        session.connectedAt = t;
        session.relay = session.target;
        if (msg.session === session.id) {
          session.state = 'resumed';
        } else {
          // A new session: Meteor resets its count (this `connected` is 1) and its stores.
          session.state = 'new';
          session.id = msg.session;
          session.received = 1;
          session.titles.clear();
          session.lastWrite.clear();
          if (!opts.resend) session.ws.send(SUB);
        }
      }
      break;
    case 'ready':
      if (session.state === 'subscribing' && Array.isArray(msg.subs) && msg.subs.includes(SUB_ID)) {
        session.state = 'live';
        done(true);
      }
      break;
    case 'nosub':
    case 'error':
      f.noteError(msg.msg + (msg.error && msg.error.reason ? ': ' + msg.error.reason : ''));
      if (session.state === 'subscribing') {
        session.state = 'failed';
        done(false);
        session.ws.terminate();
      }
      break;
    case 'added':
    case 'changed':
    case 'removed':
      onData(session, msg);
      break;
    default:
      break;
  }
}

// The relay a reconnect goes to: the next of urls[1..] (urls[0] when it is the only one).
function nextRelay() {
  if (TARGETS === 0) return 0;
  const r = 1 + (rr % TARGETS);
  rr++;
  return r;
}

// A socket of our own for a reconnect: gencommon's sends a `connect` without a session.
function dial(session, url) {
  const ws = new WebSocket(url, { perMessageDeflate: opts.deflate, handshakeTimeout: 30000 });
  session.ws = ws;
  ws.on('open', () => {
    session.connectAt = now();
    ws.send(
      JSON.stringify({
        msg: 'connect',
        session: session.id,
        receivedCount: session.received,
        version: '1',
        support: ['1', 'pre2', 'pre1'],
      }),
    );
    if (opts.resend) ws.send(SUB);
  });
  ws.on('message', (data) => {
    const t = now();
    let msg;
    try {
      msg = JSON.parse(data.toString());
    } catch (e) {
      f.noteError('bad json');
      return;
    }
    if (msg.msg === 'ping') {
      ws.send(msg.id === undefined ? '{"msg":"pong"}' : JSON.stringify({ msg: 'pong', id: msg.id }));
      return;
    }
    onMessage(session, msg, t, () => {});
  });
  ws.on('error', (err) => f.noteError('reconnect: ' + (err.code || err.message || 'error')));
  ws.on('close', (code) => onReconnectClose(session, ws, code));
  f.after(opts.connectTimeoutMs, () => {
    if (session.ws === ws && session.state === 'reconnecting') {
      f.noteError('no connected in time');
      ws.terminate(); // closes: retried as any reconnect that failed
    }
  });
}

function reconnect(session) {
  session.attempts++;
  session.target = nextRelay();
  const t = now();
  if (session.reconnectAt === null) session.reconnectAt = t;
  if (firstReconnect === null || t < firstReconnect) firstReconnect = t;
  dial(session, URLS[session.target]);
}

function onReconnectClose(session, ws, code) {
  if (session.ws !== ws) return;
  if (session.state === 'reconnecting') {
    f.noteError('closed before connected ' + code);
    if (session.attempts >= opts.maxAttempts) {
      session.state = 'failed';
      return;
    }
    session.retries++;
    f.after(opts.retryMs, () => reconnect(session));
    return;
  }
  if (session.state === 'resumed' || session.state === 'new') {
    f.noteError('closed after reconnect ' + code);
    session.state = 'lost';
  }
}

// The first socket (on A) closed.
function onFirstClose(session, code, reason, done) {
  if (session.state === 'opening' || session.state === 'subscribing') {
    f.noteError('closed before ready ' + code);
    session.state = 'failed';
    done(false);
    return;
  }
  if (session.state !== 'live') return;
  const t = now();
  if (!armed) {
    f.noteError('closed before the drain ' + code);
    session.state = 'lost';
    lostBeforeArm++;
    return;
  }
  session.closedAt = t;
  session.closeCode = code;
  noteCount(closeCodes, String(code));
  noteCount(closeReasons, reason ? reason.toString() : '');
  if (firstClose === null || t < firstClose) firstClose = t;
  if (lastClose === null || t > lastClose) lastClose = t;
  session.state = 'reconnecting';
  const spread = opts.reconnectSpreadMs || 0;
  if (spread > 0) f.after(Math.random() * spread, () => reconnect(session));
  else reconnect(session);
}

function open(s, done) {
  const session = {
    s,
    ws: null,
    id: null,
    state: 'opening',
    received: 0,
    relay: 0,
    target: 0,
    titles: new Map(),
    lastWrite: new Map(),
    closedAt: null,
    closeCode: null,
    reconnectAt: null,
    connectAt: null,
    connectedAt: null,
    attempts: 0,
    retries: 0,
  };
  f.sessions[s] = session;
  f.socket(
    session,
    (msg, t) => onMessage(session, msg, t, done),
    (code, reason) => onFirstClose(session, code, reason, done),
  );
}

function counts() {
  const out = { live: 0, reconnecting: 0, resumed: 0, new: 0, failed: 0, lost: 0, closed: 0 };
  for (const session of f.sessions) {
    if (!session) continue;
    if (session.state in out) out[session.state]++;
    if (session.closedAt !== null) out.closed++;
  }
  return out;
}

function status() {
  emit({ event: 'status', delivered, duplicates, ...counts(), firstClose, lastClose, firstReconnect });
}

// Live sessions (resumed, new, or never closed) whose titles are exactly `titles`.
function views(titles) {
  const want = new Set(titles);
  let checked = 0;
  let mismatched = 0;
  const examples = [];
  for (const session of f.sessions) {
    if (!session || !['live', 'resumed', 'new'].includes(session.state)) continue;
    checked++;
    const held = new Set(session.titles.values());
    let same = held.size === want.size && session.titles.size === want.size;
    for (const title of want) {
      if (!same) break;
      if (!held.has(title)) same = false;
    }
    if (!same) {
      mismatched++;
      if (examples.length < 3) {
        examples.push({
          session: session.s,
          state: session.state,
          missing: [...want].filter((x) => !held.has(x)).slice(0, 5),
          extra: [...held].filter((x) => !want.has(x)).slice(0, 5),
        });
      }
    }
  }
  return { checked, mismatched, examples };
}

function stats(values) {
  const sorted = Float64Array.from(values).sort();
  return {
    count: sorted.length,
    p50: quantile(sorted, 0.5),
    p90: quantile(sorted, 0.9),
    p99: quantile(sorted, 0.99),
    max: sorted.length ? sorted[sorted.length - 1] : null,
  };
}

function report(writes, titles, docs) {
  const nW = Math.min(writes, W);
  const gap = []; // socket closed on A -> `connected` with the same id
  const handshake = []; // `connect` sent -> `connected` (the last attempt)
  const byRelay = new Array(URLS.length).fill(0);
  let lastResumed = null;
  let missing = 0;
  let merged = 0;
  let exact = 0;
  let retries = 0;
  const receivedPerWrite = new Array(nW).fill(0);
  for (const session of f.sessions) {
    if (!session) continue;
    retries += session.retries;
    if (session.state !== 'resumed') continue;
    byRelay[session.relay]++;
    gap.push(session.connectedAt - session.closedAt);
    if (session.connectAt !== null) handshake.push(session.connectedAt - session.connectAt);
    if (lastResumed === null || session.connectedAt > lastResumed) lastResumed = session.connectedAt;
    let sessionExact = true;
    for (let w = 0; w < nW; w++) {
      const c = recv[w * N + session.s];
      if (c > 0) receivedPerWrite[w]++;
      if (c === 1) continue;
      sessionExact = false;
      if (c > 1) continue; // counted as duplicates on receipt
      // Not received: merged when the session has a later write of the same book (a
      // resume re-runs the publication and sends the book's latest title once), else lost.
      const doc = writeDoc[w] !== null ? writeDoc[w] : docs[w] === undefined ? null : docs[w];
      const later = doc === null ? undefined : session.lastWrite.get(doc);
      if (later !== undefined && later > w) merged++;
      else missing++;
    }
    if (sessionExact) exact++;
  }
  emit({
    event: 'report',
    sessions: N,
    ready: f.stats ? f.stats.ready : 0,
    relays: URLS.length,
    ...counts(),
    lostBeforeArm,
    closeCodes,
    closeReasons,
    firstClose,
    lastClose,
    firstReconnect,
    lastResumed,
    resumedByRelay: byRelay,
    retries,
    gap: stats(gap),
    handshake: stats(handshake),
    writes: nW,
    delivered,
    missing,
    merged,
    duplicates,
    outOfOrder,
    foreign,
    exactSessions: exact,
    receivedPerWrite,
    views: views(titles),
    errors: f.errors,
  });
}

commands(
  {
    arm: () => {
      armed = true;
      emit({ event: 'armed' });
    },
    status: () => status(),
    views: (cmd) => emit({ event: 'views', ...views(cmd.titles || []) }),
    report: (cmd) => report(cmd.writes || 0, cmd.titles || [], cmd.docs || []),
    close: () => f.close(),
  },
  () => f.close(), // the driver went away: never outlive it
);

f.ramp(open);
