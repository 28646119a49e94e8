// HTTP upstreams on undici's Pool: behaviours the pool brings that the fault and app tests do
// not pin — kept connections reused request after request, a client's Expect: 100-continue
// answered by the proxy (undici refuses to send Expect), a body streamed straight through
// (requestBuffering off) arriving whole, and the client still answered when the upstream closes
// without reading that body.
import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT, startStratum, type StratumProcess } from '../helpers/stratum.ts';
import { writeConfig } from '../hardening/helpers.ts';

interface Seen {
  url: string;
  headers: http.IncomingHttpHeaders;
  bytes: number;
  sha256: string;
  socket: Socket;
}

describe('HTTP upstream (undici Pool)', () => {
  let upstream: http.Server;
  let stratum: StratumProcess;
  const connections: Socket[] = [];
  const seen: Seen[] = [];

  beforeAll(async () => {
    upstream = http.createServer((req, res) => {
      // /early answers at once, without reading the body it was sent.
      if (req.url?.startsWith('/up/early')) {
        res.writeHead(413, { 'content-type': 'text/plain', connection: 'close' });
        res.end('too big for me\n');
        return;
      }
      const hash = createHash('sha256');
      let bytes = 0;
      req.on('data', (c: Buffer) => {
        bytes += c.length;
        hash.update(c);
      });
      req.on('end', () => {
        const sha256 = hash.digest('hex');
        seen.push({ url: req.url ?? '', headers: req.headers, bytes, sha256, socket: req.socket });
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ bytes, sha256 }));
      });
    });
    upstream.on('connection', (s: Socket) => connections.push(s));
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', () => r()));
    const port = (upstream.address() as AddressInfo).port;
    const { file } = writeConfig(
      'http-upstream',
      `
listen: 127.0.0.1:0
admin: { listen: 127.0.0.1:0 }
app: { module: ${join(REPO_ROOT, 'test/hardening/fixtures/app.ts')} }
pool: { workers: 1 }
proxy: { requestBuffering: false }
routes:
  - { path: /up/, target: "http://127.0.0.1:${port}" }
  - { path: /, target: pool }
`,
    );
    stratum = await startStratum(['serve', '--config', file]);
  });

  afterAll(async () => {
    await stratum?.stop();
    upstream?.closeAllConnections();
    await new Promise((r) => upstream?.close(r));
  });

  function request(
    path: string,
    opts: { method?: string; headers?: Record<string, string>; body?: Buffer } = {},
  ): Promise<{ status: number; body: string }> {
    return new Promise((resolve, reject) => {
      const req = http.request(
        `${stratum.front}${path}`,
        { method: opts.method ?? 'GET', headers: opts.headers, agent: false },
        (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (body += c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        },
      );
      req.on('error', reject);
      if (opts.headers?.expect) req.once('continue', () => req.end(opts.body));
      else req.end(opts.body);
    });
  }

  it('requests one after another reuse one kept connection to the upstream', async () => {
    const before = connections.length;
    for (let i = 0; i < 20; i++) expect((await request(`/up/seq/${i}`)).status).toBe(200);
    expect(connections.length - before).toBe(1);
    const last = seen.slice(-20);
    expect(new Set(last.map((s) => s.socket)).size).toBe(1);
  });

  it(
    "a client's Expect: 100-continue is answered by the proxy; the body reaches the upstream whole, without Expect",
    async () => {
      const body = Buffer.from('continue with this body');
      const r = await request('/up/expect', {
        method: 'POST',
        headers: { expect: '100-continue', 'content-length': String(body.length) },
        body,
      });
      expect(r.status).toBe(200);
      const got = seen.find((s) => s.url === '/up/expect')!;
      expect(got.bytes).toBe(body.length);
      expect(got.headers.expect).toBeUndefined();
    },
  );

  it('a 5 MB body streamed through (requestBuffering off) arrives byte-exact', async () => {
    const body = Buffer.alloc(5 * 1024 * 1024);
    for (let i = 0; i < body.length; i++) body[i] = (i * 31) & 0xff;
    const r = await request('/up/upload', { method: 'POST', headers: { 'content-length': String(body.length) }, body });
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body)).toEqual({ bytes: body.length, sha256: createHash('sha256').update(body).digest('hex') });
  });

  it(
    'an upstream that answers and closes without reading a streamed body: the client still gets a whole answer',
    async () => {
      // The upstream's close races our write of the body: its 413 arrives, or our write fails
      // first (EPIPE) and the client gets a 502 — node:http's client lost the same race. Either
      // way an answer, never a cut connection: the client's request stream is not undici's to
      // destroy.
      const body = Buffer.alloc(4 * 1024 * 1024, 0x61);
      const r = await request('/up/early', {
        method: 'POST',
        headers: { 'content-length': String(body.length) },
        body,
      });
      expect([413, 502]).toContain(r.status);
      if (r.status === 413) expect(r.body).toBe('too big for me\n');
    },
  );
});
