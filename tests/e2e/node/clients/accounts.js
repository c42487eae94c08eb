#!/usr/bin/env node
"use strict";
/**
 * Drive ONE third-party login library through its accounts scenario against running relays.
 *
 *   node clients/accounts.js <client> <url> [<url2>]
 *
 *   client  ddp-login | ddp-login-env | asteroid | simpleddp-login
 *   url     a relay's origin, http://127.0.0.1:PORT (ws:// also accepted)
 *   url2    a second relay on the same database (default: url); the steps that resume a
 *           token "on another relay" connect there
 *
 * Environment: ACCOUNTS_USERNAME, ACCOUNTS_EMAIL, ACCOUNTS_PASSWORD (the account; required),
 * METEOR_TOKEN (ddp-login-env only: the token to log in with, as ddp-login reads it),
 * ACCOUNTS_TIMEOUT_MS (hard limit of the run, default 30000), ACCOUNTS_STEP_MS (per step,
 * default 5000), ACCOUNTS_TRACE=1 (every DDP message on stderr).
 *
 * Prints ONE JSON line on stdout: {"ok": true, ...} and exit 0, or {"ok": false, "stage":
 * ..., "error": ..., ...} and exit 1 (2 when out of time). The scenarios leave no state but
 * login tokens (each logs out what it logged in, except ddp-login-env, whose token belongs
 * to the caller). Must not assert: tests/e2e/test_accounts_clients.py does; this file and
 * the login-*.js modules only report.
 */
const { AccountsRun, ScenarioError, errorShape } = require("./accounts-harness");
const { emit, guardRun } = require("../common");

const MODULES = ["./login-ddp-login", "./login-asteroid", "./login-simpleddp"];

function intEnv(name, fallback) {
  const value = Number.parseInt(process.env[name] || "", 10);
  return Number.isFinite(value) && value > 0 ? value : fallback;
}

function originOf(url) {
  return new URL(url.replace(/^ws/, "http")).origin;
}

/** The scenario functions by client name (throws when a library is not installed). */
function loadScenarios() {
  const scenarios = {};
  for (const path of MODULES) Object.assign(scenarios, require(path));
  return scenarios;
}

async function main() {
  const [clientName, url, url2] = process.argv.slice(2);
  let scenarios;
  try {
    scenarios = loadScenarios();
  } catch (err) {
    // node_modules missing or incomplete: say so instead of a bare stack trace.
    emit({ ok: false, stage: "require", error: errorShape(err), client: clientName }, 1);
    return;
  }
  const scenario = scenarios[clientName];
  if (!scenario || !url) {
    const names = Object.keys(scenarios).join("|");
    const usage = `usage: node clients/accounts.js <${names}> <url> [<url2>]`;
    emit({ ok: false, stage: "usage", error: usage }, 64);
    return;
  }
  const account = {
    username: process.env.ACCOUNTS_USERNAME,
    email: process.env.ACCOUNTS_EMAIL,
    password: process.env.ACCOUNTS_PASSWORD,
  };
  const missing = Object.entries(account).filter(([, v]) => !v).map(([k]) => k);
  if (missing.length) {
    emit({ ok: false, stage: "usage", error: `ACCOUNTS_* not set: ${missing.join(", ")}` }, 64);
    return;
  }
  const hardMs = intEnv("ACCOUNTS_TIMEOUT_MS", 30000);
  const run = new AccountsRun({
    client: clientName,
    origin: originOf(url),
    origin2: originOf(url2 || url),
    account,
    stepMs: intEnv("ACCOUNTS_STEP_MS", 5000),
    trace: process.env.ACCOUNTS_TRACE === "1",
  });
  const failure = (err) => ({
    ok: false,
    stage: run.stage,
    error: err instanceof ScenarioError ? err.message : errorShape(err),
    ...run.report,
    connections: run.summary(),
    wireTails: run.tails(),
  });
  const fail = guardRun({
    report: run.report,
    hardMs,
    failure,
    close: () => run.close(),
    closeLabel: "close",
  });

  try {
    await scenario(run);
    await run.finish();
  } catch (err) {
    await fail(err, 1);
    return;
  }
  await run.close();
  emit({ ok: true, ...run.report }, 0);
}

main();
