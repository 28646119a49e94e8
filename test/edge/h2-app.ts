// Fixture app for the HTTP/2 tests (a (req, res) listener): echoes the request as the app sees it,
// answers with trailers, and a body of a given size.
import type { IncomingMessage, ServerResponse } from 'node:http';

function json(res: ServerResponse, value: unknown): void {
  const body = Buffer.from(JSON.stringify(value));
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length });
  res.end(body);
}

export default function app(req: IncomingMessage, res: ServerResponse): void {
  const url = new URL(req.url ?? '/', 'http://h2.invalid');
  if (url.pathname === '/echo') {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () =>
      json(res, {
        method: req.method,
        url: req.url,
        httpVersion: req.httpVersion,
        headers: req.headers,
        body: Buffer.concat(chunks).toString(),
      }),
    );
    return;
  }
  if (url.pathname === '/slow') {
    const ms = Math.min(Number(url.searchParams.get('ms')) || 0, 10_000);
    setTimeout(() => json(res, { slept: ms, pid: process.pid }), ms);
    return;
  }
  if (url.pathname === '/trailers') {
    res.writeHead(200, { 'content-type': 'text/plain', trailer: 'x-checksum' });
    res.write('hello ');
    res.write('trailers');
    res.addTrailers({ 'x-checksum': 'c0ffee' });
    res.end();
    return;
  }
  if (url.pathname === '/bytes') {
    const n = Math.min(Number(url.searchParams.get('n')) || 0, 50_000_000);
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': n });
    const chunk = Buffer.alloc(64 * 1024, 120);
    let left = n;
    const pump = () => {
      while (left > 0) {
        const part = left >= chunk.length ? chunk : chunk.subarray(0, left);
        left -= part.length;
        if (!res.write(part)) return void res.once('drain', pump);
      }
      res.end();
    };
    return pump();
  }
  res.writeHead(200, { 'content-type': 'text/plain', connection: 'keep-alive', 'keep-alive': 'timeout=5' });
  res.end('ok\n');
}
