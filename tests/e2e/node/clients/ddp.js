"use strict";
/**
 * npm `ddp` (oortcloud/node-ddp-client): faye-websocket to the URL given, EJSON via
 * ddp-ejson, keeps its own `collections` map, reports a refused connection itself.
 */
const DDPClient = require("ddp");
const { rawEndpoint } = require("../common");

class DdpAdapter {
  static ejson = true;
  static transports = ["raw", "sockjs-raw"];

  constructor({ origin, transport, wire }) {
    this.wire = wire;
    this.endpoint = rawEndpoint(origin, transport);
    this.client = new DDPClient({
      url: this.endpoint,
      autoReconnect: false,
      maintainCollections: true,
      ddpVersion: "1",
    });
    const send = this.client._send.bind(this.client);
    this.client._send = (data) => {
      wire.out(this.client.EJSON.stringify(data));
      send(data);
    };
    this.client.on("message", (data) => wire.in_(data));
  }

  connect() {
    return new Promise((resolve, reject) => {
      this.client.connect((error) => (error ? reject(new Error(String(error))) : resolve()));
    });
  }

  subscribe(name, params) {
    return new Promise((resolve, reject) => {
      const id = this.client.subscribe(name, params, (error) =>
        error ? reject(error) : resolve(id),
      );
    });
  }

  unsubscribe(id) {
    this.client.unsubscribe(id);
  }

  call(name, params) {
    return new Promise((resolve, reject) => {
      this.client.call(name, params, (error, result) => (error ? reject(error) : resolve(result)));
    });
  }

  callWithSeed(name, params, seed) {
    return new Promise((resolve, reject) => {
      this.client.callWithRandomSeed(name, params, seed, (error, result) =>
        error ? reject(error) : resolve(result),
      );
    });
  }

  docs(collection) {
    return Object.values(this.client.collections[collection] || {});
  }

  close() {
    this.client.close();
  }
}

module.exports = DdpAdapter;
