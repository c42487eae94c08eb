"use strict";
/**
 * npm `ddp-login` 1.0.10 on npm `ddp` 0.12.1 (clients/ddp.js's adapter, raw /websocket).
 *
 * What the library really does (node_modules/ddp-login/src/index.coffee):
 * - a password always goes as `{user: {username}|{email}, password: {digest, algorithm:
 *   "sha-256"}}`, the digest from Node's crypto over UTF-8 (standard SHA-256, not Meteor's
 *   CESU-8 quirk for non-BMP characters); plaintext only as a fallback after an error 400,
 *   and only with `plaintext: true`;
 * - `method: "account"` sends `{email}` when the account looks like an address and falls
 *   back to `{username}` after an error 400 (a 403 ends it);
 * - a token goes as `{resume: token}`; when the environment variable `env` (default
 *   METEOR_TOKEN) is set, it is tried FIRST whatever `method` says, then `method` runs;
 * - every attempt is wrapped in `async.retry(retry)`, default 5: one wrong password costs
 *   five `login` calls on the connection (exactly Meteor's default limit of 5 per 10 s).
 *
 * Modes: `ddp-login` (password, email, token, token from the environment, logout, a dead
 * token, retries into the rate limiter) and `ddp-login-env` (only: log in with the token in
 * METEOR_TOKEN, as `export METEOR_TOKEN=$(ddp-login ...)` scripts do; used to resume a
 * token another client obtained on another relay). Must not log out a token it was given
 * (it belongs to the caller), nor leave METEOR_TOKEN set for a later step that does not
 * expect it.
 */
const login = require("ddp-login");
const DdpAdapter = require("./ddp");
const { describe } = require("./accounts-harness");

/** ddp-login's callback API as a promise. */
function ddpLogin(ddp, options) {
  return new Promise((resolve, reject) => {
    login(ddp, options, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

function loginWithToken(ddp, token) {
  return new Promise((resolve, reject) => {
    login.loginWithToken(ddp, token, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

/** A connected npm `ddp` client whose traffic goes to the wire log `label`. */
async function open(run, label, origin) {
  const wire = run.wire(label, origin);
  const adapter = new DdpAdapter({ origin, transport: "raw", wire });
  let closed = false;
  // npm ddp answers a call on its `result`; the `updated` that follows must not be cut
  // off by closing at once (the wire checks want both for every call).
  const close = async () => {
    if (closed) return;
    closed = true;
    const deadline = Date.now() + 1000;
    const owed = () => wire.methodSummary().some((m) => m.results >= 1 && m.updated < 1);
    while (owed() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    adapter.close();
  };
  run.onClose(close);
  await run.step(`${label}: connect`, () => adapter.connect(), 8000);
  return {
    ddp: adapter.client,
    call: (name, ...params) => run.step(`${label}: ${name}`, () => adapter.call(name, params)),
    users: () => describe(adapter.docs("users")),
    close,
  };
}

/** Where this connection stands: who the server says it is, what the client holds. */
async function state(conn) {
  return { whoami: describe(await conn.call("users.whoami")), users: conn.users() };
}

async function runTokenFromEnv(run) {
  const { report } = run;
  const conn = await open(run, "A", run.origin);
  report.before = await state(conn);
  const result = await run.step("A: ddp-login token from METEOR_TOKEN", () =>
    ddpLogin(conn.ddp, { method: "token", retry: 1 }),
  );
  report.login = { result: describe(result), ...(await state(conn)) };
  await conn.close();
}

async function runScenario(run) {
  const { report, account } = run;
  // The token steps set it; a developer's own token must not be tried first.
  const envToken = process.env.METEOR_TOKEN;
  delete process.env.METEOR_TOKEN;
  run.onClose(() => {
    if (envToken === undefined) delete process.env.METEOR_TOKEN;
    else process.env.METEOR_TOKEN = envToken;
  });
  const byUsername = (pass, retry = 1) => ({
    method: "username",
    account: account.username,
    pass,
    retry,
  });

  // A: wrong password, then username + password.
  const a = await open(run, "A", run.origin);
  report.anonymous = await state(a);
  report.wrongPassword = {
    error: await run.step("A: ddp-login wrong password", () =>
      run.expectError(ddpLogin(a.ddp, byUsername(run.wrongPassword))),
    ),
  };
  const password = await run.step("A: ddp-login username", () =>
    ddpLogin(a.ddp, byUsername(account.password)),
  );
  report.password = { result: describe(password), ...(await state(a)) };
  const { token } = password;

  // B: method "account" with an address: {user: {email}}; then logout (its own token).
  const b = await open(run, "B", run.origin);
  const asAccount = { method: "account", account: account.email, pass: account.password, retry: 1 };
  const byEmail = await run.step("B: ddp-login account=email", () => ddpLogin(b.ddp, asAccount));
  report.email = { result: describe(byEmail), ...(await state(b)) };
  await b.call("logout");
  report.email.afterLogout = await state(b);
  await b.close();

  // C: A's token on the second relay; D: the same token read from METEOR_TOKEN.
  const c = await open(run, "C", run.origin2);
  const resumed = await run.step("C: loginWithToken", () => loginWithToken(c.ddp, token));
  report.token = { result: describe(resumed), ...(await state(c)) };
  process.env.METEOR_TOKEN = token;
  const d = await open(run, "D", run.origin);
  const fromEnv = await run.step("D: ddp-login token from METEOR_TOKEN", () =>
    ddpLogin(d.ddp, { method: "token", retry: 1 }),
  );
  delete process.env.METEOR_TOKEN;
  report.envToken = { result: describe(fromEnv), ...(await state(d)) };
  await c.close();
  await d.close();

  // A logs out: its token is destroyed, so it no longer resumes anywhere.
  await a.call("logout");
  report.logout = await state(a);
  await a.close();
  process.env.METEOR_TOKEN = token;
  const e = await open(run, "E", run.origin);
  report.deadToken = {
    error: await run.step("E: ddp-login dead token from METEOR_TOKEN", () =>
      run.expectError(ddpLogin(e.ddp, { method: "token", retry: 1 })),
    ),
  };
  delete process.env.METEOR_TOKEN;
  report.deadToken.after = await state(e);
  await e.close();

  // F: six retries of a wrong password, then the right one: the sixth and the seventh
  // `login` within 10 s on one connection are over Meteor's default limit.
  const f = await open(run, "F", run.origin);
  report.retries = {
    error: await run.step("F: ddp-login wrong password, retry 6", () =>
      run.expectError(ddpLogin(f.ddp, byUsername(run.wrongPassword, 6))),
    ),
  };
  report.retries.rightPassword = {
    error: await run.step("F: ddp-login right password after the limit", () =>
      run.expectError(ddpLogin(f.ddp, byUsername(account.password))),
    ),
  };
  report.retries.after = await state(f);
  await f.close();
}

module.exports = {
  "ddp-login": runScenario,
  "ddp-login-env": runTokenFromEnv,
};
