'use strict';
// The presence benchmark's load generator: watchers and churners on several relays.
//
// Started by loadtest/bench/presence.py (never by hand): `node presencegen.js '<options
// JSON>'` with NODE_PATH holding `ws`. Options: urls (one per relay), watchers (per
// relay), pool (churn sessions, spread over the relays), rate (joins per second),
// seconds, holdMs, watchBook (the watchers' book), books (the books churners pick from
// at random), concurrency, deflate, rampTimeoutMs, churnTimeoutMs.
//
// Sessions 0..watchers*relays-1 are watchers: each subscribes `presence.book
// [watchBook]` on relay s % relays and keeps its view of the client-side collection
// `presence` (an `added` of an id it holds or a `removed` of one it does not is a
// protocol error), when it last changed, and, once marked, every `added`/`removed` it
// gets per id with its receive time. The others form the churn pool: connected, not
// subscribed, session j on relay j % relays.
//
// Protocol: JSON lines (gencommon.js). Events: progress, ramped, churning (every 2 s),
// churned, verified, lag, held, closed. Commands:
//   {"cmd":"mark"}: watchers start logging (the driver read the changelog position);
//   {"cmd":"go"}: the churn: `rate` joins a second for `seconds`, each an idle pool
//      session picked at random (so on a random relay) that subscribes `presence.book`,
//      holds it `holdMs` after its `ready`, unsubscribes and is idle again at its
//      `nosub`; no idle session when a join is due: the join is skipped (`starved`).
//      `churned` once every join has left (or churnTimeoutMs passed);
//   {"cmd":"verify","expected":[ids]}: does every live watcher hold exactly these ids?
//      With `members`: how many sessions on open sockets are present on watchBook, and
//      `open`: the open sockets per relay;
//   {"cmd":"lag","changes":{"<id>":[op, commit ms, op, commit ms...]}}: op 1 insert, -1
//      delete, in commit order; per live watcher and id whose log has the same ops, the
//      delay of each receipt (an id whose ops differ, e.g. merged by a relay, is counted
//      as unmatched);
//   {"cmd":"hold","relay":r,"count":k}: k idle pool sessions of relay r join watchBook
//      and stay (the crash case); `held` once all are ready;
//   {"cmd":"close"}.
// Times are epoch milliseconds (the driver compares them with commit timestamps).
// Must not: decide what a view should hold (the driver asks the database) or outlive the
// driver (it exits when stdin closes).

const { commands, emit, failure, fleet, now, quantile } = require('./gencommon.js');

const opts = JSON.parse(process.argv[2]);
const RELAYS = opts.urls.length;
const WATCHERS = opts.watchers * RELAYS;
const N = WATCHERS + opts.pool;
const COLLECTION = 'presence';
const WATCH_SUB = JSON.stringify({ msg: 'sub', id: 'w', name: 'presence.book', params: [opts.watchBook] });

const f = fleet({ ...opts, url: opts.urls[0], sessions: N });
let marked = false;
let badAdded = 0;
let badRemoved = 0;

// The churn.
const idle = []; // pool sessions ready to join (indexes)
let subSeq = 0;
let churning = false;
let scheduling = false;
let churnDone = false;
let churnStart = null;
let scheduleEnd = null;
let started = 0;
let joins = 0;
let leaves = 0;
let failedJoins = 0;
let starved = 0;
let lostChurners = 0;
let active = 0;
let firstSub = null;
let lastUnsub = null;
let lastUnsubWatched = null; // the last unsub of a member of watchBook
let lastNosub = null;
const joinMs = [];
const leaveMs = [];
let churnTimers = [];
// The crash case.
let holding = null; // {count, joined}

function relayOf(s) {
  return s < WATCHERS ? s % RELAYS : (s - WATCHERS) % RELAYS;
}

// The id as the database has it: DDP sends a string that reads as a Mongo ObjectID (24
// hex digits, as member ids were before they began with "p") with a leading '-'
// (Meteor's MongoID.idStringify).
function idParse(id) {
  return typeof id === 'string' && id[0] === '-' ? id.slice(1) : id;
}

function view(session, msg, t) {
  const id = idParse(msg.id);
  if (msg.msg === 'added') {
    if (session.docs.has(id)) badAdded++;
    else session.docs.add(id);
  } else if (msg.msg === 'removed') {
    if (!session.docs.delete(id)) badRemoved++;
  }
  session.lastChange = t;
  if (marked && msg.msg !== 'changed') {
    let log = session.log.get(id);
    if (!log) {
      log = [];
      session.log.set(id, log);
    }
    log.push(msg.msg === 'added' ? 1 : -1, t);
  }
}

function join(session, book) {
  session.sub = 'p' + ++subSeq;
  session.book = book;
  session.state = 'joining';
  session.sentAt = now();
  active++;
  if (firstSub === null) firstSub = session.sentAt;
  session.ws.send(JSON.stringify({ msg: 'sub', id: session.sub, name: 'presence.book', params: [book] }));
}

function joined(session, t) {
  if (session.state !== 'joining') return;
  session.state = 'present';
  if (session.held) {
    holding.joined++;
    if (holding.joined === holding.count) emit({ event: 'held', count: holding.count });
    return;
  }
  joins++;
  joinMs.push(t - session.sentAt);
  setTimeout(() => leave(session), opts.holdMs);
}

function leave(session) {
  if (session.state !== 'present' || session.closed) return;
  session.state = 'leaving';
  session.unsubAt = now();
  lastUnsub = session.unsubAt;
  if (session.book === opts.watchBook) lastUnsubWatched = session.unsubAt;
  session.ws.send(JSON.stringify({ msg: 'unsub', id: session.sub }));
}

function left(session, msg, t) {
  if (session.state === 'leaving') {
    leaves++;
    leaveMs.push(t - session.unsubAt);
    lastNosub = t;
  } else if (session.state === 'joining') {
    failedJoins++;
    f.noteError(failure(msg));
  } else {
    return;
  }
  session.state = 'idle';
  session.sub = null;
  active--;
  idle.push(session.s);
  checkChurned();
}

function dropIdle(s) {
  const k = idle.indexOf(s);
  if (k >= 0) {
    idle[k] = idle[idle.length - 1];
    idle.pop();
  }
}

function onMessage(session, msg, t, done) {
  switch (msg.msg) {
    case 'connected':
      session.connected = true;
      if (session.watcher) {
        session.ws.send(WATCH_SUB);
      } else {
        session.ready = true;
        idle.push(session.s);
        done(true);
      }
      break;
    case 'ready':
      if (!Array.isArray(msg.subs)) break;
      if (session.watcher) {
        if (!session.ready && msg.subs.includes('w')) {
          session.ready = true;
          done(true);
        }
      } else if (session.sub !== null && msg.subs.includes(session.sub)) {
        joined(session, t);
      }
      break;
    case 'nosub':
      if (!session.watcher) {
        if (msg.id === session.sub) left(session, msg, t);
        break;
      }
      f.noteError(failure(msg));
      if (!session.ready) {
        done(false);
        session.ws.terminate();
      } else {
        session.lostSub = true;
      }
      break;
    case 'error':
    case 'failed':
      f.noteError(failure(msg));
      if (!session.ready) {
        done(false);
        session.ws.terminate();
      }
      break;
    case 'added':
    case 'removed':
    case 'changed':
      if (session.watcher && msg.collection === COLLECTION) view(session, msg, t);
      break;
    default:
      break;
  }
}

function onClose(session, code, done) {
  session.closed = true;
  if (!session.ready) {
    f.noteError('closed before ready ' + code);
    done(false);
    return;
  }
  f.noteError('closed ' + code);
  if (session.watcher) return;
  if (session.state === 'joining' || session.state === 'present' || session.state === 'leaving') {
    active--;
    if (!session.held) lostChurners++;
  }
  dropIdle(session.s);
  session.state = 'closed';
  checkChurned();
}

function open(s, done) {
  const watcher = s < WATCHERS;
  const session = {
    s,
    relay: relayOf(s),
    watcher,
    ws: null,
    connected: false,
    ready: false,
    closed: false,
    lostSub: false,
    docs: watcher ? new Set() : null,
    log: watcher ? new Map() : null,
    lastChange: 0,
    sub: null,
    book: null,
    state: 'idle',
    held: false,
    sentAt: 0,
    unsubAt: 0,
  };
  f.sessions[s] = session;
  f.socket(
    session,
    (msg, t) => onMessage(session, msg, t, done),
    (code) => onClose(session, code, done),
    opts.urls[session.relay],
  );
}

function stats(values) {
  const sorted = Float64Array.from(values).sort();
  return {
    p50: quantile(sorted, 0.5),
    p99: quantile(sorted, 0.99),
    max: sorted.length ? sorted[sorted.length - 1] : null,
  };
}

function go() {
  if (churning) return;
  churning = true;
  scheduling = true;
  churnStart = now();
  const total = Math.round(opts.rate * opts.seconds);
  const books = opts.books;
  const tick = setInterval(() => {
    const due = Math.min(total, Math.floor((opts.rate * (now() - churnStart)) / 1000));
    while (started < due) {
      started++;
      if (idle.length === 0) {
        starved++;
        continue;
      }
      const k = Math.floor(Math.random() * idle.length);
      const s = idle[k];
      idle[k] = idle[idle.length - 1];
      idle.pop();
      join(f.sessions[s], books[Math.floor(Math.random() * books.length)]);
    }
    if (started >= total) {
      clearInterval(tick);
      scheduling = false;
      scheduleEnd = now();
      checkChurned();
    }
  }, 5);
  const progress = setInterval(() => {
    emit({ event: 'churning', started, joins, leaves, active, starved, idle: idle.length });
  }, 2000);
  const timeout = setTimeout(() => finishChurn(true), opts.churnTimeoutMs);
  churnTimers = [tick, progress, timeout];
}

function checkChurned() {
  if (churning && !scheduling && active === 0) finishChurn(false);
}

function finishChurn(timedOut) {
  if (churnDone) return;
  churnDone = true;
  for (const timer of churnTimers) clearTimeout(timer); // clears intervals too
  emit({
    event: 'churned',
    timedOut,
    started,
    joins,
    leaves,
    failedJoins,
    starved,
    lostChurners,
    active,
    churnStart,
    scheduleEnd,
    firstSub,
    lastUnsub,
    lastUnsubWatched,
    lastNosub,
    join: stats(joinMs),
    leave: stats(leaveMs),
    errors: f.errors,
  });
}

function liveWatchers() {
  return f.sessions.filter((x) => x && x.watcher && x.ready && !x.closed && !x.lostSub);
}

function verify(expected) {
  const want = new Set(expected);
  let mismatched = 0;
  let lastChange = 0;
  const examples = [];
  const watchers = liveWatchers();
  for (const session of watchers) {
    lastChange = Math.max(lastChange, session.lastChange);
    let same = session.docs.size === want.size;
    for (const id of want) {
      if (!same) break;
      if (!session.docs.has(id)) same = false;
    }
    if (!same) {
      mismatched++;
      if (examples.length < 3) {
        examples.push({
          session: session.s,
          relay: session.relay,
          held: session.docs.size,
          missing: [...want].filter((id) => !session.docs.has(id)).slice(0, 5),
          extra: [...session.docs].filter((id) => !want.has(id)).slice(0, 5),
        });
      }
    }
  }
  let members = 0;
  const open = new Array(RELAYS).fill(0);
  for (const session of f.sessions) {
    if (!session || session.closed || !session.ready) continue;
    open[session.relay]++;
    if (session.watcher ? !session.lostSub : session.state === 'present' && session.book === opts.watchBook) {
      members++;
    }
  }
  emit({
    event: 'verified',
    checked: watchers.length,
    mismatched,
    examples,
    lastChange,
    members,
    open,
    badAdded,
    badRemoved,
  });
}

function lag(changes) {
  const ids = Object.keys(changes);
  const watchers = liveWatchers();
  let size = 0;
  for (const id of ids) size += changes[id].length / 2;
  const lags = new Float64Array(size * watchers.length);
  const reached = new Map(); // id -> per occurrence: the latest receipt's delay
  let matched = 0;
  let unmatched = 0;
  const examples = [];
  for (const session of watchers) {
    for (const id of ids) {
      const want = changes[id];
      const got = session.log.get(id) || [];
      let same = got.length === want.length;
      for (let k = 0; same && k < want.length; k += 2) same = got[k] === want[k];
      if (!same) {
        unmatched += want.length / 2;
        if (examples.length < 5) {
          examples.push({
            watcher: session.s,
            relay: session.relay,
            id,
            want: want.filter((_, k) => k % 2 === 0),
            got: got.filter((_, k) => k % 2 === 0),
          });
        }
        continue;
      }
      let last = reached.get(id);
      if (!last) {
        last = new Array(want.length / 2).fill(-Infinity);
        reached.set(id, last);
      }
      for (let k = 0; k < want.length; k += 2) {
        const delay = got[k + 1] - want[k + 1];
        lags[matched++] = delay;
        if (delay > last[k / 2]) last[k / 2] = delay;
      }
    }
  }
  const all = [];
  for (const values of reached.values()) all.push(...values);
  const delivery = stats(lags.subarray(0, matched));
  const everyone = stats(all);
  emit({
    event: 'lag',
    watchers: watchers.length,
    changes: size,
    matched,
    unmatched,
    delivery,
    reachedAll: everyone,
    examples,
  });
}

function hold(relay, count) {
  holding = { count: 0, joined: 0 };
  const picked = idle.filter((s) => f.sessions[s].relay === relay).slice(0, count);
  holding.count = picked.length;
  for (const s of picked) {
    dropIdle(s);
    const session = f.sessions[s];
    session.held = true;
    join(session, opts.watchBook);
  }
  if (picked.length === 0) emit({ event: 'held', count: 0 });
}

commands(
  {
    mark: () => {
      marked = true;
      for (const session of f.sessions) if (session && session.watcher) session.log.clear();
      emit({ event: 'marked' });
    },
    go: () => go(),
    verify: (cmd) => verify(cmd.expected || []),
    lag: (cmd) => lag(cmd.changes || {}),
    hold: (cmd) => hold(cmd.relay, cmd.count),
    close: () => f.close(),
  },
  () => f.close(), // the driver went away: never outlive it
);

f.ramp(open);
