"use strict";
/**
 * npm `ddp.js` (mondora): a thin message layer over a SocketConstructor (ws). Plain JSON,
 * no EJSON decoding (dates stay {"$date": ms}), no document store (this adapter keeps one
 * from added/changed/removed), no randomSeed in its API: the seeded call is pushed onto
 * the client's own message queue as a raw `method` message.
 */
const DDP = require("ddp.js").default;
const WebSocket = require("ws");
const { rawEndpoint, tracedSocketConstructor } = require("../common");

class DdpJsAdapter {
  static ejson = false;
  static transports = ["raw", "sockjs-raw"];

  constructor({ origin, transport, wire }) {
    this.wire = wire;
    this.endpoint = rawEndpoint(origin, transport);
    this.client = new DDP({
      endpoint: this.endpoint,
      SocketConstructor: tracedSocketConstructor(WebSocket, wire),
      autoConnect: false,
      autoReconnect: false,
    });
    this.store = new Map(); // collection -> Map(id -> fields)
    this.client.on("added", ({ collection, id, fields }) => {
      this._collection(collection).set(id, { ...(fields || {}) });
    });
    this.client.on("changed", ({ collection, id, fields, cleared }) => {
      const doc = this._collection(collection).get(id);
      if (!doc) return;
      Object.assign(doc, fields || {});
      for (const key of cleared || []) delete doc[key];
    });
    this.client.on("removed", ({ collection, id }) => {
      this._collection(collection).delete(id);
    });
    this.seededCalls = 0;
  }

  _collection(name) {
    if (!this.store.has(name)) this.store.set(name, new Map());
    return this.store.get(name);
  }

  connect() {
    return new Promise((resolve) => {
      this.client.on("connected", resolve);
      this.client.connect();
    });
  }

  subscribe(name, params) {
    const id = this.client.sub(name, params);
    return this._settle(
      (resolve, reject) => ({
        ready: (m) => (m.subs || []).includes(id) && resolve(id),
        nosub: (m) => m.id === id && reject(m.error || { error: "nosub without error" }),
      }),
    );
  }

  unsubscribe(id) {
    this.client.unsub(id);
  }

  call(name, params) {
    const id = this.client.method(name, params);
    return this._result(id);
  }

  callWithSeed(name, params, seed) {
    this.seededCalls += 1;
    const id = `seeded-${this.seededCalls}`;
    const answer = this._result(id);
    this.client.messageQueue.push({ msg: "method", id, method: name, params, randomSeed: seed });
    return answer;
  }

  _result(id) {
    return this._settle((resolve, reject) => ({
      result: (m) => m.id === id && (m.error ? reject(m.error) : resolve(m.result)),
    }));
  }

  /** Listen to events until one handler settles the promise, then stop listening. */
  _settle(makeHandlers) {
    return new Promise((resolve, reject) => {
      const listeners = [];
      const done = (fn) => (value) => {
        for (const [event, listener] of listeners) this.client.removeListener(event, listener);
        fn(value);
        return true;
      };
      const handlers = makeHandlers(done(resolve), done(reject));
      for (const [event, listener] of Object.entries(handlers)) {
        listeners.push([event, listener]);
        this.client.on(event, listener);
      }
    });
  }

  docs(collection) {
    return [...this._collection(collection)].map(([id, fields]) => ({ _id: id, ...fields }));
  }

  close() {
    this.client.disconnect();
  }
}

module.exports = DdpJsAdapter;
