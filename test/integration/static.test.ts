// Static files and compression against real clients: curl (--compressed for gzip, br and zstd,
// -r for single and multiple ranges, If-Range, 416, If-Modified-Since, HEAD, --path-as-is for
// traversal), the real service started as `stratum proxy` (the front alone, as nginx), and once as
// `stratum serve` (the front in the workers, which get the routes' options as JSON). A 100 MB
// compressible file streams through the encoder with the front's RSS sampled meanwhile.
import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import net from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requirePeer } from '../helpers/peers.ts';
import { makeTempDir } from '../helpers/processes.ts';
import { REPO_ROOT, startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';
import { writeConfig } from '../hardening/helpers.ts';

afterAll(stopAllStratum);

const run = promisify(execFile);
const HAS_CURL = requirePeer('curl');
const HAS_ZSTD = typeof (zlib as { createZstdCompress?: unknown }).createZstdCompress === 'function';

interface CurlReply {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

let seq = 0;
let tmp = '';

/** One curl request; its head (the last one, after a redirect or 100) parsed, its body as bytes. */
async function curl(url: string, ...args: string[]): Promise<CurlReply> {
  const n = ++seq;
  const headFile = join(tmp, `h${n}`);
  const bodyFile = join(tmp, `b${n}`);
  await run('curl', ['-sS', '--max-time', '20', '-D', headFile, '-o', bodyFile, ...args, url]);
  const blocks = readFileSync(headFile, 'latin1')
    .trim()
    .split(/\r\n\r\n/);
  const lines = blocks.at(-1)!.split('\r\n');
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const i = line.indexOf(':');
    headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
  }
  let body: Buffer;
  try {
    body = readFileSync(bodyFile);
  } catch {
    body = Buffer.alloc(0); // curl writes no file for an empty body
  }
  return { status: Number(lines[0]!.split(' ')[1]), headers, body };
}

/** A text of `n` bytes that compresses as real pages do (words, numbers, markup), not a run of one byte. */
function text(n: number): Buffer {
  const words = ['static', 'range', 'proxy', 'header', 'stratum', 'worker', 'brotli', 'content', 'vary', 'etag'];
  let s = '';
  for (let i = 0; s.length < n; i++) s += `<p id="${i}">${words[i % 10]} ${words[(i * 7) % 10]} ${i * 31}</p>\n`;
  return Buffer.from(s.slice(0, n));
}

/** The parts of a multipart/byteranges body: each part's Content-Range and bytes. */
function parts(body: Buffer, contentType: string): Array<{ range: string; type: string; data: Buffer }> {
  const boundary = /boundary=([^;\s]+)/.exec(contentType)![1]!;
  const out: Array<{ range: string; type: string; data: Buffer }> = [];
  const text = body.toString('latin1');
  const chunks = text.split(`--${boundary}`);
  // chunks[0] is the preamble ("\r\n"), the last "--\r\n".
  for (const chunk of chunks.slice(1, -1)) {
    const end = chunk.indexOf('\r\n\r\n');
    const head = chunk.slice(2, end).split('\r\n');
    const get = (name: string) => head.find((l) => l.toLowerCase().startsWith(name))!.split(': ')[1]!;
    const data = Buffer.from(chunk.slice(end + 4, chunk.length - 2), 'latin1');
    out.push({ range: get('content-range'), type: get('content-type'), data });
  }
  expect(chunks.at(-1)).toBe('--\r\n');
  return out;
}

describe.skipIf(!HAS_CURL)('static files and compression, through curl', () => {
  let stratum: StratumProcess;
  let base = '';
  let root = '';
  const page = text(20_000);
  const big = text(300_000);
  const mtime = new Date('2026-01-02T03:04:05Z');

  beforeAll(async () => {
    tmp = makeTempDir('static-curl');
    const { dir, file } = writeConfig('static', '');
    root = join(dir, 'public');
    const spa = join(dir, 'spa');
    const hashed = join(dir, 'hashed');
    const outside = join(dir, 'outside');
    for (const d of [root, join(root, 'docs'), join(root, 'empty'), spa, join(spa, 'assets'), hashed, outside]) {
      mkdirSync(d, { recursive: true });
    }
    writeFileSync(join(root, 'page.html'), page);
    writeFileSync(join(root, 'big.txt'), big);
    writeFileSync(join(root, 'small.txt'), 'tiny\n');
    writeFileSync(join(root, 'logo.png'), Buffer.alloc(4096, 7));
    writeFileSync(join(root, 'site.webmanifest'), '{"name":"x"}');
    writeFileSync(join(root, 'blob.unknownext'), 'x');
    writeFileSync(join(root, 'docs', 'index.html'), '<h1>docs</h1>\n');
    // Siblings that say where they came from: what curl decodes proves which file was sent.
    writeFileSync(join(root, 'app.js'), 'console.log("identity");\n'.repeat(100));
    writeFileSync(join(root, 'app.js.gz'), zlib.gzipSync('from app.js.gz\n'));
    writeFileSync(join(root, 'app.js.br'), zlib.brotliCompressSync('from app.js.br\n'));
    writeFileSync(join(outside, 'secret.txt'), 'outside the root\n');
    symlinkSync(join(outside, 'secret.txt'), join(root, 'escape.txt'));
    symlinkSync(join(root, 'small.txt'), join(root, 'inner-link.txt'));
    writeFileSync(join(spa, 'index.html'), '<div id="app"></div>\n');
    writeFileSync(join(spa, 'assets', 'main.css'), 'body { color: red }\n');
    writeFileSync(join(hashed, 'app.3f9a1c.js'), 'export const x = 1;\n');
    symlinkSync(join(outside, 'secret.txt'), join(hashed, 'shared.txt'));
    for (const f of ['page.html', 'big.txt', 'small.txt']) utimesSync(join(root, f), mtime, mtime);
    writeFileSync(
      file,
      `
listen: 127.0.0.1:0
admin: { listen: 127.0.0.1:0 }
routes:
  - { path: /static, target: "static:${root}" }
  - { path: /app, target: "static:${spa}", static: { fallback: index.html } }
  - path: /assets
    target: "static:${hashed}"
    compression: false
    static: { cacheControl: "public, max-age=31536000, immutable", allowSymlinksOutside: true }
`,
    );
    stratum = await startStratum(['proxy', '--config', file]);
    base = stratum.front!;
  });
  afterAll(async () => {
    await stratum?.stop();
  });

  describe('compression', () => {
    it('curl --compressed gets brotli (curl offers deflate, gzip, br, zstd) and decodes the page', async () => {
      const r = await curl(`${base}/static/page.html`, '--compressed');
      expect(r.status).toBe(200);
      expect(r.headers['content-encoding']).toBe('br');
      expect(r.headers['content-length']).toBeUndefined();
      expect(r.headers['accept-ranges']).toBeUndefined();
      expect(r.headers.vary).toBe('Accept-Encoding');
      expect(r.headers.etag).toMatch(/^W\/"/);
      expect(r.headers['content-type']).toBe('text/html; charset=utf-8');
      expect(r.body.equals(page)).toBe(true);
    });

    const encodings = HAS_ZSTD ? ['gzip', 'br', 'zstd'] : ['gzip', 'br'];
    it.each(encodings)('Accept-Encoding: %s is what is sent, and it decodes', async (encoding) => {
      const r = await curl(`${base}/static/big.txt`, '--compressed', '-H', `Accept-Encoding: ${encoding}`);
      expect(r.headers['content-encoding']).toBe(encoding);
      expect(r.body.equals(big)).toBe(true);
    });

    it('the size on the wire, per encoding (printed), is well under the identity', async () => {
      const sizes: Record<string, number> = {};
      for (const encoding of encodings) {
        const { stdout } = await run('curl', [
          '-sS',
          '-o',
          '/dev/null',
          '-w',
          '%{size_download}',
          '-H',
          `Accept-Encoding: ${encoding}`,
          `${base}/static/page.html`,
        ]);
        sizes[encoding] = Number(stdout);
        expect(sizes[encoding]).toBeLessThan(page.length / 4);
      }
      console.log(`page.html ${page.length} bytes; on the wire: ${JSON.stringify(sizes)}`);
    });

    it('not for a client that asks for none, a HEAD, a small file, an image, or a route with it off', async () => {
      const plain = await curl(`${base}/static/page.html`);
      expect(plain.headers['content-encoding']).toBeUndefined();
      expect(plain.headers['content-length']).toBe(String(page.length));
      expect(plain.headers.vary).toBe('Accept-Encoding');
      expect(plain.headers.etag).toMatch(/^"/);
      const head = await curl(`${base}/static/page.html`, '-I', '-H', 'Accept-Encoding: gzip');
      expect(head.headers['content-encoding']).toBeUndefined();
      expect(head.headers['content-length']).toBe(String(page.length));
      expect(head.headers.vary).toBe('Accept-Encoding');
      const small = await curl(`${base}/static/small.txt`, '--compressed');
      expect(small.headers['content-encoding']).toBeUndefined();
      const png = await curl(`${base}/static/logo.png`, '--compressed');
      expect(png.headers['content-encoding']).toBeUndefined();
      expect(png.headers['content-type']).toBe('image/png');
      expect(png.headers.vary).toBeUndefined();
      const off = await curl(`${base}/assets/app.3f9a1c.js`, '--compressed');
      expect(off.headers['content-encoding']).toBeUndefined();
    });

    it('a precompressed sibling is sent as it is, with its own ETag and length', async () => {
      const identity = await curl(`${base}/static/app.js`);
      expect(identity.body.toString()).toContain('identity');
      const br = await curl(`${base}/static/app.js`, '--compressed');
      expect(br.headers['content-encoding']).toBe('br');
      expect(br.body.toString()).toBe('from app.js.br\n');
      expect(br.headers['content-length']).toBe(String(readFileSync(join(root, 'app.js.br')).length));
      const gz = await curl(`${base}/static/app.js`, '--compressed', '-H', 'Accept-Encoding: gzip');
      expect(gz.headers['content-encoding']).toBe('gzip');
      expect(gz.body.toString()).toBe('from app.js.gz\n');
      // No .zst beside it: a zstd-only client gets zstd made on the fly, or the identity.
      const zstd = await curl(`${base}/static/app.js`, '--compressed', '-H', 'Accept-Encoding: zstd');
      expect(zstd.body.toString()).toContain('identity');
      for (const r of [identity, br, gz]) expect(r.headers.vary).toBe('Accept-Encoding');
      expect(new Set([identity.headers.etag, br.headers.etag, gz.headers.etag]).size).toBe(3);
      // Each ETag revalidates its own representation.
      const again = await curl(`${base}/static/app.js`, '--compressed', '-H', `If-None-Match: ${br.headers.etag}`);
      expect(again.status).toBe(304);
      expect(again.headers['content-encoding']).toBe('br');
    });
  });

  describe('ranges', () => {
    it('curl -r 0-99: 206 with that slice', async () => {
      const r = await curl(`${base}/static/big.txt`, '-r', '0-99');
      expect(r.status).toBe(206);
      expect(r.headers['content-range']).toBe(`bytes 0-99/${big.length}`);
      expect(r.headers['content-length']).toBe('100');
      expect(r.headers['content-encoding']).toBeUndefined();
      expect(r.body.equals(big.subarray(0, 100))).toBe(true);
    });

    it('a suffix and an open range', async () => {
      const tail = await curl(`${base}/static/big.txt`, '-r', '-10');
      expect(tail.headers['content-range']).toBe(`bytes ${big.length - 10}-${big.length - 1}/${big.length}`);
      expect(tail.body.equals(big.subarray(big.length - 10))).toBe(true);
      const open = await curl(`${base}/static/big.txt`, '-r', `${big.length - 5}-`);
      expect(open.body.equals(big.subarray(big.length - 5))).toBe(true);
    });

    it('a range asked with --compressed is still the identity bytes (ranges are never encoded)', async () => {
      const r = await curl(`${base}/static/big.txt`, '-r', '100-199', '-H', 'Accept-Encoding: gzip');
      expect(r.status).toBe(206);
      expect(r.headers['content-encoding']).toBeUndefined();
      expect(r.body.equals(big.subarray(100, 200))).toBe(true);
    });

    it('curl -r 0-9,20-29,-5: multipart/byteranges, each part with its Content-Range', async () => {
      const r = await curl(`${base}/static/big.txt`, '-r', '0-9,20-29,-5');
      expect(r.status).toBe(206);
      expect(r.headers['content-type']).toMatch(/^multipart\/byteranges; boundary=/);
      expect(Number(r.headers['content-length'])).toBe(r.body.length);
      const got = parts(r.body, r.headers['content-type']!);
      expect(got.map((p) => p.range)).toEqual([
        `bytes 0-9/${big.length}`,
        `bytes 20-29/${big.length}`,
        `bytes ${big.length - 5}-${big.length - 1}/${big.length}`,
      ]);
      expect(got[0]!.data.equals(big.subarray(0, 10))).toBe(true);
      expect(got[1]!.data.equals(big.subarray(20, 30))).toBe(true);
      expect(got[2]!.data.equals(big.subarray(big.length - 5))).toBe(true);
      expect(got[0]!.type).toBe('text/plain; charset=utf-8');
    });

    it('overlapping ranges are merged into one', async () => {
      const r = await curl(`${base}/static/big.txt`, '-r', '0-49,10-99,100-109');
      expect(r.status).toBe(206);
      expect(r.headers['content-range']).toBe(`bytes 0-109/${big.length}`);
      expect(r.body.equals(big.subarray(0, 110))).toBe(true);
    });

    it('416 with Content-Range: bytes */size when no range starts inside the file', async () => {
      const r = await curl(`${base}/static/big.txt`, '-r', `${big.length}-`);
      expect(r.status).toBe(416);
      expect(r.headers['content-range']).toBe(`bytes */${big.length}`);
    });

    it('a Range that is not a bytes range set is ignored: 200, the whole file', async () => {
      const r = await curl(`${base}/static/small.txt`, '-H', 'Range: bytes=5-1');
      expect(r.status).toBe(200);
      expect(r.body.toString()).toBe('tiny\n');
      const head = await curl(`${base}/static/big.txt`, '-I', '-r', '0-9');
      expect(head.status).toBe(200); // HEAD: Range applies to GET only
      expect(head.headers['accept-ranges']).toBe('bytes');
    });

    it('If-Range: the current ETag or Last-Modified gives the range, another the whole file', async () => {
      const full = await curl(`${base}/static/big.txt`);
      const etag = full.headers.etag!;
      expect(full.headers['last-modified']).toBe(mtime.toUTCString());
      const byTag = await curl(`${base}/static/big.txt`, '-r', '0-9', '-H', `If-Range: ${etag}`);
      expect(byTag.status).toBe(206);
      const byDate = await curl(`${base}/static/big.txt`, '-r', '0-9', '-H', `If-Range: ${mtime.toUTCString()}`);
      expect(byDate.status).toBe(206);
      const stale = await curl(`${base}/static/big.txt`, '-r', '0-9', '-H', 'If-Range: "0-0"');
      expect(stale.status).toBe(200);
      expect(stale.body.equals(big)).toBe(true);
      const weak = await curl(`${base}/static/big.txt`, '-r', '0-9', '-H', `If-Range: W/${etag}`);
      expect(weak.status).toBe(200); // If-Range compares strongly: a weak tag never matches
      const oldDate = await curl(
        `${base}/static/big.txt`,
        '-r',
        '0-9',
        '-H',
        'If-Range: Thu, 01 Jan 2026 00:00:00 GMT',
      );
      expect(oldDate.status).toBe(200);
    });
  });

  describe('conditionals and caching', () => {
    it('If-Modified-Since: 304 when not modified since, 200 when modified after', async () => {
      const same = await curl(`${base}/static/small.txt`, '-H', `If-Modified-Since: ${mtime.toUTCString()}`);
      expect(same.status).toBe(304);
      expect(same.body.length).toBe(0);
      expect(same.headers.etag).toMatch(/^"/);
      const older = await curl(`${base}/static/small.txt`, '-H', 'If-Modified-Since: Thu, 01 Jan 2026 00:00:00 GMT');
      expect(older.status).toBe(200);
      // curl's own -z sends If-Modified-Since too.
      const z = await curl(`${base}/static/small.txt`, '-z', mtime.toUTCString());
      expect(z.status).toBe(304);
    });

    it('If-None-Match wins over If-Modified-Since', async () => {
      const { headers } = await curl(`${base}/static/small.txt`);
      const ims = ['-H', `If-Modified-Since: ${mtime.toUTCString()}`];
      expect((await curl(`${base}/static/small.txt`, ...ims, '-H', 'If-None-Match: "other"')).status).toBe(200);
      expect((await curl(`${base}/static/small.txt`, '-H', `If-None-Match: ${headers.etag}`)).status).toBe(304);
      // A compressed answer's weak ETag still revalidates (If-None-Match compares weakly).
      const br = await curl(`${base}/static/page.html`, '--compressed');
      const re = await curl(`${base}/static/page.html`, '--compressed', '-H', `If-None-Match: ${br.headers.etag}`);
      expect(re.status).toBe(304);
      expect(re.headers.etag).toBe(br.headers.etag);
    });

    it('Cache-Control from the route, on 200 and 304', async () => {
      const r = await curl(`${base}/assets/app.3f9a1c.js`);
      expect(r.headers['cache-control']).toBe('public, max-age=31536000, immutable');
      expect(r.headers['content-type']).toBe('text/javascript; charset=utf-8');
      const c = await curl(`${base}/assets/app.3f9a1c.js`, '-H', `If-None-Match: ${r.headers.etag}`);
      expect(c.status).toBe(304);
      expect(c.headers['cache-control']).toBe('public, max-age=31536000, immutable');
      expect((await curl(`${base}/static/small.txt`)).headers['cache-control']).toBeUndefined();
    });

    it('Content-Type from the mime-db table', async () => {
      expect((await curl(`${base}/static/site.webmanifest`)).headers['content-type']).toBe('application/manifest+json');
      expect((await curl(`${base}/static/blob.unknownext`)).headers['content-type']).toBe('application/octet-stream');
      expect((await curl(`${base}/app/assets/main.css`)).headers['content-type']).toBe('text/css; charset=utf-8');
    });
  });

  describe('index, fallback, and the root', () => {
    it('a directory serves its index.html; named without its slash, 301 to it', async () => {
      const r = await curl(`${base}/static/docs/`);
      expect(r.status).toBe(200);
      expect(r.body.toString()).toBe('<h1>docs</h1>\n');
      const moved = await curl(`${base}/static/docs?x=1`);
      expect(moved.status).toBe(301);
      expect(moved.headers.location).toBe('/static/docs/?x=1');
      // The route's own root too: its index page's relative links need the slash.
      expect((await curl(`${base}/static`)).headers.location).toBe('/static/');
      expect((await curl(`${base}/static/empty/`)).status).toBe(404);
    });

    it('SPA fallback: any unknown path under /app gets index.html; real files are still themselves', async () => {
      for (const p of ['/app/', '/app/users/42', '/app/deep/link/page', '/app/missing.js']) {
        const r = await curl(`${base}${p}`);
        expect(r.status, p).toBe(200);
        expect(r.body.toString(), p).toBe('<div id="app"></div>\n');
        expect(r.headers['content-type']).toBe('text/html; charset=utf-8');
      }
      expect((await curl(`${base}/app/assets/main.css`)).body.toString()).toBe('body { color: red }\n');
      // Without a fallback, an unknown path is 404.
      expect((await curl(`${base}/static/users/42`)).status).toBe(404);
    });

    it('traversal is refused, encoded or not', async () => {
      const refused = [
        '/static/..%2foutside/secret.txt',
        '/static/..%2f..%2foutside/secret.txt',
        '/static/%252e%252e/outside/secret.txt',
        '/static/docs/..%5c..%5coutside%5csecret.txt',
        '/static/docs/%2e%2e/small.txt',
      ];
      for (const p of refused) {
        const r = await curl(`${base}${p}`, '--path-as-is');
        expect(r.status, p).toBe(403);
        expect(r.body.toString()).not.toContain('outside the root');
      }
      // Dot segments, plain or encoded, are resolved before routing: these leave /static altogether.
      for (const p of ['/static/../outside/secret.txt', '/static/%2e%2e/outside/secret.txt']) {
        const r = await curl(`${base}${p}`, '--path-as-is');
        expect(r.status, p).toBe(404);
        expect(r.body.toString()).not.toContain('outside the root');
      }
    });

    it('a symlink out of the root is refused; one inside it, or on a route that allows it, is followed', async () => {
      const escape = await curl(`${base}/static/escape.txt`);
      expect(escape.status).toBe(403);
      expect(escape.body.toString()).not.toContain('outside the root');
      expect((await curl(`${base}/static/inner-link.txt`)).body.toString()).toBe('tiny\n');
      const allowed = await curl(`${base}/assets/shared.txt`);
      expect(allowed.status).toBe(200);
      expect(allowed.body.toString()).toBe('outside the root\n');
    });

    it('POST is 405; HEAD has the GET headers and no body', async () => {
      expect((await curl(`${base}/static/small.txt`, '-X', 'POST', '-d', 'x')).status).toBe(405);
      const head = await curl(`${base}/static/big.txt`, '-I');
      expect(head.status).toBe(200);
      expect(head.headers['content-length']).toBe(String(big.length));
      expect(head.headers['last-modified']).toBe(mtime.toUTCString());
      // On the wire, nothing follows the head (curl -I would not read a body, so a raw socket does).
      const raw = await new Promise<string>((resolve, reject) => {
        const sock = net.connect(Number(new URL(base).port), '127.0.0.1', () =>
          sock.write('HEAD /static/big.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'),
        );
        let got = '';
        sock.on('data', (c: Buffer) => (got += c.toString('latin1')));
        sock.on('close', () => resolve(got));
        sock.on('error', reject);
      });
      expect(raw).toMatch(/^HTTP\/1\.1 200 /);
      expect(raw.endsWith('\r\n\r\n')).toBe(true);
      expect(raw.indexOf('\r\n\r\n')).toBe(raw.length - 4);
    });
  });
});

/** VmRSS of a process in bytes, from /proc. */
function rss(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]) * 1024;
}

describe('a 100 MB compressible file streams through the encoder', () => {
  it('with flat RSS in the front (figures printed)', async () => {
    const { dir, file } = writeConfig('static-memory', '');
    const root = join(dir, 'public');
    mkdirSync(root);
    const size = 100 * 1024 * 1024;
    const block = text(1024 * 1024);
    const { openSync, writeSync, closeSync } = await import('node:fs');
    const fd = openSync(join(root, 'huge.txt'), 'w');
    for (let i = 0; i < size / block.length; i++) writeSync(fd, block);
    closeSync(fd);
    writeFileSync(
      file,
      `listen: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0 }\nroutes:\n  - { path: /, target: "static:${root}" }\n`,
    );
    const s = await startStratum(['proxy', '--config', file]);
    try {
      const pid = s.proc.pid!;
      // Warm up the path (modules, encoder) so the baseline is the steady state.
      await new Promise<void>((resolve, reject) => {
        http
          .get(`${s.front}/huge.txt`, { headers: { 'accept-encoding': 'gzip', range: 'bytes=0-9' } }, (res) => {
            res.resume().on('end', resolve);
          })
          .on('error', reject);
      });
      const before = rss(pid);
      let peak = before;
      const sampler = setInterval(() => {
        peak = Math.max(peak, rss(pid));
      }, 20);
      let wire = 0;
      let decoded = 0;
      /** RSS when a quarter, half, three quarters and all of the file had been decoded. */
      const marks: number[] = [];
      try {
        await new Promise<void>((resolve, reject) => {
          http
            .get(`${s.front}/huge.txt`, { headers: { 'accept-encoding': 'gzip' } }, (res) => {
              expect(res.headers['content-encoding']).toBe('gzip');
              res.on('data', (c: Buffer) => (wire += c.length));
              const gunzip = zlib.createGunzip();
              gunzip.on('data', (c: Buffer) => {
                decoded += c.length;
                if (decoded >= ((marks.length + 1) * size) / 4) marks.push(rss(pid));
              });
              gunzip.on('end', resolve).on('error', reject);
              res.pipe(gunzip);
            })
            .on('error', reject);
        });
      } finally {
        clearInterval(sampler);
      }
      const mib = (n: number) => (n / 1024 / 1024).toFixed(1);
      console.log(
        `100 MB gzip through the front: ${mib(wire)} MiB on the wire; front RSS ${mib(before)} MiB before, ` +
          `${mib(peak)} MiB at its peak (+${mib(peak - before)} MiB); at 25/50/75/100 % decoded: ` +
          `${marks.map(mib).join(' / ')} MiB`,
      );
      expect(decoded).toBe(size);
      // Flat: what the heap and the encoder take comes in the first quarter and stays (+18 to +21 MiB
      // measured, the heap's young generation filling); a body read whole would cost its 100 MiB, and
      // one buffered as it grows would climb by 75 MiB (11 encoded) between the first mark and the last.
      expect(marks).toHaveLength(4);
      expect(marks[3]! - marks[0]!).toBeLessThan(16 * 1024 * 1024);
      expect(peak - before).toBeLessThan(48 * 1024 * 1024);
    } finally {
      await s.stop();
    }
  }, 120_000);
});

describe('static options reach the workers (stratum serve, worker topology)', () => {
  it('fallback, cache-control and compression from the route, served by a worker', async () => {
    const { dir, file } = writeConfig('static-serve', '');
    const spa = join(dir, 'spa');
    mkdirSync(spa);
    writeFileSync(join(spa, 'index.html'), text(5000));
    writeFileSync(
      file,
      `
listen: 127.0.0.1:0
admin: { listen: 127.0.0.1:0 }
app: { module: ${join(REPO_ROOT, 'test/hardening/fixtures/app.ts')} }
pool: { workers: 1 }
proxy: { compression: { encodings: [gzip] } }
routes:
  - { path: /, target: pool }
  - { path: /ui, target: "static:${spa}", static: { fallback: /index.html, cacheControl: no-cache } }
`,
    );
    const s = await startStratum(['serve', '--config', file]);
    try {
      const r = await new Promise<{ headers: http.IncomingHttpHeaders; body: Buffer }>((resolve, reject) => {
        http
          .get(`${s.front}/ui/some/route`, { headers: { 'accept-encoding': 'br, gzip' } }, (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () => resolve({ headers: res.headers, body: Buffer.concat(chunks) }));
          })
          .on('error', reject);
      });
      expect(r.headers['content-encoding']).toBe('gzip'); // the only one offered
      expect(r.headers['cache-control']).toBe('no-cache');
      expect(zlib.gunzipSync(r.body).equals(text(5000))).toBe(true);
    } finally {
      await s.stop();
    }
  }, 60_000);
});

describe.skipIf(!HAS_CURL)("compression of an HTTP upstream's responses", () => {
  let upstream: http.Server;
  let stratum: StratumProcess;
  let base = '';
  const doc = text(20_000);
  let release: (() => void) | null = null;

  beforeAll(async () => {
    tmp ||= makeTempDir('static-curl');
    upstream = http.createServer((req, res) => {
      const url = req.url ?? '/';
      if (url.endsWith('/json')) {
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': doc.length, etag: '"up"' });
        return void res.end(doc);
      }
      if (url.endsWith('/gzipped')) {
        const body = zlib.gzipSync(doc);
        res.writeHead(200, { 'content-type': 'text/plain', 'content-encoding': 'gzip', 'content-length': body.length });
        return void res.end(body);
      }
      if (url.endsWith('/no-transform')) {
        res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'no-transform' });
        return void res.end(doc);
      }
      if (url.endsWith('/partial')) {
        res.writeHead(206, { 'content-type': 'text/plain', 'content-range': `bytes 0-1999/${doc.length}` });
        return void res.end(doc.subarray(0, 2000));
      }
      if (url.endsWith('/trickle')) {
        // A first piece, then the rest only once the client has seen that piece.
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.write('the first piece\n');
        release = () => res.end('the rest\n');
        return;
      }
      res.writeHead(404).end();
    });
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
    const port = (upstream.address() as AddressInfo).port;
    const { file } = writeConfig(
      'http-compress',
      `
listen: 127.0.0.1:0
admin: { listen: 127.0.0.1:0 }
routes:
  - { path: /up, target: "http://127.0.0.1:${port}" }
  - { path: /plain, target: "http://127.0.0.1:${port}", compression: false }
`,
    );
    stratum = await startStratum(['proxy', '--config', file]);
    base = stratum.front!;
  });
  afterAll(async () => {
    await stratum?.stop();
    await new Promise((resolve) => upstream?.close(resolve));
  });

  it('a 20 KB JSON answer is sent as brotli to curl --compressed, gzip when asked, and decodes', async () => {
    const br = await curl(`${base}/up/json`, '--compressed');
    expect(br.headers['content-encoding']).toBe('br');
    expect(br.headers['content-length']).toBeUndefined();
    expect(br.headers.vary).toBe('Accept-Encoding');
    expect(br.headers.etag).toBe('W/"up"');
    expect(br.body.equals(doc)).toBe(true);
    const gz = await curl(`${base}/up/json`, '--compressed', '-H', 'Accept-Encoding: gzip;q=1, br;q=0.1');
    expect(gz.headers['content-encoding']).toBe('gzip');
    expect(gz.body.equals(doc)).toBe(true);
    const plain = await curl(`${base}/up/json`);
    expect(plain.headers['content-encoding']).toBeUndefined();
    expect(plain.headers['content-length']).toBe(String(doc.length));
    expect(plain.headers.vary).toBe('Accept-Encoding');
  });

  it('never an encoded body, no-transform, a 206, a HEAD, or a route with it off', async () => {
    const gz = await curl(`${base}/up/gzipped`, '-H', 'Accept-Encoding: br');
    expect(gz.headers['content-encoding']).toBe('gzip'); // as the upstream sent it, not re-encoded
    expect(zlib.gunzipSync(gz.body).equals(doc)).toBe(true);
    const nt = await curl(`${base}/up/no-transform`, '--compressed');
    expect(nt.headers['content-encoding']).toBeUndefined();
    expect(nt.body.equals(doc)).toBe(true);
    const partial = await curl(`${base}/up/partial`, '--compressed');
    expect(partial.status).toBe(206);
    expect(partial.headers['content-encoding']).toBeUndefined();
    const head = await curl(`${base}/up/json`, '-I', '-H', 'Accept-Encoding: gzip');
    expect(head.headers['content-encoding']).toBeUndefined();
    const off = await curl(`${base}/plain/json`, '--compressed');
    expect(off.headers['content-encoding']).toBeUndefined();
    expect(off.headers.vary).toBeUndefined();
  });

  it('a body that trickles reaches the client piece by piece, encoded', async () => {
    const text = await new Promise<string>((resolve, reject) => {
      http
        .get(`${base}/up/trickle`, { headers: { 'accept-encoding': 'gzip' } }, (res) => {
          expect(res.headers['content-encoding']).toBe('gzip');
          const gunzip = zlib.createGunzip();
          let out = '';
          gunzip.on('data', (c: Buffer) => {
            out += c.toString();
            if (out === 'the first piece\n') release!();
          });
          gunzip.on('end', () => resolve(out)).on('error', reject);
          res.pipe(gunzip);
        })
        .on('error', reject);
    });
    expect(text).toBe('the first piece\nthe rest\n');
  });
});
