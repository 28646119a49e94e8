// The PROXY protocol on the front listener, behind a real TCP balancer: nginx in a `stream {}`
// block with `proxy_protocol on` in front of `stratum serve` with proxy.proxyProtocol. nginx
// connects from 127.0.0.1; the client binds 127.0.0.2, so the address the app sees can only have
// come through the header. Every app kind, in both topologies (the master topology carries it to
// the worker as REMOTE_ADDR). Plus what nginx cannot send — a v2 header, IPv6, LOCAL — written by
// hand, and connections without a header: closed, logged, and the service keeps serving.
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireNginxStream, startNginxStream, type PeerProcess } from '../helpers/peers.ts';
import { makeTempDir, waitUntil } from '../helpers/processes.ts';
import { REPO_ROOT, startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';
import { makeCert } from './certs.ts';

afterAll(stopAllStratum);

const peers = requireNginxStream();
const CLIENT = '127.0.0.2';

interface Echo {
  remoteAddress: string | null;
  scheme: string;
  headers: [string, string][];
}

/** GET /echo to host:port from `localAddress`, on a connection of its own. */
function echo(port: number, localAddress: string, headers: Record<string, string> = {}): Promise<Echo> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/echo', localAddress, agent: false, headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () =>
        res.statusCode === 200 ? resolve(JSON.parse(body) as Echo) : reject(new Error(`${res.statusCode}: ${body}`)),
      );
    });
    req.setTimeout(10_000, () => req.destroy(new Error('no answer within 10 s')));
    req.once('error', reject);
  });
}

/**
 * Writes raw bytes to the front and resolves with everything it answered before it closed. No
 * half-close from our side: the last request asks for Connection: close.
 */
function raw(port: number, bytes: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = net.connect(port, '127.0.0.1');
    let out = '';
    c.setEncoding('latin1');
    c.on('data', (d: string) => (out += d));
    c.once('error', (e: NodeJS.ErrnoException) => (e.code === 'ECONNRESET' ? resolve(out) : reject(e)));
    c.once('close', () => resolve(out));
    c.setTimeout(10_000, () => c.destroy(new Error('no close within 10 s')));
    c.write(bytes);
  });
}

function v2Header(command: number, famProto: number, addresses: Buffer): Buffer {
  const head = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');
  const len = Buffer.alloc(2);
  len.writeUInt16BE(addresses.length);
  return Buffer.concat([head, Buffer.from([0x20 | command, famProto]), len, addresses]);
}

function configFile(extra: Record<string, unknown> = {}): string {
  const dir = makeTempDir('proxy-protocol');
  const file = join(dir, 'stratum.yaml');
  writeFileSync(file, JSON.stringify({ proxy: { proxyProtocol: true, ...extra } })); // JSON is YAML
  return file;
}

function frontPort(s: StratumProcess): number {
  return Number(new URL(s.front!).port);
}

describe.skipIf(!peers).each(['worker', 'master'])('PROXY protocol behind nginx stream (%s topology)', (topology) => {
  let nginx: PeerProcess;
  const served: Record<string, StratumProcess> = {};
  const kinds = ['listener', 'fastify', 'fetch'] as const;

  beforeAll(async () => {
    const config = configFile();
    for (const kind of kinds) {
      served[kind] = await startStratum([
        'serve',
        '--config',
        config,
        '--listen',
        '127.0.0.1:0',
        '--admin',
        '127.0.0.1:0',
        '--workers',
        '1',
        '--topology',
        topology,
        '--app',
        join(REPO_ROOT, `test/fixtures/apps/${kind}.ts`),
      ]);
    }
  });
  afterAll(async () => {
    await nginx?.stop();
    for (const s of Object.values(served)) await s.stop();
  });

  it.each(kinds)('the %s app sees the original client address, and so does the access log', async (kind) => {
    const s = served[kind]!;
    nginx = await startNginxStream({ upstream: `127.0.0.1:${frontPort(s)}` });
    try {
      for (let i = 0; i < 3; i++) {
        const doc = await echo(nginx.port, CLIENT);
        expect(doc.remoteAddress).toBe(CLIENT);
        expect(doc.scheme).toBe('http');
        const xff = doc.headers.filter(([k]) => k.toLowerCase() === 'x-forwarded-for').map(([, v]) => v);
        expect(xff).toEqual([CLIENT]);
      }
      // Access lines are written in batches: wait for all three.
      await waitUntil(async () => s.logs().filter((l) => l.type === 'access' && l.client === CLIENT).length >= 3, {
        timeoutMs: 5000,
        describe: () => `no access line with client ${CLIENT}\n${s.stdoutLines.slice(-5).join('\n')}`,
      });
      const lines = s.logs().filter((l) => l.type === 'access' && l.path === '/echo');
      expect(lines.length).toBeGreaterThanOrEqual(3);
      expect(lines.every((l) => l.client === CLIENT)).toBe(true);
    } finally {
      await nginx.stop();
    }
  });

  it('takes a v2 header (IPv6, a LOCAL health check) written by hand, many requests on one connection', async () => {
    const port = frontPort(served.listener!);
    const addrs = Buffer.alloc(36);
    Buffer.from('20010db8000000000000000000000042', 'hex').copy(addrs, 0);
    Buffer.from('20010db8000000000000000000000001', 'hex').copy(addrs, 16);
    addrs.writeUInt16BE(50000, 32);
    addrs.writeUInt16BE(443, 34);
    const two = 'GET /echo HTTP/1.1\r\nHost: a\r\n\r\nGET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n';
    const out = await raw(port, Buffer.concat([v2Header(1, 0x21, addrs), Buffer.from(two)]));
    expect(out.match(/"remoteAddress":"2001:db8::42"/g)?.length, out).toBe(2);
    const local = await raw(port, Buffer.concat([v2Header(0, 0x00, Buffer.alloc(0)), Buffer.from(two)]));
    expect(local.match(/"remoteAddress":"127\.0\.0\.1"/g)?.length, local).toBe(2);
  });

  it('closes a connection without a valid header, unanswered, logs it, and serves the next one', async () => {
    const s = served.listener!;
    const port = frontPort(s);
    expect(await raw(port, Buffer.from('GET /echo HTTP/1.1\r\nHost: a\r\n\r\n'))).toBe('');
    expect(await raw(port, Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\nGET / HTTP/1.1\r\n\r\n'))).toBe('');
    expect(await raw(port, Buffer.concat([v2Header(1, 0x11, Buffer.alloc(4))]))).toBe('');
    await waitUntil(async () => s.logs().some((l) => l.code === 'STRATUM_ERR_PROXY_PROTOCOL'), {
      timeoutMs: 5000,
      describe: () => `no STRATUM_ERR_PROXY_PROTOCOL line\n${s.stdoutLines.slice(-5).join('\n')}`,
    });
    const ok = await raw(
      port,
      Buffer.from(
        'PROXY TCP4 192.0.2.9 10.0.0.1 1234 80\r\nGET /echo HTTP/1.1\r\nHost: a\r\n' + 'Connection: close\r\n\r\n',
      ),
    );
    expect(ok).toContain('"remoteAddress":"192.0.2.9"');
  });

  it("a TLS listener reads the header before the handshake: the app sees the header's client and https", async () => {
    const dir = makeTempDir('proxy-protocol-tls');
    const cert = makeCert(dir, 'front', ['front.test']);
    const file = join(dir, 'stratum.yaml');
    const tlsConfig = { proxy: { proxyProtocol: true }, tls: { cert: cert.cert, key: cert.key } };
    writeFileSync(file, JSON.stringify(tlsConfig));
    const app = join(REPO_ROOT, 'test/fixtures/apps/listener.ts');
    const s = await startStratum([
      'serve',
      '--config',
      file,
      '--listen',
      '127.0.0.1:0',
      '--admin',
      '127.0.0.1:0',
      '--workers',
      '1',
      '--topology',
      topology,
      '--app',
      app,
    ]);
    try {
      const port = frontPort(s);
      const body = await new Promise<string>((resolve, reject) => {
        const raw = net.connect(port, '127.0.0.1', () => {
          raw.write('PROXY TCP4 192.0.2.77 10.0.0.1 4321 443\r\n');
          const t = tls.connect({ socket: raw, servername: 'front.test', rejectUnauthorized: false }, () =>
            t.write('GET /echo HTTP/1.1\r\nHost: front.test\r\nConnection: close\r\n\r\n'),
          );
          let out = '';
          t.setEncoding('utf8');
          t.on('data', (d: string) => (out += d));
          t.once('end', () => resolve(out));
          t.once('error', reject);
        });
        raw.once('error', reject);
        raw.setTimeout(10_000, () => raw.destroy(new Error('no answer within 10 s')));
      });
      const doc = JSON.parse(body.slice(body.indexOf('\r\n\r\n') + 4)) as Echo;
      expect([doc.remoteAddress, doc.scheme]).toEqual(['192.0.2.77', 'https']);
      expect(doc.headers.filter(([k]) => k === 'x-forwarded-proto').map(([, v]) => v)).toEqual(['https']);
      // HTTP/2 (ALPN h2, on by default): two streams on the one connection, each sees the header's client.
      const raw = net.connect(port, '127.0.0.1');
      await new Promise<void>((resolve, reject) => {
        raw.once('connect', resolve);
        raw.once('error', reject);
      });
      raw.write('PROXY TCP6 2001:db8::77 2001:db8::1 4322 443\r\n');
      const session = http2.connect(`https://front.test:${port}`, {
        createConnection: () =>
          tls.connect({ socket: raw, servername: 'front.test', rejectUnauthorized: false, ALPNProtocols: ['h2'] }),
      });
      try {
        const one = () =>
          new Promise<Echo>((resolve, reject) => {
            const st = session.request({ ':path': '/echo' });
            let text = '';
            st.setEncoding('utf8');
            st.on('data', (d: string) => (text += d));
            st.once('end', () => resolve(JSON.parse(text) as Echo));
            st.once('error', reject);
          });
        const docs = await Promise.all([one(), one()]);
        expect(docs.map((d) => [d.remoteAddress, d.scheme])).toEqual([
          ['2001:db8::77', 'https'],
          ['2001:db8::77', 'https'],
        ]);
      } finally {
        session.close();
      }
    } finally {
      await s.stop();
    }
  });
});
