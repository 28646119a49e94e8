// The dashboard end to end: the real service with three workers under a bounded load of fast,
// slow and failing requests, the page opened in headless Chromium, and what a person would look
// for checked on the page itself — live layer series, every worker, the slowest request's
// waterfall from proxy to app, the connection indicator — with no console error on the way.
// Screenshots land in test/artifacts/; docs/dashboard.png comes from scripts/dashboard-screenshot.ts.
import { execFileSync } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir } from '../helpers/processes.ts';
import { REPO_ROOT, startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = join(REPO_ROOT, 'test/artifacts');
const LAYERS = ['proxy', 'queue', 'worker', 'app'] as const;

/** Like requirePeer: a missing browser fails under CI and skips, with the reason, elsewhere. */
function requireChromium(): boolean {
  try {
    accessSync(CHROMIUM, constants.X_OK);
    return true;
  } catch {
    const reason = `${CHROMIUM} is not installed (apt-get install chromium)`;
    if (process.env.CI) throw new Error(`CI requires chromium: ${reason}`);
    console.warn(`skipping the dashboard browser tests: ${reason}`);
    return false;
  }
}

/** dashboard/dist is git-ignored: build it when it is missing or older than its sources. */
function ensureDashboardBuilt(): void {
  const index = join(REPO_ROOT, 'dashboard/dist/index.html');
  const newest = (dir: string): number =>
    Math.max(
      0,
      ...readdirSync(dir, { withFileTypes: true }).map((e) =>
        e.isDirectory() ? newest(join(dir, e.name)) : statSync(join(dir, e.name)).mtimeMs,
      ),
    );
  const sources = Math.max(
    newest(join(REPO_ROOT, 'dashboard/src')),
    statSync(join(REPO_ROOT, 'dashboard/index.html')).mtimeMs,
    statSync(join(REPO_ROOT, 'dashboard/vite.config.ts')).mtimeMs,
  );
  if (existsSync(index) && statSync(index).mtimeMs >= sources) return;
  execFileSync(process.execPath, [join(REPO_ROOT, 'node_modules/vite/bin/vite.js'), 'build', 'dashboard'], {
    cwd: REPO_ROOT,
    stdio: 'pipe',
    timeout: 120_000,
  });
}

function serveArgs(workers: number): string[] {
  const dir = makeTempDir('dashboard');
  return [
    'serve',
    '--listen',
    '127.0.0.1:0',
    '--admin',
    '127.0.0.1:0',
    '--socket',
    join(dir, 'pool.sock'),
    '--workers',
    String(workers),
    '--app',
    join(REPO_ROOT, 'test/fixtures/apps/fastify.ts'),
  ];
}

/**
 * Traffic until `stop()` or `maxMs`: a few clients on fast routes, one sending a 300 ms request
 * every half second, one a failing request every 400 ms. Bounded in time and count.
 */
function startLoad(front: string, maxMs: number): { stop(): Promise<number> } {
  const until = Date.now() + maxMs;
  let stopped = false;
  let sent = 0;
  const loop = async (paths: string[], pauseMs: number) => {
    for (let i = 0; !stopped && Date.now() < until && sent < 50_000; i++) {
      sent++;
      await fetch(`${front}${paths[i % paths.length]}`).then(
        (r) => r.arrayBuffer(),
        () => {},
      );
      if (pauseMs) await new Promise((resolve) => setTimeout(resolve, pauseMs));
    }
  };
  const done = Promise.all([
    loop(['/', '/echo', '/status/204', '/slow?ms=5'], 2),
    loop(['/', '/echo/x', '/status/404', '/slow?ms=20'], 2),
    loop(['/slow?ms=2', '/'], 5),
    loop(['/slow?ms=300', '/slow?ms=120'], 500),
    loop(['/fail', '/status/503'], 400),
  ]);
  return { stop: async () => ((stopped = true), await done, sent) };
}

async function adminJson<T>(stratum: StratumProcess, path: string, token?: string): Promise<T> {
  const res = await fetch(`${stratum.admin}${path}`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  expect(res.status, `${path}`).toBe(200);
  return (await res.json()) as T;
}

afterAll(stopAllStratum);

describe('dashboard page on the admin listener', () => {
  let stratum: StratumProcess;
  beforeAll(async () => {
    ensureDashboardBuilt();
    stratum = await startStratum(serveArgs(1));
  });
  afterAll(async () => {
    if (stratum) await stratum.stop();
  });

  it('serves the page at / with a strict Content-Security-Policy and without the token', async () => {
    const res = await fetch(`${stratum.admin}/`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/html; charset=utf-8');
    expect(res.headers.get('content-security-policy')).toContain("script-src 'self'");
    const html = await res.text();
    const script = /src="\.\/(assets\/[^"]+\.js)"/.exec(html)?.[1];
    expect(script, 'index.html names its script').toBeDefined();
    const js = await fetch(`${stratum.admin}/${script}`, { headers: { 'accept-encoding': 'gzip' } });
    expect(js.status).toBe(200);
    expect(js.headers.get('content-type')).toBe('text/javascript; charset=utf-8');
    expect(js.headers.get('cache-control')).toContain('immutable');
    expect((await js.text()).length).toBeGreaterThan(1000);
  });

  it('answers 404 for an asset that does not exist or climbs out of assets/', async () => {
    for (const path of [
      '/assets/nope.js',
      '/assets/..%2Fpackage.json',
      '/assets/../../package.json',
      '/assets/.hidden.js',
    ]) {
      const res = await fetch(`${stratum.admin}${path}`);
      expect(res.status, path).toBe(404);
      await res.arrayBuffer();
    }
  });
});

describe.skipIf(!requireChromium())('dashboard in a browser', () => {
  let stratum: StratumProcess;
  let browser: Browser;
  let load: { stop(): Promise<number> } | null = null;
  const problems: string[] = [];

  const pages: Page[] = [];
  async function open(url: string, viewport = { width: 1440, height: 900 }): Promise<Page> {
    const page = await browser.newPage({ viewport });
    pages.push(page);
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(`console: ${m.text()}`);
    });
    page.on('pageerror', (err) => problems.push(`pageerror: ${err.message}`));
    await page.goto(url);
    return page;
  }

  beforeAll(async () => {
    ensureDashboardBuilt();
    mkdirSync(ARTIFACTS, { recursive: true });
    stratum = await startStratum(serveArgs(3));
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    });
    load = startLoad(stratum.front!, 45_000);
    // A few seconds of history before the page opens: the charts start from the `history` event.
    await new Promise((resolve) => setTimeout(resolve, 4000));
  });
  // A page left open keeps reconnecting to a stopped service and logging it: close each one.
  afterEach(async () => {
    await Promise.all(pages.splice(0).map((p) => p.close()));
    problems.length = 0;
  });
  afterAll(async () => {
    await load?.stop();
    await browser?.close();
    if (stratum) await stratum.stop();
  });

  it('shows the layers, the workers and the slowest request’s waterfall, live, without errors', async () => {
    const page = await open(`${stratum.admin}/`);
    await page.locator('[data-testid="link"][data-state="connected"]').waitFor({ timeout: 10_000 });
    expect(await page.locator('[data-testid="link"] .link-text').textContent()).toBe('connected');

    // Each layer's p50/p95/p99 lines have points, and so does its band in the stacked chart.
    await page.waitForFunction(
      (layers) =>
        layers.every(
          (l) =>
            Number(
              document
                .querySelector(`#latency g.series[data-layer="${l}"][data-quantile="p95"]`)
                ?.getAttribute('data-points'),
            ) > 0,
        ),
      [...LAYERS],
      { timeout: 10_000 },
    );
    for (const layer of LAYERS) {
      for (const q of ['p50', 'p95', 'p99']) {
        const points = Number(
          await page
            .locator(`#latency g.series[data-layer="${layer}"][data-quantile="${q}"]`)
            .getAttribute('data-points'),
        );
        expect(points, `${layer} ${q} points`).toBeGreaterThan(0);
      }
      expect(
        Number(await page.locator(`#time-share g.series[data-layer="${layer}"]`).getAttribute('data-points')),
      ).toBeGreaterThan(0);
    }
    expect(
      Number(await page.locator('#traffic g.series[data-status="5xx"]').getAttribute('data-points')),
    ).toBeGreaterThan(0);

    // Every worker /stats reports has its row.
    const stats = await adminJson<{ workers: Array<{ pid: number }> }>(stratum, '/stats');
    expect(stats.workers).toHaveLength(3);
    await page.waitForFunction(
      (pids) => pids.every((pid) => document.querySelector(`#workers tr[data-pid="${pid}"]`)),
      stats.workers.map((w) => w.pid),
      { timeout: 5000 },
    );
    const rowPids = await page
      .locator('#workers tbody tr[data-pid]')
      .evaluateAll((rows) => rows.map((r) => Number(r.getAttribute('data-pid'))));
    expect(rowPids.sort()).toEqual(stats.workers.map((w) => w.pid).sort());

    // The slow list is slowest first; its first entry is the 300 ms request, and its waterfall
    // runs from the proxy down to the app handler in a worker.
    const slow = page.locator('ol[data-kind="slow"] button.trace');
    await slow.first().waitFor({ timeout: 5000 });
    const durations = await slow.evaluateAll((bs) => bs.map((b) => Number(b.getAttribute('data-duration'))));
    expect(durations[0]).toBe(Math.max(...durations));
    expect(durations[0]).toBeGreaterThanOrEqual(300);
    await slow.first().click();
    const waterfall = page.locator('.waterfall');
    await waterfall.waitFor();
    const spans = await waterfall
      .locator('.wf-row[data-layer]')
      .evaluateAll((rows) =>
        rows.map((r) => ({ layer: r.getAttribute('data-layer'), pid: Number(r.getAttribute('data-pid')) })),
      );
    expect(spans.map((s) => s.layer)).toEqual([...LAYERS]);
    const workerPids = new Set(stats.workers.map((w) => w.pid));
    expect(workerPids.has(spans.find((s) => s.layer === 'app')!.pid), 'the app span ran in one of the workers').toBe(
      true,
    );
    expect(await waterfall.locator('.wf-row[data-layer="app"] .wf-dur').textContent()).toMatch(/^\d[\d.,]* ms$/);

    // Failures are listed as well.
    await page.locator('ol[data-kind="failed"] button.trace .t-status.s5xx').first().waitFor({ timeout: 5000 });

    // Routes and upstreams carry the traffic.
    expect(await page.locator('#flows tr[data-upstream="pool"] .health').textContent()).toContain('up');

    await page.locator('button[data-window-s="60"]').click();
    await page.waitForTimeout(1500);
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-desktop.png'), fullPage: true });

    const phone = await open(`${stratum.admin}/`, { width: 390, height: 844 });
    await phone.locator('[data-testid="link"][data-state="connected"]').waitFor({ timeout: 10_000 });
    await phone.locator('ol[data-kind="slow"] button.trace').first().click();
    await phone.locator('.waterfall').waitFor();
    await phone.waitForTimeout(1500);
    const overflow = await phone.evaluate(
      () => document.documentElement.scrollWidth - document.documentElement.clientWidth,
    );
    expect(overflow, 'no sideways scrolling on a phone').toBeLessThanOrEqual(0);
    await phone.screenshot({ path: join(ARTIFACTS, 'dashboard-phone.png'), fullPage: true });

    expect(problems).toEqual([]);
  });

  it('shows "reconnecting…" while the service is away', async () => {
    const page = await open(`${stratum.admin}/`);
    await page.locator('[data-testid="link"][data-state="connected"]').waitFor({ timeout: 10_000 });
    await load?.stop();
    load = null;
    expect(await stratum.stop()).toBe(0);
    await page.locator('[data-testid="link"][data-state="reconnecting"]').waitFor({ timeout: 10_000 });
    expect(await page.locator('[data-testid="link"] .link-text').textContent()).toBe('reconnecting…');
  });

  it('with an admin token, takes it from ?token= and streams with it', async () => {
    const token = 'dashboard-test-token';
    const guarded = await startStratum(serveArgs(1), { env: { STRATUM_ADMIN_TOKEN: token } });
    try {
      expect((await fetch(`${guarded.admin}/live/history`)).status).toBe(401);
      await fetch(`${guarded.front}/slow?ms=30`).then((r) => r.arrayBuffer());
      const page = await open(`${guarded.admin}/?token=${token}`);
      await page.locator('[data-testid="link"][data-state="connected"]').waitFor({ timeout: 10_000 });
      await page.locator('ol[data-kind="slow"] button.trace').first().waitFor({ timeout: 5000 });
      expect(new URL(page.url()).searchParams.has('token'), 'the token leaves the address bar').toBe(false);
      await page.waitForFunction(
        () =>
          Number(
            document
              .querySelector('#latency g.series[data-layer="app"][data-quantile="p95"]')
              ?.getAttribute('data-points'),
          ) > 0,
        null,
        { timeout: 10_000 },
      );
      expect(problems).toEqual([]);

      const without = await open(`${guarded.admin}/`);
      await without.locator('[data-testid="link"][data-state="unauthorized"]').waitFor({ timeout: 10_000 });
    } finally {
      await guarded.stop();
    }
  });
});
