// The response buffer on its own (a sink that takes bytes only when told to) and inside HostResponse
// (a real HTTP server, a client that does not read): writes are taken at once within the limits,
// memory first then a temp file, every byte arrives in order, and a temp dir that cannot be used
// slows the writer down instead of failing.
import http from 'node:http';
import net from 'node:net';
import { Transform, Writable } from 'node:stream';
import zlib from 'node:zlib';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { HostResponse } from '../host/response.ts';
import { compressServerResponse } from './compress.ts';
import { ResponseBuffer, responseBufferStats, type BufferLimits } from './response-buffer.ts';

const KiB = 1024;
const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));
function tempDir(): string {
  const d = mkdtempSync(path.join(os.tmpdir(), 'response-buffer-test-'));
  dirs.push(d);
  return d;
}

/** Byte i of a test stream. */
function pattern(from: number, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (from + i) % 251;
  return b;
}

/** A socket stand-in: holds what is written until release() lets bytes through. */
class GatedSink extends Writable {
  got: Buffer[] = [];
  bytes = 0;
  #pending: Array<() => void> = [];
  #open = false;
  constructor() {
    super({ highWaterMark: 16 * KiB });
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    const take = () => {
      this.got.push(Buffer.from(chunk));
      this.bytes += chunk.length;
      cb();
    };
    if (this.#open) setImmediate(take);
    else this.#pending.push(take);
  }
  release(): void {
    this.#open = true;
    for (const f of this.#pending.splice(0)) f();
  }
  get all(): Buffer {
    return Buffer.concat(this.got);
  }
}

const until = async (what: string, ok: () => boolean, ms = 10_000) => {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
};

/** Writes `total` bytes of the pattern `chunk` at a time, waiting whenever push() says to. */
async function writeAll(b: ResponseBuffer, seen: { relieved: number }, total: number, chunk: number) {
  let refusals = 0;
  for (let at = 0; at < total; at += chunk) {
    const n = Math.min(chunk, total - at);
    if (!b.push(pattern(at, n), null, null)) {
      refusals++;
      const was = seen.relieved;
      await until('relieved', () => seen.relieved > was, 60_000);
    }
  }
  return refusals;
}

function buffer(sink: GatedSink, limits: BufferLimits) {
  const seen = { relieved: 0, failures: [] as Error[] };
  const b = new ResponseBuffer(sink, limits, {
    onRelieved: () => seen.relieved++,
    onFailure: (e) => seen.failures.push(e),
  });
  return { b, seen };
}

describe('ResponseBuffer', () => {
  it('passes bytes straight on while the sink takes them (write-behind, nothing held back)', async () => {
    const sink = new GatedSink();
    sink.release();
    const { b } = buffer(sink, { memory: 64 * KiB, maxTempFile: 0 });
    expect(b.push(pattern(0, 100), null, null)).toBe(true);
    // Handed on at once: nothing waits in the buffer.
    expect(b.length).toBe(0);
    expect(b.idle).toBe(true);
    await until('the bytes', () => sink.bytes === 100);
  });

  it('holds what a full sink cannot take: memory, then the temp file; all of it arrives in order', async () => {
    const sink = new GatedSink();
    const dir = tempDir();
    const { b, seen } = buffer(sink, { memory: 64 * KiB, maxTempFile: 8 * 1024 * KiB, tempDir: dir });
    const before = responseBufferStats.tempFileBytes;
    const total = 4 * 1024 * KiB;
    // 4 MiB in 32 KiB writes while the sink takes nothing: all of it is taken (the writer waits for
    // the disk at most, never for the sink).
    await writeAll(b, seen, total, 32 * KiB);
    let ended = false;
    b.push('', 'latin1', () => (ended = true));
    expect(sink.bytes).toBe(0);
    expect(b.length).toBe(total - 32 * KiB); // the sink holds the first write (past its 16 KiB mark)
    expect(b.fileLength).toBeGreaterThan(total - 128 * KiB);
    await until('the file written', () => responseBufferStats.tempFileBytes - before === b.fileLength);
    // The temp file is unlinked at once: nothing is left in its directory.
    expect(readdirSync(dir)).toEqual([]);
    sink.release();
    await until('everything delivered', () => ended);
    expect(sink.bytes).toBe(total);
    expect(sink.all.equals(pattern(0, total))).toBe(true);
    expect(b.length).toBe(0);
    b.discard();
  });

  it('past its limits it stops taking (false) and lets the writer go on as the client reads', async () => {
    const sink = new GatedSink();
    const limits = { memory: 64 * KiB, maxTempFile: 128 * KiB, tempDir: tempDir() };
    const { b, seen } = buffer(sink, limits);
    const total = 1024 * KiB;
    let done = false;
    const writer = writeAll(b, seen, total, 16 * KiB).then((refusals) => {
      done = true;
      return refusals;
    });
    // The writer is held once memory and file are full: bounded, whatever it has left to write.
    await until('the file full', () => b.fileLength >= limits.maxTempFile);
    await new Promise((r) => setTimeout(r, 100));
    expect(done).toBe(false);
    expect(b.length).toBeLessThanOrEqual(limits.memory + limits.maxTempFile + 16 * KiB);
    sink.release();
    expect(await writer).toBeGreaterThan(0);
    await until('delivered', () => sink.bytes === total);
    expect(sink.all.equals(pattern(0, total))).toBe(true);
    expect(seen.failures).toEqual([]);
  });

  it('a temp dir that cannot be used keeps the bytes in memory and slows the writer; nothing throws', async () => {
    const sink = new GatedSink();
    const missing = path.join(tempDir(), 'gone', 'deeper');
    const { b, seen } = buffer(sink, { memory: 64 * KiB, maxTempFile: 1024 * KiB, tempDir: missing });
    const failures = responseBufferStats.tempFileFailures;
    let at = 0;
    for (let i = 0; i < 8; i++) {
      b.push(pattern(at, 32 * KiB), null, null);
      at += 32 * KiB;
    }
    await until('the failure counted', () => responseBufferStats.tempFileFailures === failures + 1);
    // Over the memory limit now, with no file to go to: the next write is told to wait.
    expect(b.fileLength).toBe(0);
    expect(b.push(pattern(at, 1), null, null)).toBe(false);
    at += 1;
    sink.release();
    await until('relieved', () => seen.relieved >= 1);
    await until('delivered', () => sink.bytes === at);
    expect(sink.all.equals(pattern(0, at))).toBe(true);
    expect(seen.failures).toEqual([]);
  });

  it('a client that takes nothing for sendTimeout is given up on: what is held is dropped', async () => {
    const sink = new GatedSink();
    const { b, seen } = buffer(sink, {
      memory: 64 * KiB,
      maxTempFile: 1024 * KiB,
      tempDir: tempDir(),
      sendTimeout: 0.2,
    });
    for (let i = 0; i < 8; i++) b.push(pattern(0, 32 * KiB), null, null);
    expect(b.length).toBeGreaterThan(0);
    await until('given up', () => seen.failures.length === 1);
    expect((seen.failures[0] as NodeJS.ErrnoException).code).toBe('ETIMEDOUT');
    expect(b.length).toBe(0);
  });

  it('discard() drops what is held and takes no more', () => {
    const sink = new GatedSink();
    const { b } = buffer(sink, { memory: 64 * KiB, maxTempFile: 0 });
    b.push(pattern(0, 20 * KiB), null, null);
    b.push(pattern(0, 20 * KiB), null, null);
    b.discard();
    expect(b.length).toBe(0);
    expect(b.push(pattern(0, 1), null, null)).toBe(false);
  });
});

describe('HostResponse with response buffering', () => {
  /** A server whose responses write `total` bytes 64 KiB at a time to a client that does not read yet. */
  async function serve(limits: BufferLimits | null, total: number) {
    const result = { accepted: 0, refusedAt: -1, ended: false, finished: false };
    const server = http.createServer({ ServerResponse: HostResponse as unknown as typeof http.ServerResponse });
    server.on('request', (_req, response) => {
      const res = response as HostResponse;
      res.stratumBuffering = limits;
      res.writeHead(200, { 'content-length': total });
      let at = 0;
      const more = () => {
        while (at < total) {
          const n = Math.min(64 * KiB, total - at);
          const ok = res.write(pattern(at, n));
          at += n;
          result.accepted = at;
          if (!ok) {
            if (result.refusedAt < 0) result.refusedAt = at;
            return void res.once('drain', more);
          }
        }
        res.end();
        result.ended = true;
      };
      res.once('finish', () => (result.finished = true));
      more();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.pause(); // the slow client: reads nothing until told
    socket.write('GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n');
    const read = () =>
      new Promise<Buffer>((resolve) => {
        const parts: Buffer[] = [];
        socket.on('data', (c: Buffer) => parts.push(c));
        socket.on('end', () => resolve(Buffer.concat(parts)));
        socket.resume();
      });
    return { result, read, close: () => server.close() };
  }

  it('takes the whole response at once while the client reads nothing, and delivers it whole', async () => {
    const total = 6 * 1024 * KiB;
    const s = await serve({ memory: 256 * KiB, maxTempFile: 64 * 1024 * KiB, tempDir: tempDir() }, total);
    try {
      await until('the app done', () => s.result.ended);
      // The app ended before the client read a byte; the response is not finished until it has.
      expect(s.result.finished).toBe(false);
      const raw = await s.read();
      const body = raw.subarray(raw.indexOf('\r\n\r\n') + 4);
      expect(body.length).toBe(total);
      expect(body.equals(pattern(0, total))).toBe(true);
      await until('finish', () => s.result.finished);
    } finally {
      s.close();
    }
  });

  it("without it, Node's own back-pressure: the app waits for the client", async () => {
    const total = 6 * 1024 * KiB;
    const s = await serve(null, total);
    try {
      await until('refused', () => s.result.refusedAt > 0);
      await new Promise((r) => setTimeout(r, 100));
      expect(s.result.ended).toBe(false);
      const raw = await s.read();
      expect(raw.length).toBeGreaterThan(total);
      expect(s.result.ended).toBe(true);
    } finally {
      s.close();
    }
  });
});

describe('HostResponse.stratumTransform (the hook compression plugs into)', () => {
  /** One request to a server whose app is `app`, its responses given `setup` first; the raw answer. */
  async function exchange(
    setup: (res: HostResponse) => void,
    app: (res: HostResponse) => void,
    readDelayMs = 0,
    onRead: () => void = () => {},
  ): Promise<{ head: string; body: Buffer }> {
    const server = http.createServer({ ServerResponse: HostResponse as unknown as typeof http.ServerResponse });
    server.on('request', (_req, response) => {
      const res = response as HostResponse;
      setup(res);
      app(res);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const port = (server.address() as net.AddressInfo).port;
      const socket = net.connect({ host: '127.0.0.1', port });
      socket.pause();
      socket.write('GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n');
      await new Promise((r) => setTimeout(r, readDelayMs));
      const raw = await new Promise<Buffer>((resolve) => {
        const parts: Buffer[] = [];
        socket.on('data', (c: Buffer) => parts.push(c));
        socket.on('end', () => resolve(Buffer.concat(parts)));
        onRead();
        socket.resume();
      });
      const at = raw.indexOf('\r\n\r\n');
      return { head: raw.subarray(0, at).toString('latin1'), body: raw.subarray(at + 4) };
    } finally {
      server.close();
    }
  }

  /** A chunked body, de-chunked. */
  function dechunk(body: Buffer): Buffer {
    const parts: Buffer[] = [];
    for (let at = 0; ;) {
      const eol = body.indexOf('\r\n', at);
      const n = parseInt(body.subarray(at, eol).toString('latin1'), 16);
      if (n === 0) return Buffer.concat(parts);
      parts.push(body.subarray(eol + 2, eol + 2 + n));
      at = eol + 2 + n + 2;
    }
  }

  it('a transform chosen at the head carries the body; its headers change; buffering behind it', async () => {
    const total = 3 * 1024 * KiB;
    let statusSeen = 0;
    let endedBeforeRead = false;
    let reading = false;
    const r = await exchange(
      (res) => {
        res.stratumBuffering = { memory: 256 * KiB, maxTempFile: 64 * 1024 * KiB, tempDir: tempDir() };
        res.stratumTransform = (status) => {
          statusSeen = status;
          // The head given to writeHead is on the response already: the chooser decides on it.
          expect(res.getHeader('content-type')).toBe('text/plain');
          res.setHeader('content-encoding', 'gzip');
          return zlib.createGzip({ level: 1 });
        };
      },
      (res) => {
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': total });
        const body = pattern(0, total);
        let at = 0;
        const more = () => {
          while (at < total) {
            const ok = res.write(body.subarray(at, at + 64 * KiB));
            at += 64 * KiB;
            if (!ok) return void res.once('drain', more);
          }
          res.end();
          endedBeforeRead = !reading;
        };
        more();
      },
      1000,
      () => (reading = true),
    );
    expect(statusSeen).toBe(200);
    expect(endedBeforeRead).toBe(true);
    expect(r.head).toMatch(/\r\ncontent-encoding: gzip/i);
    expect(r.head).not.toMatch(/content-length/i);
    expect(r.head).toMatch(/transfer-encoding: chunked/i);
    expect(zlib.gunzipSync(dechunk(r.body)).equals(pattern(0, total))).toBe(true);
  });

  it("compress.ts's Compression plugs in as it is (compressServerResponse at the head)", async () => {
    const settings = { encodings: ['gzip'] as const, gzipLevel: 1, brotliQuality: 4, zstdLevel: 3, minLength: 0 };
    const text = 'stratum '.repeat(40_000);
    const r = await exchange(
      (res) => {
        res.req.headers['accept-encoding'] = 'gzip';
        res.stratumBuffering = { memory: 64 * KiB, maxTempFile: 0 };
        res.stratumTransform = (status) =>
          compressServerResponse(res.req, res, status, { ...settings, types: ['text/*'] });
      },
      (res) => {
        res.setHeader('content-type', 'text/plain');
        res.end(text);
      },
    );
    expect(r.head).toMatch(/\r\ncontent-encoding: gzip/i);
    expect(r.head).toMatch(/\r\nvary: accept-encoding/i);
    expect(zlib.gunzipSync(dechunk(r.body)).toString()).toBe(text);
  });

  it('an implicit head runs the chooser too; end(body) with none chosen keeps its Content-Length', async () => {
    const plain = await exchange(
      (res) => (res.stratumTransform = () => null),
      (res) => res.end('hello'),
    );
    expect(plain.head).toMatch(/\r\ncontent-length: 5/i);
    expect(plain.body.toString()).toBe('hello');
    const upper = await exchange(
      (res) =>
        (res.stratumTransform = () =>
          new Transform({ transform: (c: Buffer, _e, cb) => cb(null, Buffer.from(c.toString().toUpperCase())) })),
      (res) => {
        res.write('hello ');
        res.end('world');
      },
    );
    expect(dechunk(upper.body).toString()).toBe('HELLO WORLD');
  });

  it('keeps the headers of writeHead(code, undefined, headers), as a fetch app without statusText writes', async () => {
    const seen: Array<string | undefined> = [];
    const r = await exchange(
      (res) =>
        (res.stratumTransform = () => {
          seen.push(String(res.getHeader('x-app')));
          return null;
        }),
      (res) =>
        res
          .writeHead(201, undefined, [
            ['x-app', 'yes'],
            ['set-cookie', 'a=1'],
            ['set-cookie', 'b=2'],
          ])
          .end('ok'),
    );
    expect(seen).toEqual(['yes']);
    expect(r.head).toMatch(/^HTTP\/1\.1 201 Created\r\n/);
    expect(r.head).toMatch(/\r\nx-app: yes\r\n/i);
    expect(r.head.match(/\r\nset-cookie: /gi)).toHaveLength(2);
  });
});
