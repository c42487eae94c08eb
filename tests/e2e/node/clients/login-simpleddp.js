"use strict";
/**
 * npm `simpleddp` 2.2.4 with `simpleddp-plugin-login` 4.0.2 (isomorphic-ws, raw /websocket).
 *
 * What the plugin really does (node_modules/simpleddp-plugin-login/lib/main.js):
 * - `login(obj)` sends `obj` untouched as the one param of `login`: the app chooses
 *   digest (`{digest, algorithm: "sha-256"}`, what Meteor's client sends; used on A) or
 *   plaintext (used on B); it resolves with the raw result (EJSON-decoded by simpleddp, so
 *   `tokenExpires` is a Date) when it has an `id`, keeps `userId` and `token` on the client
 *   and emits `login` (or `loginResume` when the result's type is "resume");
 * - `logout()` calls `logout` only when it believes it is logged in, then forgets both and
 *   emits `logout`;
 * - on `disconnected` while logged in it emits `loginSessionLost` and pauses the queue; on
 *   the next `connected` (simpleddp sends the old `session` but no `receivedCount`, and
 *   clears its collections first) it puts `login({resume: token})` at the head of the queue
 *   and emits `loginResume`, or `loginResumeFailed`.
 * `Meteor.user()` is `collection("users")` filtered on `userId`: the server's universal
 * publication has to fill it. Must not assert (the Python side does); every login it makes
 * is logged out again.
 */
const simpleDDP = require("simpleddp");
const { simpleDDPLogin } = require("simpleddp-plugin-login");
const WebSocket = require("isomorphic-ws");
const { rawEndpoint, tracedSocketConstructor } = require("../common");
const { describe, nextEvent, sha256hex, sleep } = require("./accounts-harness");

const EVENTS = [
  "connected",
  "disconnected",
  "login",
  "loginResume",
  "logout",
  "loginSessionLost",
  "loginResumeFailed",
];
const RECONNECT_MS = 300;

/** A connected simpleDDP with the login plugin, its traffic in the wire log `label`. */
async function open(run, label, origin) {
  const wire = run.wire(label, origin);
  const client = new simpleDDP(
    {
      endpoint: rawEndpoint(origin, "raw"),
      SocketConstructor: tracedSocketConstructor(WebSocket, wire),
      autoConnect: false,
      // Only the deliberate drop below reconnects; close() turns it off.
      autoReconnect: true,
      reconnectInterval: RECONNECT_MS,
    },
    [simpleDDPLogin],
  );
  const events = [];
  for (const name of EVENTS) {
    client.on(name, (m) => {
      events.push({ event: name, arg: describe(m === undefined ? null : m) });
    });
  }
  let closed = false;
  const close = () => {
    if (closed) return undefined;
    closed = true;
    return client.disconnect();
  };
  run.onClose(close);
  await run.step(`${label}: connect`, () => client.connect(), 8000);
  const conn = {
    client,
    wire,
    events,
    call: (name, ...params) => run.step(`${label}: ${name}`, () => client.call(name, ...params)),
    /** Meteor.user(): the `users` document of the logged-in id (none when logged out). */
    user: () =>
      describe(
        client
          .collection("users")
          .filter((doc) => client.userId !== undefined && doc.id === client.userId)
          .fetch(),
      ),
    close,
    state: async () => ({
      whoami: describe(await conn.call("users.whoami")),
      userId: client.userId === undefined ? null : client.userId,
      user: conn.user(),
      users: describe(client.collection("users").fetch()),
    }),
  };
  return conn;
}

async function runScenario(run) {
  const { report, account } = run;
  const digest = (password) => ({ digest: sha256hex(password), algorithm: "sha-256" });
  const user = { username: account.username };

  // A: digest login (as Meteor's client sends it), wrong first.
  const a = await open(run, "A", run.origin);
  report.anonymous = await a.state();
  report.wrongPassword = {
    error: await run.step("A: login wrong digest", () =>
      run.expectError(
        a.client.login({ user, password: digest(run.wrongPassword) }),
      ),
    ),
  };
  const result = await run.step("A: login digest", () =>
    a.client.login({ user, password: digest(account.password) }),
  );
  report.password = { result: describe(result), token: a.client.token, ...(await a.state()) };

  // The socket drops: simpleddp reconnects and the plugin resumes with its token.
  const resumed = nextEvent(a.client.ddpConnection, "loginResume", 8000);
  a.client.ddpConnection.socket.rawSocket.close();
  const [resumeResult] = await run.step("A: reconnect and resume", () => resumed, 9000);
  // The plugin emits loginResume on the result; simpleddp applies data on setTimeout.
  await sleep(50);
  report.reconnect = {
    result: describe(resumeResult),
    token: a.client.token,
    ...(await a.state()),
  };

  await run.step("A: logout", () => a.client.logout());
  await sleep(50);
  const tokenAfter = a.client.token === undefined ? null : a.client.token;
  report.logout = { token: tokenAfter, ...(await a.state()) };
  report.logout.events = a.events;
  await a.close();

  // B: plaintext password with the email.
  const b = await open(run, "B", run.origin);
  const byEmail = await run.step("B: login plaintext email", () =>
    b.client.login({ user: { email: account.email }, password: account.password }),
  );
  report.email = { result: describe(byEmail), ...(await b.state()) };
  await run.step("B: logout", () => b.client.logout());
  await sleep(50);
  report.email.afterLogout = await b.state();
  report.email.events = b.events;
  await b.close();
}

module.exports = { "simpleddp-login": runScenario };
