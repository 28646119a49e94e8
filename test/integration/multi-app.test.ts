// Several apps in one service (issue 17), started for real: a Fastify app on / and a fetch app on
// /api/, each with its own workers, and a `kind: process` app; then config reloads — an edit that
// adds a route and a third app under wrk load, an invalid edit refused — and a process app killed.
import { execFile } from 'node:child_process';
import http from 'node:http';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requirePeer } from '../helpers/peers.ts';
import { makeTempDir, waitUntil } from '../helpers/processes.ts';
import { REPO_ROOT, startStratum, stopAllStratum, STRATUM_BIN, type StratumProcess } from '../helpers/stratum.ts';
import type { ServiceStats } from '../../src/pool/apps.ts';

const FIXTURES = join(REPO_ROOT, 'test/fixtures/multi-app');
const run = promisify(execFile);
const API_CWD = makeTempDir('multi-app-cwd');

afterAll(stopAllStratum);

/** The config: web (Fastify, 2 workers) on /, api (fetch, 1 worker) on /api/, a consumer process; `extra` adds more. */
function configText(extra = ''): string {
  return [
    `# api runs in ${API_CWD}, the others in stratum's own working directory`,
    'listen: 127.0.0.1:0',
    'admin: { listen: 127.0.0.1:0 }',
    'log: { access: false }',
    'apps:',
    '  - name: web',
    `    module: ${join(FIXTURES, 'web.ts')}`,
    '    workers: 2',
    '  - name: api',
    `    module: ${join(FIXTURES, 'api.ts')}`,
    '    workers: 1',
    '    env: { APP_COLOR: blue }',
    `    cwd: ${API_CWD}`,
    '  - name: consumer',
    '    kind: process',
    `    module: ${join(FIXTURES, 'consumer.ts')}`,
    '    gracefulTimeout: 2',
    extra,
    'routes:',
    ...(extra ? ['  - path: /new/', '    target: pool:extra'] : []),
    '  - path: /api/',
    '    target: pool:api',
    '  - path: /',
    '    target: pool:web',
    '',
  ].join('\n');
}

const EXTRA_APP = [
  '  - name: extra',
  `    module: ${join(FIXTURES, 'api.ts')}`,
  '    workers: 1',
  '    env: { APP_COLOR: green }',
].join('\n');

interface Answer {
  status: number;
  body: { app: string; kind: string; pid: number; url: string; color?: string | null; cwd: string };
}

/** GET on a fresh connection (no keep-alive), so that requests spread over every worker that accepts. */
function get(base: string, path: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.get(new URL(path, base), { agent: false, timeout: 5000 }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as Answer['body'] }));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
  });
}

async function stats(s: StratumProcess): Promise<ServiceStats> {
  return (await (await fetch(`${s.admin}/stats`)).json()) as ServiceStats;
}

function pidsOf(st: ServiceStats, app: string): number[] {
  const a = st.apps.find((x) => x.name === app);
  if (!a) throw new Error(`no app ${app} in /stats: ${JSON.stringify(st.apps.map((x) => x.name))}`);
  return (a.workers ?? a.processes ?? []).map((w) => w.pid).sort((x, y) => x - y);
}

async function reloadPost(s: StratumProcess, wait = true): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${s.admin}/reload${wait ? '?wait=1' : ''}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: '{}',
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

/** Counts of one wrk run, from its report; a missing line means none of that kind. */
function parseWrk(out: string): { requests: number; non2xx: number; socketErrors: number } {
  const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? NaN);
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0);
  const se = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const socketErrors = se ? se.slice(1).reduce((n, v) => n + Number(v), 0) : 0;
  return { requests, non2xx, socketErrors };
}

describe('two http apps and a process app in one service', () => {
  let s: StratumProcess;
  let file: string;
  beforeAll(async () => {
    file = join(makeTempDir('multi-app'), 'stratum.yaml');
    writeFileSync(file, configText());
    s = await startStratum(['serve', '--config', file], { readyTimeoutMs: 30_000 });
  });
  afterAll(async () => {
    if (s) expect(await s.stop(), 'exit code after SIGTERM').toBe(0);
  });

  it('requests reach each app, served by that app own workers only', async () => {
    const st = await stats(s);
    const web = pidsOf(st, 'web');
    const api = pidsOf(st, 'api');
    expect(web).toHaveLength(2);
    expect(api).toHaveLength(1);
    expect(web.filter((p) => api.includes(p))).toEqual([]);
    // Every worker row of an app is labelled with it, and the summed list holds exactly them.
    for (const a of st.apps.filter((x) => x.kind === 'http'))
      expect(a.workers!.every((w) => w.app === a.name)).toBe(true);
    expect(st.workers.map((w) => w.pid).sort((x, y) => x - y)).toEqual([...web, ...api].sort((x, y) => x - y));

    const seen = { web: new Set<number>(), api: new Set<number>() };
    for (let i = 0; i < 30; i++) {
      const w = await get(s.front!, `/page/${i}`);
      expect(w.status).toBe(200);
      expect(w.body).toMatchObject({
        app: 'web',
        kind: 'fastify',
        url: `/page/${i}`,
        cwd: REPO_ROOT.replace(/\/$/, ''),
      });
      seen.web.add(w.body.pid);
      const a = await get(s.front!, `/api/item/${i}`);
      expect(a.status).toBe(200);
      expect(a.body).toMatchObject({ app: 'api', kind: 'fetch', url: `/api/item/${i}`, color: 'blue', cwd: API_CWD });
      seen.api.add(a.body.pid);
    }
    expect(
      [...seen.web].every((p) => web.includes(p)),
      `web pids ${[...seen.web]} vs ${web}`,
    ).toBe(true);
    expect([...seen.api]).toEqual(api);
  });

  it('labels the pool metrics with the app, and shows the process app', async () => {
    const text = await (await fetch(`${s.admin}/metrics`)).text();
    expect(text).toMatch(/^stratum_workers\{state="idle",app="web"\} \d+$/m);
    expect(text).toMatch(/^stratum_workers\{state="idle",app="api"\} \d+$/m);
    expect(text).toMatch(/^stratum_process_up\{app="consumer",instance="1"\} 1$/m);
    expect(text).toMatch(/^stratum_process_resident_memory_bytes\{app="consumer",instance="1"\} [1-9]\d*$/m);
  });

  it('a config edit adding a route and a third app, SIGHUP under wrk load: 0 failed requests', async () => {
    if (!requirePeer('wrk')) return;
    const before = await stats(s);
    const pids = { web: pidsOf(before, 'web'), api: pidsOf(before, 'api'), consumer: pidsOf(before, 'consumer') };
    const load = run('wrk', ['-t1', '-c10', '-d4s', `${s.front}/api/load`], { timeout: 20_000 });
    await new Promise((r) => setTimeout(r, 1000));
    writeFileSync(file, configText(EXTRA_APP));
    s.proc.kill('SIGHUP');
    const { stdout } = await load;
    const w = parseWrk(stdout);
    expect(w.requests, stdout).toBeGreaterThan(100);
    expect(w.non2xx, stdout).toBe(0);
    expect(w.socketErrors, stdout).toBe(0);

    await waitUntil(async () => pidsOf(await stats(s), 'extra').length === 1, {
      timeoutMs: 15_000,
      describe: () => 'the extra app never showed in /stats',
    });
    await waitUntil(async () => (await get(s.front!, '/new/x')).body.app === 'api', {
      timeoutMs: 5_000,
      describe: () => 'the new route never served',
    });
    const extra = pidsOf(await stats(s), 'extra');
    for (let i = 0; i < 10; i++) {
      const r = await get(s.front!, `/new/${i}`);
      expect(r.status).toBe(200);
      expect(r.body).toMatchObject({ color: 'green', url: `/new/${i}` });
      expect(extra).toContain(r.body.pid);
    }
    const after = await stats(s);
    expect(pidsOf(after, 'web')).toEqual(pids.web);
    expect(pidsOf(after, 'api')).toEqual(pids.api);
    expect(pidsOf(after, 'consumer')).toEqual(pids.consumer);
    const line = s.logs().find((l) => l.msg === 'config reloaded');
    expect(line).toMatchObject({ source: 'SIGHUP', added: ['extra'], routes: true });
    expect(line!.unchanged).toEqual(expect.arrayContaining(['web', 'api', 'consumer']));
  });

  it('an invalid edit is refused: nothing changes, the field is logged and POST /reload answers it', async () => {
    const before = await stats(s);
    const names = before.apps.map((a) => a.name);
    writeFileSync(file, configText(EXTRA_APP).replace('    workers: 2', '    workers: 0'));
    const r = await reloadPost(s);
    expect(r.status).toBe(400);
    expect(r.body.error).toMatchObject({ code: 'STRATUM_ERR_CONFIG', path: 'apps.0.workers' });
    // The CLI says the same, exit code 2.
    const cli = await run(process.execPath, [STRATUM_BIN, 'reload', '--admin', s.admin.replace('http://', '')]).then(
      () => ({ code: 0, stderr: '' }),
      (e: { code: number; stderr: string }) => e,
    );
    expect(cli.code).toBe(2);
    expect(cli.stderr).toMatch(/^stratum: apps\.0\.workers: .*refused/);
    s.proc.kill('SIGHUP');
    await waitUntil(async () => s.logs().filter((l) => l.path === 'apps.0.workers').length >= 3, {
      timeoutMs: 5_000,
      describe: () => 'the refusals were not logged',
    });
    const refusals = s.logs().filter((l) => l.path === 'apps.0.workers');
    expect(refusals.map((l) => l.source)).toEqual(['POST /reload', 'POST /reload', 'SIGHUP']);
    expect(refusals.every((l) => l.code === 'STRATUM_ERR_CONFIG' && l.level === 'error')).toBe(true);
    const after = await stats(s);
    expect(after.apps.map((a) => a.name)).toEqual(names);
    for (const n of names) expect(pidsOf(after, n)).toEqual(pidsOf(before, n));
    expect((await get(s.front!, '/new/y')).body.color).toBe('green');
    writeFileSync(file, configText(EXTRA_APP));
  });

  it('stratum reload prints the outcome: an edited app is rolled under load, the others keep their pids', async () => {
    const before = await stats(s);
    // Its route is served in its own worker and, from the other apps' workers, over uwsgi to its socket:
    // the kept connections to the worker that drains must not fail a request.
    const load = requirePeer('wrk')
      ? run('wrk', ['-t1', '-c10', '-d4s', `${s.front}/new/load`], { timeout: 20_000 })
      : null;
    await new Promise((r) => setTimeout(r, 1000));
    writeFileSync(file, configText(EXTRA_APP).replace('APP_COLOR: green', 'APP_COLOR: red'));
    const { stdout } = await run(process.execPath, [STRATUM_BIN, 'reload', '--admin', s.admin.replace('http://', '')]);
    if (load) {
      const out = (await load).stdout;
      const w = parseWrk(out);
      expect(w.requests, out).toBeGreaterThan(100);
      expect(w.non2xx + w.socketErrors, out).toBe(0);
    }
    expect(stdout).toMatch(/^stratum: reloaded: added -; rolled extra; removed -; kept web, api, consumer/);
    const after = await stats(s);
    expect(pidsOf(after, 'extra')).not.toEqual(pidsOf(before, 'extra'));
    for (const n of ['web', 'api', 'consumer']) expect(pidsOf(after, n)).toEqual(pidsOf(before, n));
    expect((await get(s.front!, '/new/z')).body.color).toBe('red');
  });

  it('an app removed from the file is drained once no route names it; the others keep their pids', async () => {
    const before = await stats(s);
    const gone = pidsOf(before, 'extra');
    const load = requirePeer('wrk')
      ? run('wrk', ['-t1', '-c10', '-d3s', `${s.front}/api/load`], { timeout: 20_000 })
      : null;
    await new Promise((r) => setTimeout(r, 500));
    writeFileSync(file, configText());
    const r = await reloadPost(s);
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ status: 'reloaded', removed: ['extra'], added: [], changed: [], routes: true });
    if (load) {
      const out = (await load).stdout;
      const w = parseWrk(out);
      expect(w.requests, out).toBeGreaterThan(100);
      expect(w.non2xx + w.socketErrors, out).toBe(0);
    }
    const after = await stats(s);
    expect(after.apps.map((a) => a.name)).toEqual(['web', 'api', 'consumer']);
    for (const n of ['web', 'api', 'consumer']) expect(pidsOf(after, n)).toEqual(pidsOf(before, n));
    for (const pid of gone) expect(() => process.kill(pid, 0), `pid ${pid} still alive`).toThrow();
    // Its route is gone too: /new/ is the web app's now.
    expect((await get(s.front!, '/new/q')).body.app).toBe('web');
  });

  it('a process app killed with -9 is respawned, and shows in /stats and the metrics', async () => {
    const [pid] = pidsOf(await stats(s), 'consumer');
    process.kill(pid!, 'SIGKILL');
    let fresh = 0;
    await waitUntil(
      async () => {
        const c = (await stats(s)).apps.find((a) => a.name === 'consumer')!;
        const p = c.processes![0]!;
        fresh = p.pid;
        return p.pid !== pid && p.up && c.restarts === 1;
      },
      { timeoutMs: 5_000, describe: () => `consumer not respawned (pid ${fresh})` },
    );
    const text = await (await fetch(`${s.admin}/metrics`)).text();
    expect(text).toMatch(/^stratum_process_restarts_total\{app="consumer"\} 1$/m);
    expect(text).toMatch(/^stratum_process_up\{app="consumer",instance="1"\} 1$/m);
    await waitUntil(async () => s.logs().some((l) => l.app === 'consumer' && l.workerPid === fresh), {
      timeoutMs: 5_000,
      describe: () => 'the new process logged nothing under its app name',
    });
    await waitUntil(async () => s.logs().some((l) => l.msg === 'process died' && l.app === 'consumer'), {
      timeoutMs: 5_000,
      describe: () => 'the death was not logged',
    });
    expect(s.logs().find((l) => l.msg === 'process died' && l.app === 'consumer')).toMatchObject({
      signal: 'SIGKILL',
      workerPid: pid,
    });
  });
});

describe('a process app past its memory limit', () => {
  it('is restarted gracefully (SIGTERM), counted, and logged with its name', async () => {
    const dir = makeTempDir('multi-app-rss');
    const file = join(dir, 'stratum.yaml');
    // Any Node process is past 1 MiB resident: every check (once a second) restarts it.
    writeFileSync(
      file,
      [
        'listen: 127.0.0.1:0',
        'admin: { listen: 127.0.0.1:0 }',
        'apps:',
        '  - name: web',
        `    module: ${join(FIXTURES, 'web.ts')}`,
        '    workers: 1',
        '  - name: hog',
        '    kind: process',
        `    module: ${join(FIXTURES, 'consumer.ts')}`,
        '    reloadOnRss: 1',
        '',
      ].join('\n'),
    );
    const s = await startStratum(['serve', '--config', file], { readyTimeoutMs: 30_000 });
    try {
      await waitUntil(async () => ((await stats(s)).apps.find((a) => a.name === 'hog')?.restarts ?? 0) >= 1, {
        timeoutMs: 8_000,
        describe: () => 'the process app was never restarted for its memory',
      });
      // Log lines go out in batches: wait for the one that says why.
      await waitUntil(
        async () => s.logs().some((l) => l.msg === 'restarting process' && l.reason === 'reload-on-rss'),
        {
          timeoutMs: 5_000,
          describe: () => 'no restart for reload-on-rss was logged',
        },
      );
      const over = s.logs().find((l) => l.msg === 'process over its memory limit');
      expect(over).toMatchObject({ app: 'hog', limit: 1024 * 1024 });
      expect(over!.rss as number).toBeGreaterThan(1024 * 1024);
      expect(s.logs().some((l) => l.msg === 'restarting process' && l.reason === 'reload-on-rss')).toBe(true);
      // Graceful: it got SIGTERM and exited by itself (its handler exits 0), no "process died" for it.
      expect(s.logs().filter((l) => l.msg === 'process died' && l.app === 'hog')).toEqual([]);
    } finally {
      expect(await s.stop()).toBe(0);
    }
  });
});
