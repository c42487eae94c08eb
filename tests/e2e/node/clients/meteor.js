"use strict";
/**
 * The REAL Meteor client: npm `meteor-client-side` 1.3.5 (a `meteor build` bundle of the
 * Meteor 1.3 livedata + minimongo + SockJS 0.3.4 client) evaluated in a jsdom window whose
 * origin is the relay's, so it speaks SockJS (/sockjs/info, /sockjs/NNN/xxxxxxxx/websocket)
 * like a browser does.
 *
 * Meteor sends a randomSeed only when a method stub draws randomness, so `books.create`
 * gets a client stub that inserts into the local collection: the server's result must equal
 * the stub's id (latency compensation with matching ids). `Books.insert` goes through the
 * `/bookstore.book/insert` mutator, whose stub is Meteor's own.
 *
 * Quirks of this client (reference ddp-protocol.md 3.5): it throws on an `added` for a
 * document it already has and on changed/removed for one it lacks; a method's callback
 * waits for both `result` and `updated`; a stub's document the server never sent vanishes
 * at `updated` (no live updates yet), and re-subscribing brings it back from the server.
 */
const fs = require("fs");
const { JSDOM, VirtualConsole } = require("jsdom");
const {
  AUTHORS,
  BOOKS,
  ScenarioError,
  UNKNOWN_METHOD,
  UNKNOWN_PUBLICATION,
  describe,
  pickAuthor,
  summarize,
} = require("../common");

const BUNDLE = require.resolve("meteor-client-side/dist/meteor-client-side.bundle.js");
const transports = ["sockjs"];

/** A jsdom window on `origin` running the Meteor bundle, with its traffic recorded. */
function boot(origin, wire) {
  const pageErrors = [];
  const consoleLines = [];
  const virtualConsole = new VirtualConsole();
  virtualConsole.on("jsdomError", (err) => {
    pageErrors.push(String(err.stack || err.message).split("\n").slice(0, 2).join("\n"));
  });
  for (const level of ["log", "info", "warn", "error", "debug"]) {
    virtualConsole.on(level, (...args) => consoleLines.push(`${level}: ${args.join(" ")}`));
  }
  const dom = new JSDOM("<!doctype html><html><head></head><body></body></html>", {
    url: `${origin}/`,
    runScripts: "outside-only",
    virtualConsole,
  });
  const { window } = dom;

  const seen = { webSockets: [], xhr: [] };
  const NativeWebSocket = window.WebSocket;
  window.WebSocket = new Proxy(NativeWebSocket, {
    construct(target, args) {
      seen.webSockets.push(String(args[0]));
      return new target(...args);
    },
  });
  const open = window.XMLHttpRequest.prototype.open;
  window.XMLHttpRequest.prototype.open = function recordedOpen(method, url, ...rest) {
    seen.xhr.push(`${method} ${url}`);
    return open.call(this, method, url, ...rest);
  };

  window.__meteor_runtime_config__ = {
    DDP_DEFAULT_CONNECTION_URL: origin,
    ROOT_URL: `${origin}/`,
    meteorEnv: {},
  };
  window.eval(fs.readFileSync(BUNDLE, "utf8"));

  // Every DDP message, as the connection itself sends and receives it (SockJS unwrapped).
  const stream = window.Meteor.connection._stream;
  stream.on("message", (raw) => wire.in_(raw));
  const send = stream.send.bind(stream);
  stream.send = (raw) => {
    wire.out(raw);
    send(raw);
  };
  return { dom, window, seen, pageErrors, consoleLines };
}

async function runScenario(sc) {
  const { report, wire } = sc;
  const page = boot(report.origin, wire);
  const { Meteor, Mongo } = page.window;
  sc.onClose(() => {
    Meteor.disconnect();
    page.window.close();
  });
  report.endpoint = report.origin;
  report.ejson = true;
  // Filled as the page runs, so that a failure report carries them too.
  report.pageErrors = page.pageErrors;
  report.console = page.consoleLines;
  // Values handed to the bundle are built in its own realm (JSON round trip).
  const own = (value) => page.window.JSON.parse(JSON.stringify(value));

  const Books = new Mongo.Collection(BOOKS);
  const Authors = new Mongo.Collection(AUTHORS);
  Meteor.methods({
    "books.create"(doc) {
      return Books.insert(doc);
    },
  });

  const call = (name, ...args) =>
    new Promise((resolve, reject) => {
      Meteor.apply(name, own(args), (err, result) => (err ? reject(err) : resolve(result)));
    });
  const subscribe = (name, ...args) =>
    new Promise((resolve, reject) => {
      const handle = Meteor.subscribe(name, ...own(args), {
        onReady: () => resolve(handle),
        onStop: (err) => reject(err || new ScenarioError(`${name} stopped before ready`)),
      });
    });
  const stop = (handle, what) => {
    handle.stop();
    return sc.step(`unsub ${what}`, () => wire.waitForNosub(handle.subscriptionId, sc.stepMs));
  };

  // Meteor.status().connected turns true when the socket opens; DDP's `connected` is later.
  const connected = await sc.step(
    "connect",
    () => wire.waitFor((m) => m.msg === "connected", 8000, "DDP connected"),
    9000,
  );
  report.connect = { session: connected.session };

  const allSub = await sc.step("subscribe books.all", () => subscribe("books.all"));
  const authors = Authors.find().fetch();
  const books = Books.find().fetch();
  report.all = { authors: summarize(authors), books: summarize(books) };
  const author = pickAuthor(authors, books);

  // books.create with a stub: the stub's Books.insert draws the id from the method's
  // randomSeed stream; the server must return the same id.
  const params = sc.newBook(author);
  let stubId;
  let stubDocVisible;
  const createdId = await sc.step("books.create", () => {
    const answer = new Promise((resolve, reject) => {
      stubId = Meteor.apply("books.create", own([params]), { returnStubValue: true }, (err, id) =>
        err ? reject(err) : resolve(id),
      );
    });
    stubDocVisible = Boolean(Books.findOne(stubId));
    return answer;
  });
  const createMsg = wire.lastOut((m) => m.msg === "method" && m.method === "books.create");
  report.create = {
    seed: createMsg ? createMsg.randomSeed : null,
    stubId,
    id: describe(createdId),
    params,
    stubDocVisible,
    // After `updated`, a stub document the server did not publish is dropped locally.
    visibleAfterCallback: Boolean(Books.findOne(stubId)),
  };
  const removedCreated = sc.onCleanup("books.remove", () => call("books.remove", createdId));

  const renamed = `${params.title} (renamed)`;
  report.rename = {
    title: renamed,
    result: describe(await sc.step("books.rename", () => call("books.rename", createdId, renamed))),
  };

  // Books.insert: the mutator /bookstore.book/insert, id drawn by Meteor's own stub. Its
  // tags are names of a many-to-many (created when missing), published sorted by code
  // point: given sorted, the stub's document and the server's agree.
  const insertParams = {
    ...sc.newBook(author, " (insert)"),
    price: "3.00",
    tags: ["e2e", "mutator"],
  };
  let insertedId;
  const insertCallback = await sc.step("Books.insert", () =>
    new Promise((resolve, reject) => {
      insertedId = Books.insert(own(insertParams), (err, result) =>
        err ? reject(err) : resolve(result),
      );
    }),
  );
  const insertMsg = wire.lastOut((m) => m.msg === "method" && m.method === `/${BOOKS}/insert`);
  report.insert = {
    seed: insertMsg ? insertMsg.randomSeed : null,
    id: insertedId,
    callbackResult: describe(insertCallback),
    sentParams: insertMsg ? insertMsg.params : null,
    params: insertParams,
  };
  const removedInserted = sc.onCleanup(`/${BOOKS}/remove`, () =>
    call(`/${BOOKS}/remove`, { _id: insertedId }),
  );

  report.fail = { error: await sc.step("books.fail", () => sc.expectError(call("books.fail"))) };
  report.unknownMethod = {
    name: UNKNOWN_METHOD,
    error: await sc.step(UNKNOWN_METHOD, () => sc.expectError(call(UNKNOWN_METHOD))),
  };

  report.unsub = {
    nosub: await stop(allSub, "books.all"),
    books: Books.find().count(),
    authors: Authors.find().count(),
  };

  // The server's view on a new subscription: the created (renamed) and the inserted book,
  // under the very ids the client's stubs generated.
  const emailSub = await sc.step("subscribe books.byAuthorEmail", () =>
    subscribe("books.byAuthorEmail", author.email),
  );
  report.byEmail = {
    email: author.email,
    authorId: author._id,
    books: summarize(Books.find().fetch()),
    authors: summarize(Authors.find().fetch()),
  };

  report.unknownSub = {
    name: UNKNOWN_PUBLICATION,
    error: await sc.step(UNKNOWN_PUBLICATION, () => sc.expectError(subscribe(UNKNOWN_PUBLICATION))),
  };

  report.remove = {
    result: describe(await sc.step("books.remove", () => call("books.remove", createdId))),
  };
  removedCreated();
  report.mutatorRemove = {
    result: describe(
      await sc.step("Books.remove", () =>
        new Promise((resolve, reject) => {
          Books.remove(insertedId, (err, result) => (err ? reject(err) : resolve(result)));
        }),
      ),
    ),
  };
  removedInserted();

  await stop(emailSub, "books.byAuthorEmail");
  await sc.step("resubscribe books.all", () => subscribe("books.all"));
  report.final = {
    bookIds: Books.find().map((d) => d._id).sort(),
    authorIds: Authors.find().map((d) => d._id).sort(),
  };

  const status = Meteor.status();
  report.status = {
    status: status.status,
    connected: status.connected,
    retryCount: status.retryCount,
  };
  const socket = Meteor.connection._stream.socket;
  report.transportSeen = {
    protocol: socket ? socket.protocol || null : null,
    webSockets: page.seen.webSockets,
    xhr: page.seen.xhr,
  };
}

module.exports = { transports, runScenario, boot };
