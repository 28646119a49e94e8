// The whole service, started for real (`stratum serve`): each kind of app behind the front proxy
// and the worker pool, then the proxy's other targets and its failure answers.
import http from 'node:http';
import net from 'node:net';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { httpCases, type AppKind } from '../cases.ts';
import { freePort, makeTempDir } from '../helpers/processes.ts';
import { rawRequest } from '../helpers/http.ts';
import { REPO_ROOT, startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';

const fixture = (kind: AppKind) => join(REPO_ROOT, 'test/fixtures/apps', `${kind}.ts`);

/** `stratum serve` on OS-picked ports with its pool on a Unix socket in a fresh temp dir. */
function serveArgs(kind: AppKind, extra: string[] = []): string[] {
  const dir = makeTempDir(`serve-${kind}`);
  return [
    'serve',
    '--listen',
    '127.0.0.1:0',
    '--admin',
    '127.0.0.1:0',
    '--socket',
    join(dir, 'pool.sock'),
    '--socket-mode',
    '0666',
    '--workers',
    '2',
    '--app',
    fixture(kind),
    ...extra,
  ];
}

afterAll(stopAllStratum);

for (const kind of ['fastify', 'listener', 'fetch'] as const) {
  describe(`stratum serve, ${kind} app`, () => {
    let stratum: StratumProcess;
    beforeAll(async () => {
      stratum = await startStratum(serveArgs(kind));
    });
    afterAll(async () => {
      if (stratum) expect(await stratum.stop(), 'exit code after SIGTERM').toBe(0);
    });

    it('reports itself ready on the admin port with two workers', async () => {
      expect(stratum.front).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      expect(stratum.pool).toMatch(/^unix:\/.*pool\.sock$/);
      expect(stratum.workers).toHaveLength(2);
      const res = await rawRequest(stratum.admin, { path: '/readyz' });
      expect(res.status).toBe(200);
    });

    httpCases(`${kind} via stratum`, () => stratum.front!, { kind, via: 'stratum' });
  });
}

describe('stratum serve, proxy targets besides the pool', () => {
  let stratum: StratumProcess;
  let upstream: http.Server;
  let silent: net.Server;
  const silentSockets = new Set<net.Socket>();
  let staticRoot: string;
  const SECRET = 'outside the static root';

  beforeAll(async () => {
    // A plain HTTP upstream that answers who it is and what it was asked.
    upstream = http.createServer((req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ upstream: 'node-http', url: req.url, xff: req.headers['x-forwarded-for'] ?? null }));
    });
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
    // An upstream that accepts connections and never says a word.
    silent = net.createServer((socket) => {
      silentSockets.add(socket);
      socket.on('close', () => silentSockets.delete(socket));
      socket.on('error', () => {});
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));

    const dir = makeTempDir('static');
    staticRoot = join(dir, 'root');
    // Whether the route prefix is kept (nginx `root`) or stripped (`alias`) is the proxy's choice:
    // the file is in both places, the test checks serving and confinement, not the mapping.
    mkdirSync(join(staticRoot, 'static'), { recursive: true });
    writeFileSync(join(staticRoot, 'hello.txt'), 'hello static\n');
    writeFileSync(join(staticRoot, 'static', 'hello.txt'), 'hello static\n');
    writeFileSync(join(dir, 'secret.txt'), SECRET);

    const closedPort = await freePort();
    const upstreamPort = (upstream.address() as net.AddressInfo).port;
    const silentPort = (silent.address() as net.AddressInfo).port;
    // readTimeout is per route in the YAML config: only /hang waits a single second.
    const config = join(dir, 'stratum.yaml');
    writeFileSync(
      config,
      [
        'routes:',
        `  - { path: /down, target: "http://127.0.0.1:${closedPort}" }`,
        `  - { path: /hang, target: "http://127.0.0.1:${silentPort}", readTimeout: 1 }`,
        `  - { path: /static, target: "static:${staticRoot}" }`,
        `  - { path: /upstream, target: "http://127.0.0.1:${upstreamPort}" }`,
        '  - { path: /, target: pool }',
        '',
      ].join('\n'),
    );
    stratum = await startStratum(serveArgs('fastify', ['--config', config]));
  });

  afterAll(async () => {
    await stratum?.stop();
    for (const socket of silentSockets) socket.destroy();
    await Promise.all([
      new Promise((resolve) => upstream?.close(resolve)),
      new Promise((resolve) => silent?.close(resolve)),
    ]);
  });

  it('an unreachable upstream answers 502 with a short plain body', async () => {
    const res = await rawRequest(stratum.front!, { path: '/down/x' });
    expect(res.status).toBe(502);
    expect(res.headers['content-type']).toMatch(/^text\/plain/);
    expect(res.body.length).toBeGreaterThan(0);
    expect(res.body.length).toBeLessThan(512);
  });

  it("an upstream that never answers gives 504 after the route's readTimeout", async () => {
    const started = Date.now();
    const res = await rawRequest(stratum.front!, { path: '/hang/x', timeoutMs: 15_000 });
    const elapsed = Date.now() - started;
    expect(res.status).toBe(504);
    expect(elapsed).toBeGreaterThanOrEqual(900);
    expect(elapsed).toBeLessThan(10_000);
  });

  it('a static route serves a file', async () => {
    const res = await rawRequest(stratum.front!, { path: '/static/hello.txt' });
    expect(res.status).toBe(200);
    expect(res.body.toString()).toBe('hello static\n');
  });

  for (const target of [
    '/static/../secret.txt',
    '/static/%2e%2e/secret.txt',
    '/static/..%2fsecret.txt',
    '/static/%2E%2E%2Fsecret.txt',
    '/static/../../secret.txt',
  ]) {
    it(`a static route refuses traversal: ${target}`, async () => {
      const res = await rawRequest(stratum.front!, { path: target });
      expect(res.body.toString()).not.toContain(SECRET);
      expect(res.status).toBeGreaterThanOrEqual(400);
      expect(res.status).toBeLessThan(500);
    });
  }

  it('an HTTP upstream route proxies to a plain node server', async () => {
    const res = await rawRequest(stratum.front!, { path: '/upstream/a?b=1' });
    expect(res.status).toBe(200);
    const body = JSON.parse(res.body.toString()) as { upstream: string; url: string; xff: string | null };
    expect(body.upstream).toBe('node-http');
    expect(body.url).toMatch(/^(\/upstream)?\/a\?b=1$/);
    expect(body.xff).toContain('127.0.0.1');
  });

  it('the pool route still serves the app next to the others', async () => {
    const res = await rawRequest(stratum.front!, { path: '/' });
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body.toString())).toEqual({ hello: 'world', kind: 'fastify' });
  });
});

describe('stratum serve, --route flags', () => {
  it('routes a prefix given with --route to an HTTP upstream and / to the pool', async () => {
    const upstream = http.createServer((req, res) => res.end(`upstream saw ${req.url}`));
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
    const port = (upstream.address() as net.AddressInfo).port;
    try {
      const stratum = await startStratum(
        serveArgs('listener', ['--route', `/up=http://127.0.0.1:${port}`, '--route', '/=pool']),
      );
      try {
        const up = await rawRequest(stratum.front!, { path: '/up/x' });
        expect(up.status).toBe(200);
        expect(up.body.toString()).toMatch(/^upstream saw (\/up)?\/x$/);
        const app = await rawRequest(stratum.front!, { path: '/' });
        expect(JSON.parse(app.body.toString())).toEqual({ hello: 'world', kind: 'listener' });
      } finally {
        expect(await stratum.stop()).toBe(0);
      }
    } finally {
      await new Promise((resolve) => upstream.close(resolve));
    }
  });
});
