#!/usr/bin/env node
"use strict";
/**
 * Long-running "watch" mode for ONE npm DDP client: subscribe, keep a strict cache of the
 * live data, and report it when told to stop.
 *
 *   node watch.js <client> <url> <transport> <publication> [<params JSON array>]
 *
 *   client       ddp | simpleddp | ddpjs | meteor (the same adapters as scenario.js)
 *   url          the relay's origin, http://127.0.0.1:PORT
 *   transport    raw | sockjs-raw (npm clients), sockjs (meteor)
 *   publication  e.g. books.all, or books.byAuthorEmail with params '["a@b.org"]'
 *
 * The client connects and subscribes through its own library; every DDP message the
 * library receives is also applied, strictly, to a cache kept here from the wire text
 * (collection -> id -> fields, EJSON left as JSON, so every client kind reports the same
 * shapes). Violations recorded (Meteor's client would throw on the first three):
 *   - `added` for a document already in the cache ("duplicate added");
 *   - `changed` or `removed` for a document not in the cache;
 *   - a title revision ("<label> r<N>", see tests/e2e/writer.py) going backwards for one
 *     document, across removes and re-adds too (a document moving out of and back into a
 *     filtered subscription must not come back older), and likewise `updatedAt`.
 *
 * It runs until stdin closes (or the file WATCH_STOP_FILE appears), then waits until no
 * data message arrived for WATCH_QUIET_MS (default 2000; bounded by WATCH_DRAIN_MS,
 * default 30000), and prints ONE JSON line on stdout:
 *   {"ok": true, "client", "transport", "publication", "params", "session",
 *    "cache": {collection: {id: fields}}, "libraryCache": {collection: {id: {title,
 *    authorId, email, name}}} (what the library itself holds), "violations": [...],
 *    "counts": {msg: n}, "redundant": n, "reconnects": n, "closed": bool, "errors": [...],
 *    "quietMs", "drainMs", "timings": {...}, "tail": [last inbound messages]}
 * or {"ok": false, "stage", "error", ...} (exit 1; 2 on WATCH_TIMEOUT_MS, default 170000).
 * Progress goes to stderr as "watch: ready <session>" once the subscription is ready.
 *
 * With WATCH_STREAM=1 it also prints, before that last line, the cache as it stands after
 * each burst of inbound data messages (at most once per event-loop turn), and once when
 * the subscription is ready: {"stream": n, "atMs", "cache": {collection: {id: fields}},
 * "violations": count}. A test can then compare the client with the database after every
 * commit, not only at the end. Off by default: the report stays the only stdout line.
 */
const {
  AUTHORS,
  BOOKS,
  describe,
  emit: emitCommon,
  errorShape,
  withTimeout,
} = require("./common");

const CLIENTS = {
  ddp: "./clients/ddp",
  simpleddp: "./clients/simpleddp",
  ddpjs: "./clients/ddpjs",
  meteor: "./clients/meteor",
};

const REVISION = /\sr(\d+)$/;
const TAIL = 40;

/**
 * WATCH_STREAM: the cache on stdout after each burst of data messages (see the header).
 * Batched with setImmediate, so a commit's several messages make one line.
 */
class CacheStream {
  constructor(cache) {
    this.cache = cache;
    this.sent = 0;
    this.pending = false;
    this.stopped = false;
  }

  schedule() {
    if (this.pending || this.stopped) return;
    this.pending = true;
    setImmediate(() => this.flush());
  }

  flush() {
    this.pending = false;
    if (this.stopped) return;
    this.sent += 1;
    const line = {
      stream: this.sent,
      atMs: Date.now() - this.cache.t0,
      cache: this.cache.snapshot(),
      violations: this.cache.violations.length,
    };
    process.stdout.write(`${JSON.stringify(line)}\n`);
  }
}

function intEnv(name, fallback) {
  const value = Number.parseInt(process.env[name] || "", 10);
  return Number.isFinite(value) && value > 0 ? value : fallback;
}

function revisionOf(title) {
  if (typeof title !== "string") return null;
  const match = REVISION.exec(title);
  return match ? Number.parseInt(match[1], 10) : null;
}

function dateMs(value) {
  return value && typeof value === "object" && typeof value.$date === "number"
    ? value.$date
    : null;
}

/**
 * The strict cache, fed with the raw text of every inbound DDP message (the adapters'
 * `wire.in_`). `out` records outbound messages only as counts.
 */
class StrictCache {
  constructor() {
    this.t0 = Date.now();
    this.collections = new Map(); // name -> Map(id -> fields)
    this.lastRevision = new Map(); // "coll/id" -> revision (kept after removal)
    this.lastUpdatedAt = new Map(); // "coll/id" -> ms (kept after removal)
    this.violations = [];
    this.counts = {};
    this.redundant = 0;
    this.sessions = [];
    this.errors = [];
    this.tail = [];
    this.outbound = 0;
    this.lastDataAt = Date.now();
    this.firstChangeAt = null;
    this.waiters = [];
    this.stream = null; // a CacheStream with WATCH_STREAM=1
  }

  _coll(name) {
    if (!this.collections.has(name)) this.collections.set(name, new Map());
    return this.collections.get(name);
  }

  _violation(problem, msg) {
    if (this.violations.length < 200) this.violations.push({ problem, msg });
    else this.violationsDropped = (this.violationsDropped || 0) + 1;
  }

  in_(raw) {
    let msg;
    try {
      msg = typeof raw === "string" ? JSON.parse(raw) : raw;
    } catch (err) {
      this._violation("unparsable message", String(raw).slice(0, 300));
      return;
    }
    const kind = msg && msg.msg;
    this.counts[kind] = (this.counts[kind] || 0) + 1;
    if (kind === "ping" || kind === "pong") return;
    this.lastDataAt = Date.now();
    this.tail.push(msg);
    if (this.tail.length > TAIL) this.tail.shift();
    if (kind === "connected") {
      if (this.sessions.length) {
        // A new session: the server starts from an empty mergebox, so must we.
        this.collections.clear();
      }
      this.sessions.push(msg.session);
    } else if (kind === "added" || kind === "changed" || kind === "removed") {
      if (this.firstChangeAt === null && kind !== "added") this.firstChangeAt = Date.now();
      this._apply(kind, msg);
    } else if (kind === "error" || (kind === "nosub" && msg.error)) {
      this.errors.push(msg);
    }
    if (this.stream && (kind === "added" || kind === "changed" || kind === "removed")) {
      this.stream.schedule();
    }
    this.waiters = this.waiters.filter((w) => {
      if (!w.predicate(msg)) return true;
      w.resolve(msg);
      return false;
    });
  }

  out() {
    this.outbound += 1;
  }

  /** Resolve with the first inbound message matching `predicate` from now on. */
  waitFor(predicate, ms, what) {
    return withTimeout(
      new Promise((resolve) => this.waiters.push({ predicate, resolve })),
      ms,
      what,
    );
  }

  _checkOrder(key, fields, strict, msg) {
    if (!fields) return;
    if (Object.prototype.hasOwnProperty.call(fields, "title")) {
      const rev = revisionOf(fields.title);
      const last = this.lastRevision.get(key);
      if (rev !== null) {
        if (last !== undefined && (rev < last || (strict && rev === last))) {
          if (rev < last) this._violation(`title revision went backwards (r${last} -> r${rev})`, msg);
          else this.redundant += 1;
        }
        if (last === undefined || rev > last) this.lastRevision.set(key, rev);
      }
    }
    if (Object.prototype.hasOwnProperty.call(fields, "updatedAt")) {
      const ms = dateMs(fields.updatedAt);
      const last = this.lastUpdatedAt.get(key);
      if (ms !== null) {
        if (last !== undefined && ms < last) {
          this._violation(`updatedAt went backwards (${last} -> ${ms})`, msg);
        }
        if (last === undefined || ms > last) this.lastUpdatedAt.set(key, ms);
      }
    }
  }

  _apply(kind, msg) {
    const coll = this._coll(msg.collection);
    const key = `${msg.collection}/${msg.id}`;
    if (kind === "added") {
      if (coll.has(msg.id)) this._violation("duplicate added", msg);
      this._checkOrder(key, msg.fields, false, msg);
      coll.set(msg.id, { ...(msg.fields || {}) });
    } else if (kind === "changed") {
      const doc = coll.get(msg.id);
      if (!doc) {
        this._violation("changed for a missing document", msg);
        return;
      }
      this._checkOrder(key, msg.fields, true, msg);
      Object.assign(doc, msg.fields || {});
      for (const name of msg.cleared || []) delete doc[name];
    } else if (!coll.delete(msg.id)) {
      this._violation("removed for a missing document", msg);
    }
  }

  snapshot() {
    const out = {};
    for (const [name, docs] of this.collections) {
      out[name] = {};
      for (const [id, fields] of docs) out[name][id] = fields;
    }
    return out;
  }
}

/** What a library's own document store holds: the fields this test compares. */
function libraryView(docsByCollection) {
  const out = {};
  for (const [name, docs] of Object.entries(docsByCollection)) {
    out[name] = {};
    for (const doc of docs) {
      const id = doc._id;
      const view = {};
      for (const key of ["title", "authorId", "email", "name"]) {
        if (doc[key] !== undefined) view[key] = describe(doc[key]);
      }
      if (out[name][id] !== undefined) view.duplicate = true;
      out[name][id] = view;
    }
  }
  return out;
}

/** Adapter clients (ddp, simpleddp, ddp.js): connect, subscribe, and hand back hooks. */
async function startAdapter(Adapter, spec, cache, state) {
  const adapter = new Adapter({ origin: spec.origin, transport: spec.transport, wire: cache });
  state.endpoint = adapter.endpoint;
  const connected = cache.waitFor((m) => m.msg === "connected", 15000, "DDP connected");
  await withTimeout(adapter.connect(), 15000, "connect");
  await connected.catch(() => {});
  state.stage = "subscribe";
  await withTimeout(adapter.subscribe(spec.publication, spec.params), 20000, "subscribe");
  // Socket closes: the npm clients do not reconnect here, the cache is frozen from then on.
  watchClose(adapter, state);
  return {
    library: () => libraryView({ [BOOKS]: adapter.docs(BOOKS), [AUTHORS]: adapter.docs(AUTHORS) }),
    close: () => adapter.close(),
  };
}

function watchClose(adapter, state) {
  const client = adapter.client;
  const mark = () => {
    if (!state.stopping) state.closed = true;
  };
  try {
    if (client && typeof client.on === "function") {
      for (const event of ["socket-close", "disconnected", "close"]) client.on(event, mark);
    }
  } catch (err) {
    // Best effort: not every library is an EventEmitter with these events.
  }
}

/** The real Meteor client under jsdom (clients/meteor.js boot). */
async function startMeteor(meteor, spec, cache, state) {
  const page = meteor.boot(spec.origin, cache);
  const { Meteor, Mongo } = page.window;
  state.pageErrors = page.pageErrors;
  state.console = page.consoleLines;
  const Books = new Mongo.Collection(BOOKS);
  const Authors = new Mongo.Collection(AUTHORS);
  await cache.waitFor((m) => m.msg === "connected", 15000, "DDP connected");
  state.stage = "subscribe";
  const own = (value) => page.window.JSON.parse(JSON.stringify(value));
  await withTimeout(
    new Promise((resolve, reject) => {
      Meteor.subscribe(spec.publication, ...own(spec.params), {
        onReady: resolve,
        onStop: (err) => reject(err || new Error("subscription stopped before ready")),
      });
    }),
    20000,
    "subscribe",
  );
  return {
    library: () =>
      libraryView({ [BOOKS]: Books.find().fetch(), [AUTHORS]: Authors.find().fetch() }),
    status: () => {
      const s = Meteor.status();
      return { status: s.status, connected: s.connected, retryCount: s.retryCount };
    },
    close: () => {
      Meteor.disconnect();
      page.window.close();
    },
  };
}

/** Report and exit (a watcher's report is larger: two seconds to write it). */
function emit(line, code) {
  emitCommon(line, code, 2000);
}

function stopSignal(stopFile) {
  return new Promise((resolve) => {
    process.stdin.on("end", resolve);
    process.stdin.on("close", resolve);
    process.stdin.on("error", resolve);
    process.stdin.resume();
    if (stopFile) {
      const fs = require("fs");
      const timer = setInterval(() => {
        if (fs.existsSync(stopFile)) {
          clearInterval(timer);
          resolve();
        }
      }, 100);
    }
  });
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function main() {
  const [clientName, url, transport, publication, paramsArg] = process.argv.slice(2);
  const modulePath = CLIENTS[clientName];
  if (!modulePath || !url || !transport || !publication) {
    const names = Object.keys(CLIENTS).join("|");
    emit({
      ok: false,
      stage: "usage",
      error: `usage: node watch.js <${names}> <url> <transport> <publication> [<params JSON>]`,
    }, 64);
    return;
  }
  const params = paramsArg ? JSON.parse(paramsArg) : [];
  const quietMs = intEnv("WATCH_QUIET_MS", 2000);
  const drainMs = intEnv("WATCH_DRAIN_MS", 30000);
  const hardMs = intEnv("WATCH_TIMEOUT_MS", 170000);
  const spec = {
    client: clientName,
    origin: new URL(url.replace(/^ws/, "http")).origin,
    transport,
    publication,
    params,
  };
  const cache = new StrictCache();
  if (process.env.WATCH_STREAM === "1") cache.stream = new CacheStream(cache);
  const state = { stage: "require", closed: false, stopping: false };
  const warnings = [];
  process.on("unhandledRejection", (reason) => warnings.push(errorShape(reason)));

  const report = (extra) => ({
    client: clientName,
    transport,
    publication,
    params,
    endpoint: state.endpoint || spec.origin,
    session: cache.sessions[0] || null,
    reconnects: Math.max(0, cache.sessions.length - 1),
    closed: state.closed,
    cache: cache.snapshot(),
    violations: cache.violations,
    violationsDropped: cache.violationsDropped || 0,
    counts: cache.counts,
    redundant: cache.redundant,
    outbound: cache.outbound,
    errors: cache.errors,
    clientWarnings: warnings,
    pageErrors: state.pageErrors || [],
    console: (state.console || []).slice(0, 50),
    timings: state.timings || {},
    tail: cache.tail,
    ...extra,
  });
  const fail = (err, code) =>
    emit(report({ ok: false, stage: state.stage, error: errorShape(err) }), code);
  setTimeout(() => fail(new Error(`hard timeout ${hardMs} ms`), 2), hardMs).unref();
  process.on("uncaughtException", (err) => {
    // A client library throwing from a socket callback: keep watching, but say so.
    warnings.push({ uncaughtException: errorShape(err) });
  });

  let client;
  try {
    const module = require(modulePath);
    state.stage = "connect";
    const started = Date.now();
    const handle =
      typeof module.boot === "function"
        ? await startMeteor(module, spec, cache, state)
        : await startAdapter(module, spec, cache, state);
    client = handle;
    state.timings = { readyMs: Date.now() - started };
    state.stage = "watch";
    if (cache.stream) cache.stream.flush();
    process.stderr.write(`watch: ready ${cache.sessions[0]}\n`);
    await stopSignal(process.env.WATCH_STOP_FILE);
    state.stage = "drain";
    const stopAt = Date.now();
    while (Date.now() - cache.lastDataAt < quietMs && Date.now() - stopAt < drainMs) {
      await sleep(50);
    }
    state.timings.drainMs = Date.now() - stopAt;
    state.timings.quiet = Date.now() - cache.lastDataAt >= quietMs;
    state.timings.lastDataAgoMs = Date.now() - cache.lastDataAt;
    state.timings.sinceFirstChangeMs =
      cache.firstChangeAt === null ? null : cache.lastDataAt - cache.firstChangeAt;
    // Libraries that dispatch through timers (simpleddp, ddp.js) lag the raw socket a bit.
    await sleep(100);
    const library = handle.library();
    const status = handle.status ? handle.status() : undefined;
    state.stopping = true;
    if (cache.stream) cache.stream.stopped = true;
    const line = report({ ok: true, libraryCache: library, meteorStatus: status });
    try {
      await withTimeout(Promise.resolve().then(() => handle.close()), 1000, "close");
    } catch (err) {
      // Closing is best effort: the process exits right after.
    }
    emit(line, 0);
  } catch (err) {
    if (client) {
      try {
        client.close();
      } catch (e) {
        // ignore
      }
    }
    fail(err, 1);
  }
}

main();
