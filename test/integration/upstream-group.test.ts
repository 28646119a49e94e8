// Upstream groups (nginx `upstream {}`, src/proxy/balancer.ts) through the real service: a group
// of three node:http servers spread by round-robin, by weight and by hash; one server stopped
// under load, taken out by the active checks while the requests it refused are retried on the
// others; a POST not retried; a group of two uwsgi servers (two Stratum pools) reached by
// sequential requests, and a real uWSGI + Flask checked over uwsgi beside a Stratum pool.
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT, startStratum, type StratumProcess } from '../helpers/stratum.ts';
import { writeConfig } from '../hardening/helpers.ts';
import { makeTempDir, waitUntil } from '../helpers/processes.ts';
import { requirePeer, startUwsgi, type PeerProcess } from '../helpers/peers.ts';

const APP = join(REPO_ROOT, 'test/hardening/fixtures/app.ts');

/** A small HTTP server that says who it is and counts what it served, per method and path prefix. */
interface Origin {
  name: string;
  port: number;
  server: http.Server;
  hits: Map<string, number>;
  sockets: Set<Socket>;
  stop(): Promise<void>;
}

async function origin(name: string, behave?: (req: http.IncomingMessage, res: http.ServerResponse) => boolean) {
  const hits = new Map<string, number>();
  const sockets = new Set<Socket>();
  const server = http.createServer((req, res) => {
    const key = `${req.method} ${(req.url ?? '/').split('/').slice(0, 2).join('/')}`;
    hits.set(key, (hits.get(key) ?? 0) + 1);
    req.resume();
    req.on('end', () => {
      if (behave?.(req, res)) return;
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(name);
    });
  });
  // Never the one to close a kept connection: a close racing a request would be retried elsewhere
  // (as it should), which would blur the exact splits these tests count.
  server.keepAliveTimeout = 120_000;
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  const o: Origin = {
    name,
    port,
    server,
    hits,
    sockets,
    stop: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      }),
  };
  return o;
}

function hitsOf(o: Origin, key: string): number {
  return o.hits.get(key) ?? 0;
}

interface Answer {
  status: number;
  body: string;
}

function request(
  base: string,
  path: string,
  opts: { method?: string; headers?: Record<string, string>; body?: string; agent?: http.Agent | false } = {},
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      `${base}${path}`,
      { method: opts.method ?? 'GET', headers: opts.headers, agent: opts.agent ?? false },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** A gauge's value for one target from /metrics text, or undefined when absent. */
function metric(text: string, name: string, target: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(`target="${target}"`));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

async function metricsText(stratum: StratumProcess): Promise<string> {
  return (await request(stratum.admin, '/metrics')).body;
}

describe('an HTTP upstream group of three', () => {
  let a: Origin, b: Origin, c: Origin;
  let flaky: Origin, steady: Origin;
  let stratum: StratumProcess;

  beforeAll(async () => {
    [a, b, c] = await Promise.all([origin('a'), origin('b'), origin('c')]);
    // Answers 503 to everything: a GET goes on to `steady`, a POST may not.
    flaky = await origin('flaky', (_req, res) => {
      res.writeHead(503, { 'content-type': 'text/plain' });
      res.end('flaky is overloaded');
      return true;
    });
    steady = await origin('steady');
    const at = (o: Origin, extra = '') => `"http://127.0.0.1:${o.port}${extra}"`;
    const { file } = writeConfig(
      'upstream-group',
      `
listen: 127.0.0.1:0
admin: { listen: 127.0.0.1:0 }
app: { module: ${APP} }
pool: { workers: 1 }
routes:
  - { path: /rr, target: [${at(a)}, ${at(b)}, ${at(c)}] }
  - { path: /w, target: [${at(a, ' weight=3')}, ${at(b)}, ${at(c)}] }
  - path: /least
    target: [${at(a)}, ${at(b)}, ${at(c)}]
    upstream: { balance: least-conn }
  - path: /hash
    target: [${at(a)}, ${at(b)}, ${at(c)}]
    upstream: { balance: hash, hashKey: "header:x-user" }
  - path: /sticky
    target: [${at(a)}, ${at(b)}, ${at(c)}]
    upstream: { balance: hash }
  - path: /backup
    target: [${at(flaky)}, ${at(steady, ' backup')}]
  - path: /flaky
    target: [${at(flaky)}, ${at(steady)}]
    upstream: { maxFails: 0 }
  - { path: /, target: pool }
`,
    );
    stratum = await startStratum(['serve', '--config', file]);
  });

  afterAll(async () => {
    await stratum?.stop();
    await Promise.all([a, b, c, flaky, steady].map((o) => o?.stop()));
  });

  it('round-robin spreads 30 sequential requests 10/10/10', async () => {
    const names: string[] = [];
    for (let i = 0; i < 30; i++) {
      const r = await request(stratum.front!, `/rr/${i}`);
      expect(r.status).toBe(200);
      names.push(r.body);
    }
    expect([hitsOf(a, 'GET /rr'), hitsOf(b, 'GET /rr'), hitsOf(c, 'GET /rr')]).toEqual([10, 10, 10]);
    // Smooth: never the same server twice in a row with equal weights.
    for (let i = 1; i < names.length; i++) expect(names[i]).not.toBe(names[i - 1]);
  });

  it('weights are respected: weight=3,1,1 over 50 requests is 30/10/10', async () => {
    for (let i = 0; i < 50; i++) expect((await request(stratum.front!, `/w/${i}`)).status).toBe(200);
    expect([hitsOf(a, 'GET /w'), hitsOf(b, 'GET /w'), hitsOf(c, 'GET /w')]).toEqual([30, 10, 10]);
  });

  it('least-conn goes to the idle servers and rotates among them', async () => {
    for (let i = 0; i < 30; i++) expect((await request(stratum.front!, `/least/${i}`)).status).toBe(200);
    expect([hitsOf(a, 'GET /least'), hitsOf(b, 'GET /least'), hitsOf(c, 'GET /least')]).toEqual([10, 10, 10]);
  });

  it('hash keeps a key on one server, and spreads keys over the group', async () => {
    const first = new Map<string, string>();
    for (let user = 0; user < 30; user++) {
      const r = await request(stratum.front!, '/hash/x', { headers: { 'x-user': `user-${user}` } });
      first.set(`user-${user}`, r.body);
    }
    for (let round = 0; round < 2; round++) {
      for (const [user, name] of first) {
        expect((await request(stratum.front!, '/hash/x', { headers: { 'x-user': user } })).body).toBe(name);
      }
    }
    expect(new Set(first.values()).size).toBe(3);
    // By client address (the default key): every request from this test's 127.0.0.1 lands on one server.
    const sticky = new Set<string>();
    for (let i = 0; i < 10; i++) sticky.add((await request(stratum.front!, '/sticky/x')).body);
    expect(sticky.size).toBe(1);
  });

  it('a 503 goes on to the next server for a GET, never for a POST', async () => {
    for (let i = 0; i < 10; i++) {
      const r = await request(stratum.front!, '/flaky/get');
      expect(r).toEqual({ status: 200, body: 'steady' });
    }
    expect(hitsOf(steady, 'GET /flaky')).toBe(10);
    expect(hitsOf(flaky, 'GET /flaky')).toBeGreaterThan(0); // it was asked, its 503 was dropped
    const statuses: number[] = [];
    for (let i = 0; i < 10; i++) {
      statuses.push((await request(stratum.front!, '/flaky/post', { method: 'POST', body: 'x' })).status);
    }
    // Each POST reached exactly one server: 503s are flaky's own answers, passed on, not retried.
    expect(hitsOf(flaky, 'POST /flaky') + hitsOf(steady, 'POST /flaky')).toBe(10);
    expect(statuses.filter((s) => s === 503).length).toBe(hitsOf(flaky, 'POST /flaky'));
    expect(hitsOf(flaky, 'POST /flaky')).toBeGreaterThan(0);
  });

  it('a backup serves only once the primary is out', async () => {
    // flaky is the only primary: its first 503 takes it out (maxFails 1), the backup answers meanwhile.
    const bodies: string[] = [];
    for (let i = 0; i < 5; i++) bodies.push((await request(stratum.front!, '/backup/x')).body);
    expect(bodies).toEqual(['steady', 'steady', 'steady', 'steady', 'steady']);
    expect(hitsOf(flaky, 'GET /backup')).toBe(1);
    expect(hitsOf(steady, 'GET /backup')).toBe(5);
  });
});

describe('one server of three stopped under load', () => {
  let d: Origin, e: Origin, f: Origin;
  let stratum: StratumProcess;
  /** POSTs f answered: those it received and never answered were cut by its stop. */
  let fAnsweredPosts = 0;

  beforeAll(async () => {
    const health = (req: http.IncomingMessage, res: http.ServerResponse) => {
      if (req.url !== '/health') return false;
      res.writeHead(204);
      res.end();
      return true;
    };
    [d, e] = await Promise.all([origin('d', health), origin('e', health)]);
    // f holds each request 20 ms, so requests are in flight on it when it stops: their connections are cut.
    f = await origin('f', (req, res) => {
      if (health(req, res)) return true;
      setTimeout(() => {
        if (res.destroyed) return; // cut by the stop
        if (req.method === 'POST') fAnsweredPosts++;
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end('f');
      }, 20);
      return true;
    });
    const at = (o: Origin) => `"http://127.0.0.1:${o.port}"`;
    // maxFails 0: passive health off, so only the active checks can take a server out.
    const { file } = writeConfig(
      'upstream-group-load',
      `
listen: 127.0.0.1:0
admin: { listen: 127.0.0.1:0 }
app: { module: ${APP} }
pool: { workers: 2 }
routes:
  - path: /load
    target: [${at(d)}, ${at(e)}, ${at(f)}]
    upstream:
      maxFails: 0
      healthCheck: { enabled: true, interval: 0.2, timeout: 1, path: /health, status: [204] }
  - { path: /, target: pool }
`,
    );
    stratum = await startStratum(['serve', '--config', file]);
  });

  afterAll(async () => {
    await stratum?.stop();
    await Promise.all([d, e, f].map((o) => o?.stop()));
  });

  it('is marked down by the health checks, GETs cut or refused are retried and none fails; POSTs are not', async () => {
    const target = `127.0.0.1:${f.port}`;
    await waitUntil(async () => metric(await metricsText(stratum), 'stratum_upstream_up', target) === 1, {
      timeoutMs: 10_000,
      intervalMs: 100,
      describe: () => `${target} never reported up`,
    });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 10 });
    type Result = { at: number; method: string; status: number; body: string; error?: string };
    const results: Result[] = [];
    const started = Date.now();
    let stoppedAt = 0;
    let downAt = 0;
    const GET_LOOPS = 8;
    const POST_LOOPS = 2;
    const RUN_MS = 3000;
    const loop = async (method: string) => {
      while (Date.now() - started < RUN_MS) {
        const at = Date.now();
        try {
          const r = await request(stratum.front!, `/load/${results.length}`, {
            agent,
            method,
            body: method === 'POST' ? 'x' : undefined,
          });
          results.push({ at, method, ...r });
        } catch (err) {
          results.push({ at, method, status: 0, body: '', error: String(err) });
        }
      }
    };
    const stopper = (async () => {
      await new Promise((r) => setTimeout(r, 800));
      await f.stop();
      stoppedAt = Date.now();
      // The check's verdict reaches /metrics (in the worker topology, through the workers' reports).
      await waitUntil(async () => metric(await metricsText(stratum), 'stratum_upstream_up', target) === 0, {
        timeoutMs: RUN_MS,
        intervalMs: 50,
        describe: () => `${target} was not marked down`,
      });
      downAt = Date.now();
    })();
    await Promise.all([
      ...Array.from({ length: GET_LOOPS }, () => loop('GET')),
      ...Array.from({ length: POST_LOOPS }, () => loop('POST')),
      stopper,
    ]);
    agent.destroy();

    const gets = results.filter((r) => r.method === 'GET');
    const posts = results.filter((r) => r.method === 'POST');
    const failedGets = gets.filter((r) => r.status !== 200);
    const afterStop = results.filter((r) => r.at >= stoppedAt);
    const afterDown = gets.filter((r) => r.at >= downAt);
    const text = await metricsText(stratum);
    const fails = metric(text, 'stratum_upstream_fails_total', target) ?? 0;
    const cutPosts = hitsOf(f, 'POST /load') - fAnsweredPosts;
    const post502 = posts.filter((r) => r.status === 502).length;
    console.log(
      `upstream-group load: ${gets.length} GETs and ${posts.length} POSTs in ${RUN_MS} ms over ` +
        `${GET_LOOPS}+${POST_LOOPS} connections; f stopped at +${stoppedAt - started} ms, marked down at ` +
        `+${downAt - started} ms; ${afterStop.length} requests after the stop, ${afterDown.length} GETs after ` +
        `down; failed tries on f: ${fails}; failed GETs: ${failedGets.length}; POSTs cut on f: ${cutPosts}, ` +
        `answered 502: ${post502}`,
    );
    expect(afterDown.length).toBeGreaterThan(0);
    expect(afterStop.every((r) => r.body === 'd' || r.body === 'e' || r.status === 502)).toBe(true);
    // GETs in flight on f when it stopped were cut, counted against it and retried: not one GET failed.
    expect(fails).toBeGreaterThan(0);
    expect(failedGets).toEqual([]);
    // A POST that reached f and was cut is answered 502, not sent again (a retried one would be a 200).
    expect(posts.every((r) => r.status === 200 || r.status === 502)).toBe(true);
    expect(post502).toBeGreaterThanOrEqual(cutPosts);
    expect(metric(text, 'stratum_upstream_up', `127.0.0.1:${d.port}`)).toBe(1);
  });
});

describe('a config reload that drops a group', () => {
  it("stops the old group's health checks", async () => {
    const health = (req: http.IncomingMessage, res: http.ServerResponse) => {
      if (req.url !== '/health') return false;
      res.writeHead(200);
      res.end();
      return true;
    };
    const [x, y] = await Promise.all([origin('x', health), origin('y', health)]);
    const checks = (o: Origin) => hitsOf(o, 'GET /health');
    const yaml = (servers: Origin[]) => `
listen: 127.0.0.1:0
admin: { listen: 127.0.0.1:0 }
app: { module: ${APP} }
pool: { workers: 1 }
routes:
  - path: /r
    target: [${servers.map((o) => `"http://127.0.0.1:${o.port}"`).join(', ')}]
    upstream: { healthCheck: { enabled: true, interval: 0.1, path: /health } }
  - { path: /, target: pool }
`;
    const { file } = writeConfig('upstream-group-reload', yaml([x, y]));
    const stratum = await startStratum(['serve', '--config', file]);
    try {
      await waitUntil(async () => checks(x) >= 3, { timeoutMs: 10_000, describe: () => 'x was never checked' });
      writeFileSync(file, yaml([y]));
      const res = await fetch(`${stratum.admin}/reload?wait=1`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: '{}',
      });
      expect(res.status).toBeLessThan(300);
      await res.arrayBuffer();
      expect((await request(stratum.front!, '/r/after')).body).toBe('y');
      await new Promise((r) => setTimeout(r, 300)); // a check already on its way may still land
      const settled = checks(x);
      const yBefore = checks(y);
      await new Promise((r) => setTimeout(r, 600));
      expect(checks(x)).toBe(settled);
      expect(checks(y)).toBeGreaterThan(yBefore); // the new table's group checks y
    } finally {
      await stratum.stop();
      await Promise.all([x.stop(), y.stop()]);
    }
  });
});

describe('a uwsgi group', () => {
  const dir = makeTempDir('upstream-group-uwsgi');
  let poolA: StratumProcess, poolB: StratumProcess;

  beforeAll(async () => {
    const start = (name: string) =>
      startStratum([
        'pool',
        '--app',
        APP,
        '--socket',
        join(dir, `${name}.sock`),
        '--admin',
        '127.0.0.1:0',
        '--workers',
        '1',
      ]);
    [poolA, poolB] = await Promise.all([start('a'), start('b')]);
  });

  afterAll(async () => {
    await Promise.all([poolA?.stop(), poolB?.stop()]);
  });

  it('of two Stratum pools is reached by sequential requests, both of them', async () => {
    const { file } = writeConfig(
      'upstream-group-uwsgi-front',
      `
listen: 127.0.0.1:0
admin: { listen: 127.0.0.1:0 }
app: { module: ${APP} }
pool: { workers: 2 }
routes:
  - { path: /, target: ["unix:${join(dir, 'a.sock')}", "unix:${join(dir, 'b.sock')}"] }
`,
    );
    const front = await startStratum(['serve', '--config', file]);
    try {
      const pids: number[] = [];
      // A fresh connection each: the kernel hands them to either worker, each balancing on its own.
      for (let i = 0; i < 12; i++) {
        const r = await request(front.front!, '/');
        expect(r.status).toBe(200);
        pids.push((JSON.parse(r.body) as { pid: number }).pid);
      }
      const a = pids.filter((p) => poolA.workers.includes(p)).length;
      const b = pids.filter((p) => poolB.workers.includes(p)).length;
      expect(a + b).toBe(12);
      expect(a).toBeGreaterThan(0);
      expect(b).toBeGreaterThan(0);
    } finally {
      await front.stop();
    }
  });

  describe.skipIf(!requirePeer('uwsgi'))('with a real uWSGI + Flask', () => {
    let uwsgi: PeerProcess;
    beforeAll(async () => {
      uwsgi = await startUwsgi({ processes: 1 });
    });
    afterAll(async () => {
      await uwsgi?.stop();
    });

    it('checks both over uwsgi, and takes the stopped one out', async () => {
      const { file } = writeConfig(
        'upstream-group-uwsgi-flask',
        `
listen: 127.0.0.1:0
admin: { listen: 127.0.0.1:0 }
app: { module: ${APP} }
pool: { workers: 1 }
routes:
  - path: /
    target: ["unix:${join(dir, 'a.sock')}", "uwsgi://${uwsgi.address}"]
    upstream: { maxFails: 0, healthCheck: { enabled: true, interval: 0.2, path: / } }
`,
      );
      const front = await startStratum(['serve', '--config', file]);
      try {
        const kinds = new Set<string>();
        for (let i = 0; i < 6; i++) {
          const r = await request(front.front!, '/');
          expect(r.status).toBe(200);
          kinds.add((JSON.parse(r.body) as { kind?: string }).kind ?? 'stratum');
        }
        expect([...kinds].sort()).toEqual(['flask', 'stratum']);
        const up = async () => metric(await metricsText(front), 'stratum_upstream_up', uwsgi.address);
        await waitUntil(async () => (await up()) === 1, {
          timeoutMs: 5000,
          intervalMs: 100,
          describe: () => `${uwsgi.address} never reported up`,
        });
        await uwsgi.stop();
        await waitUntil(async () => (await up()) === 0, {
          timeoutMs: 5000,
          intervalMs: 100,
          describe: () => `${uwsgi.address} was not marked down by its uwsgi checks`,
        });
        for (let i = 0; i < 6; i++) {
          const r = await request(front.front!, '/');
          expect(r.status).toBe(200);
          expect(JSON.parse(r.body)).toMatchObject({ ok: true });
        }
      } finally {
        await front.stop();
      }
    });
  });
});
