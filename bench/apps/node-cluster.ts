// Row nginx-node: a plain node:http hello server in node:cluster (see cluster.ts) on
// 127.0.0.1:PORT, behind nginx's keep-alive proxy_pass. Same bytes as every row.
import http from 'node:http';
import { port, runCluster } from './cluster.ts';

await runCluster(() => {
  const server = http.createServer((_req, res) => {
    const body = JSON.stringify({ hello: 'world' });
    res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
  // nginx keeps its upstream connections for up to 60 s idle; do not close them first.
  server.keepAliveTimeout = 65_000;
  server.listen(port, '127.0.0.1');
});
