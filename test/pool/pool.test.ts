// The worker pool under real failure: real processes, real signals, no mocks. Every test starts
// its own `stratum` (serve, pool or proxy) on OS-picked ports (127.0.0.1:0, temp Unix sockets),
// drives a bounded load through it (a fixed number of requests, each with a timeout) and checks
// exact counts of what succeeded and what failed against /stats on the admin port.
import http from 'node:http';
import { copyFileSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { PoolStats } from '../../src/pool/stats.ts';
import { makeTempDir, spawnTracked } from '../helpers/processes.ts';
import { requirePeer, startNginx } from '../helpers/peers.ts';
import { REPO_ROOT, STRATUM_BIN, startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';

afterAll(stopAllStratum);

/** Which process runs the front in these tests (the vitest projects run both). */
const TOPOLOGY = process.env.STRATUM_TOPOLOGY ?? 'worker';

const FIXTURE = join(REPO_ROOT, 'test/fixtures/apps/pool-app.ts');

// --- helpers -------------------------------------------------------------------------------------

interface Result {
  status: number; // 0 = no HTTP answer (connection error or client timeout)
  body: string;
  headers: http.IncomingHttpHeaders;
  start: number;
  end: number;
  pid: number | null;
  error?: string;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** One GET; never rejects: a failure is a Result with status 0. */
function get(
  base: string,
  path: string,
  opts: { agent?: http.Agent | false; timeoutMs?: number; method?: string } = {},
): Promise<Result> {
  const url = new URL(path, base);
  const start = performance.now();
  return new Promise((resolve) => {
    const done = (r: Omit<Result, 'start' | 'end' | 'pid'>) => {
      let pid: number | null = null;
      try {
        const v = (JSON.parse(r.body) as { pid?: unknown }).pid;
        if (typeof v === 'number') pid = v;
      } catch {
        // Not a JSON body (an error page, a cut answer): the result carries no pid, which callers check.
      }
      resolve({ ...r, start, end: performance.now(), pid });
    };
    const req = http.request({
      host: url.hostname,
      port: url.port,
      path: url.pathname + url.search,
      method: opts.method ?? 'GET',
      agent: opts.agent ?? false,
    });
    const timeoutMs = opts.timeoutMs ?? 15_000;
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', (err) => done({ status: 0, body: '', headers: {}, error: err.message }));
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('error', (err) => done({ status: 0, body, headers: res.headers, error: err.message }));
      res.on('end', () => done({ status: res.statusCode ?? 0, body, headers: res.headers }));
    });
    req.end();
  });
}

interface LoadOptions {
  base: string;
  path: string | ((i: number) => string);
  /** Upper bound on requests sent. */
  total: number;
  concurrency: number;
  /** Stop starting new requests after this long (ms); the count bound always applies. */
  durationMs?: number;
  /** Called after each response, with every result so far. */
  onResult?: (r: Result, all: Result[]) => void;
}

/** A bounded closed-loop load: `concurrency` keep-alive clients, at most `total` requests. */
async function runLoad(o: LoadOptions): Promise<Result[]> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: o.concurrency });
  const results: Result[] = [];
  const deadline = o.durationMs === undefined ? Infinity : performance.now() + o.durationMs;
  let next = 0;
  const client = async () => {
    while (next < o.total && performance.now() < deadline) {
      const i = next++;
      const r = await get(o.base, typeof o.path === 'function' ? o.path(i) : o.path, { agent, timeoutMs: 20_000 });
      results.push(r);
      o.onResult?.(r, results);
    }
  };
  try {
    await Promise.all(Array.from({ length: o.concurrency }, client));
  } finally {
    agent.destroy();
  }
  return results;
}

const failed = (rs: Result[]) => rs.filter((r) => r.status !== 200);
const summary = (rs: Result[]) =>
  JSON.stringify(
    failed(rs)
      .slice(0, 10)
      .map((r) => ({ status: r.status, error: r.error, body: r.body.slice(0, 100) })),
  );

type WorkerStats = PoolStats['workers'][number];

async function stats(admin: string): Promise<PoolStats> {
  const r = await get(admin, '/stats', { timeoutMs: 5_000 });
  if (r.status !== 200) throw new Error(`GET /stats: ${r.status} ${r.error ?? r.body}`);
  return JSON.parse(r.body) as PoolStats;
}

/** Polls `probe` until it returns a value (not undefined); throws after `timeoutMs`. */
async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs: number,
  intervalMs = 20,
): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const v = await probe().catch(() => undefined);
    if (v !== undefined) return v;
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

const serving = (w: WorkerStats) => w.state === 'idle' || w.state === 'busy';

/** Writes a config file (JSON is YAML) with the access log off: loads would flood the test's memory. */
function writeConfig(dir: string, config: Record<string, unknown>): string {
  const file = join(dir, 'stratum.yaml');
  const log = { access: false, ...(config.log as object | undefined) };
  writeFileSync(file, JSON.stringify({ ...config, log }, null, 2));
  return file;
}

/** `stratum serve` of `app` (the fixture by default) on OS-picked ports, configured by `config`. */
async function serve(
  config: Record<string, unknown>,
  flags: string[] = [],
  app = FIXTURE,
): Promise<StratumProcess & { dir: string }> {
  const dir = makeTempDir('pool');
  const file = writeConfig(dir, config);
  const s = await startStratum([
    'serve',
    '--listen',
    '127.0.0.1:0',
    '--admin',
    '127.0.0.1:0',
    '--app',
    app,
    '--config',
    file,
    ...flags,
  ]);
  return Object.assign(s, { dir });
}

/** A copy of the fixture in its own directory, editable by the test (fastify via a node_modules link). */
function copyFixture(): { dir: string; app: string } {
  const dir = makeTempDir('app');
  const app = join(dir, 'pool-app.ts');
  copyFileSync(FIXTURE, app);
  writeFileSync(join(dir, 'package.json'), '{"type":"module"}\n');
  symlinkSync(join(REPO_ROOT, 'node_modules'), join(dir, 'node_modules'));
  return { dir, app };
}

/** SIGTERM; the exit code must be 0 (the failure message shows why it was not). */
async function stopClean(s: StratumProcess): Promise<void> {
  const code = await s.stop();
  const tail = s.stdoutLines.slice(-15).join('\n');
  expect(
    code,
    `exit code after SIGTERM\n--- stderr ---\n${s.stderr().slice(-3000)}\n--- stdout tail ---\n${tail}`,
  ).toBe(0);
}

function exitCode(proc: StratumProcess['proc']): Promise<number | null> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve(proc.exitCode);
  return new Promise((resolve) => proc.once('exit', (code) => resolve(code)));
}

// --- 1. a worker killed mid-load -----------------------------------------------------------------

describe('a worker killed with SIGKILL under load', () => {
  it('fails only the requests in flight on that worker; its replacement serves within seconds', async () => {
    const MAX_INFLIGHT = 5;
    const s = await serve({ pool: { workers: 4, maxInflight: MAX_INFLIGHT } });
    try {
      // Warm every worker up.
      await Promise.all(Array.from({ length: 8 }, () => get(s.front!, '/slow?ms=20')));
      const before = await stats(s.admin);
      expect(before.workers).toHaveLength(4);

      let kill: Promise<{ at: number; id: number; pid: number; inflight: number }> | null = null;
      const doKill = async () => {
        const st = await stats(s.admin);
        const victim = st.workers.filter((w) => w.state === 'busy').sort((a, b) => b.inflight - a.inflight)[0]!;
        expect(victim, JSON.stringify(st)).toBeDefined();
        process.kill(victim.pid, 'SIGKILL');
        const at = performance.now();
        // Meanwhile, fresh connections every 50 ms (kept ones stay with the workers they are on, in
        // the worker topology): the first answer from a pid that was not there before is the replacement's.
        const known = new Set(st.workers.map((w) => w.pid));
        probing = (async () => {
          for (let i = 0; i < 100; i++) {
            const probes = await Promise.all(Array.from({ length: 4 }, () => get(s.front!, '/pid')));
            const first = probes.filter((r) => r.pid !== null && !known.has(r.pid)).map((r) => r.end);
            if (first.length > 0) return Math.min(...first);
            await sleep(50);
          }
          return Infinity;
        })();
        return { at, id: victim.id, pid: victim.pid, inflight: victim.inflight };
      };
      let probing: Promise<number> | null = null;
      const results = await runLoad({
        base: s.front!,
        path: '/slow?ms=50',
        total: 400,
        concurrency: 20,
        onResult: (_r, all) => {
          if (all.length === 120 && !kill) kill = doKill();
        },
      });
      expect(kill, 'the load reached its middle').not.toBeNull();
      const k = await kill!;

      // The replacement: a new pid in the victim's slot, serving.
      const fresh = await waitFor(
        'a replacement worker',
        async () => {
          const w = (await stats(s.admin)).workers.find((x) => x.id === k.id);
          return w && w.pid !== k.pid && serving(w) ? w : undefined;
        },
        5_000,
      );
      // ...and answering: a load response or a probe on a fresh connection, whichever came first.
      const servedAt = Math.min(...results.filter((r) => r.pid === fresh.pid).map((r) => r.end), await probing!);
      // A bound, not a timing: uWSGI respawns at once, and so must this; 3 s leaves room for a
      // loaded machine's fork and module load.
      expect(servedAt - k.at, 'ms from the kill to a response from the replacement').toBeLessThanOrEqual(3_000);

      const bad = failed(results);
      expect(results).toHaveLength(400);
      // Only the victim's requests failed, at most what it can hold at once (it had k.inflight a
      // moment before the kill), and none sent after the first one failed. Through the master's
      // front each gets a 502; in the worker topology the client's connection was on the victim
      // itself, and is reset.
      expect(bad.length, `failures (victim had ${k.inflight} in flight): ${summary(results)}`).toBeGreaterThanOrEqual(
        1,
      );
      // Through the master's front a worker holds at most maxInflight requests; in the worker topology it
      // holds the client connections the kernel gave it (one request each: pipelining is serial), and
      // each dies with it: at most the load's 20.
      expect(bad.length).toBeLessThanOrEqual(TOPOLOGY === 'master' ? MAX_INFLIGHT : 20);
      const firstFailure = Math.min(...bad.map((r) => r.end));
      for (const r of bad) {
        expect(r.status).toBe(TOPOLOGY === 'master' ? 502 : 0);
        expect(r.start).toBeLessThan(firstFailure);
      }
      expect(results.filter((r) => r.status === 200)).toHaveLength(400 - bad.length);
      // No successful answer came from the dead worker after it died.
      expect(results.filter((r) => r.pid === k.pid && r.end > k.at + 50)).toEqual([]);

      const after = await stats(s.admin);
      expect(after.respawns).toBe(1);
      expect(after.workers.map((w) => w.pid).sort()).toEqual(
        before.workers.map((w) => (w.pid === k.pid ? fresh.pid : w.pid)).sort(),
      );
    } finally {
      await stopClean(s);
    }
  });
});

// --- 2. harakiri ---------------------------------------------------------------------------------

describe('harakiri', () => {
  it(
    '--harakiri 1: a request that blocks the event loop gets 504 within limit + 1 s ' +
      'and its worker is killed once and replaced',
    async () => {
      const s = await serve({ pool: { workers: 2 } }, ['--harakiri', '1']);
      try {
        const started = performance.now();
        const r = await get(s.front!, '/block?ms=5000');
        const elapsed = performance.now() - started;
        // The watchdog thread writes the 504 on the client's socket before the kill.
        expect(r.status, r.body).toBe(504);
        expect(elapsed).toBeGreaterThanOrEqual(950);
        expect(elapsed).toBeLessThanOrEqual(2_000);

        const st = await waitFor(
          'the killed worker replaced',
          async () => {
            const x = await stats(s.admin);
            return x.workers.length === 2 &&
              x.workers.every(serving) &&
              x.workers.some((w) => !s.workers.includes(w.pid))
              ? x
              : undefined;
          },
          5_000,
        );
        expect(st.harakiriKills).toBe(1);
        expect(st.respawns).toBe(1);
        expect(st.workers.filter((w) => s.workers.includes(w.pid))).toHaveLength(1);
        // The kill is logged once, with the request that caused it.
        const logged = s.logs().filter((l) => String(l.msg).startsWith('harakiri'));
        expect(logged).toHaveLength(1);
        expect(JSON.stringify(logged[0]!.requests)).toContain('/block?ms=5000');
        // The service goes on.
        expect((await get(s.front!, '/')).status).toBe(200);
      } finally {
        await stopClean(s);
      }
    },
  );

  it('--harakiri 1: a slow request whose loop stays alive gets 504 at the limit, and nothing is killed', async () => {
    const s = await serve({ pool: { workers: 2 } }, ['--harakiri', '1']);
    try {
      const [slow, other] = await Promise.all([get(s.front!, '/slow?ms=3000'), get(s.front!, '/pid?ms=1500')]);
      expect(slow.status, slow.body).toBe(504);
      expect(slow.end - slow.start).toBeGreaterThanOrEqual(950);
      expect(slow.end - slow.start).toBeLessThanOrEqual(1_600);
      // A request beside it, on whichever worker, is not touched (1.5 s > 1 s: it too times out).
      expect(other.status).toBe(504);
      const st = await waitFor(
        'the timeouts reported',
        async () => {
          const x = await stats(s.admin);
          return x.harakiriTimeouts === 2 ? x : undefined;
        },
        3_000,
      );
      expect(st.harakiriKills).toBe(0);
      expect(st.respawns).toBe(0);
      expect(st.workers.map((w) => w.pid).sort()).toEqual([...s.workers].sort());
      expect((await get(s.front!, '/')).status).toBe(200);
    } finally {
      await stopClean(s);
    }
  });

  it(
    '--harakiri 1: a client reading a large answer slowly is not harakiri: it gets every byte, nothing is killed',
    async () => {
      const s = await serve({ pool: { workers: 1 } }, ['--harakiri', '1']);
      try {
        const url = new URL('/big?mb=16', s.front!);
        const got = await new Promise<{ status: number; bytes: number; ms: number }>((resolve, reject) => {
          const t0 = performance.now();
          const req = http.get(
            { host: url.hostname, port: url.port, path: url.pathname + url.search, agent: false },
            (res) => {
              let bytes = 0;
              // ~4 MiB/s: the 16 MiB answer takes ~4 s to read, well past the 1 s limit.
              res.on('data', (c: Buffer) => {
                bytes += c.length;
                res.pause();
                setTimeout(() => res.resume(), 16);
              });
              res.on('end', () => resolve({ status: res.statusCode ?? 0, bytes, ms: performance.now() - t0 }));
              res.on('error', reject);
            },
          );
          req.on('error', reject);
        });
        expect(got.status).toBe(200);
        expect(got.bytes).toBe(16 * 1024 * 1024);
        expect(got.ms).toBeGreaterThan(1_500);
        const st = await stats(s.admin);
        expect(st.harakiriKills).toBe(0);
        expect(st.harakiriTimeouts).toBe(0);
        expect(st.workers.map((w) => w.pid)).toEqual(s.workers);
      } finally {
        await stopClean(s);
      }
    },
  );

  it("a route's harakiri overrides the global one", async () => {
    const s = await serve({
      pool: { workers: 2, harakiri: 30 },
      routes: [
        { path: '/slow', target: 'pool', harakiri: 1 },
        { path: '/', target: 'pool' },
      ],
    });
    try {
      const [limited, unlimited] = await Promise.all([get(s.front!, '/slow?ms=5000'), get(s.front!, '/pid?ms=1500')]);
      expect(limited.status).toBe(504);
      expect(limited.end - limited.start).toBeLessThanOrEqual(2_000);
      // Under the global 30 s, 1.5 s is fine.
      expect(unlimited.status, unlimited.body).toBe(200);
      expect(unlimited.end - unlimited.start).toBeGreaterThanOrEqual(1_400);
      const st = await waitFor(
        'the timeout reported',
        async () => {
          const x = await stats(s.admin);
          return x.harakiriTimeouts === 1 ? x : undefined;
        },
        3_000,
      );
      expect(st.harakiriKills).toBe(0);
    } finally {
      await stopClean(s);
    }
  });
});

// --- 3. max-requests -----------------------------------------------------------------------------

describe('max-requests', () => {
  it('recycles workers every 50 requests over 1,000 without failing one', async () => {
    const s = await serve({ pool: { workers: 2 } }, ['--max-requests', '50']);
    try {
      const results = await runLoad({ base: s.front!, path: '/', total: 1_000, concurrency: 10 });
      expect(results).toHaveLength(1_000);
      expect(failed(results).length, summary(results)).toBe(0);
      // A recycle counts once its replacement is up: let the last ones finish.
      const st = await waitFor(
        'the pool to settle',
        async () => {
          const x = await stats(s.admin);
          return x.workers.length === 2 && x.workers.every(serving) ? x : undefined;
        },
        10_000,
      );
      expect(st.recycles).toBeGreaterThanOrEqual(TOPOLOGY === 'master' ? 19 : 16);
      expect(st.respawns).toBe(0);
      // Every worker process served at most 50 requests — in the worker topology, plus at most one
      // per kept client connection already on its way when the 50th arrived (10 here).
      const perPid = new Map<number, number>();
      for (const r of results) perPid.set(r.pid!, (perPid.get(r.pid!) ?? 0) + 1);
      expect(Math.max(...perPid.values())).toBeLessThanOrEqual(TOPOLOGY === 'master' ? 50 : 60);
      expect(perPid.size).toBeGreaterThanOrEqual(TOPOLOGY === 'master' ? 20 : 16);
    } finally {
      await stopClean(s);
    }
  });
});

describe('reload-on-rss', () => {
  it('recycles a worker whose memory passed the limit, without failing a request', async () => {
    const s = await serve({ pool: { workers: 1 } }, ['--reload-on-rss', '200']);
    try {
      const before = s.workers[0]!;
      // 40 MiB kept per request: past 200 MiB within a few; the rest of the load keeps going meanwhile.
      const grow = (i: number) => (i < 6 ? '/grow?mb=40' : '/pid');
      const results = await runLoad({ base: s.front!, path: grow, total: 300, concurrency: 4 });
      expect(failed(results).length, summary(results)).toBe(0);
      const st = await waitFor(
        'the worker recycled',
        async () => {
          const x = await stats(s.admin);
          const w = x.workers[0];
          return x.recycles >= 1 && x.workers.length === 1 && w && w.pid !== before && serving(w) ? x : undefined;
        },
        10_000,
      );
      expect(st.respawns).toBe(0);
      expect(st.workers[0]!.rss).toBeLessThan(200 * 1024 * 1024);
      expect((await get(s.front!, '/pid')).status).toBe(200);
    } finally {
      await stopClean(s);
    }
  });
});

// --- 4. rolling reload ---------------------------------------------------------------------------

describe('rolling reload', () => {
  it('SIGHUP under a 10 s load: no failure, every worker replaced, the edited app served', async () => {
    const { app } = copyFixture();
    const s = await serve({ pool: { workers: 2 } }, [], app);
    try {
      const v1 = await get(s.front!, '/version');
      expect(JSON.parse(v1.body).version).toBe('v1');
      const old = new Set((await stats(s.admin)).workers.map((w) => w.pid));
      expect(old.size).toBe(2);

      let hupAt = 0;
      const load = runLoad({
        base: s.front!,
        path: (i) => (i % 2 ? '/version' : '/slow?ms=10'),
        total: 20_000,
        concurrency: 8,
        durationMs: 10_000,
      });
      await sleep(2_000);
      writeFileSync(
        app,
        readFileSync(app, 'utf8').replace("export const VERSION = 'v1'", "export const VERSION = 'v2'"),
      );
      s.proc.kill('SIGHUP');
      hupAt = performance.now();
      const reloaded = await waitFor(
        'every worker replaced',
        async () => {
          const st = await stats(s.admin);
          return st.workers.length === 2 && st.workers.every((w) => serving(w) && !old.has(w.pid) && w.generation === 1)
            ? st
            : undefined;
        },
        7_000,
        50,
      );
      const results = await load;

      expect(failed(results).length, summary(results)).toBe(0);
      expect(results.length).toBeGreaterThan(500);
      expect(reloaded.reloads).toBe(1);
      expect(reloaded.respawns).toBe(0);
      const newPids = new Set(reloaded.workers.map((w) => w.pid));
      // After the reload, only the new workers answer, with the new code.
      const late = results.filter((r) => r.start > hupAt + 5_000);
      expect(late.length).toBeGreaterThan(0);
      expect(late.filter((r) => !newPids.has(r.pid!))).toEqual([]);
      const v2 = await get(s.front!, '/version');
      expect(JSON.parse(v2.body)).toEqual({ version: 'v2', pid: expect.toSatisfy((p: number) => newPids.has(p)) });
      expect(results.some((r) => r.body.includes('"v2"'))).toBe(true);
    } finally {
      await stopClean(s);
    }
  });

  it('POST /reload does the same', async () => {
    const { app } = copyFixture();
    const s = await serve({ pool: { workers: 2 } }, [], app);
    try {
      const old = new Set((await stats(s.admin)).workers.map((w) => w.pid));
      const load = runLoad({ base: s.front!, path: '/slow?ms=10', total: 5_000, concurrency: 4, durationMs: 4_000 });
      await sleep(500);
      writeFileSync(
        app,
        readFileSync(app, 'utf8').replace("export const VERSION = 'v1'", "export const VERSION = 'v3'"),
      );
      const r = await get(s.admin, '/reload', { method: 'POST' });
      expect(r.status).toBe(202);
      const reloaded = await waitFor(
        'every worker replaced',
        async () => {
          const st = await stats(s.admin);
          return st.workers.length === 2 && st.workers.every((w) => serving(w) && !old.has(w.pid)) ? st : undefined;
        },
        7_000,
        50,
      );
      const results = await load;
      expect(failed(results).length, summary(results)).toBe(0);
      expect(reloaded.reloads).toBe(1);
      expect(JSON.parse((await get(s.front!, '/version')).body).version).toBe('v3');
    } finally {
      await stopClean(s);
    }
  });
});

// --- 5. graceful stop ----------------------------------------------------------------------------

describe('SIGTERM', () => {
  it('lets slow requests in flight finish with 200, then exits 0', async () => {
    const s = await serve({ pool: { workers: 2 } });
    const slow = Array.from({ length: 5 }, () => get(s.front!, '/slow?ms=1500'));
    await waitFor(
      '5 requests in flight',
      async () => {
        const st = await stats(s.admin);
        return st.workers.reduce((n, w) => n + w.inflight, 0) === 5 ? true : undefined;
      },
      3_000,
    );
    const termAt = performance.now();
    s.proc.kill('SIGTERM');
    const code = exitCode(s.proc);
    const results = await Promise.all(slow);
    expect(results.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
    expect(await code).toBe(0);
    const exitedAfter = performance.now() - termAt;
    expect(exitedAfter).toBeLessThan(1_500 + 5_000);
    for (const r of results) expect(r.end).toBeGreaterThan(termAt);
  });
});

// --- 6. listen queue full ------------------------------------------------------------------------

describe('a full listen queue', () => {
  it('answers 503 with Retry-After at once, and recovers by itself', async () => {
    const s = await serve({ pool: { workers: 1, maxInflight: 1, listen: 2 } });
    try {
      const slow = Array.from({ length: 3 }, () => get(s.front!, '/slow?ms=700'));
      await waitFor(
        '1 running + 2 queued',
        async () => {
          const st = await stats(s.admin);
          return st.queue === 2 && st.workers[0]!.inflight === 1 ? true : undefined;
        },
        3_000,
        10,
      );
      const r = await get(s.front!, '/');
      expect(r.status).toBe(503);
      expect(r.headers['retry-after']).toBe('1');
      expect(r.end - r.start).toBeLessThan(100);
      expect((await Promise.all(slow)).map((x) => x.status)).toEqual([200, 200, 200]);
      const again = await get(s.front!, '/');
      expect(again.status).toBe(200);
      const st = await stats(s.admin);
      expect(st.rejected).toBe(1);
      expect(st.queue).toBe(0);
    } finally {
      await stopClean(s);
    }
  });
});

// --- 7. split modes ------------------------------------------------------------------------------

/** `stratum pool` on a TCP socket the OS picks; returns it and its "127.0.0.1:PORT". */
async function tcpPool(workers: number, app = FIXTURE): Promise<{ pool: StratumProcess; address: string }> {
  const dir = makeTempDir('tcp-pool');
  const pool = await startStratum([
    'pool',
    '--socket',
    '127.0.0.1:0',
    '--admin',
    '127.0.0.1:0',
    '--workers',
    String(workers),
    '--app',
    app,
    '--config',
    writeConfig(dir, {}),
  ]);
  const m = /^tcp:(127\.0\.0\.1:\d+)$/.exec(pool.pool ?? '');
  expect(m, `pool label ${pool.pool}`).not.toBeNull();
  expect(m![1]).not.toBe('127.0.0.1:0');
  return { pool, address: m![1]! };
}

describe('split modes', () => {
  it.skipIf(!requirePeer('nginx'))('stratum pool on TCP behind a real nginx uwsgi_pass', async () => {
    const { pool, address } = await tcpPool(2);
    const nginx = await startNginx({ uwsgiPass: address });
    try {
      const rs = await Promise.all(Array.from({ length: 10 }, () => get(nginx.address, '/pid?ms=50')));
      expect(rs.map((r) => r.status)).toEqual(Array(10).fill(200));
      const pids = new Set(rs.map((r) => r.pid));
      for (const p of pids) expect(pool.workers).toContain(p);
      expect(pids.size).toBe(2);
    } finally {
      await nginx.stop();
      await stopClean(pool);
    }
  });

  it('stratum proxy balances two pools; SIGTERM to one moves all traffic to the other', async () => {
    const [a, b] = await Promise.all([tcpPool(2), tcpPool(2)]);
    const dir = makeTempDir('proxy');
    const config = writeConfig(dir, {
      routes: [{ path: '/', target: [`uwsgi://${a.address}`, `uwsgi://${b.address}`] }],
    });
    const proxy = await startStratum([
      'proxy',
      '--listen',
      '127.0.0.1:0',
      '--admin',
      '127.0.0.1:0',
      '--config',
      config,
    ]);
    try {
      const first = await runLoad({ base: proxy.front!, path: '/pid', total: 40, concurrency: 2 });
      expect(failed(first)).toEqual([]);
      const seen = new Set(first.map((r) => r.pid!));
      expect([...seen].filter((p) => a.pool.workers.includes(p)).length).toBeGreaterThan(0);
      expect([...seen].filter((p) => b.pool.workers.includes(p)).length).toBeGreaterThan(0);
      expect([...seen].every((p) => a.pool.workers.includes(p) || b.pool.workers.includes(p))).toBe(true);

      // Light load; pool A stops in the middle of it.
      let stop: Promise<{ at: number; inflight: number; exitedAt: number; code: number | null }> | null = null;
      let inflight = 0;
      const path = '/pid?ms=30';
      const results = await runLoad({
        base: proxy.front!,
        path: () => {
          inflight++;
          return path;
        },
        total: 150,
        concurrency: 3,
        onResult: (_r, all) => {
          inflight--;
          if (all.length === 30 && !stop) {
            const at = performance.now();
            const n = inflight;
            stop = a.pool.stop().then((code) => ({ at, inflight: n, exitedAt: performance.now(), code }));
          }
        },
      });
      const st = await stop!;
      expect(st.code).toBe(0);
      expect(failed(results).length, summary(results)).toBeLessThanOrEqual(st.inflight);
      // After A is gone, B answers everything.
      const afterStop = results.filter((r) => r.start > st.exitedAt);
      expect(afterStop.length).toBeGreaterThan(0);
      expect(afterStop.filter((r) => r.status !== 200 || !b.pool.workers.includes(r.pid!))).toEqual([]);
    } finally {
      await stopClean(proxy);
      await a.pool.stop();
      await stopClean(b.pool);
    }
  });
});

// --- 8. crashes ----------------------------------------------------------------------------------

describe('crashing apps', () => {
  it('an app that throws at load: serve exits non-zero with one line on stderr', async () => {
    const dir = makeTempDir('broken');
    const app = join(dir, 'broken.ts');
    writeFileSync(app, "throw new Error('boom at load');\nexport default {};\n");
    const t = spawnTracked(
      process.execPath,
      [STRATUM_BIN, 'serve', '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--workers', '2', '--app', app],
      { cwd: REPO_ROOT },
    );
    const timer = setTimeout(() => void t.stop('SIGKILL', 0), 20_000);
    const code = await t.exited;
    clearTimeout(timer);
    expect(code, t.stderr()).not.toBe(0);
    expect(code).not.toBeNull();
    const lines = t.stderr().trimEnd().split('\n');
    expect(lines, t.stderr()).toHaveLength(1);
    expect(lines[0]).toMatch(/^stratum: .*boom at load/);
    expect(t.stdout()).toMatch(/worker failed to start/);
    expect(t.stdout()).not.toMatch(/stratum ready/);
  });

  it('an exception thrown from a timer in app code: its request gets 500 at once, the worker is replaced', async () => {
    const s = await serve({ pool: { workers: 1 } });
    try {
      const before = s.workers[0]!;
      const r = await get(s.front!, '/async-throw');
      expect(r.status, r.body).toBe(500);
      // At once, not after readTimeout or harakiri (60 s).
      expect(r.end - r.start).toBeLessThan(2_000);
      const st = await waitFor(
        'the broken worker replaced',
        async () => {
          const x = await stats(s.admin);
          const w = x.workers[0];
          return x.workers.length === 1 && w && serving(w) && w.pid !== before ? x : undefined;
        },
        10_000,
      );
      expect(st.recycles).toBe(1);
      expect(st.respawns).toBe(0);
      // Logged with its stack, once.
      const stderr = s
        .stderr()
        .split('\n')
        .filter((l) => l.includes('uncaught exception'));
      expect(stderr).toHaveLength(1);
      expect(stderr[0]).toContain('async boom');
      expect(stderr[0]).toContain('pool-app.ts');
      const metrics = await (await fetch(`${s.admin}/metrics`)).text();
      expect(metrics).toMatch(/^stratum_app_exceptions_total 1$/m);
      expect((await get(s.front!, '/')).status).toBe(200);
    } finally {
      await stopClean(s);
    }
  });

  it('a worker whose request calls process.exit is respawned, with back-off in a crash loop', async () => {
    const s = await serve({ pool: { workers: 1 } });
    try {
      const pids = [s.workers[0]!];
      for (let n = 1; n <= 4; n++) {
        const crash = await get(s.front!, '/crash');
        expect(crash.status).toBe(502);
        const st = await waitFor(
          `respawn #${n}`,
          async () => {
            const x = await stats(s.admin);
            const w = x.workers[0];
            return x.respawns === n && w && serving(w) && !pids.includes(w.pid) ? x : undefined;
          },
          10_000,
        );
        pids.push(st.workers[0]!.pid);
        const ok = await get(s.front!, '/pid');
        expect(ok.status).toBe(200);
        expect(ok.pid).toBe(st.workers[0]!.pid);
      }
      // One early death is replaced at once; more in a row are a crash loop: the delay doubles.
      const delays = s
        .logs()
        .filter((l) => l.msg === 'worker crash loop: backing off')
        .map((l) => l.delayMs);
      expect(delays).toEqual([100, 200, 400]);
    } finally {
      await stopClean(s);
    }
  });
});
