"use strict";
/**
 * npm `simpleddp` (on simpleddp-core) with isomorphic-ws: EJSON via npm `ejson`, local
 * documents keyed `id` (not `_id`), no way to pass a randomSeed through its API, so the
 * seeded call goes through the client's own message queue as a raw `method` message.
 * Quirk: `subscribe()` starts the sub in its constructor and drops the returned promise,
 * so a `nosub` with an error also surfaces as an unhandled rejection.
 */
const simpleDDP = require("simpleddp");
const WebSocket = require("isomorphic-ws");
const { rawEndpoint, tracedSocketConstructor } = require("../common");

class SimpleDdpAdapter {
  static ejson = true;
  static transports = ["raw", "sockjs-raw"];

  constructor({ origin, transport, wire }) {
    this.wire = wire;
    this.endpoint = rawEndpoint(origin, transport);
    this.client = new simpleDDP({
      endpoint: this.endpoint,
      SocketConstructor: tracedSocketConstructor(WebSocket, wire),
      autoConnect: false,
      autoReconnect: false,
    });
    this.subs = new Map();
    this.seededCalls = 0;
  }

  connect() {
    return this.client.connect();
  }

  async subscribe(name, params) {
    const sub = this.client.subscribe(name, ...params);
    const id = sub.subscriptionId;
    this.subs.set(id, sub);
    await sub.ready();
    return id;
  }

  unsubscribe(id) {
    const sub = this.subs.get(id);
    this.subs.delete(id);
    // remove(): unsub on the wire and forget the sub, so the same name/params can be
    // subscribed again (simpleddp otherwise hands back the existing sub object).
    sub.remove();
  }

  call(name, params) {
    return this.client.apply(name, params);
  }

  callWithSeed(name, params, seed) {
    const connection = this.client.ddpConnection;
    this.seededCalls += 1;
    const id = `seeded-${this.seededCalls}`;
    return new Promise((resolve, reject) => {
      const onResult = (message) => {
        if (message.id !== id) return;
        connection.removeListener("result", onResult);
        if (message.error) reject(message.error);
        else resolve(message.result);
      };
      connection.on("result", onResult);
      connection.messageQueue.push({ msg: "method", id, method: name, params, randomSeed: seed });
    });
  }

  docs(collection) {
    return (this.client.collections[collection] || []).map(({ id, ...fields }) => ({
      _id: id,
      ...fields,
    }));
  }

  close() {
    return this.client.disconnect();
  }
}

module.exports = SimpleDdpAdapter;
