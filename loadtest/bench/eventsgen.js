'use strict';
// The events benchmark's load generator: N DDP sessions, each subscribed to one book's
// chat stream (`chat.byBook [book]`) and, for the row comparison, to `books.all`;
// records when each session receives each planned event and each planned rename, checks
// that a session's events come once and in order, and keeps each session's view of the
// client-side collection `chat` to compare it with the stream's history at the end.
//
// Started by loadtest/bench/events.py (never by hand): `node eventsgen.js '<options JSON>'`
// with NODE_PATH holding `ws`. Options: url, sessions, concurrency, deflate,
// rampTimeoutMs, book, rows (also subscribe books.all), events (E), renames (R),
// eventPrefix, renamePrefix.
//
// Writes are numbered 0..E-1 (event i: the `added` to `chat` whose text is
// `<eventPrefix><i>`) then E..E+R-1 (rename i: the `changed` of the book in
// bookstore.book whose title is `<renamePrefix><i>`).
//
// Protocol: JSON lines (gencommon.js). Events: progress, ramped, then delivered (once a
// second), all (every live session had write w), report, verified, closed. Commands:
//   {"cmd":"report","commits":[epoch ms per write],"first":w}: latencies of writes
//      first..first+len-1 (events: first 0; renames: first E), with the order and view
//      counters;
//   {"cmd":"verify","expected":[ids]}: does every live session's `chat` hold exactly these
//      ids (the stream's history: the last `history` events)?
//   {"cmd":"close"}.
// An `added` of an id a session holds or a `removed` of one it does not is a protocol
// error; an event of index i after one of a higher index is out of order.
// Must not: decide what a view should hold (the driver asks the database) or outlive the
// driver (it exits when stdin closes).

const { commands, deliveries, emit, failure, fleet, sameIds } = require('./gencommon.js');

const opts = JSON.parse(process.argv[2]);
const N = opts.sessions;
const E = opts.events;
const R = opts.rows ? opts.renames : 0;
const EVENTS = 'chat';
const BOOKS = 'bookstore.book';
const CHAT_SUB = JSON.stringify({ msg: 'sub', id: 'c', name: 'chat.byBook', params: [opts.book] });
const BOOKS_SUB = JSON.stringify({ msg: 'sub', id: 'b', name: 'books.all', params: [] });

const f = fleet(opts);
const log = deliveries(f, Math.max(1, E + R));
let outOfOrder = 0;
let badAdded = 0;
let badRemoved = 0;
let foreign = 0;
let maxHeld = 0;

function planned(text, prefix, count) {
  if (typeof text !== 'string' || !text.startsWith(prefix)) return -1;
  const i = Number(text.slice(prefix.length));
  return Number.isInteger(i) && i >= 0 && i < count ? i : -1;
}

function onEvent(s, session, msg, t) {
  if (session.chat.has(msg.id)) badAdded++;
  else session.chat.add(msg.id);
  if (session.chat.size > session.maxHeld) session.maxHeld = session.chat.size;
  const i = planned(msg.fields && msg.fields.text, opts.eventPrefix, E);
  if (i < 0) {
    foreign++;
    return;
  }
  if (i < session.lastEvent) outOfOrder++;
  else session.lastEvent = i;
  log.record(i, s, t);
}

function onRename(s, session, msg, t) {
  const i = planned(msg.fields && msg.fields.title, opts.renamePrefix, R);
  if (i < 0) return; // the row's other changes (none planned) are not the benchmark's
  if (i < session.lastRename) outOfOrder++;
  else session.lastRename = i;
  log.record(E + i, s, t);
}

function open(s, done) {
  const session = {
    ready: false,
    ws: null,
    closedCounted: false,
    waiting: new Set(opts.rows ? ['c', 'b'] : ['c']),
    chat: new Set(),
    maxHeld: 0,
    lastEvent: -1,
    lastRename: -1,
  };
  f.sessions[s] = session;
  f.socket(
    session,
    (msg, t) => {
      switch (msg.msg) {
        case 'connected':
          session.ws.send(CHAT_SUB);
          if (opts.rows) session.ws.send(BOOKS_SUB);
          break;
        case 'ready':
          if (!session.ready && Array.isArray(msg.subs)) {
            for (const id of msg.subs) session.waiting.delete(id);
            if (session.waiting.size === 0) {
              session.ready = true;
              done(true);
            }
          }
          break;
        case 'nosub':
        case 'error':
        case 'failed':
          f.noteError(failure(msg));
          if (!session.ready) {
            done(false);
            session.ws.terminate();
          }
          break;
        case 'added':
          if (msg.collection === EVENTS) onEvent(s, session, msg, t);
          break;
        case 'removed':
          if (msg.collection === EVENTS && !session.chat.delete(msg.id)) badRemoved++;
          break;
        case 'changed':
          if (msg.collection === BOOKS && msg.id === opts.book && msg.fields) {
            onRename(s, session, msg, t);
          }
          break;
        default:
          break;
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
}

function live() {
  return f.sessions.filter((session) => session && session.ready && !session.closedCounted);
}

function report(cmd) {
  for (const session of live()) maxHeld = Math.max(maxHeld, session.maxHeld);
  log.report(cmd.commits || [], { outOfOrder, badAdded, badRemoved, foreign, maxHeld }, {},
    cmd.first || 0);
}

function verify(expected) {
  const want = new Set(expected);
  let checked = 0;
  let mismatched = 0;
  const examples = [];
  f.sessions.forEach((session, s) => {
    if (!session || !session.ready || session.closedCounted) return;
    checked++;
    if (!sameIds(session.chat, want)) {
      mismatched++;
      if (examples.length < 3) {
        examples.push({
          session: s,
          held: session.chat.size,
          missing: [...want].filter((id) => !session.chat.has(id)).slice(0, 5),
          extra: [...session.chat].filter((id) => !want.has(id)).slice(0, 5),
        });
      }
    }
  });
  emit({ event: 'verified', checked, mismatched, examples });
}

commands(
  {
    report,
    verify: (cmd) => verify(cmd.expected || []),
    close: () => f.close(),
  },
  () => f.close(), // the driver went away: never outlive it
);

f.ramp(open, () => log.watch());
