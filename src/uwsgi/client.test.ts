import { HostResponse } from '../host/response.ts';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { UwsgiClient, type UwsgiClientOptions } from './client.ts';
import type { UwsgiVars } from './codec.ts';
import type { ResponseHead } from './response.ts';
import { KEEPALIVE_HEADER, serveUwsgiConnection, uwsgiRequestListener } from './server.ts';
import type { StratumError } from '../errors.ts';

function echoListener(req: IncomingMessage, res: ServerResponse): void {
  let length = 0;
  req.on('data', (c: Buffer) => (length += c.length));
  req.on('end', () => {
    res.setHeader('content-type', 'application/json');
    res.end(
      JSON.stringify({
        method: req.method,
        url: req.url,
        rawHeaders: req.rawHeaders,
        remoteAddress: req.socket.remoteAddress,
        bodyLength: length,
      }),
    );
  });
}

interface Listening {
  server: net.Server;
  path: string;
  connections: number;
}

let dir: string;
const servers: net.Server[] = [];

function listen(name: string, onConnection: (sock: net.Socket) => void): Promise<Listening> {
  const l: Listening = { server: net.createServer(), path: path.join(dir, `${name}.sock`), connections: 0 };
  l.server.on('connection', (sock) => {
    l.connections++;
    onConnection(sock);
  });
  servers.push(l.server);
  return new Promise((resolve) => l.server.listen(l.path, () => resolve(l)));
}

let httpServer: http.Server;
let stratum: Listening;
const clients: UwsgiClient[] = [];

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'stratum-uwsgi-client-'));
  httpServer = http.createServer(
    { ServerResponse: HostResponse as unknown as typeof http.ServerResponse },
    uwsgiRequestListener(echoListener),
  );
  stratum = await listen('stratum', (sock) => {
    serveUwsgiConnection(sock, httpServer, { maxVarsSize: 65535, onProtocolError() {} });
  });
});

afterEach(() => {
  for (const c of clients.splice(0)) c.close();
});

afterAll(async () => {
  for (const s of servers) s.close();
  httpServer.closeAllConnections();
  fs.rmSync(dir, { recursive: true, force: true });
});

function client(sockPath: string, opts: Partial<UwsgiClientOptions> = {}): UwsgiClient {
  const c = new UwsgiClient(
    { kind: 'unix', path: sockPath },
    { negotiate: true, connectTimeoutMs: 2000, readTimeoutMs: 5000, ...opts },
  );
  clients.push(c);
  return c;
}

interface Result {
  head: ResponseHead;
  body: string;
  reused: boolean;
}

function request(c: UwsgiClient, vars: UwsgiVars, body: Buffer | null = null): Promise<Result> {
  return new Promise((resolve, reject) => {
    let head: ResponseHead | null = null;
    let reused = false;
    const chunks: Buffer[] = [];
    c.request(
      vars,
      body,
      {
        onConnect: (r) => (reused = r),
        onHead: (h) => (head = h),
        onBody: (chunk) => {
          chunks.push(Buffer.from(chunk));
          return true;
        },
        onComplete: () => resolve({ head: head!, body: Buffer.concat(chunks).toString(), reused }),
        onError: (err: StratumError) => reject(err),
      },
      { isHead: false },
    );
  });
}

async function codeOfRejection(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
  } catch (err) {
    return (err as { code?: string }).code;
  }
  return undefined;
}

function vars(uri: string): UwsgiVars {
  return [
    'REQUEST_METHOD',
    'GET',
    'REQUEST_URI',
    uri,
    'PATH_INFO',
    uri,
    'QUERY_STRING',
    '',
    'SERVER_PROTOCOL',
    'HTTP/1.1',
    'HTTP_HOST',
    'test',
  ];
}

describe('UwsgiClient', () => {
  it('reuses the connection for a second request once keep-alive is negotiated', async () => {
    const c = client(stratum.path);
    const before = stratum.connections;
    const a = await request(c, vars('/a'));
    expect(a.head.statusCode).toBe(200);
    expect(a.reused).toBe(false);
    expect(a.head.rawHeaders.map((h) => h.toLowerCase())).toContain(KEEPALIVE_HEADER);
    expect(JSON.parse(a.body).url).toBe('/a');
    expect(c.idleConnections).toBe(1);

    const b = await request(c, [...vars('/b'), 'CONTENT_LENGTH', '5'], Buffer.from('12345'));
    expect(b.reused).toBe(true);
    expect(JSON.parse(b.body)).toMatchObject({ url: '/b', bodyLength: 5 });
    expect(stratum.connections - before).toBe(1);
  });

  it('does not keep the connection without negotiation (the server closes as for nginx)', async () => {
    const c = client(stratum.path, { negotiate: false });
    const before = stratum.connections;
    const a = await request(c, vars('/a'));
    const b = await request(c, vars('/b'));
    expect(a.reused).toBe(false);
    expect(b.reused).toBe(false);
    expect(a.head.rawHeaders.map((h) => h.toLowerCase())).not.toContain(KEEPALIVE_HEADER);
    expect(JSON.parse(b.body).url).toBe('/b');
    expect(stratum.connections - before).toBe(2);
    expect(c.idleConnections).toBe(0);
  });

  it('does not reuse a plain server that closes after each response; both requests succeed', async () => {
    const plain = await listen('plain', (sock) => {
      sock.on('error', () => {});
      sock.once('data', () => sock.end('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'));
    });
    const c = client(plain.path);
    const a = await request(c, vars('/a'));
    const b = await request(c, vars('/b'));
    expect([a.body, b.body]).toEqual(['ok', 'ok']);
    expect([a.reused, b.reused]).toEqual([false, false]);
    expect(plain.connections).toBe(2);
    expect(c.idleConnections).toBe(0);
  });

  it('does not park a kept connection that sent bytes past the response', async () => {
    const junk = await listen('junk', (sock) => {
      sock.on('error', () => {});
      sock.on('data', () => sock.write(`HTTP/1.1 200 OK\r\n${KEEPALIVE_HEADER}: 1\r\nContent-Length: 2\r\n\r\nokJUNK`));
    });
    const c = client(junk.path);
    const a = await request(c, vars('/a'));
    expect(a.body).toBe('ok');
    expect(c.idleConnections).toBe(0);
    const b = await request(c, vars('/b'));
    expect(b.reused).toBe(false);
    expect(junk.connections).toBe(2);
  });

  it('maps a socket path that does not exist to STRATUM_ERR_UPSTREAM_UNREACHABLE', async () => {
    const c = client(path.join(dir, 'nobody-here.sock'));
    expect(await codeOfRejection(request(c, vars('/')))).toBe('STRATUM_ERR_UPSTREAM_UNREACHABLE');
  });

  it('maps a stale socket file (its server crashed) to STRATUM_ERR_UPSTREAM_UNREACHABLE', async () => {
    // A killed process leaves its socket file behind (a clean close would unlink it).
    const stale = path.join(dir, 'crashed.sock');
    const child = spawnSync(process.execPath, [
      '-e',
      `require('node:net').createServer().listen(${JSON.stringify(stale)}, () => process.kill(process.pid, 'SIGKILL'))`,
    ]);
    expect(child.signal).toBe('SIGKILL');
    expect(fs.existsSync(stale)).toBe(true);
    const c = client(stale);
    expect(await codeOfRejection(request(c, vars('/')))).toBe('STRATUM_ERR_UPSTREAM_UNREACHABLE');
  });

  it('maps a server that never answers to STRATUM_ERR_UPSTREAM_TIMEOUT after readTimeoutMs', async () => {
    const silent = await listen('silent', (sock) => {
      sock.on('error', () => {});
      sock.resume();
    });
    const c = client(silent.path, { readTimeoutMs: 200 });
    const t0 = performance.now();
    expect(await codeOfRejection(request(c, vars('/')))).toBe('STRATUM_ERR_UPSTREAM_TIMEOUT');
    const elapsed = performance.now() - t0;
    expect(elapsed).toBeGreaterThanOrEqual(150);
    expect(elapsed).toBeLessThan(3000);
  });

  // A connection keeps its listeners and read timeout for its whole life; these pin what that
  // must still do between and across requests.
  const KEPT = `HTTP/1.1 200 OK\r\n${KEEPALIVE_HEADER}: 1\r\nContent-Length: 2\r\n\r\nok`;

  it('times out the second request on a kept connection too (the timeout is not re-armed per request)', async () => {
    // Answers the first packet on a connection, never the second.
    const once = await listen('once', (sock) => {
      sock.on('error', () => {});
      let n = 0;
      sock.on('data', () => {
        if (n++ === 0) sock.write(KEPT);
      });
    });
    const c = client(once.path, { readTimeoutMs: 300 });
    expect((await request(c, vars('/a'))).body).toBe('ok');
    await new Promise((r) => setTimeout(r, 450)); // idle past readTimeoutMs: that timeout fires into no request
    expect(c.idleConnections).toBe(1);
    const t0 = performance.now();
    expect(await codeOfRejection(request(c, vars('/b')))).toBe('STRATUM_ERR_UPSTREAM_TIMEOUT');
    expect(performance.now() - t0).toBeGreaterThanOrEqual(250);
    expect(once.connections).toBe(1);
  });

  it('drops an idle kept connection that the server closes, and serves the next request on a new one', async () => {
    const closing = await listen('closing', (sock) => {
      sock.on('error', () => {});
      sock.on('data', () => {
        sock.write(KEPT);
        setTimeout(() => sock.end(), 50); // then closes the idle connection
      });
    });
    const c = client(closing.path);
    expect((await request(c, vars('/a'))).reused).toBe(false);
    await new Promise((r) => setTimeout(r, 200));
    expect(c.idleConnections).toBe(0);
    const b = await request(c, vars('/b'));
    expect([b.body, b.reused]).toEqual(['ok', false]);
    expect(closing.connections).toBe(2);
  });

  it('drops an idle kept connection that receives stray bytes', async () => {
    const stray = await listen('stray', (sock) => {
      sock.on('error', () => {});
      sock.on('data', () => {
        sock.write(KEPT);
        setTimeout(() => sock.write('HTTP/1.1 200 OK\r\n'), 50); // out of turn
      });
    });
    const c = client(stray.path);
    await request(c, vars('/a'));
    await new Promise((r) => setTimeout(r, 200));
    expect(c.idleConnections).toBe(0);
    expect((await request(c, vars('/b'))).reused).toBe(false);
  });
});
