'use strict';
// The peer of the `axum` example: a Node cluster serving with Node's own `http`
// module (what a Node application uses), for `../shared/bench/run.sh --server`.
//
//   usage: NODE_CLUSTER_SCHED_POLICY=rr|none [NODE_REUSE_PORT=1] node node-http-cluster.js PORT WORKERS
//
// Each worker answers every request with `200`, a small body and `X-Worker: <id>`;
// `http` honours `Connection: close` and keep-alive by itself. The primary prints
// `ready ...` once every worker listens; SIGTERM/SIGINT stop the workers and exit.
const cluster = require('node:cluster');
const http = require('node:http');

const port = Number(process.argv[2]);
const workers = Number(process.argv[3] || 2);
if (!Number.isInteger(port) || port <= 0 || !Number.isInteger(workers) || workers < 1) {
  console.error('usage: node node-http-cluster.js PORT WORKERS');
  process.exit(2);
}

if (cluster.isPrimary) {
  const listening = new Set();
  let stopping = false;
  // A reusePort worker binds by itself: each worker also says so in a message.
  const onListening = (w) => {
    if (listening.has(w.id)) return;
    listening.add(w.id);
    if (listening.size === workers) console.log(`ready port=${port} pid=${process.pid}`);
  };
  cluster.on('listening', onListening);
  cluster.on('message', (w, m) => { if (m === 'listening') onListening(w); });
  cluster.on('exit', () => {
    if (stopping && Object.keys(cluster.workers).length === 0) process.exit(0);
  });
  const stop = () => {
    if (stopping) return;
    stopping = true;
    for (const w of Object.values(cluster.workers)) w.process.kill('SIGTERM');
    setTimeout(() => process.exit(0), 3000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  for (let i = 0; i < workers; i++) cluster.fork();
} else {
  const id = String(cluster.worker.id);
  const body = `hello from worker ${id}\n`;
  const server = http.createServer((req, res) => {
    // Content-Length, as axum sends it (the bench's load generator reads by length).
    res.writeHead(200, {
      'Content-Type': 'text/plain',
      'Content-Length': Buffer.byteLength(body),
      'X-Worker': id,
    });
    res.end(body);
  });
  server.keepAliveTimeout = 5000;
  server.listen({ port, host: '127.0.0.1', reusePort: process.env.NODE_REUSE_PORT === '1' }, () => {
    process.send('listening');
  });
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
}
