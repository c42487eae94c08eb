'use strict';
// The benchmark's load generator: N idle DDP sessions on one relay, each subscribed to
// books.all, recording when each session receives each benchmark write.
//
// Started by loadtest/bench/generator.py (never by hand): `node loadgen.js '<options JSON>'`
// with NODE_PATH pointing at a node_modules that holds `ws` (tests/e2e/node/node_modules).
// Options: url, sessions, concurrency, deflate, subscribe, prefix, maxWrites, rampTimeoutMs,
// wire ('ddp', the default, or 'socketio': gencommon.js's WIRES).
//
// Protocol: JSON lines (gencommon.js). stdout carries events to the driver, stdin commands.
//   events:   {"event":"progress",...} during the ramp, {"event":"ramped",...} once every
//             session is ready (or failed, or the ramp timed out), then once a second
//             {"event":"delivered","total":n}, {"event":"all","w":i} when every live
//             session has received write i, {"event":"report",...}, {"event":"closed"}.
//   commands: {"cmd":"report","commits":[epoch ms per write],"raw":bool} (raw: each
//             write's latencies too) and {"cmd":"close"}.
//
// A write is recognised by the `changed` message of bookstore.book whose `title` is
// `<prefix><write index>`; the receive time is taken on arrival, before parsing.
// Everything here is bounded: the ramp by rampTimeoutMs, the run by the driver, and the
// process exits when stdin closes (the driver died).

const { commands, deliveries, fleet, subscriber } = require('./gencommon.js');

const opts = JSON.parse(process.argv[2]);
const W = Math.max(1, opts.maxWrites);
const PREFIX = opts.prefix;
// DDP: sub books.all; Socket.IO (opts.wire, the `versus` reference peer): join the room
// `books`, acknowledged (emit id 0).
const SOCKETIO = opts.wire === 'socketio';
const SUB = SOCKETIO ? '420["join","books"]' : '{"msg":"sub","id":"b","name":"books.all","params":[]}';
const SUB_ID = SOCKETIO ? '0' : 'b';

const f = fleet(opts);
const log = deliveries(f, W);
let foreign = 0; // benchmark-looking titles with an index outside [0, W)

function onWrite(s, title, t) {
  const w = Number(title.slice(PREFIX.length));
  if (!Number.isInteger(w) || w < 0 || w >= W) {
    foreign++;
    return;
  }
  log.record(w, s, t);
}

const open = subscriber(f, log, {
  sub: () => (opts.subscribe ? SUB : null),
  subId: SUB_ID,
  kind: (msg) => msg.msg,
  onMessage: (s, session, msg, t) => {
    // Anything but a benchmark write (the initial books and authors, result, updated...)
    // is ignored.
    if (msg.msg === 'changed' && msg.fields && typeof msg.fields.title === 'string' &&
        msg.fields.title.startsWith(PREFIX)) {
      onWrite(s, msg.fields.title, t);
    }
  },
});

function report(commits, raw) {
  const usage = process.cpuUsage();
  log.report(commits, { foreign }, {
    cpuUser: usage.user / 1000,
    cpuSystem: usage.system / 1000,
    rssBytes: process.memoryUsage().rss,
  }, 0, raw);
}

commands(
  { report: (cmd) => report(cmd.commits || [], Boolean(cmd.raw)), close: () => f.close() },
  () => f.close(), // the driver went away: never outlive it
);

// From the ramp on, the deliveries so far once a second: the driver waits while they grow.
f.ramp(open, () => log.watch());
