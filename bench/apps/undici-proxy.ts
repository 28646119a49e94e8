// Row undici-proxy-fastify: a plain proxy on an undici Pool in one process on 127.0.0.1:PORT,
// forwarding to UPSTREAM (the Fastify cluster) with X-Forwarded-* added, as http-proxy.ts does
// with node:http. The reference for Stratum's HTTP upstream, which is built the same way: what
// Stratum costs on top is the gap between the two rows. Prints "ready" once it listens.
import http from 'node:http';
import { Pool, type Dispatcher } from 'undici';

const port = Number(process.env.PORT);
const upstream = process.env.UPSTREAM ?? 'http://127.0.0.1:3000';
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-connection', 'expect']);

const pool = new Pool(upstream, { connections: 1024, pipelining: 1 });

function requestHeaders(req: http.IncomingMessage): string[] {
  const out: string[] = [];
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) if (!HOP_BY_HOP.has(raw[i]!.toLowerCase())) out.push(raw[i]!, raw[i + 1]!);
  out.push('x-forwarded-for', req.socket.remoteAddress ?? '', 'x-forwarded-proto', 'http', 'x-forwarded-host', req.headers.host ?? '');
  return out;
}

function badGateway(res: http.ServerResponse, err: Error): void {
  console.error(`proxy error: ${err.message}`);
  if (!res.headersSent) {
    res.writeHead(502, { 'content-type': 'text/plain' });
    res.end('bad gateway\n');
  } else res.destroy();
}

const server = http.createServer((req, res) => {
  const handler: Dispatcher.DispatchHandler = {
    onRequestStart() {},
    onResponseStart(controller, statusCode, _headers, statusMessage) {
      if (statusCode < 200) return;
      const raw = controller.rawHeaders as Buffer[];
      const headers: string[] = [];
      for (let i = 0; i < raw.length; i += 2) {
        const name = raw[i]!.toString('latin1');
        if (!HOP_BY_HOP.has(name.toLowerCase())) headers.push(name, raw[i + 1]!.toString('latin1'));
      }
      res.writeHead(statusCode, statusMessage || undefined, headers);
    },
    onResponseData(controller, chunk) {
      if (!res.write(chunk)) {
        controller.pause();
        res.once('drain', () => controller.resume());
      }
    },
    onResponseEnd() {
      res.end();
    },
    onResponseError(_controller, err) {
      badGateway(res, err);
    },
  };
  const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
  pool.dispatch({ method: req.method ?? 'GET', path: req.url ?? '/', headers: requestHeaders(req), body: hasBody ? req : null }, handler);
});
server.listen(port, '127.0.0.1', () => console.log('ready'));
