// The HTTP edge under hostile clients, against a real `stratum serve`: an HTTP upstream that
// records every request it parses (/rec), the worker pool (/), a static folder (/static), an
// upstream whose response headers try to inject lines (/inject) and a uwsgi server doing the
// same (/uinject). Raw sockets send the bytes exactly as written.
//
// The temp config uses small limits so the timeouts are quick: clientHeaderTimeout 1 s,
// clientBodyTimeout 1 s, maxHeaderSize 8k, clientMaxBodySize 1m; the pool has one worker with
// room for two requests and a queue of two, so anything holding it would show at once.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT, startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';
import { normalisePath, pathOf } from '../../src/proxy/routes.ts';
import { RawConn, exchange, fakeUwsgi, header, portOf, recordingUpstream, scriptedUpstream, sleep, writeConfig } from './helpers.ts';

afterAll(stopAllStratum);

const SECRET = 'TOP-SECRET-MARKER-7f3a';

let stratum: StratumProcess;
let port: number;
let rec: Awaited<ReturnType<typeof recordingUpstream>>;
let closers: Array<() => void> = [];

beforeAll(async () => {
  rec = await recordingUpstream();
  const inject = await scriptedUpstream((socket, request) => {
    const kind = /GET \/inject\/(\w+)/.exec(request)?.[1];
    const line: Record<string, string> = {
      cr: 'X-A: a\rX-Injected: 1\r\n',
      lf: 'X-A: a\nX-Injected: 1\r\n',
      fold: 'X-A: a\r\n X-Injected: 1\r\n',
      nul: 'X-A: a\0X-Injected: 1\r\n',
    };
    socket.end(`HTTP/1.1 200 OK\r\n${line[kind ?? ''] ?? ''}Content-Length: 2\r\nConnection: close\r\n\r\nok`);
  });
  const uinject = await fakeUwsgi((socket, req) => {
    const uri = req.vars[req.vars.indexOf('REQUEST_URI') + 1] ?? '';
    const line = uri.endsWith('/cr') ? 'X-A: a\rX-Injected: 1\r\n' : uri.endsWith('/nul') ? 'X-A: a\0b\r\n' : 'X-A: a\r\n';
    socket.end(`HTTP/1.1 200 OK\r\n${line}Content-Length: 2\r\n\r\nok`);
  });
  closers = [rec.close, inject.close, uinject.close];
  const { dir, file } = writeConfig('edge', '');
  const root = join(dir, 'public');
  mkdirSync(join(root, 'sub'), { recursive: true });
  writeFileSync(join(root, 'ok.txt'), 'public file\n');
  writeFileSync(join(root, 'sub', 'inner.txt'), 'inner file\n');
  writeFileSync(join(dir, 'secret.txt'), `${SECRET}\n`);
  writeFileSync(file, `
listen: 127.0.0.1:0
admin: { listen: 127.0.0.1:0 }
app: { module: ${join(REPO_ROOT, 'test/hardening/fixtures/app.ts')} }
pool: { workers: 1, maxInflight: 2, listen: 2 }
proxy:
  clientHeaderTimeout: 1
  clientBodyTimeout: 1
  maxHeaderSize: 8k
  clientMaxBodySize: 1m
log: { access: false }
routes:
  - { path: /rec, target: "${rec.url}" }
  - { path: /inject, target: "http://127.0.0.1:${inject.port}" }
  - { path: /uinject, target: "${uinject.target}" }
  - { path: /static, target: "static:${root}" }
  - { path: /, target: pool }
`);
  stratum = await startStratum(['serve', '--config', file]);
  port = portOf(stratum.front!);
});

afterAll(() => {
  for (const c of closers) c();
});

const H = 'Host: edge.test\r\n';

describe('request smuggling is refused at the proxy', () => {
  const attempts: Record<string, string> = {
    'Content-Length with Transfer-Encoding': `POST /rec HTTP/1.1\r\n${H}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
    'Transfer-Encoding with Content-Length': `POST /rec HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n`,
    'CL.TE with a smuggled request in the body': `POST /rec HTTP/1.1\r\n${H}Content-Length: 49\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /rec/smuggled HTTP/1.1\r\n${H}\r\n`,
    'duplicate differing Content-Length': `POST /rec HTTP/1.1\r\n${H}Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde`,
    'duplicate equal Content-Length': `POST /rec HTTP/1.1\r\n${H}Content-Length: 4\r\nContent-Length: 4\r\n\r\nabcd`,
    'Content-Length list': `POST /rec HTTP/1.1\r\n${H}Content-Length: 4, 4\r\n\r\nabcd`,
    'Content-Length past 2^64': `POST /rec HTTP/1.1\r\n${H}Content-Length: 99999999999999999999999\r\n\r\nabcd`,
    'Content-Length with a sign': `POST /rec HTTP/1.1\r\n${H}Content-Length: +4\r\n\r\nabcd`,
    'obs-fold': `GET /rec HTTP/1.1\r\n${H}X-A: a\r\n b\r\n\r\n`,
    'obs-fold hiding Transfer-Encoding': `POST /rec HTTP/1.1\r\n${H}Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n`,
    'bare LF line endings': `GET /rec HTTP/1.1\n${H.replace('\r', '')}\n`,
    'bare LF inside the headers': `GET /rec HTTP/1.1\r\nHost: edge.test\nX-B: 1\r\n\r\n`,
    'bare CR inside a header': `GET /rec HTTP/1.1\r\n${H}X-B: 1\rX-C: 2\r\n\r\n`,
    'NUL inside a header': `GET /rec HTTP/1.1\r\n${H}X-B: a\0b\r\n\r\n`,
    'space before the colon': `POST /rec HTTP/1.1\r\n${H}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n`,
    'Transfer-Encoding not ending in chunked': `POST /rec HTTP/1.1\r\n${H}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n`,
    'unknown Transfer-Encoding': `POST /rec HTTP/1.1\r\n${H}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n`,
    'repeated Transfer-Encoding': `POST /rec HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
    'Transfer-Encoding on HTTP/1.0': `POST /rec HTTP/1.0\r\n${H}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
    'two Host headers': `GET /rec HTTP/1.1\r\nHost: edge.test\r\nHost: other.test\r\n\r\n`,
    'two Host headers on an Upgrade request': `GET /rec HTTP/1.1\r\nHost: edge.test\r\nHost: other.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n`,
    'invalid chunk size': `POST /rec HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n`,
    'negative chunk size': `POST /rec HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\n`,
    'chunk size overflow': `POST /rec HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nabc\r\n0\r\n\r\n`,
    'chunk size with bare LF': `POST /rec HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n`,
    'chunk data longer than its size': `POST /rec HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n`,
    'bad chunk after good ones': `POST /rec HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nworld\r\nq\r\n\r\n`,
  };

  for (const [name, bytes] of Object.entries(attempts)) {
    it(`${name}: 400, connection closed, the upstream saw nothing`, async () => {
      const before = rec.seen.length;
      const r = await exchange(port, bytes, { waitClose: true });
      expect(r.status, r.raw).toBe(400);
      expect(r.closedAfter).toBe(true);
      await sleep(50);
      expect(rec.seen.slice(before)).toEqual([]);
    });
  }

  it('a well-formed chunked request reaches the upstream exactly once, re-framed with Content-Length', async () => {
    const before = rec.seen.length;
    const r = await exchange(port, `POST /rec/ok HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n`);
    expect(r.status).toBe(200);
    const seen = rec.seen.slice(before);
    expect(seen).toHaveLength(1);
    expect(seen[0]!.url).toBe('/rec/ok');
    expect(seen[0]!.body.toString()).toBe('hello world');
    const names = seen[0]!.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
    expect(names).not.toContain('transfer-encoding');
    expect(header(seen[0]!, 'content-length')).toBe('11');
  });

  it('a valid request pipelined before a smuggling attempt is served; the attempt is not', async () => {
    const before = rec.seen.length;
    const c = await RawConn.open(port);
    c.write(`GET /rec/first HTTP/1.1\r\n${H}\r\nPOST /rec/second HTTP/1.1\r\n${H}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`);
    const first = await c.next();
    expect(first.status).toBe(200);
    const second = await c.next();
    expect(second.status === 400 || second.status === null).toBe(true);
    await c.closed;
    expect(rec.seen.slice(before).map((s) => s.url)).toEqual(['/rec/first']);
  });
});

describe('sizes', () => {
  it('headers over maxHeaderSize get 431', async () => {
    const r = await exchange(port, `GET /rec HTTP/1.1\r\n${H}X-Big: ${'a'.repeat(10_000)}\r\n\r\n`, { waitClose: true });
    expect(r.status).toBe(431);
    expect(r.closedAfter).toBe(true);
  });

  it('a body announced over the limit gets 413 at once, unread: 200 MB announced, a few KB sent', async () => {
    const before = rec.seen.length;
    const c = await RawConn.open(port);
    const t0 = performance.now();
    c.write(`POST /rec HTTP/1.1\r\n${H}Content-Length: ${200 * 1024 * 1024}\r\n\r\n`);
    c.write(Buffer.alloc(4096, 0x61));
    const r = await c.next(3000);
    const ms = performance.now() - t0;
    expect(r.status).toBe(413);
    expect(ms).toBeLessThan(1000);
    console.log(`413 for 200 MB announced (limit 1m) after ${ms.toFixed(1)} ms`);
    expect(header(r, 'connection')).toBe('close');
    // The connection ends (lingering close: it does not wait for 200 MB).
    expect(await c.closed).toBeLessThan(6_000);
    expect(rec.seen.length).toBe(before);
  });

  it('Expect: 100-continue over the limit gets 413 and no invitation to send', async () => {
    const c = await RawConn.open(port);
    c.write(`POST /rec HTTP/1.1\r\n${H}Content-Length: ${5 * 1024 * 1024}\r\nExpect: 100-continue\r\n\r\n`);
    const r = await c.next(3000);
    expect(r.status).toBe(413);
    expect(c.raw).not.toContain('100 Continue');
    c.destroy();
  });

  it('a chunked body that grows past the limit gets 413 once it passes it', async () => {
    const before = rec.seen.length;
    const c = await RawConn.open(port);
    c.write(`POST /rec HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n`);
    const chunk = Buffer.alloc(64 * 1024, 0x62);
    for (let i = 0; i < 20; i++) c.write(Buffer.concat([Buffer.from(`${chunk.length.toString(16)}\r\n`), chunk, Buffer.from('\r\n')]));
    const r = await c.next(5000);
    expect(r.status).toBe(413);
    c.destroy();
    expect(rec.seen.length).toBe(before);
  });
});

describe('slow clients time out and cannot exhaust workers or sockets', () => {
  it('a connection that sends nothing, or its head too slowly, gets 408 after clientHeaderTimeout', async () => {
    const idle = await RawConn.open(port);
    const slow: RawConn[] = [];
    for (let i = 0; i < 40; i++) {
      const c = await RawConn.open(port);
      c.write('GET /rec HTTP/1.1\r\n');
      slow.push(c);
    }
    const trickle = setInterval(() => {
      for (const c of slow) if (!c.socket.destroyed) c.write('X-Slow: 1\r\n');
    }, 200);
    try {
      // Meanwhile the service answers everyone else.
      const t0 = performance.now();
      for (let i = 0; i < 5; i++) expect((await fetch(`${stratum.front}/`)).status).toBe(200);
      expect(performance.now() - t0).toBeLessThan(1000);
      const closedAfter = await Promise.all([idle, ...slow].map((c) => c.closed));
      for (const ms of closedAfter) {
        expect(ms).toBeGreaterThan(900);
        expect(ms).toBeLessThan(2500);
      }
      console.log(`clientHeaderTimeout 1 s: 1 silent + 40 trickling connections got 408 and were closed after ${Math.min(...closedAfter).toFixed(0)}–${Math.max(...closedAfter).toFixed(0)} ms`);
      expect(idle.raw).toMatch(/^HTTP\/1\.1 408 /);
      for (const c of slow) expect(c.raw).toMatch(/^HTTP\/1\.1 408 /);
    } finally {
      clearInterval(trickle);
    }
  });

  it('stalled bodies get 408 after clientBodyTimeout and never hold the pool', async () => {
    // The pool has room for 2 requests and 2 waiting: 20 stalled uploads would fill it 5 times
    // over if they reached it. Buffering keeps them in the proxy until their bodies are whole.
    const stalled: RawConn[] = [];
    for (let i = 0; i < 20; i++) {
      const c = await RawConn.open(port);
      c.write(`POST /echo HTTP/1.1\r\n${H}Content-Length: 1000\r\n\r\n${'x'.repeat(10)}`);
      stalled.push(c);
    }
    const t0 = performance.now();
    for (let i = 0; i < 10; i++) expect((await fetch(`${stratum.front}/`)).status).toBe(200);
    // As many at once as the pool holds (2 running, 2 waiting): all served.
    expect(await Promise.all(Array.from({ length: 4 }, () => fetch(`${stratum.front}/`).then((r) => r.status)))).toEqual([200, 200, 200, 200]);
    expect(performance.now() - t0).toBeLessThan(1000);
    const replies = await Promise.all(stalled.map((c) => c.next(4000)));
    for (const r of replies) expect(r.status).toBe(408);
    const closed = await Promise.all(stalled.map((c) => c.closed));
    for (const ms of closed) expect(ms).toBeLessThan(4000);
    console.log(`clientBodyTimeout 1 s: 20 stalled uploads got 408 and were closed after ${Math.min(...closed).toFixed(0)}–${Math.max(...closed).toFixed(0)} ms`);
  });

  it('a body that keeps moving, however slowly, is not cut', async () => {
    const c = await RawConn.open(port);
    c.write(`POST /echo HTTP/1.1\r\n${H}Content-Length: 8\r\n\r\n`);
    for (let i = 0; i < 8; i++) {
      await sleep(300); // 2.4 s in all, never 1 s without a byte
      c.write('z');
    }
    const r = await c.next(3000);
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body.toString()).bodyLength).toBe(8);
    c.destroy();
  });
});

describe('CR/LF can never inject a header', () => {
  it('percent-encoded CR/LF in the target reaches the app still encoded, as no header', async () => {
    const r = await exchange(port, `GET /echo/%0d%0aX-Injected:%201?q=%0d%0aX-Injected:%202 HTTP/1.1\r\n${H}\r\n`);
    expect(r.status).toBe(200);
    const doc = JSON.parse(r.body.toString()) as { url: string; headers: string[] };
    expect(doc.url).toBe('/echo/%0d%0aX-Injected:%201?q=%0d%0aX-Injected:%202');
    expect(doc.headers.map((h) => h.toLowerCase())).not.toContain('x-injected');
  });

  it('a raw CR or LF in the target or a header value is refused with 400', async () => {
    for (const bytes of [`GET /echo/a\rX-Injected: 1 HTTP/1.1\r\n${H}\r\n`, `GET /echo HTTP/1.1\r\n${H}X-A: a\rX-Injected: 1\r\n\r\n`, `GET /echo HTTP/1.1\r\n${H}X-A: a\nX-Injected: 1\r\n\r\n`]) {
      const r = await exchange(port, bytes);
      expect(r.status, JSON.stringify(bytes)).toBe(400);
    }
  });

  for (const kind of ['cr', 'lf', 'fold', 'nul']) {
    it(`an HTTP upstream response header with ${kind} gets 502, nothing injected`, async () => {
      const r = await exchange(port, `GET /inject/${kind} HTTP/1.1\r\n${H}\r\n`);
      expect(r.status).toBe(502);
      expect(r.raw.toLowerCase()).not.toContain('x-injected');
    });
  }

  for (const kind of ['cr', 'nul']) {
    it(`a uwsgi upstream response header with ${kind} gets 502, nothing injected`, async () => {
      const r = await exchange(port, `GET /uinject/${kind} HTTP/1.1\r\n${H}\r\n`);
      expect(r.status).toBe(502);
      expect(r.raw.toLowerCase()).not.toContain('x-injected');
    });
  }

  it('an app cannot send CR/LF in a response header either', async () => {
    const r = await exchange(port, `GET /set-header?value=${encodeURIComponent('a\r\nX-Injected: 1')} HTTP/1.1\r\n${H}\r\n`);
    expect(r.status).toBe(500);
    expect(r.raw.toLowerCase()).not.toContain('x-injected:');
  });

  it('uwsgi vars carry CR/LF bytes of a decoded path as data, never as structure', async () => {
    const r = await exchange(port, `POST /echo/%0d%0a HTTP/1.1\r\n${H}X-Long: ${'v'.repeat(2000)}\r\nContent-Length: 3\r\n\r\nabc`);
    expect(r.status).toBe(200);
    const doc = JSON.parse(r.body.toString()) as { bodyLength: number; headers: string[] };
    expect(doc.bodyLength).toBe(3);
    expect(doc.headers[doc.headers.findIndex((h) => h.toLowerCase() === 'x-long') + 1]).toBe('v'.repeat(2000));
  });
});

describe('static routes cannot be escaped', () => {
  it('serves what is inside the root', async () => {
    const r = await exchange(port, `GET /static/ok.txt HTTP/1.1\r\n${H}\r\n`);
    expect(r.status).toBe(200);
    expect(r.body.toString()).toBe('public file\n');
    expect((await exchange(port, `GET /static/sub/inner.txt HTTP/1.1\r\n${H}\r\n`)).status).toBe(200);
  });

  const escapes = [
    '/static/../secret.txt',
    '/static/sub/../../secret.txt',
    '/static/%2e%2e/secret.txt',
    '/static/%2E%2E/secret.txt',
    '/static/..%2fsecret.txt',
    '/static/%2e%2e%2fsecret.txt',
    '/static/sub/%2e%2e%2f%2e%2e%2fsecret.txt',
    '/static/%252e%252e/secret.txt',
    '/static/%252e%252e%252fsecret.txt',
    '/static/..\\secret.txt',
    '/static/..%5csecret.txt',
    '/static/sub\\..\\..\\secret.txt',
    '/static/%2e%2e%5c%2e%2e%5csecret.txt',
    '/static/ok.txt%00.png',
    '/static/%00/../secret.txt',
    '/static/%c0%ae%c0%ae/secret.txt',
    '/static/.%2e/secret.txt',
    '/static//../secret.txt',
    '/static/./../secret.txt',
  ];
  for (const target of escapes) {
    // Routing sees the normalised path (nginx location matching): a target whose dot segments
    // leave /static never reaches the static route, the pool's app answers it (404); the rest
    // reach the static upstream, whose own check refuses them.
    const routed = normalisePath(pathOf(target)).startsWith('/static/') ? 'static' : 'pool';
    const what = routed === 'static' ? '403 from the static route' : 'routed to the pool: 404';
    it(`refuses ${target} (${what})`, async () => {
      const r = await exchange(port, `GET ${target} HTTP/1.1\r\n${H}\r\n`);
      expect(r.status).toBe(routed === 'static' ? 403 : 404);
      expect(r.raw).not.toContain(SECRET);
    });
  }
});
