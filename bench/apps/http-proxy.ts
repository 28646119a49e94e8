// Row http-proxy-fastify: node-http-proxy (the npm `http-proxy` package) in one process on
// 127.0.0.1:PORT, forwarding to UPSTREAM (the Fastify cluster) through a keep-alive agent, with
// X-Forwarded-* added (xfwd) as Stratum's proxy does. Prints "ready" once it listens.
import http from 'node:http';
import httpProxy from 'http-proxy';

const port = Number(process.env.PORT);
const upstream = process.env.UPSTREAM ?? 'http://127.0.0.1:3000';

const agent = new http.Agent({ keepAlive: true, maxFreeSockets: 64 });
const proxy = httpProxy.createProxyServer({ target: upstream, agent, xfwd: true });
proxy.on('error', (err, _req, res) => {
  console.error(`proxy error: ${err.message}`);
  if (res instanceof http.ServerResponse && !res.headersSent) {
    res.writeHead(502, { 'content-type': 'text/plain' });
    res.end('bad gateway\n');
  } else {
    res.destroy();
  }
});

const server = http.createServer((req, res) => proxy.web(req, res));
server.listen(port, '127.0.0.1', () => console.log('ready'));
