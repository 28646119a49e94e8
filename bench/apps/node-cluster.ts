// Row nginx-node: a plain node:http hello server in WORKERS (2) processes (node:cluster,
// round-robin) on 127.0.0.1:PORT, behind nginx's keep-alive proxy_pass. Same bytes as every row.
import cluster from 'node:cluster';
import http from 'node:http';

const port = Number(process.env.PORT);
const workers = Number(process.env.WORKERS ?? 2);

if (cluster.isPrimary) {
  let listening = 0;
  cluster.on('listening', () => {
    if (++listening === workers) console.log('ready');
  });
  cluster.on('exit', (worker, code, signal) => {
    console.error(`worker ${worker.process.pid} exited (${signal ?? code})`);
    process.exit(1);
  });
  for (let i = 0; i < workers; i++) cluster.fork();
} else {
  const server = http.createServer((_req, res) => {
    const body = JSON.stringify({ hello: 'world' });
    res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
  // nginx keeps its upstream connections for up to 60 s idle; do not close them first.
  server.keepAliveTimeout = 65_000;
  server.listen(port, '127.0.0.1');
}
