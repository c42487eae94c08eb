'use strict';
// Socket.IO 4.8, the reference peer of `python -m loadtest.bench versus`, deployed as a
// user comparing options would deploy it beside PostgreSQL: `node:cluster` workers (one
// per core), each LISTENing on the channel a trigger on bookstore_book NOTIFYs (the row
// as JSON, loadtest/bench/socketio.py installs it), each emitting every notification to
// its own sockets in the room `books`. A client joins with `join` (acknowledged). The
// WebSocket transport only: without sticky sessions, which node:cluster does not give,
// Socket.IO's HTTP long-polling cannot work across workers. Everything else is Socket.IO's
// default (no permessage-deflate, 25 s pings).
//
// Started by loadtest/bench/socketio.py (never by hand):
//   node socketio.js '{"port":N,"workers":W,"databaseUrl":"postgresql://...","channel":"..."}'
// with NODE_PATH at loadtest/peers/node_modules. JSON lines on stdout: {"event":"listening",
// "port":N,"workers":[pids]} once every worker listens; {"event":"sessions","by":{pid:n}}
// every second; {"event":"exit","pid":p,"code":c} when a worker dies. It exits when its
// stdin closes (the driver went away) and stops its workers with it.
//
// Must not: know anything of DDP or of the benchmark's writes: it only relays rows.

const cluster = require('node:cluster');
const http = require('node:http');

const opts = JSON.parse(process.argv[2]);

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function primary() {
  const sessions = {};
  let listening = 0;
  for (let i = 0; i < opts.workers; i++) cluster.fork();
  cluster.on('listening', () => {
    listening++;
    if (listening === opts.workers) {
      emit({ event: 'listening', port: opts.port, workers: Object.values(cluster.workers).map((w) => w.process.pid) });
    }
  });
  cluster.on('message', (worker, msg) => {
    if (msg && typeof msg.sessions === 'number') sessions[worker.process.pid] = msg.sessions;
  });
  cluster.on('exit', (worker, code, signal) => {
    emit({ event: 'exit', pid: worker.process.pid, code, signal });
  });
  setInterval(() => emit({ event: 'sessions', by: sessions }), 1000);
  function stop() {
    for (const worker of Object.values(cluster.workers)) worker.process.kill('SIGKILL');
    process.exit(0);
  }
  process.stdin.on('end', stop);
  process.stdin.on('close', stop);
  process.stdin.resume();
  process.on('SIGTERM', stop);
}

async function worker() {
  const { Server } = require('socket.io');
  const { Client } = require('pg');
  const server = http.createServer();
  const io = new Server(server, { transports: ['websocket'], serveClient: false });
  io.on('connection', (socket) => {
    socket.on('join', (room, ack) => {
      if (room !== 'books') return;
      socket.join(room);
      if (typeof ack === 'function') ack({ ok: true });
    });
  });
  const pg = new Client({ connectionString: opts.databaseUrl });
  pg.on('notification', (n) => {
    let row;
    try {
      row = JSON.parse(n.payload);
    } catch (e) {
      return;
    }
    io.to('books').emit('changed', row);
  });
  pg.on('error', (err) => {
    console.error('postgres: ' + err.message);
    process.exit(1);
  });
  await pg.connect();
  await pg.query('LISTEN ' + opts.channel);
  setInterval(() => process.send({ sessions: io.engine.clientsCount }), 1000);
  server.listen(opts.port, '127.0.0.1');
}

if (cluster.isPrimary) {
  primary();
} else {
  worker().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
