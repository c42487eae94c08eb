"use strict";
/**
 * npm `asteroid` 2.0.3 (on ddp.js 2.2.1, `ws` as its SocketConstructor, raw /websocket).
 *
 * What the library really does (node_modules/asteroid/src):
 * - `loginWithPassword({username, email, password})` sends the password in PLAINTEXT and
 *   always builds `user: {username, email}`; JSON drops the undefined one, so the wire has
 *   exactly one key unless the app passes both (then Meteor refuses: "exactly one field");
 * - the token of a login is kept per endpoint (`<endpoint>__login_token__`) in
 *   localStorage, chrome.storage or AsyncStorage, else in a module-level object: in Node
 *   every Asteroid of this process on the same endpoint shares it;
 * - on every `connected` it sends `{resume: token}` by itself when it holds a token for
 *   its endpoint (a failed resume just logs it out locally), and re-sends its subs;
 * - `login`/`logout` resolve on the `result` (ddp.js dispatches events on setTimeout, so
 *   every `added`/`removed` received before that result is already applied) and emit
 *   `loggedIn` (with the user id) / `loggedOut`; it keeps no collections, so the harness
 *   keeps `users` from the raw `added`/`changed`/`removed` events.
 * - `createUser` nests username/email under `user` too, which Meteor's createUser ignores:
 *   not exercised here.
 * Must not assert (the Python side does); every login it makes is logged out again.
 */
const { createClass } = require("asteroid");
const WebSocket = require("ws");
const { rawEndpoint, tracedSocketConstructor } = require("../common");
const { describe, nextEvent } = require("./accounts-harness");

const Asteroid = createClass();
const EVENTS = ["connected", "disconnected", "loggedIn", "loggedOut"];

/** A connected Asteroid whose traffic goes to the wire log `label`. */
async function open(run, label, origin) {
  const wire = run.wire(label, origin);
  const client = new Asteroid({
    endpoint: rawEndpoint(origin, "raw"),
    SocketConstructor: tracedSocketConstructor(WebSocket, wire),
    autoConnect: false,
    autoReconnect: false,
  });
  const events = [];
  for (const name of EVENTS) {
    client.on(name, (...args) => events.push({ event: name, args: describe(args) }));
  }
  const users = new Map();
  client.ddp.on("added", ({ collection, id, fields }) => {
    if (collection === "users") users.set(id, { ...(fields || {}) });
  });
  client.ddp.on("changed", ({ collection, id, fields, cleared }) => {
    const doc = collection === "users" ? users.get(id) : undefined;
    if (!doc) return;
    Object.assign(doc, fields || {});
    for (const key of cleared || []) delete doc[key];
  });
  client.ddp.on("removed", ({ collection, id }) => {
    if (collection === "users") users.delete(id);
  });
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    client.disconnect();
  };
  run.onClose(close);
  const connected = nextEvent(client, "connected", 8000);
  client.connect();
  await run.step(`${label}: connect`, () => connected, 9000);
  const conn = {
    client,
    wire,
    events,
    call: (name, ...params) => run.step(`${label}: ${name}`, () => client.call(name, ...params)),
    users: () => describe([...users].map(([id, fields]) => ({ _id: id, ...fields }))),
    close,
    /** Who the server says this is, and what the client holds. */
    state: async () => ({
      whoami: describe(await conn.call("users.whoami")),
      userId: client.userId,
      loggedIn: client.loggedIn,
      users: conn.users(),
    }),
  };
  return conn;
}

async function runScenario(run) {
  const { report, account } = run;

  // A: nothing stored yet, so no resume on connect; wrong password, then the right one.
  const a = await open(run, "A", run.origin);
  report.anonymous = await a.state();
  report.wrongPassword = {
    error: await run.step("A: loginWithPassword wrong password", () =>
      run.expectError(
        a.client.loginWithPassword({ username: account.username, password: run.wrongPassword }),
      ),
    ),
  };
  const userId = await run.step("A: loginWithPassword username", () =>
    a.client.loginWithPassword({ username: account.username, password: account.password }),
  );
  report.password = { resolved: describe(userId), ...(await a.state()) };
  const loginCall = a.wire.lastOut((m) => m.msg === "method" && m.method === "login");
  const answer = a.wire.inbound().find((m) => m.msg === "result" && m.id === loginCall.id);
  const { token } = answer.result;

  // B: a new Asteroid on the same endpoint resumes by itself with the stored token.
  const b = await open(run, "B", run.origin);
  await run.step("B: automatic resume login", () =>
    b.events.some((e) => e.event === "loggedIn") ? null : nextEvent(b.client, "loggedIn", 5000),
  );
  report.autoResume = await b.state();
  b.close();

  // C: the second relay; nothing stored for that endpoint, so resume explicitly.
  const c = await open(run, "C", run.origin2);
  const resumed = await run.step("C: login({resume})", () => c.client.login({ resume: token }));
  report.resume = { resolved: describe(resumed), ...(await c.state()) };
  c.close();

  // A logs out: the token is destroyed (and forgotten by the client).
  const loggedOut = await run.step("A: logout", () => a.client.logout());
  report.logout = { resolved: describe(loggedOut), ...(await a.state()), events: a.events };
  a.close();

  // D: nothing stored any more; the dead token, both keys at once, then the email.
  const d = await open(run, "D", run.origin);
  report.deadToken = {
    error: await run.step("D: login({resume: dead token})", () =>
      run.expectError(d.client.login({ resume: token })),
    ),
  };
  report.twoKeys = {
    error: await run.step("D: loginWithPassword username+email", () =>
      run.expectError(
        d.client.loginWithPassword({
          username: account.username,
          email: account.email,
          password: account.password,
        }),
      ),
    ),
  };
  const byEmail = await run.step("D: loginWithPassword email", () =>
    d.client.loginWithPassword({ email: account.email, password: account.password }),
  );
  report.email = { resolved: describe(byEmail), ...(await d.state()) };
  await run.step("D: logout", () => d.client.logout());
  report.email.afterLogout = await d.state();
  report.events = { A: a.events, B: b.events, C: c.events, D: d.events };
  d.close();
}

module.exports = { asteroid: runScenario };
