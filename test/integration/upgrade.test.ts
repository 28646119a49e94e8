// Upgrade (WebSocket) requests pass through to HTTP upstreams — head forwarded, sockets spliced
// after 101 — and are refused on uwsgi targets (uwsgi has no upgrade), as with nginx.
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStratum, type StratumProcess } from '../helpers/stratum.ts';

const FIXTURE = new URL('../fixtures/apps/fastify.ts', import.meta.url).pathname;

function rawExchange(
  base: string,
  request: string,
  send: string | null,
  until: (got: string) => boolean,
): Promise<string> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve, reject) => {
    let got = '';
    const s = net.connect(Number(port), hostname, () => s.write(request));
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`timed out; got ${JSON.stringify(got)}`));
    }, 5000);
    s.on('data', (d) => {
      const before = got;
      got += d.toString('latin1');
      if (send && !before.includes('\r\n\r\n') && got.includes('\r\n\r\n')) s.write(send);
      if (until(got)) {
        clearTimeout(timer);
        s.destroy();
        resolve(got);
      }
    });
    s.on('close', () => {
      clearTimeout(timer);
      resolve(got);
    });
    s.on('error', reject);
  });
}

describe('Upgrade requests', () => {
  let upstream: http.Server;
  let seenUpgradeHeaders: http.IncomingHttpHeaders | null = null;
  let s: StratumProcess;

  beforeAll(async () => {
    upstream = http.createServer((_q, r) => r.end('plain'));
    upstream.on('upgrade', (req, sock: net.Socket) => {
      seenUpgradeHeaders = req.headers;
      sock.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
      sock.on('data', (d) => sock.write(d));
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', () => r()));
    const port = (upstream.address() as AddressInfo).port;
    s = await startStratum([
      'serve',
      '--listen',
      '127.0.0.1:0',
      '--admin',
      '127.0.0.1:0',
      '--workers',
      '1',
      '--app',
      FIXTURE,
      '--route',
      `/ws=http://127.0.0.1:${port}`,
      '--route',
      '/=pool',
    ]);
  });
  afterAll(async () => {
    await s?.stop();
    upstream?.close();
  });

  it('splices a WebSocket upgrade to an HTTP upstream and carries bytes both ways', async () => {
    const got = await rawExchange(
      s.front!,
      'GET /ws/chat HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n',
      'ping-42',
      (g) => g.endsWith('ping-42'),
    );
    expect(got.startsWith('HTTP/1.1 101')).toBe(true);
    expect(got.endsWith('ping-42')).toBe(true);
    expect(seenUpgradeHeaders?.upgrade).toBe('websocket');
    expect(seenUpgradeHeaders?.['x-forwarded-for']).toBe('127.0.0.1');
  });

  it('refuses an upgrade on a pool route with 501', async () => {
    const got = await rawExchange(
      s.front!,
      'GET / HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n',
      null,
      (g) => g.includes('\r\n\r\n'),
    );
    expect(got.startsWith('HTTP/1.1 501')).toBe(true);
  });
});
