'use strict';
// What the window and storm generators (windowgen.js, stormgen.js) share: the JSON-lines
// protocol with the driver (events on stdout, commands on stdin, exit when stdin closes),
// the clock, quantiles, and opening sessions a bounded number at a time.
//
// Must not: know what a session subscribes or what a report holds.

const readline = require('readline');
const { performance } = require('perf_hooks');

function now() {
  return performance.timeOrigin + performance.now();
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function quantile(sorted, q) {
  // Nearest-rank on a sorted array (q in [0, 1]); null when empty (JSON has no NaN).
  if (sorted.length === 0) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i];
}

// Runs handlers[cmd.cmd](cmd) for each command line; onClose when the driver goes away.
function commands(handlers, onClose) {
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    let cmd;
    try {
      cmd = JSON.parse(line);
    } catch (e) {
      return;
    }
    const handler = handlers[cmd.cmd];
    if (handler) handler(cmd);
  });
  rl.on('close', onClose);
}

// Opens sessions 0..n-1, at most `concurrency` in flight: open(s, done) starts session s
// and calls done(ok) once (ready or failed); onRamped(timedOut) once all are done or
// after timeoutMs. Returns the counters ({ready, failed, inflight, next, ramped}); the
// first sessions open on the next tick, so the caller holds them before any callback.
function ramp(n, concurrency, timeoutMs, open, onRamped) {
  const stats = { ready: 0, failed: 0, inflight: 0, next: 0, ramped: false };
  let timer = null;
  function finish(timedOut) {
    if (stats.ramped) return;
    stats.ramped = true;
    clearTimeout(timer);
    onRamped(timedOut);
  }
  function pump() {
    while (!stats.ramped && stats.inflight < concurrency && stats.next < n) {
      const s = stats.next++;
      stats.inflight++;
      let settled = false;
      open(s, (ok) => {
        if (settled) return;
        settled = true;
        stats.inflight--;
        if (ok) stats.ready++;
        else stats.failed++;
        pump();
      });
    }
    if (!stats.ramped && stats.next >= n && stats.inflight === 0) finish(false);
  }
  timer = setTimeout(() => finish(true), timeoutMs);
  setImmediate(pump);
  return stats;
}

function noteError(errors, kind) {
  errors[kind] = (errors[kind] || 0) + 1;
}

module.exports = { now, emit, quantile, commands, ramp, noteError };
