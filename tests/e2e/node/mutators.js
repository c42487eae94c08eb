#!/usr/bin/env node
"use strict";
/**
 * Meteor's own client (npm `meteor-client-side` 1.3.5 under jsdom, booted by
 * clients/meteor.js) writing one book through the collection mutators with Mongo
 * modifiers: `Books.update(id, {$inc: ..., $push: ...})` as Meteor app code does it.
 *
 *   node mutators.js <url>
 *
 * Environment: MUTATOR_CASES (JSON list of {name, modifier}), applied in order to a book
 * this run inserts (`Books.insert`) and removes again (also on failure);
 * SCENARIO_TIMEOUT_MS (hard limit, default 20000), SCENARIO_STEP_MS (per step, default
 * 5000), SCENARIO_TRACE=1 (every DDP message on stderr).
 *
 * For each case it reports the document as Meteor's stub left it right after the call
 * (minimongo's own `_modify`: what Meteor computes), the callback's result or error, and
 * the document once the callback ran (the server's, after `updated`). Prints ONE JSON
 * line; tests/e2e/test_mutators.py makes the assertions, this file only reports.
 */
const { boot } = require("./clients/meteor");
const {
  AUTHORS,
  BOOKS,
  Scenario,
  ScenarioError,
  describe,
  emit,
  errorShape,
  guardRun,
  pickAuthor,
} = require("./common");

function intEnv(name, fallback) {
  const value = Number.parseInt(process.env[name] || "", 10);
  return Number.isFinite(value) && value > 0 ? value : fallback;
}

async function runMutators(sc, cases) {
  const { report, wire } = sc;
  const page = boot(report.origin, wire);
  const { Meteor, Mongo } = page.window;
  sc.onClose(() => {
    Meteor.disconnect();
    page.window.close();
  });
  report.pageErrors = page.pageErrors;
  report.console = page.consoleLines;
  // Values handed to the bundle are built in its own realm (JSON round trip).
  const own = (value) => page.window.JSON.parse(JSON.stringify(value));
  // Collection.update finds its callback with `instanceof Function`: the bundle's realm's.
  const ownCallback = page.window.eval("(f) => function (err, result) { f(err, result); }");
  const Books = new Mongo.Collection(BOOKS);
  const Authors = new Mongo.Collection(AUTHORS);
  const current = (id) => describe(Books.findOne(id));

  await sc.step(
    "connect",
    () => wire.waitFor((m) => m.msg === "connected", 8000, "DDP connected"),
    9000,
  );
  await sc.step(
    "subscribe books.all",
    () =>
      new Promise((resolve, reject) => {
        Meteor.subscribe("books.all", {
          onReady: resolve,
          onStop: (err) => reject(err || new ScenarioError("books.all stopped before ready")),
        });
      }),
  );
  const author = pickAuthor(Authors.find().fetch(), Books.find().fetch());
  const params = {
    ...sc.newBook(author, " (mutators)"),
    price: "3.00",
    tags: ["e2e", "mutators"],
    details: { likes: 1, log: ["start"] },
    ratings: [3],
  };
  let id;
  await sc.step(
    "Books.insert",
    () =>
      new Promise((resolve, reject) => {
        id = Books.insert(own(params), (err, result) => (err ? reject(err) : resolve(result)));
      }),
  );
  const removed = sc.onCleanup(`/${BOOKS}/remove`, () =>
    new Promise((resolve) => Books.remove(id, ownCallback(() => resolve()))),
  );
  report.inserted = current(id);

  report.cases = [];
  for (const { name, modifier } of cases) {
    let stub;
    const outcome = await sc.step(`Books.update ${name}`, () =>
      new Promise((resolve) => {
        try {
          Books.update(
            id,
            own(modifier),
            ownCallback((err, result) =>
              resolve(err ? { error: errorShape(err) } : { result: describe(result) }),
            ),
          );
        } catch (err) {
          resolve({ thrown: errorShape(err) });
        }
        stub = current(id); // the stub ran synchronously: Meteor's own result
      }),
    );
    report.cases.push({ name, stub, ...outcome, final: current(id) });
  }

  report.remove = await sc.step(
    "Books.remove",
    () =>
      new Promise((resolve, reject) => {
        Books.remove(
          id,
          ownCallback((err, result) => (err ? reject(err) : resolve(describe(result)))),
        );
      }),
  );
  removed();
  report.afterRemove = Books.findOne(id) === undefined;
}

async function main() {
  const [url] = process.argv.slice(2);
  const hardMs = intEnv("SCENARIO_TIMEOUT_MS", 20000);
  let cases;
  try {
    cases = JSON.parse(process.env.MUTATOR_CASES || "");
  } catch (err) {
    cases = null;
  }
  if (!url || !Array.isArray(cases)) {
    const usage = "usage: MUTATOR_CASES=[...] node mutators.js <url>";
    emit({ ok: false, stage: "usage", error: usage }, 64);
    return;
  }
  const sc = new Scenario({
    client: "meteor",
    origin: new URL(url.replace(/^ws/, "http")).origin,
    transport: "sockjs",
    seed: "mutators",
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
  const fail = guardRun({
    report: sc.report,
    hardMs,
    failure,
    close: () => sc.close(),
    closeLabel: "cleanup",
    finish: (line) => ({ ...line, lateCleanups: sc.report.lateCleanups }),
  });
  try {
    await runMutators(sc, cases);
    await sc.finish();
  } catch (err) {
    await fail(err, 1);
    return;
  }
  await sc.close();
  emit({ ok: true, ...sc.report }, 0);
}

main();
