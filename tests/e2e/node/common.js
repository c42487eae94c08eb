"use strict";
/**
 * Shared helpers for the node DDP client scenarios (see scenario.js).
 *
 * Nothing here knows a particular client library: timeouts, the wire log every adapter
 * feeds with the DDP messages its client really sent and received, and the conversion of
 * client-side values (Dates, Meteor.Error, ...) into plain JSON for the Python side.
 */

/** The example app's collections (example/bookstore/ddp.py). */
const AUTHORS = "bookstore.author";
const BOOKS = "bookstore.book";
/** Names nothing registers: the server must answer 404 (Meteor's exact reasons). */
const UNKNOWN_METHOD = "e2e.noSuchMethod";
const UNKNOWN_PUBLICATION = "e2e.noSuchPublication";

/** A failure of the scenario itself (timeout, unexpected answer), not a client's error. */
class ScenarioError extends Error {}

/** A promise that rejects with ScenarioError(`what`) after `ms` unless `promise` settles first. */
function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new ScenarioError(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function isDate(value) {
  // Objects from the jsdom window (the Meteor client) come from another realm: no instanceof.
  return Object.prototype.toString.call(value) === "[object Date]";
}

/**
 * A client-side value as JSON the Python side can check: a Date becomes
 * {"$js": "Date", "iso": ...} so that "the client decoded EJSON" is visible, everything
 * else keeps its JSON shape (an EJSON object the client did NOT decode stays {"$date": ...}).
 */
function describe(value) {
  if (isDate(value)) {
    return { $js: "Date", iso: Number.isNaN(value.getTime()) ? null : value.toISOString() };
  }
  if (Array.isArray(value)) return value.map(describe);
  if (value !== null && typeof value === "object") {
    const out = {};
    for (const key of Object.keys(value).sort()) out[key] = describe(value[key]);
    return out;
  }
  if (value === undefined) return { $js: "undefined" };
  return value;
}

/** A DDP error as a client surfaced it (raw wire object, Meteor.Error, Error) as plain JSON. */
function errorShape(err) {
  if (err === null || err === undefined) return null;
  if (typeof err !== "object") return { thrown: String(err) };
  const out = {};
  for (const key of ["error", "reason", "details", "message", "errorType", "isClientSafe"]) {
    if (err[key] !== undefined) out[key] = describe(err[key]);
  }
  if (err.error === undefined) {
    out.thrown = String(err.stack || err).split("\n").slice(0, 4).join("\n");
  }
  return out;
}

/**
 * Every DDP message the client sent (out) and received (in), parsed from the wire text
 * without EJSON decoding, plus waiters on the inbound stream. Adapters call `in_`/`out`
 * with the raw frame text of one DDP message.
 */
class Wire {
  constructor(trace) {
    this.messages = []; // {dir: "in"|"out", t, msg}
    this.waiters = [];
    this.trace = trace;
    this.t0 = Date.now();
  }

  _record(dir, raw) {
    let msg;
    try {
      msg = typeof raw === "string" ? JSON.parse(raw) : raw;
    } catch (e) {
      msg = { unparsable: String(raw) };
    }
    const entry = { dir, t: Date.now() - this.t0, msg };
    this.messages.push(entry);
    if (this.trace) process.stderr.write(`${dir === "in" ? "<<" : ">>"} ${JSON.stringify(msg)}\n`);
    if (dir === "in") {
      this.waiters = this.waiters.filter((w) => {
        if (!w.predicate(msg)) return true;
        w.resolve(msg);
        return false;
      });
    }
  }

  in_(raw) {
    this._record("in", raw);
  }

  out(raw) {
    this._record("out", raw);
  }

  inbound() {
    return this.messages.filter((m) => m.dir === "in").map((m) => m.msg);
  }

  outbound() {
    return this.messages.filter((m) => m.dir === "out").map((m) => m.msg);
  }

  /** The first inbound message (already received or still to come) matching `predicate`. */
  waitFor(predicate, ms, what) {
    const seen = this.inbound().find(predicate);
    if (seen) return Promise.resolve(seen);
    return withTimeout(
      new Promise((resolve) => this.waiters.push({ predicate, resolve })),
      ms,
      what,
    );
  }

  /**
   * waitFor, then let the client process what it received up to that message: clients
   * that dispatch through setTimeout (simpleddp, ddp.js) lag behind the raw socket.
   */
  async waitForApplied(predicate, ms, what) {
    const msg = await this.waitFor(predicate, ms, what);
    await sleep(50);
    return msg;
  }

  /** The `nosub` for sub `id` (after an unsub: every `removed` before it is applied). */
  waitForNosub(id, ms) {
    return this.waitForApplied((m) => m.msg === "nosub" && m.id === id, ms, `nosub for ${id}`);
  }

  /** The last outbound message matching `predicate`, or undefined. */
  lastOut(predicate) {
    return this.outbound().filter(predicate).pop();
  }

  /**
   * Per method id the client sent: whether it got exactly one `result` and exactly one
   * `updated` (DDP: both are owed for every method, `updated` only once).
   */
  methodSummary() {
    const sent = this.outbound().filter((m) => m.msg === "method");
    const inbound = this.inbound();
    return sent.map((m) => ({
      id: m.id,
      method: m.method,
      randomSeed: m.randomSeed === undefined ? null : m.randomSeed,
      results: inbound.filter((x) => x.msg === "result" && x.id === m.id).length,
      updated: inbound.filter((x) => x.msg === "updated" && (x.methods || []).includes(m.id))
        .length,
    }));
  }

  /** Inbound messages whose `msg` this harness does not expect from a DDP server. */
  unexpected() {
    const known = new Set([
      "connected", "failed", "ping", "pong", "added", "changed", "removed", "ready", "nosub",
      "result", "updated", "error", "addedBefore", "movedBefore",
    ]);
    return this.inbound().filter((m) => !(m && (known.has(m.msg) || m.server_id !== undefined)));
  }

  /**
   * Data messages that break the per-document order DDP clients rely on (added once, then
   * changed*, then removed; Meteor's client throws otherwise): the mergebox seen from here.
   */
  dataProblems() {
    const present = new Set();
    const problems = [];
    for (const m of this.inbound()) {
      const key = `${m.collection}/${m.id}`;
      if (m.msg === "added") {
        if (present.has(key)) problems.push({ problem: "added twice", msg: m });
        present.add(key);
      } else if (m.msg === "changed" && !present.has(key)) {
        problems.push({ problem: "changed before added", msg: m });
      } else if (m.msg === "removed") {
        if (!present.has(key)) problems.push({ problem: "removed before added", msg: m });
        present.delete(key);
      }
    }
    return problems;
  }

  tail(n) {
    return this.messages.slice(-n);
  }
}

/** The WebSocket URL a raw-DDP client opens for `transport` on the server `origin`. */
function rawEndpoint(origin, transport) {
  const base = origin.replace(/^http/, "ws");
  if (transport === "raw") return `${base}/websocket`;
  if (transport === "sockjs-raw") return `${base}/sockjs/websocket`;
  throw new ScenarioError(`transport ${JSON.stringify(transport)} is not raw or sockjs-raw`);
}

/**
 * A subclass of the WebSocket class `Base` (ws / isomorphic-ws / jsdom) that copies every
 * text frame sent and received into `wire`, for clients that take a SocketConstructor.
 * The listener is added in the constructor, so it runs before the client's own onmessage.
 */
function tracedSocketConstructor(Base, wire) {
  return class TracedWebSocket extends Base {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (event) => wire.in_(String(event.data)));
    }

    send(data, ...rest) {
      wire.out(String(data));
      return super.send(data, ...rest);
    }
  };
}

/** Documents sorted by _id, described for JSON. */
function summarize(docs) {
  return describe([...docs].sort((a, b) => (a._id < b._id ? -1 : a._id > b._id ? 1 : 0)));
}

/** The seeded author (lowest email) that has at least one book: deterministic per database. */
function pickAuthor(authors, books) {
  const withBooks = authors
    .filter((a) => typeof a.email === "string" && books.some((b) => b.authorId === a._id))
    .sort((a, b) => (a.email < b.email ? -1 : a.email > b.email ? 1 : 0));
  if (withBooks.length === 0) {
    throw new ScenarioError(`no author with an email and a book among ${authors.length} authors`);
  }
  return withBooks[0];
}

/**
 * One scenario run: the report being built, the wire log, named steps with their own
 * timeouts (a failure says which step hung), and best-effort cleanups (created books are
 * removed even when a later step fails, so the database is left as it was found).
 */
class Scenario {
  constructor({ client, origin, transport, seed, stepMs, trace }) {
    this.wire = new Wire(trace);
    this.seed = seed;
    this.stepMs = stepMs;
    this.stage = "init";
    this.cleanups = [];
    this.closers = [];
    this.report = { client, transport, origin, seed };
    this.tag = `e2e ${client}/${transport} ${seed}`;
  }

  step(name, fn, ms = this.stepMs) {
    this.stage = name;
    return withTimeout(Promise.resolve().then(fn), ms, name);
  }

  /** The error `promise` rejects with (as JSON); a ScenarioError if it resolves instead. */
  async expectError(promise) {
    let result;
    try {
      result = await promise;
    } catch (err) {
      if (err instanceof ScenarioError) throw err;
      return errorShape(err);
    }
    throw new ScenarioError(`expected an error, got ${JSON.stringify(describe(result))}`);
  }

  /** The parameters of a book this run creates, by the given author. */
  newBook(author, extra = "") {
    return {
      title: `${this.tag}${extra}`,
      authorId: author._id,
      price: "12.50",
      tags: ["e2e", this.report.client],
    };
  }

  /** Register `fn` to undo a write; returns a function that marks it done. */
  onCleanup(name, fn) {
    const entry = { name, fn, done: false };
    this.cleanups.push(entry);
    return () => {
      entry.done = true;
    };
  }

  onClose(fn) {
    this.closers.push(fn);
  }

  async close() {
    const late = [];
    for (const entry of this.cleanups.filter((c) => !c.done).reverse()) {
      try {
        await withTimeout(Promise.resolve().then(entry.fn), 3000, `cleanup ${entry.name}`);
        late.push({ name: entry.name, cleaned: true });
      } catch (err) {
        late.push({ name: entry.name, cleaned: false, error: errorShape(err) });
      }
    }
    if (late.length) this.report.lateCleanups = late;
    for (const fn of this.closers) {
      try {
        await withTimeout(Promise.resolve().then(fn), 1000, "close");
      } catch (err) {
        // Closing is best effort: the process exits right after.
      }
    }
  }

  /**
   * Wire-level checks common to all clients, added to the report: methods owed
   * result/updated, unexpected inbound messages, top-level `error` messages.
   */
  async finish() {
    const owed = () => this.wire.methodSummary().filter((m) => m.results < 1 || m.updated < 1);
    // `updated` may trail the `result` a client waited for: give it a moment.
    const deadline = Date.now() + 1000;
    while (owed().length && Date.now() < deadline) await sleep(20);
    this.report.methods = this.wire.methodSummary();
    this.report.errors = this.wire.inbound().filter((m) => m.msg === "error");
    this.report.unexpected = this.wire.unexpected();
    this.report.dataProblems = this.wire.dataProblems();
    this.report.messages = {
      in: this.wire.inbound().length,
      out: this.wire.outbound().length,
    };
  }
}

let emitted = false;

/**
 * Print the one JSON line a run reports and exit with `code`; later calls (a timer racing
 * the main flow) do nothing. Should the write callback never run, leave after `exitAfterMs`.
 */
function emit(line, code, exitAfterMs = 500) {
  if (emitted) return;
  emitted = true;
  process.stdout.write(`${JSON.stringify(line)}\n`, () => process.exit(code));
  setTimeout(() => process.exit(code), exitAfterMs).unref();
}

/**
 * What every run's main() sets up around its steps: client warnings (unhandled rejections)
 * collected into `report.clientWarnings`, and a `fail(err, code)` that closes the run
 * (bounded) and reports `failure(err)`, called by the time limits (a stuck step is
 * abandoned with time left for the close; the last timer leaves even if that close hangs
 * too) and by an exception a client library throws from a socket callback. `finish(line)`
 * may add to the failure line once the close is done.
 */
function guardRun({ report, hardMs, failure, close, closeLabel, finish = (line) => line }) {
  const clientWarnings = [];
  report.clientWarnings = clientWarnings;
  process.on("unhandledRejection", (reason) => {
    clientWarnings.push({ unhandledRejection: errorShape(reason) });
  });
  const fail = async (err, code) => {
    const line = failure(err);
    await withTimeout(close(), 3000, closeLabel).catch(() => {});
    emit(finish(line), code);
  };
  const abandonMs = Math.max(hardMs - 4000, 1000);
  setTimeout(() => fail(new ScenarioError(`time limit ${abandonMs} ms`), 2), abandonMs);
  setTimeout(() => emit(failure(new ScenarioError(`hard timeout ${hardMs} ms`)), 2), hardMs);
  process.on("uncaughtException", (err) => fail(err, 1));
  return fail;
}

module.exports = {
  AUTHORS,
  BOOKS,
  Scenario,
  ScenarioError,
  UNKNOWN_METHOD,
  UNKNOWN_PUBLICATION,
  describe,
  emit,
  errorShape,
  guardRun,
  pickAuthor,
  rawEndpoint,
  summarize,
  tracedSocketConstructor,
  withTimeout,
};
