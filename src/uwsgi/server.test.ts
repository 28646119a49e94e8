import { HostResponse } from '../host/response.ts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { encodePacket, type UwsgiVars } from './codec.ts';
import { KEEPALIVE_HEADER, KEEPALIVE_VAR, serveUwsgiConnection, uwsgiRequestListener } from './server.ts';
import type { StratumError } from '../errors.ts';

interface Echo {
  method: string;
  url: string;
  rawHeaders: string[];
  remoteAddress: string | undefined;
  bodyLength: number;
  bodySha256: string;
}

function echoListener(req: IncomingMessage, res: ServerResponse): void {
  const hash = createHash('sha256');
  let length = 0;
  req.on('data', (c: Buffer) => {
    length += c.length;
    hash.update(c);
  });
  req.on('end', () => {
    if (req.url === '/stream') {
      // No Content-Length: Node would use chunked framing for an HTTP/1.1 client.
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('abc');
      setTimeout(() => res.end('def'), 5);
      return;
    }
    const echo: Echo = {
      method: req.method!,
      url: req.url!,
      rawHeaders: req.rawHeaders,
      remoteAddress: req.socket.remoteAddress,
      bodyLength: length,
      bodySha256: hash.digest('hex'),
    };
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(echo));
  });
}

let dir: string;
let sockPath: string;
let httpServer: http.Server;
let uwsgiServer: net.Server;
const protocolErrors: string[] = [];

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'stratum-uwsgi-server-'));
  sockPath = path.join(dir, 'uwsgi.sock');
  httpServer = http.createServer(
    { ServerResponse: HostResponse as unknown as typeof http.ServerResponse },
    uwsgiRequestListener(echoListener),
  );
  uwsgiServer = net.createServer((sock) => {
    serveUwsgiConnection(sock, httpServer, {
      maxVarsSize: 65535,
      onProtocolError(err: StratumError) {
        protocolErrors.push(err.code);
      },
    });
  });
  await new Promise<void>((resolve) => uwsgiServer.listen(sockPath, resolve));
});

afterAll(async () => {
  await new Promise<void>((resolve) => uwsgiServer.close(() => resolve()));
  httpServer.closeAllConnections();
  fs.rmSync(dir, { recursive: true, force: true });
});

function baseVars(uri: string, extra: UwsgiVars = []): UwsgiVars {
  const q = uri.indexOf('?');
  return [
    'REQUEST_METHOD',
    'GET',
    'REQUEST_URI',
    uri,
    'PATH_INFO',
    q >= 0 ? uri.slice(0, q) : uri,
    'QUERY_STRING',
    q >= 0 ? uri.slice(q + 1) : '',
    'SERVER_PROTOCOL',
    'HTTP/1.1',
    'REMOTE_ADDR',
    '10.1.2.3',
    'REMOTE_PORT',
    '42310',
    'SERVER_NAME',
    'example.test',
    'SERVER_PORT',
    '80',
    'HTTP_HOST',
    'example.test',
    ...extra,
  ];
}

interface RawResponse {
  status: number;
  headers: Array<[string, string]>;
  body: Buffer;
}

function header(r: RawResponse, name: string): string | undefined {
  return r.headers.find(([n]) => n.toLowerCase() === name)?.[1];
}

/** Split the bytes of one close-delimited response (no de-chunking: we want the raw wire). */
function parseRaw(buf: Buffer): RawResponse {
  const end = buf.indexOf('\r\n\r\n');
  expect(end).toBeGreaterThan(0);
  const lines = buf.toString('latin1', 0, end).split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0]!);
  expect(m).not.toBeNull();
  const headers = lines.slice(1).map((l): [string, string] => {
    const c = l.indexOf(':');
    return [l.slice(0, c), l.slice(c + 1).trim()];
  });
  return { status: Number(m![1]), headers, body: buf.subarray(end + 4) };
}

/** Write `data` on a new connection and collect everything until the server closes it. */
function exchangeUntilClose(data: Buffer | Buffer[], timeoutMs = 5000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(sockPath);
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      sock.destroy();
      reject(
        new Error(
          `connection not closed after ${timeoutMs} ms; got ${Buffer.concat(chunks).toString('latin1').slice(0, 200)}`,
        ),
      );
    }, timeoutMs);
    sock.on('data', (c) => chunks.push(c));
    sock.on('error', () => {}); // a reset after the response counts as a close
    sock.on('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks));
    });
    for (const d of Array.isArray(data) ? data : [data]) sock.write(d);
  });
}

/** Read one HTTP response framed by Content-Length or chunked from a kept connection. */
function readFramed(sock: net.Socket, state: { buf: Buffer }): Promise<{ res: RawResponse; body: string }> {
  return new Promise((resolve, reject) => {
    const tryParse = (): boolean => {
      const buf = state.buf;
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return false;
      const res = parseRaw(buf.subarray(0, end + 4));
      let pos = end + 4;
      const cl = header(res, 'content-length');
      let body = '';
      if (cl !== undefined) {
        if (buf.length < pos + Number(cl)) return false;
        body = buf.toString('latin1', pos, pos + Number(cl));
        pos += Number(cl);
      } else if (header(res, 'transfer-encoding') === 'chunked') {
        for (;;) {
          const nl = buf.indexOf('\r\n', pos);
          if (nl < 0) return false;
          const size = parseInt(buf.toString('latin1', pos, nl), 16);
          if (buf.length < nl + 2 + size + 2) return false;
          body += buf.toString('latin1', nl + 2, nl + 2 + size);
          pos = nl + 2 + size + 2;
          if (size === 0) break;
        }
      } else {
        reject(new Error('response on a kept connection has no framing'));
        return true;
      }
      state.buf = buf.subarray(pos);
      resolve({ res, body });
      return true;
    };
    if (tryParse()) return;
    const onData = (c: Buffer) => {
      state.buf = Buffer.concat([state.buf, c]);
      if (tryParse()) sock.off('data', onData);
    };
    sock.on('data', onData);
  });
}

describe('uwsgi server bridge (plain uwsgi peer, as nginx)', () => {
  it('answers a plain packet with an HTTP/1.x response and closes the connection', async () => {
    const raw = await exchangeUntilClose(encodePacket(baseVars('/hello?x=1')));
    const res = parseRaw(raw);
    expect(res.status).toBe(200);
    expect(header(res, KEEPALIVE_HEADER)).toBeUndefined();
    expect(header(res, 'transfer-encoding')).toBeUndefined();
    const echo = JSON.parse(res.body.toString()) as Echo;
    expect(echo.method).toBe('GET');
    expect(echo.url).toBe('/hello?x=1');
    expect(echo.remoteAddress).toBe('10.1.2.3');
    expect(echo.bodyLength).toBe(0);
    expect(echo.rawHeaders).toContain('example.test');
  });

  it('sends a streamed response without length as raw body until close, never chunked', async () => {
    const raw = await exchangeUntilClose(encodePacket(baseVars('/stream')));
    const res = parseRaw(raw);
    expect(res.status).toBe(200);
    expect(header(res, 'transfer-encoding')).toBeUndefined();
    expect(header(res, 'content-length')).toBeUndefined();
    expect(res.body.toString('latin1')).toBe('abcdef');
  });

  it('serves only one request per plain connection even if a second packet follows', async () => {
    const p = encodePacket(baseVars('/one'));
    const raw = await exchangeUntilClose([p, encodePacket(baseVars('/two'))]);
    const res = parseRaw(raw);
    expect((JSON.parse(res.body.toString()) as Echo).url).toBe('/one');
    expect(raw.toString('latin1').match(/HTTP\/1\.1 /g)).toHaveLength(1);
  });

  it('passes repeated HTTP_X_MULTI vars to the app as two headers', async () => {
    const raw = await exchangeUntilClose(
      encodePacket(baseVars('/multi', ['HTTP_X_MULTI', 'one', 'HTTP_X_MULTI', 'two'])),
    );
    const echo = JSON.parse(parseRaw(raw).body.toString()) as Echo;
    const multi: string[] = [];
    for (let i = 0; i < echo.rawHeaders.length; i += 2)
      if (echo.rawHeaders[i]!.toLowerCase() === 'x-multi') multi.push(echo.rawHeaders[i + 1]!);
    expect(multi).toEqual(['one', 'two']);
  });

  it('does not treat the body as chunked because of an HTTP_TRANSFER_ENCODING var', async () => {
    const vars = baseVars('/te', [
      'REQUEST_METHOD',
      'POST',
      'CONTENT_LENGTH',
      '5',
      'CONTENT_TYPE',
      'text/plain',
      'HTTP_TRANSFER_ENCODING',
      'chunked',
    ]);
    vars.splice(0, 2); // the extra REQUEST_METHOD above replaces GET
    const raw = await exchangeUntilClose([encodePacket(vars), Buffer.from('hello')]);
    const res = parseRaw(raw);
    expect(res.status).toBe(200);
    const echo = JSON.parse(res.body.toString()) as Echo;
    expect(echo.method).toBe('POST');
    expect(echo.bodyLength).toBe(5);
    expect(echo.bodySha256).toBe(createHash('sha256').update('hello').digest('hex'));
    expect(echo.rawHeaders.map((h) => h.toLowerCase())).not.toContain('transfer-encoding');
  });

  it('delivers a 1 MB body intact', async () => {
    const body = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < body.length; i++) body[i] = (i * 31 + 7) & 0xff;
    const vars = baseVars('/upload', [
      'CONTENT_LENGTH',
      String(body.length),
      'CONTENT_TYPE',
      'application/octet-stream',
    ]);
    vars[1] = 'POST';
    // Written in uneven pieces to exercise partial body chunks.
    const pkt = encodePacket(vars);
    const pieces = [Buffer.concat([pkt, body.subarray(0, 1000)]), body.subarray(1000, 70_001), body.subarray(70_001)];
    const raw = await exchangeUntilClose(pieces);
    const echo = JSON.parse(parseRaw(raw).body.toString()) as Echo;
    expect(echo.bodyLength).toBe(body.length);
    expect(echo.bodySha256).toBe(createHash('sha256').update(body).digest('hex'));
  });

  it(
    'answers 400 and closes on a CR/LF inside a header var value, while a concurrent connection is served',
    async () => {
      // A well-formed connection is open and half-sent while the bad one arrives.
      const good = net.connect(sockPath);
      await new Promise<void>((resolve) => good.once('connect', () => resolve()));
      const goodPkt = encodePacket(baseVars('/still-served'));
      good.write(goodPkt.subarray(0, 10));
      const goodChunks: Buffer[] = [];
      good.on('data', (c) => goodChunks.push(c));
      const goodClosed = new Promise<void>((resolve) => good.on('close', () => resolve()));

      const before = protocolErrors.length;
      const raw = await exchangeUntilClose(encodePacket(baseVars('/evil', ['HTTP_X_EVIL', 'a\r\nInjected: 1'])));
      const bad = parseRaw(raw);
      expect(bad.status).toBe(400);
      expect(bad.body.toString().trim()).toBe('STRATUM_ERR_UWSGI_BAD_VAR');
      expect(protocolErrors.slice(before)).toEqual(['STRATUM_ERR_UWSGI_BAD_VAR']);

      good.write(goodPkt.subarray(10));
      await goodClosed;
      const res = parseRaw(Buffer.concat(goodChunks));
      expect(res.status).toBe(200);
      expect((JSON.parse(res.body.toString()) as Echo).url).toBe('/still-served');
    },
  );

  it('answers 400 and closes on a malformed packet (bad key length), and keeps serving', async () => {
    const block = Buffer.from([0xff, 0x00, 0x41, 0x42]); // key length 255, only 2 bytes follow
    const pkt = Buffer.concat([Buffer.from([0, block.length, 0, 0]), block]);
    const before = protocolErrors.length;
    const raw = await exchangeUntilClose(pkt);
    const res = parseRaw(raw);
    expect(res.status).toBe(400);
    expect(res.body.toString().trim()).toBe('STRATUM_ERR_UWSGI_BAD_VAR');
    expect(protocolErrors.slice(before)).toEqual(['STRATUM_ERR_UWSGI_BAD_VAR']);

    const after = parseRaw(await exchangeUntilClose(encodePacket(baseVars('/after-bad'))));
    expect(after.status).toBe(200);
    expect((JSON.parse(after.body.toString()) as Echo).url).toBe('/after-bad');
  });

  it('answers 400 on an unsupported modifier1', async () => {
    const res = parseRaw(await exchangeUntilClose(encodePacket(baseVars('/m'), 9)));
    expect(res.status).toBe(400);
    expect(res.body.toString().trim()).toBe('STRATUM_ERR_UWSGI_MODIFIER');
  });
});

describe('uwsgi server bridge (negotiated keep-alive, our own proxy)', () => {
  it('answers two requests on one connection when STRATUM_KEEPALIVE=1', async () => {
    const sock = net.connect(sockPath);
    const state = { buf: Buffer.alloc(0) };
    try {
      sock.write(encodePacket(baseVars('/first', [KEEPALIVE_VAR, '1'])));
      const a = await readFramed(sock, state);
      expect(a.res.status).toBe(200);
      expect(header(a.res, KEEPALIVE_HEADER)).toBe('1');
      expect((JSON.parse(a.body) as Echo).url).toBe('/first');

      // Second request: a streamed response is framed (chunked) since the connection stays open.
      sock.write(encodePacket(baseVars('/stream', [KEEPALIVE_VAR, '1'])));
      const b = await readFramed(sock, state);
      expect(header(b.res, KEEPALIVE_HEADER)).toBe('1');
      expect(b.body).toBe('abcdef');

      // A third, POST with a body, pipelined right behind a GET.
      const post = baseVars('/third', [KEEPALIVE_VAR, '1', 'CONTENT_LENGTH', '3']);
      post[1] = 'POST';
      sock.write(
        Buffer.concat([
          encodePacket(baseVars('/pipelined', [KEEPALIVE_VAR, '1'])),
          encodePacket(post),
          Buffer.from('xyz'),
        ]),
      );
      const c = await readFramed(sock, state);
      const d = await readFramed(sock, state);
      expect((JSON.parse(c.body) as Echo).url).toBe('/pipelined');
      const dEcho = JSON.parse(d.body) as Echo;
      expect(dEcho.url).toBe('/third');
      expect(dEcho.bodyLength).toBe(3);
      expect(sock.destroyed).toBe(false);
    } finally {
      sock.destroy();
    }
  });
});
