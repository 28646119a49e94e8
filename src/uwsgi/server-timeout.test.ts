// uWSGI's socket-timeout: a uwsgi client that stops sending in the middle of a packet or body
// is answered 408 and dropped; a connection waiting on the app, or an idle kept one, is not.
import { HostResponse } from '../host/response.ts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { encodePacket } from './codec.ts';
import { KEEPALIVE_VAR, serveUwsgiConnection, uwsgiRequestListener } from './server.ts';
import type { StratumError } from '../errors.ts';

const TIMEOUT_MS = 200;
let dir: string;
let sockPath: string;
let uwsgiServer: net.Server;
const errors: string[] = [];

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'stratum-uwsgi-timeout-'));
  sockPath = path.join(dir, 'uwsgi.sock');
  const httpServer = http.createServer(
    { ServerResponse: HostResponse as unknown as typeof http.ServerResponse },
    uwsgiRequestListener((req, res) => {
      if (req.url === '/slow') setTimeout(() => res.end('slow done'), TIMEOUT_MS * 3);
      else req.resume().on('end', () => res.end('ok'));
    }),
  );
  uwsgiServer = net.createServer((sock) => {
    serveUwsgiConnection(sock, httpServer, {
      maxVarsSize: 65535,
      readTimeoutMs: TIMEOUT_MS,
      onProtocolError: (e: StratumError) => void errors.push(e.code),
    });
  });
  await new Promise<void>((r) => uwsgiServer.listen(sockPath, r));
});
afterAll(async () => {
  await new Promise<void>((r) => uwsgiServer.close(() => r()));
  fs.rmSync(dir, { recursive: true, force: true });
});

function exchange(write: (s: net.Socket) => void): Promise<{ text: string; ms: number }> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    let text = '';
    const s = net.connect(sockPath, () => write(s));
    s.on('data', (d) => (text += d.toString('latin1')));
    s.on('close', () => resolve({ text, ms: Date.now() - t0 }));
    s.on('error', reject);
  });
}

const vars = (uri: string, extra: string[] = []) => [
  'REQUEST_METHOD',
  'POST',
  'REQUEST_URI',
  uri,
  'PATH_INFO',
  uri,
  'HTTP_HOST',
  'x',
  ...extra,
];

describe('uwsgi socket timeout', () => {
  it('answers 408 and closes when a client stalls inside the vars block', async () => {
    const packet = encodePacket(vars('/'));
    const r = await exchange((s) => s.write(packet.subarray(0, 10)));
    expect(r.text.startsWith('HTTP/1.1 408')).toBe(true);
    expect(r.ms).toBeLessThan(TIMEOUT_MS * 10);
    expect(errors).toContain('STRATUM_ERR_UWSGI_READ_TIMEOUT');
  });

  it('drops a client that stalls inside the announced body', async () => {
    const packet = encodePacket(vars('/', ['CONTENT_LENGTH', '100']));
    const r = await exchange((s) => s.write(Buffer.concat([packet, Buffer.alloc(10)])));
    expect(r.text).not.toContain('200 OK');
  });

  it('keeps a connection whose request is waiting on a slow app', async () => {
    const r = await exchange((s) => s.write(encodePacket(vars('/slow', ['CONTENT_LENGTH', '0']))));
    expect(r.text).toContain('slow done');
  });

  it('keeps an idle kept connection between requests', async () => {
    const s = net.connect(sockPath);
    await new Promise((r) => s.once('connect', r));
    let text = '';
    s.on('data', (d) => (text += d.toString('latin1')));
    s.write(encodePacket(vars('/', ['CONTENT_LENGTH', '0', KEEPALIVE_VAR, '1'])));
    await new Promise((r) => setTimeout(r, TIMEOUT_MS * 3));
    expect(s.destroyed).toBe(false);
    s.write(encodePacket(vars('/', ['CONTENT_LENGTH', '0'])));
    await new Promise((r) => setTimeout(r, 100));
    expect(text.match(/200 OK/g)).toHaveLength(2);
    s.destroy();
  });
});
