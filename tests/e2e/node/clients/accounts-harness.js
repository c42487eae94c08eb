"use strict";
/**
 * What the login scenarios (clients/accounts.js) share: one wire log per connection, the
 * account under test, named steps, and the per-connection summary the Python side checks
 * (every method call with its raw wire answer, and the data messages that arrived before
 * that answer: Meteor's setUserId rerun must deliver `users` before a login's `result`).
 *
 * Must not: know a client library, or assert anything (tests/e2e/test_accounts_clients.py
 * does). The call list shows no password, only whether what a client sent was the account's
 * password (plaintext) or its SHA-256 digest; the raw wire tails of a failure report do.
 */
const crypto = require("crypto");
const { Scenario, ScenarioError, describe, errorShape, withTimeout } = require("../common");

/** The SHA-256 hex digest of `text` (UTF-8): what Meteor's client sends for ASCII passwords. */
function sha256hex(text) {
  return crypto.createHash("sha256").update(text, "utf8").digest("hex");
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

const DATA = new Set(["added", "changed", "removed"]);

/** A `login` request as the Python side needs to see it: the keys, never the password. */
function loginShape(params, password) {
  if (!Array.isArray(params) || params.length !== 1 || params[0] === null) {
    return { unexpectedParams: describe(params) };
  }
  const options = params[0];
  if (typeof options !== "object") return { unexpectedParams: describe(params) };
  const shape = { keys: Object.keys(options).sort() };
  if (options.user !== undefined) shape.user = describe(options.user);
  if (options.resume !== undefined) shape.resume = options.resume;
  const sent = options.password;
  if (typeof sent === "string") {
    shape.password = { kind: "plaintext", isAccountPassword: sent === password };
  } else if (sent !== undefined && sent !== null && typeof sent === "object") {
    shape.password = {
      kind: "digest",
      keys: Object.keys(sent).sort(),
      algorithm: sent.algorithm === undefined ? null : sent.algorithm,
      isAccountPassword: sent.digest === sha256hex(password),
    };
  } else if (sent !== undefined) {
    shape.password = { kind: typeof sent };
  }
  return shape;
}

/**
 * Every method this connection sent, in order: its params (a login's as loginShape), the
 * raw (not EJSON-decoded) `result`/`error` of its answer, how many result/updated messages
 * it got, and the data messages received between sending it and its `result`.
 */
function callSummary(wire, password) {
  const entries = wire.messages;
  const calls = [];
  entries.forEach((entry, index) => {
    const sent = entry.msg;
    if (entry.dir !== "out" || !sent || sent.msg !== "method") return;
    let resultAt = -1;
    let updatedAt = -1;
    let results = 0;
    let updated = 0;
    for (let j = index + 1; j < entries.length; j += 1) {
      const other = entries[j];
      if (other.dir !== "in" || !other.msg) continue;
      if (other.msg.msg === "result" && other.msg.id === sent.id) {
        results += 1;
        if (resultAt < 0) resultAt = j;
      }
      if (other.msg.msg === "updated" && (other.msg.methods || []).includes(sent.id)) {
        updated += 1;
        if (updatedAt < 0) updatedAt = j;
      }
    }
    const until = resultAt < 0 ? entries.length : resultAt;
    const dataBeforeResult = entries
      .slice(index + 1, until)
      .filter((x) => x.dir === "in" && x.msg && DATA.has(x.msg.msg))
      .map((x) => ({ msg: x.msg.msg, collection: x.msg.collection, id: x.msg.id }));
    const answer = resultAt < 0 ? null : entries[resultAt].msg;
    calls.push({
      id: sent.id,
      method: sent.method,
      params: sent.method === "login" ? loginShape(sent.params, password) : sent.params,
      answered: answer !== null,
      result: answer && answer.result !== undefined ? answer.result : null,
      error: answer && answer.error !== undefined ? answer.error : null,
      results,
      updated,
      updatedBeforeResult: updatedAt >= 0 && resultAt >= 0 && updatedAt < resultAt,
      dataBeforeResult,
    });
  });
  return calls;
}

/**
 * Data messages that break DDP's per-document order (added once, changed*, removed) within
 * one session: a new `connected` starts from an empty client (Wire.dataProblems spans
 * sessions, and a reconnect legitimately re-adds everything).
 */
function dataProblems(wire) {
  let present = new Set();
  const problems = [];
  for (const m of wire.inbound()) {
    if (m.msg === "connected") present = new Set();
    if (!DATA.has(m.msg)) continue;
    const key = `${m.collection}/${m.id}`;
    if (m.msg === "added") {
      if (present.has(key)) problems.push({ problem: "added twice", msg: m });
      present.add(key);
    } else if (!present.has(key)) {
      problems.push({ problem: `${m.msg} before added`, msg: m });
    } else if (m.msg === "removed") {
      present.delete(key);
    }
  }
  return problems;
}

/** One run: the Scenario of common.js for steps and cleanup, plus a wire per connection. */
class AccountsRun {
  constructor({ client, origin, origin2, account, stepMs, trace }) {
    this.sc = new Scenario({ client, origin, transport: "raw", seed: "", stepMs, trace });
    // common.js exports no Wire class; every connection needs a log of its own.
    this.Wire = this.sc.wire.constructor;
    this.trace = trace;
    this.origin = origin;
    this.origin2 = origin2;
    this.account = account;
    this.wrongPassword = `${account.password}-not-it`;
    this.report = this.sc.report;
    this.report.origin2 = origin2;
    this.connections = [];
  }

  get stage() {
    return this.sc.stage;
  }

  /** A new wire log for connection `label` (A, B, ...) to `origin`. */
  wire(label, origin) {
    if (this.connections.some((c) => c.label === label)) {
      throw new ScenarioError(`connection label ${label} used twice`);
    }
    const wire = new this.Wire(this.trace);
    this.connections.push({ label, origin, wire });
    return wire;
  }

  step(name, fn, ms) {
    return this.sc.step(name, fn, ms);
  }

  expectError(promise) {
    return this.sc.expectError(promise);
  }

  onClose(fn) {
    this.sc.onClose(fn);
  }

  /** Per connection: sessions, every call with its answer, and the wire-level checks. */
  async finish() {
    const owed = () =>
      this.connections.some(({ wire }) =>
        wire.methodSummary().some((m) => m.results < 1 || m.updated < 1),
      );
    // `updated` may trail the `result` a client waited for: give it a moment.
    const deadline = Date.now() + 1000;
    while (owed() && Date.now() < deadline) await sleep(20);
    this.report.connections = this.summary();
  }

  /** What finish() reports, at once (a failure report carries it too). */
  summary() {
    const out = {};
    for (const { label, origin, wire } of this.connections) {
      out[label] = {
        origin,
        sessions: wire.inbound().filter((m) => m.msg === "connected").map((m) => m.session),
        calls: callSummary(wire, this.account.password),
        errors: wire.inbound().filter((m) => m.msg === "error"),
        unexpected: wire.unexpected(),
        dataProblems: dataProblems(wire),
        messages: { in: wire.inbound().length, out: wire.outbound().length },
      };
    }
    return out;
  }

  /** The last 30 messages of every connection, for a failure report. */
  tails() {
    const out = {};
    for (const { label, wire } of this.connections) out[label] = wire.tail(30);
    return out;
  }

  close() {
    return this.sc.close();
  }
}

/** A promise for the next `event` of `source` (an emitter with on and off/removeListener). */
function nextEvent(source, event, ms) {
  let listener;
  const seen = new Promise((resolve) => {
    listener = (...args) => resolve(args);
    source.on(event, listener);
  });
  const off = () => {
    if (typeof source.off === "function") source.off(event, listener);
    else if (typeof source.removeListener === "function") source.removeListener(event, listener);
  };
  return withTimeout(seen, ms, `event ${event}`).finally(off);
}

module.exports = {
  AccountsRun,
  ScenarioError,
  callSummary,
  dataProblems,
  describe,
  errorShape,
  loginShape,
  nextEvent,
  sha256hex,
  sleep,
};
