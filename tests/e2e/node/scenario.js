#!/usr/bin/env node
"use strict";
/**
 * Drive ONE npm DDP client through the bookstore scenario against a running relay.
 *
 *   node scenario.js <client> <url> [<transport>]
 *
 *   client     ddp | simpleddp | ddpjs | meteor
 *   url        the relay's origin, http://127.0.0.1:PORT (ws:// also accepted)
 *   transport  raw (ws://…/websocket, default for the npm clients),
 *              sockjs-raw (ws://…/sockjs/websocket),
 *              sockjs (SockJS framing on /sockjs/…/websocket: the real Meteor client only)
 *
 * Environment: SCENARIO_SEED (randomSeed of the seeded books.create, default "abc"),
 * SCENARIO_TIMEOUT_MS (hard limit for the whole run, default 20000), SCENARIO_STEP_MS
 * (limit per step, default 5000), SCENARIO_TRACE=1 (every DDP message on stderr).
 *
 * Prints ONE JSON line on stdout: {"ok": true, ...} and exit 0, or
 * {"ok": false, "stage": ..., "error": ..., ...} and exit 1 (2 when out of time). Books it
 * created are removed again on failure too (best effort, see Scenario.close).
 * tests/e2e/test_node_clients.py makes the assertions; this file only reports.
 */
const {
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
  summarize,
} = require("./common");

const CLIENTS = {
  ddp: "./clients/ddp",
  simpleddp: "./clients/simpleddp",
  ddpjs: "./clients/ddpjs",
  meteor: "./clients/meteor",
};

function intEnv(name, fallback) {
  const value = Number.parseInt(process.env[name] || "", 10);
  return Number.isFinite(value) && value > 0 ? value : fallback;
}

/** The scenario for clients with a plain adapter (clients/ddp, simpleddp, ddpjs). */
async function runAdapterScenario(Adapter, sc) {
  const { report, wire } = sc;
  const adapter = new Adapter({ origin: report.origin, transport: report.transport, wire });
  report.endpoint = adapter.endpoint;
  report.ejson = Adapter.ejson;
  sc.onClose(() => adapter.close());
  const unsubscribe = (id, what) => {
    adapter.unsubscribe(id);
    return sc.step(`unsub ${what}`, () => wire.waitForNosub(id, sc.stepMs));
  };

  // simpleddp and ddp.js never report a refused connection: only this timeout does.
  await sc.step("connect", () => adapter.connect(), 8000);
  const connected = wire.inbound().find((m) => m.msg === "connected");
  report.connect = { session: connected ? connected.session : null };

  const allSub = await sc.step("subscribe books.all", () => adapter.subscribe("books.all", []));
  const authors = adapter.docs(AUTHORS);
  const books = adapter.docs(BOOKS);
  report.all = { authors: summarize(authors), books: summarize(books) };

  const author = pickAuthor(authors, books);
  const params = sc.newBook(author);
  const seeded = typeof adapter.callWithSeed === "function";
  const createdId = await sc.step("books.create", () =>
    seeded
      ? adapter.callWithSeed("books.create", [params], sc.seed)
      : adapter.call("books.create", [params]),
  );
  report.create = { seed: seeded ? sc.seed : null, id: describe(createdId), params };
  const removed = sc.onCleanup("books.remove", () => adapter.call("books.remove", [createdId]));
  // Without live updates the new book is not pushed to books.all; with them it is.
  report.create.pushedToBooksAll = adapter.docs(BOOKS).some((d) => d._id === createdId);

  const renamed = `${params.title} (renamed)`;
  report.rename = {
    title: renamed,
    result: describe(
      await sc.step("books.rename", () => adapter.call("books.rename", [createdId, renamed])),
    ),
  };

  report.fail = {
    error: await sc.step("books.fail", () => sc.expectError(adapter.call("books.fail", []))),
  };
  report.unknownMethod = {
    name: UNKNOWN_METHOD,
    error: await sc.step(UNKNOWN_METHOD, () => sc.expectError(adapter.call(UNKNOWN_METHOD, []))),
  };

  // Stop books.all: the server must remove every document it published, then nosub.
  report.unsub = {
    nosub: await unsubscribe(allSub, "books.all"),
    books: adapter.docs(BOOKS).length,
    authors: adapter.docs(AUTHORS).length,
  };

  // A new subscription sees the committed writes (created + renamed) even without live updates.
  const emailSub = await sc.step("subscribe books.byAuthorEmail", () =>
    adapter.subscribe("books.byAuthorEmail", [author.email]),
  );
  report.byEmail = {
    email: author.email,
    authorId: author._id,
    books: summarize(adapter.docs(BOOKS)),
    authors: summarize(adapter.docs(AUTHORS)),
  };

  report.unknownSub = {
    name: UNKNOWN_PUBLICATION,
    error: await sc.step(UNKNOWN_PUBLICATION, () =>
      sc.expectError(adapter.subscribe(UNKNOWN_PUBLICATION, [])),
    ),
  };

  report.remove = {
    result: describe(
      await sc.step("books.remove", () => adapter.call("books.remove", [createdId])),
    ),
  };
  removed();

  // Back to books.all on a fresh sub: the database is as the run found it.
  await unsubscribe(emailSub, "books.byAuthorEmail");
  await sc.step("resubscribe books.all", () => adapter.subscribe("books.all", []));
  report.final = {
    bookIds: adapter.docs(BOOKS).map((d) => d._id).sort(),
    authorIds: adapter.docs(AUTHORS).map((d) => d._id).sort(),
  };
}

async function main() {
  const [clientName, url, transportArg] = process.argv.slice(2);
  const hardMs = intEnv("SCENARIO_TIMEOUT_MS", 20000);
  const modulePath = CLIENTS[clientName];
  if (!modulePath || !url) {
    const names = Object.keys(CLIENTS).join("|");
    const usage = `usage: node scenario.js <${names}> <url> [<transport>]`;
    emit({ ok: false, stage: "usage", error: usage }, 64);
    return;
  }
  const origin = new URL(url.replace(/^ws/, "http")).origin;
  let client;
  try {
    client = require(modulePath);
  } catch (err) {
    // node_modules missing or incomplete: say so instead of a bare stack trace.
    emit({ ok: false, stage: "require", error: errorShape(err), client: clientName }, 1);
    return;
  }
  const transport = transportArg || client.transports[0];
  const sc = new Scenario({
    client: clientName,
    origin,
    transport,
    seed: process.env.SCENARIO_SEED || "abc",
    stepMs: intEnv("SCENARIO_STEP_MS", 5000),
    trace: process.env.SCENARIO_TRACE === "1",
  });
  const failure = (err) => ({
    ok: false,
    stage: sc.stage,
    error: err instanceof ScenarioError ? err.message : errorShape(err),
    ...sc.report,
    wireTail: sc.wire.tail(30),
  });
  /** Fail: undo this run's writes (bounded), then report. */
  const fail = guardRun({
    report: sc.report,
    hardMs,
    failure,
    close: () => sc.close(),
    closeLabel: "cleanup",
    finish: (line) => ({ ...line, lateCleanups: sc.report.lateCleanups }),
  });

  try {
    if (!client.transports.includes(transport)) {
      throw new ScenarioError(`${clientName} supports transports ${client.transports.join(", ")}`);
    }
    if (typeof client.runScenario === "function") await client.runScenario(sc);
    else await runAdapterScenario(client, sc);
    await sc.finish();
  } catch (err) {
    await fail(err, 1);
    return;
  }
  await sc.close();
  emit({ ok: true, ...sc.report }, 0);
}

main();
