import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import zlib from 'node:zlib';
import { afterEach, describe, expect, it } from 'vitest';
import { schema } from '../config/schema.ts';
import {
  HAS_ZSTD,
  compressResponse,
  compressServerResponse,
  compressible,
  compressionSettings,
  encodedHeaders,
  negotiate,
  pipeTo,
  preferences,
  type CompressionSettings,
  type Encoding,
  type ResponseFacts,
} from './compress.ts';

const ALL: Encoding[] = ['br', 'zstd', 'gzip'];

const settings: CompressionSettings = {
  encodings: HAS_ZSTD ? ALL : ['br', 'gzip'],
  gzipLevel: 6,
  brotliQuality: 4,
  zstdLevel: 3,
  minLength: 1024,
  types: ['text/*', 'application/json', 'application/*+json', 'image/svg+xml'],
};

function facts(over: Partial<ResponseFacts> = {}): ResponseFacts {
  return {
    statusCode: 200,
    contentType: 'application/json',
    contentEncoding: undefined,
    contentLength: '5000',
    contentRange: undefined,
    cacheControl: undefined,
    ...over,
  };
}

function decode(encoding: string | undefined, body: Buffer): Buffer {
  if (encoding === 'gzip') return zlib.gunzipSync(body);
  if (encoding === 'br') return zlib.brotliDecompressSync(body);
  if (encoding === 'zstd') return zlib.zstdDecompressSync(body);
  return body;
}

describe('Accept-Encoding negotiation', () => {
  it('takes the highest q-value, a tie in the server order', () => {
    expect(negotiate('gzip, deflate, br, zstd', ALL)).toBe('br');
    expect(negotiate('gzip, br;q=0.5', ALL)).toBe('gzip');
    expect(negotiate('gzip;q=0.2, zstd;q=0.9, br;q=0.8', ALL)).toBe('zstd');
    expect(preferences('gzip;q=0.2, zstd;q=0.9, br;q=0.8', ALL)).toEqual(['zstd', 'br', 'gzip']);
    expect(negotiate('GZIP', ALL)).toBe('gzip');
    expect(negotiate('x-gzip', ALL)).toBe('gzip');
  });

  it('q=0 refuses, * stands for the rest, no header or identity means none', () => {
    expect(negotiate('br;q=0, gzip', ALL)).toBe('gzip');
    expect(negotiate('*', ALL)).toBe('br');
    expect(negotiate('*;q=0.5, br;q=0', ALL)).toBe('zstd');
    expect(negotiate('gzip;q=0, *;q=0', ALL)).toBeNull();
    expect(negotiate(undefined, ALL)).toBeNull();
    expect(negotiate('', ALL)).toBeNull();
    expect(negotiate('identity', ALL)).toBeNull();
    expect(negotiate('deflate', ALL)).toBeNull();
    expect(negotiate('br;q=2', ALL)).toBeNull(); // out of range: refused rather than guessed
    expect(negotiate('br, gzip', ['gzip'])).toBe('gzip'); // only what is offered
  });
});

describe('what may be compressed', () => {
  it('a listed type from minLength up, or of unknown length', () => {
    expect(compressible('GET', facts(), settings)).toBe(true);
    expect(compressible('GET', facts({ contentType: 'text/html; charset=utf-8' }), settings)).toBe(true);
    expect(compressible('GET', facts({ contentType: 'application/ld+json' }), settings)).toBe(true);
    expect(compressible('GET', facts({ contentLength: undefined }), settings)).toBe(true);
    expect(compressible('GET', facts({ contentLength: '1024' }), settings)).toBe(true);
    expect(compressible('GET', facts({ contentLength: '1023' }), settings)).toBe(false);
    expect(compressible('GET', facts({ contentEncoding: 'identity' }), settings)).toBe(true);
  });

  it('never HEAD, 204, 304, 206, a Content-Range, an encoded body, no-transform, other types', () => {
    expect(compressible('HEAD', facts(), settings)).toBe(false);
    for (const statusCode of [101, 204, 206, 304])
      expect(compressible('GET', facts({ statusCode }), settings)).toBe(false);
    expect(compressible('GET', facts({ contentRange: 'bytes 0-9/5000' }), settings)).toBe(false);
    expect(compressible('GET', facts({ contentEncoding: 'gzip' }), settings)).toBe(false);
    expect(compressible('GET', facts({ cacheControl: 'public, no-transform' }), settings)).toBe(false);
    expect(compressible('GET', facts({ cacheControl: 'no-transformer' }), settings)).toBe(true);
    expect(compressible('GET', facts({ contentType: 'image/png' }), settings)).toBe(false);
    expect(compressible('GET', facts({ contentType: undefined }), settings)).toBe(false);
    expect(compressible('GET', facts({ contentType: 'text/event-stream' }), settings)).toBe(false);
  });

  it('the head of an encoded response: no length or ranges, Vary added, a strong ETag weakened', () => {
    const out = encodedHeaders(
      [
        'Content-Type',
        'text/plain',
        'Content-Length',
        '5000',
        'ETag',
        '"abc"',
        'Vary',
        'Origin',
        'accept-ranges',
        'bytes',
      ],
      'br',
    );
    expect(out).toEqual([
      'Content-Type',
      'text/plain',
      'ETag',
      'W/"abc"',
      'vary',
      'Origin, Accept-Encoding',
      'content-encoding',
      'br',
    ]);
    expect(encodedHeaders(['etag', 'W/"x"', 'vary', 'accept-encoding'], 'gzip')).toEqual([
      'etag',
      'W/"x"',
      'vary',
      'accept-encoding',
      'content-encoding',
      'gzip',
    ]);
    // Not encoded (the client asked for nothing): only the Vary changes.
    expect(encodedHeaders(['content-length', '5000', 'etag', '"abc"'], null)).toEqual([
      'content-length',
      '5000',
      'etag',
      '"abc"',
      'vary',
      'Accept-Encoding',
    ]);
  });

  it('settings from the config: on by default, the route switch wins', () => {
    const config = schema.parse({
      routes: [
        { path: '/', target: 'pool' },
        { path: '/off', target: 'pool', compression: false },
      ],
      proxy: { compression: { gzipLevel: 9 } },
    });
    const on = compressionSettings(config, config.routes[0]!);
    expect(on).toMatchObject({ gzipLevel: 9, brotliQuality: 4, minLength: 1024 });
    expect(on!.encodings).toEqual(HAS_ZSTD ? ALL : ['br', 'gzip']);
    expect(on!.types).toContain('text/*');
    expect(compressionSettings(config, config.routes[1]!)).toBeNull();
    const off = schema.parse({
      routes: [
        { path: '/', target: 'pool', compression: true },
        { path: '/x', target: 'pool' },
      ],
      proxy: { compression: { enabled: false } },
    });
    expect(compressionSettings(off, off.routes[0]!)).not.toBeNull();
    expect(compressionSettings(off, off.routes[1]!)).toBeNull();
  });
});

// --- through a real server and client -----------------------------------------------------------

const servers: http.Server[] = [];
afterEach(async () => {
  await Promise.all(
    servers.splice(0).map(
      (s) =>
        new Promise((resolve) => {
          s.close(resolve);
          s.closeAllConnections();
        }),
    ),
  );
});

async function serve(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
  ServerResponseClass?: typeof ServerResponse,
): Promise<number> {
  const server = http.createServer(ServerResponseClass ? { ServerResponse: ServerResponseClass } : {}, handler);
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}

interface Got {
  status: number;
  headers: http.IncomingHttpHeaders;
  raw: Buffer;
  body: Buffer;
}

function get(port: number, headers: Record<string, string>, method = 'GET'): Promise<Got> {
  return new Promise((resolve, reject) => {
    const req = http.request({ port, host: '127.0.0.1', path: '/', method, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const raw = Buffer.concat(chunks);
        const body = decode(res.headers['content-encoding'], raw);
        resolve({ status: res.statusCode!, headers: res.headers, raw, body });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** A JSON document of about `n` bytes, compressible as real API answers are. */
function json(n: number): Buffer {
  const items: unknown[] = [];
  let size = 2;
  for (let i = 0; size < n; i++) {
    const item = { id: i, name: `item-${i}`, price: (i * 1337) % 10007, active: i % 3 === 0 };
    items.push(item);
    size += JSON.stringify(item).length + 1;
  }
  return Buffer.from(JSON.stringify(items));
}

describe('compressResponse (a relayed head of flat pairs)', () => {
  const body = json(20_000);
  const relay = (req: IncomingMessage, res: ServerResponse) => {
    const head = ['content-type', 'application/json', 'content-length', String(body.length), 'etag', '"v1"'];
    const c = compressResponse(req, res, 200, head, settings);
    res.writeHead(200, c?.headers ?? head);
    // Written in pieces, as an upstream's body arrives.
    const sink = c?.compression ?? res;
    for (let i = 0; i < body.length; i += 4096) sink.write(body.subarray(i, i + 4096));
    sink.end();
  };

  for (const encoding of ['gzip', 'br', 'zstd'] as const) {
    it(`encodes ${encoding} for a client that asks, and the client decodes it`, async (t) => {
      if (encoding === 'zstd' && !HAS_ZSTD) t.skip();
      const port = await serve(relay);
      const got = await get(port, { 'accept-encoding': encoding });
      expect(got.headers['content-encoding']).toBe(encoding);
      expect(got.headers['content-length']).toBeUndefined();
      expect(got.headers.vary).toBe('Accept-Encoding');
      expect(got.headers.etag).toBe('W/"v1"');
      expect(got.raw.length).toBeLessThan(body.length / 3);
      expect(got.body.equals(body)).toBe(true);
    });
  }

  it('leaves the body alone for a client that asks for nothing, with the Vary', async () => {
    const port = await serve(relay);
    const got = await get(port, {});
    expect(got.headers['content-encoding']).toBeUndefined();
    expect(got.headers['content-length']).toBe(String(body.length));
    expect(got.headers.vary).toBe('Accept-Encoding');
    expect(got.headers.etag).toBe('"v1"');
    expect(got.raw.equals(body)).toBe(true);
  });

  it('returns null for what is not compressible (and for settings null)', () => {
    const req = { method: 'GET', headers: { 'accept-encoding': 'gzip' } } as IncomingMessage;
    const res = {} as ServerResponse;
    expect(compressResponse(req, res, 200, ['content-type', 'image/png'], settings)).toBeNull();
    expect(compressResponse(req, res, 304, ['content-type', 'text/html'], settings)).toBeNull();
    expect(compressResponse(req, res, 200, ['content-type', 'text/html'], null)).toBeNull();
  });

  it('a client that leaves mid-body stops the encoder, and writes after it are harmless', async () => {
    let done: (value: { destroyed: boolean; threw: boolean }) => void = () => {};
    const seen = new Promise<{ destroyed: boolean; threw: boolean }>((resolve) => (done = resolve));
    const port = await serve((req, res) => {
      const c = compressResponse(req, res, 200, ['content-type', 'text/plain'], settings)!;
      res.writeHead(200, c.headers);
      const chunk = json(64 * 1024);
      const pump = () => {
        while (c.compression!.write(chunk));
        c.compression!.once('drain', pump);
      };
      res.once('close', () =>
        setImmediate(() => {
          let threw = false;
          try {
            c.compression!.write(chunk);
            c.compression!.end();
          } catch {
            threw = true;
          }
          done({ destroyed: c.compression!.stream.destroyed, threw });
        }),
      );
      pump();
    });
    await new Promise<void>((resolve) => {
      const req = http.get({ port, host: '127.0.0.1', headers: { 'accept-encoding': 'gzip' }, agent: false }, (res) => {
        res.once('data', () => {
          req.destroy();
          resolve();
        });
      });
      req.on('error', () => {});
    });
    expect(await seen).toEqual({ destroyed: true, threw: false });
  });

  it('flushes what was written once the writer pauses: a trickled body reaches the client before its end', async () => {
    let finish: (() => void) | null = null;
    const port = await serve((req, res) => {
      const head = ['content-type', 'text/plain'];
      const c = compressResponse(req, res, 200, head, settings)!;
      res.writeHead(200, c.headers);
      c.compression!.write('first line, long enough to be worth it\n');
      finish = () => c.compression!.end('last line\n');
    });
    const text = await new Promise<string>((resolve, reject) => {
      const req = http.request(
        { port, host: '127.0.0.1', headers: { 'accept-encoding': 'gzip' }, agent: false },
        (res) => {
          expect(res.headers['content-encoding']).toBe('gzip');
          const gunzip = zlib.createGunzip();
          res.pipe(gunzip);
          let out = '';
          gunzip.on('data', (c: Buffer) => {
            out += c.toString();
            // The first line came while the response is still open: only then is it ended.
            if (finish !== null && out === 'first line, long enough to be worth it\n') finish();
          });
          gunzip.on('end', () => resolve(out));
          gunzip.on('error', reject);
        },
      );
      req.on('error', reject);
      req.end();
    });
    expect(text).toBe('first line, long enough to be worth it\nlast line\n');
  });
});

/**
 * The way an app's response (a ServerResponse subclass, as src/host/response.ts) plugs it in at
 * writeHead time: its headers are on it, its writes go to the encoder, the encoder's output to the
 * parent class's write.
 */
class CompressingResponse extends http.ServerResponse {
  #compression: ReturnType<typeof compressServerResponse> = null;

  override writeHead(statusCode: number, ...rest: unknown[]): this {
    if (!this.headersSent) {
      this.#compression = compressServerResponse(this.req, this, statusCode, settings);
      const c = this.#compression;
      if (c !== null) {
        c.stream.on('data', (chunk: Buffer) => super.write(chunk));
        c.stream.on('end', () => super.end());
      }
    }
    return (super.writeHead as (code: number, ...r: unknown[]) => this)(statusCode, ...rest);
  }

  override write(chunk: unknown, ...rest: unknown[]): boolean {
    if (!this.headersSent) this.writeHead(this.statusCode);
    if (this.#compression !== null) return this.#compression.write(chunk as Buffer);
    return (super.write as (c: unknown, ...r: unknown[]) => boolean)(chunk, ...rest);
  }

  override end(...args: unknown[]): this {
    if (!this.headersSent) this.writeHead(this.statusCode);
    if (this.#compression === null) return (super.end as (...a: unknown[]) => this)(...args);
    const chunk = args.length > 0 && typeof args[0] !== 'function' ? (args[0] as Buffer | string) : undefined;
    this.#compression.end(chunk);
    return this;
  }
}

describe('compressServerResponse (an app writing into a ServerResponse subclass)', () => {
  const body = json(8000);
  const app = (_req: IncomingMessage, res: ServerResponse) => {
    res.setHeader('content-type', 'application/json');
    res.setHeader('content-length', body.length);
    res.setHeader('etag', '"app"');
    res.end(body);
  };

  it('encodes what the app writes, and fixes its headers', async () => {
    const port = await serve(app, CompressingResponse as typeof ServerResponse);
    const got = await get(port, { 'accept-encoding': 'br;q=0.5, gzip' });
    expect(got.headers['content-encoding']).toBe('gzip');
    expect(got.headers['content-length']).toBeUndefined();
    expect(got.headers.etag).toBe('W/"app"');
    expect(got.headers.vary).toBe('Accept-Encoding');
    expect(got.body.equals(body)).toBe(true);
  });

  it('leaves HEAD and clients that ask for nothing alone', async () => {
    const port = await serve(app, CompressingResponse as typeof ServerResponse);
    const plain = await get(port, {});
    expect(plain.headers['content-encoding']).toBeUndefined();
    expect(plain.raw.equals(body)).toBe(true);
    expect(plain.headers.vary).toBe('Accept-Encoding');
    const head = await get(port, { 'accept-encoding': 'gzip' }, 'HEAD');
    expect(head.headers['content-encoding']).toBeUndefined();
    expect(head.headers['content-length']).toBe(String(body.length));
  });

  it('pipeTo() pipes a Compression into a plain response', async () => {
    const port = await serve((req, res) => {
      res.setHeader('content-type', 'text/plain');
      const c = compressServerResponse(req, res, 200, settings)!;
      res.writeHead(200);
      pipeTo(c, res);
      c.end(body);
    });
    const got = await get(port, { 'accept-encoding': 'br' });
    expect(got.headers['content-encoding']).toBe('br');
    expect(got.body.equals(body)).toBe(true);
  });
});
