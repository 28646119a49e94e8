// Trusted proxies through the real service, in both topologies: `--trusted-proxy 127.0.0.1`, so a
// client on 127.0.0.1 is a proxy whose X-Forwarded-* is believed, and one bound to 127.0.0.2 is
// a client whose X-Forwarded-* is forged and replaced. Checked where it lands: the in-process (or
// uwsgi-fed) app's address and scheme, the headers an HTTP upstream gets, REMOTE_ADDR and
// wsgi.url_scheme in a real uWSGI + Flask, and the access log. Then a real nginx
// (`proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for`) in front.
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasPeer, requirePeer, startNginx, startUwsgi, type PeerProcess } from '../helpers/peers.ts';
import { startOtlpReceiver, type OtlpReceiver } from '../helpers/otlp.ts';
import { makeTempDir, waitUntil } from '../helpers/processes.ts';
import { REPO_ROOT, startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';

afterAll(stopAllStratum);

const PROXY = '127.0.0.1';
const CLIENT = '127.0.0.2';
const withUwsgi = requirePeer('uwsgi');
const withNginx = requirePeer('nginx');

interface Echo {
  remoteAddress: string | null;
  scheme: string;
  headers: [string, string][];
}

const FORGED = {
  'x-forwarded-for': '203.0.113.50, 198.51.100.7',
  'x-forwarded-proto': 'https',
  'x-forwarded-host': 'public.example',
};

function get(port: number, path: string, localAddress: string, headers: Record<string, string> = {}) {
  return new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, localAddress, agent: false, headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.setTimeout(10_000, () => req.destroy(new Error(`${path}: no answer within 10 s`)));
    req.once('error', reject);
  });
}

async function echo(port: number, path: string, localAddress: string, headers: Record<string, string> = {}) {
  const r = await get(port, path, localAddress, headers);
  expect(r.status, r.body).toBe(200);
  return JSON.parse(r.body) as Echo;
}

function header(doc: Echo, name: string): string[] {
  return doc.headers.filter(([k]) => k.toLowerCase() === name).map(([, v]) => v);
}

/** An HTTP upstream that answers with the X-Forwarded-* headers it got. */
async function headerEcho(): Promise<{ port: number; close(): void }> {
  const server = http.createServer((req, res) => {
    const pick = (k: string) => req.headers[k] ?? null;
    res.setHeader('content-type', 'application/json');
    res.end(
      JSON.stringify({ xff: pick('x-forwarded-for'), xfp: pick('x-forwarded-proto'), xfh: pick('x-forwarded-host') }),
    );
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { port: (server.address() as AddressInfo).port, close: () => server.close() };
}

describe.each(['worker', 'master'])('trusted proxies (%s topology)', (topology) => {
  let s: StratumProcess;
  let upstream: { port: number; close(): void };
  let uwsgi: PeerProcess | null = null;
  let port: number;

  beforeAll(async () => {
    upstream = await headerEcho();
    if (withUwsgi && hasPeer('uwsgi')) uwsgi = await startUwsgi({ processes: 1 });
    const routes = ['--route', '/=pool', '--route', `/upstream=http://127.0.0.1:${upstream.port}`];
    if (uwsgi) routes.push('--route', `flask.test=uwsgi://${uwsgi.address}`); // Flask routes /echo itself
    s = await startStratum([
      'serve',
      '--listen',
      '127.0.0.1:0',
      '--admin',
      '127.0.0.1:0',
      '--workers',
      '1',
      '--topology',
      topology,
      '--trusted-proxy',
      PROXY,
      '--trusted-proxy',
      '10.0.0.0/8',
      '--app',
      join(REPO_ROOT, 'test/fixtures/apps/listener.ts'),
      ...routes,
    ]);
    port = Number(new URL(s.front!).port);
  });
  afterAll(async () => {
    await s?.stop();
    await uwsgi?.stop();
    upstream?.close();
  });

  it('from a trusted peer: the client is the right-most untrusted X-Forwarded-For entry, the rest kept', async () => {
    const doc = await echo(port, '/echo', PROXY, FORGED);
    expect(doc.remoteAddress).toBe('198.51.100.7');
    expect(doc.scheme).toBe('https');
    expect(header(doc, 'x-forwarded-for')).toEqual(['203.0.113.50, 198.51.100.7, 127.0.0.1']);
    expect(header(doc, 'x-forwarded-proto')).toEqual(['https']);
    expect(header(doc, 'x-forwarded-host')).toEqual(['public.example']);
    // Hops in the trusted 10/8 are skipped on the way left.
    const deeper = await echo(port, '/echo', PROXY, { 'x-forwarded-for': '198.51.100.8, 10.1.1.1, 10.2.2.2' });
    expect(deeper.remoteAddress).toBe('198.51.100.8');
  });

  it('from any other peer: all three replaced, the client is the peer', async () => {
    const doc = await echo(port, '/echo', CLIENT, FORGED);
    expect(doc.remoteAddress).toBe(CLIENT);
    expect(doc.scheme).toBe('http');
    expect(header(doc, 'x-forwarded-for')).toEqual([CLIENT]);
    expect(header(doc, 'x-forwarded-proto')).toEqual(['http']);
    expect(header(doc, 'x-forwarded-host')).toEqual([`127.0.0.1:${port}`]);
  });

  it('an HTTP upstream gets the same headers', async () => {
    const trusted = JSON.parse((await get(port, '/upstream/x', PROXY, FORGED)).body) as Record<string, string>;
    expect(trusted).toEqual({ xff: '203.0.113.50, 198.51.100.7, 127.0.0.1', xfp: 'https', xfh: 'public.example' });
    const forged = JSON.parse((await get(port, '/upstream/x', CLIENT, FORGED)).body) as Record<string, string>;
    expect(forged).toEqual({ xff: CLIENT, xfp: 'http', xfh: `127.0.0.1:${port}` });
  });

  it.runIf(withUwsgi)('a real uWSGI + Flask gets REMOTE_ADDR and wsgi.url_scheme of the real client', async () => {
    const flask = { ...FORGED, host: 'flask.test' };
    const trusted = await echo(port, '/echo', PROXY, flask);
    expect([trusted.remoteAddress, trusted.scheme]).toEqual(['198.51.100.7', 'https']);
    expect(header(trusted, 'x-forwarded-for')).toEqual(['203.0.113.50, 198.51.100.7, 127.0.0.1']);
    const forged = await echo(port, '/echo', CLIENT, flask);
    expect([forged.remoteAddress, forged.scheme]).toEqual([CLIENT, 'http']);
  });

  it('the access log has the real client and scheme', async () => {
    await echo(port, '/echo?log=trusted', PROXY, FORGED);
    await echo(port, '/echo?log=forged', CLIENT, FORGED);
    const line = (q: string) => s.logs().find((l) => l.type === 'access' && l.path === `/echo?log=${q}`);
    await waitUntil(async () => line('trusted') !== undefined && line('forged') !== undefined, {
      timeoutMs: 5000,
      describe: () => `access lines missing\n${s.stdoutLines.slice(-5).join('\n')}`,
    });
    expect([line('trusted')!.client, line('trusted')!.scheme]).toEqual(['198.51.100.7', 'https']);
    expect([line('forged')!.client, line('forged')!.scheme]).toEqual([CLIENT, 'http']);
  });

  it.runIf(withNginx)(
    "behind a real nginx adding $proxy_add_x_forwarded_for, the app sees nginx's client",
    async () => {
      const nginx = await startNginx({
        serverConf: `location / {
        proxy_pass http://127.0.0.1:${port};
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
      }`,
      });
      try {
        // The client forges an entry; nginx appends the address it saw, which is the one believed.
        const doc = await echo(nginx.port, '/echo', CLIENT, { 'x-forwarded-for': '6.6.6.6' });
        expect(doc.remoteAddress).toBe(CLIENT);
        expect(header(doc, 'x-forwarded-for')).toEqual([`6.6.6.6, ${CLIENT}, 127.0.0.1`]);
      } finally {
        await nginx.stop();
      }
    },
  );
});

describe('trusted proxies in traces', () => {
  let receiver: OtlpReceiver;
  let s: StratumProcess;

  beforeAll(async () => {
    receiver = await startOtlpReceiver();
    const dir = makeTempDir('trusted-tracing');
    const config = join(dir, 'stratum.yaml');
    writeFileSync(config, 'tracing:\n  enabled: true\n  sampleRatio: 1\n');
    s = await startStratum(
      [
        'serve',
        '--config',
        config,
        '--listen',
        '127.0.0.1:0',
        '--admin',
        '127.0.0.1:0',
        '--workers',
        '1',
        '--trusted-proxy',
        PROXY,
        '--app',
        join(REPO_ROOT, 'test/fixtures/apps/listener.ts'),
      ],
      { env: receiver.env },
    );
  });
  afterAll(async () => {
    await s?.stop();
    await receiver?.close();
  });

  it("the proxy's SERVER span has the real client's address and scheme", async () => {
    const port = Number(new URL(s.front!).port);
    const traceId = randomBytes(16).toString('hex');
    const traceparent = `00-${traceId}-${randomBytes(8).toString('hex')}-01`;
    await echo(port, '/echo', PROXY, { ...FORGED, traceparent });
    const proxySpan = () =>
      receiver.spansOf(traceId).find((sp) => sp.kind === 'SERVER' && sp.attributes['stratum.layer'] === 'proxy');
    await receiver.waitFor(() => proxySpan() !== undefined, { describe: () => `no proxy span in trace ${traceId}` });
    expect(proxySpan()!.attributes['client.address']).toBe('198.51.100.7');
    expect(proxySpan()!.attributes['url.scheme']).toBe('https');
  });
});
