// The admin /metrics endpoint as a real Prometheus sees it: `stratum serve` (two workers, the
// Fastify fixture) scraped every second by the `prometheus` binary from a throwaway config, a
// known number of requests sent, then Prometheus's own HTTP API asked for per-layer rates and
// p99s, `promtool check metrics` run on a scrape, and the per-layer histogram counts compared
// with the number of requests. Needs prometheus and promtool: skipped with the reason on a
// developer machine without them, failed under CI (requirePeer).
import http from 'node:http';
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requirePeer } from '../helpers/peers.ts';
import { rawRequest } from '../helpers/http.ts';
import { canConnect, describeOutput, freePort, isRunning, makeTempDir, spawnTracked, waitUntil, type Tracked } from '../helpers/processes.ts';
import { REPO_ROOT, startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';

const FASTIFY = join(REPO_ROOT, 'test/fixtures/apps/fastify.ts');
const LAYERS = ['proxy', 'queue', 'worker', 'app'] as const;
const FAST = 200; // GET / — answered at once
// GET /slow?ms=150 — an app layer well inside the (0.1, 0.25] bucket (a Node timer may fire up to
// 1 ms early, so not 100), so the app's p99 stands out.
const SLOW = 10;
const TOTAL = FAST + SLOW;

// Both checked (and reported) before anything starts; in CI a missing one throws here.
const havePrometheus = requirePeer('prometheus');
const havePromtool = requirePeer('promtool');

interface PromSample {
  metric: Record<string, string>;
  value: [number, string];
}

interface Prometheus {
  url: string;
  tracked: Tracked;
  query(q: string): Promise<PromSample[]>;
  stop(): Promise<number | null>;
}

/** `prometheus` scraping `target` (host:port) every second, from a config and TSDB in a temp dir. */
async function startPrometheus(target: string): Promise<Prometheus> {
  const dir = makeTempDir('prometheus');
  const config = join(dir, 'prometheus.yml');
  writeFileSync(config, `global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: stratum
    metrics_path: /metrics
    static_configs:
      - targets: ['${target}']
`);
  mkdirSync(join(dir, 'data'));
  // A port picked by freePort() can be taken before prometheus binds it: retry a few times.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const t = spawnTracked('prometheus', [
      `--config.file=${config}`,
      `--storage.tsdb.path=${join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--log.level=warn',
    ], { cwd: dir });
    const url = `http://127.0.0.1:${port}`;
    try {
      await waitUntil(async () => !isRunning(t) || ((await canConnect({ host: '127.0.0.1', port })) && (await rawRequest(url, { path: '/-/ready', timeoutMs: 2000 })).status === 200), {
        timeoutMs: 30_000,
        intervalMs: 100,
        describe: () => `prometheus did not become ready on ${url}\n${describeOutput(t)}`,
      });
      if (!isRunning(t)) throw new Error(`prometheus exited at start-up\n${describeOutput(t)}`);
    } catch (err) {
      await t.stop('SIGKILL', 0);
      if (attempt < 3 && /address already in use/i.test(t.stderr())) continue;
      throw err;
    }
    return {
      url,
      tracked: t,
      async query(q) {
        const res = await rawRequest(url, { path: `/api/v1/query?query=${encodeURIComponent(q)}` });
        const body = JSON.parse(res.body.toString()) as { status: string; error?: string; data?: { resultType: string; result: PromSample[] } };
        if (res.status !== 200 || body.status !== 'success') throw new Error(`query ${q}: ${res.status} ${body.error ?? res.body.toString()}`);
        return body.data!.result;
      },
      stop: () => t.stop('SIGTERM', 10_000),
    };
  }
}

/** Sends `count` GETs of `path` over up to `concurrency` kept connections; every answer must be 200. */
async function sendMany(base: string, path: string, count: number, concurrency: number): Promise<void> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  let next = 0;
  try {
    await Promise.all(Array.from({ length: concurrency }, async () => {
      while (next < count) {
        next++;
        const res = await rawRequest(base, { path, agent });
        if (res.status !== 200) throw new Error(`GET ${path}: ${res.status} ${res.body.toString()}`);
      }
    }));
  } finally {
    agent.destroy();
  }
}

/** Per-layer sums of `stratum_layer_duration_seconds_count` in a Prometheus-text scrape. */
function layerCounts(text: string): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const m = /^stratum_layer_duration_seconds_count\{([^}]*)\} (\S+)$/.exec(line);
    if (!m) continue;
    const layer = /(?:^|,)layer="([^"]*)"/.exec(m[1]!)?.[1] ?? '?';
    counts[layer] = (counts[layer] ?? 0) + Number(m[2]);
  }
  return counts;
}

const byLayer = (samples: PromSample[]) => Object.fromEntries(samples.map((s) => [s.metric.layer ?? '?', Number(s.value[1])]));

afterAll(stopAllStratum);

describe.skipIf(!(havePrometheus && havePromtool))('metrics scraped by a real Prometheus', () => {
  let stratum: StratumProcess;
  let prom: Prometheus;

  beforeAll(async () => {
    const dir = makeTempDir('obs-prometheus');
    stratum = await startStratum(['serve', '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--socket', join(dir, 'pool.sock'), '--workers', '2', '--app', FASTIFY]);
    prom = await startPrometheus(new URL(stratum.admin).host);

    // Two waves, each seen by a scrape before the next, so the counters rise between samples
    // inside the 30 s rate window (a single burst before the first scrape would rate as 0).
    const seenByPrometheus = (n: number) => async () => {
      const r = await prom.query('sum(stratum_layer_duration_seconds_count{layer="app"})');
      return r.length === 1 && Number(r[0]!.value[1]) === n;
    };
    await sendMany(stratum.front!, '/', FAST / 2, 8);
    await waitUntil(seenByPrometheus(FAST / 2), { timeoutMs: 20_000, intervalMs: 200, describe: () => `Prometheus never scraped the first ${FAST / 2} requests\n${describeOutput(prom.tracked)}` });
    await Promise.all([sendMany(stratum.front!, '/', FAST / 2, 8), sendMany(stratum.front!, '/slow?ms=150', SLOW, 5)]);
    await waitUntil(seenByPrometheus(TOTAL), { timeoutMs: 20_000, intervalMs: 200, describe: () => `Prometheus never scraped all ${TOTAL} requests\n${describeOutput(prom.tracked)}` });
  }, 120_000);

  afterAll(async () => {
    await prom?.stop();
    if (stratum) expect(await stratum.stop(), 'exit code after SIGTERM').toBe(0);
  });

  it('is a healthy Prometheus target', async () => {
    const res = await rawRequest(prom.url, { path: '/api/v1/targets?state=active' });
    const body = JSON.parse(res.body.toString()) as { data: { activeTargets: Array<{ health: string; lastError: string; scrapeUrl: string }> } };
    expect(body.data.activeTargets).toHaveLength(1);
    expect(body.data.activeTargets[0]).toMatchObject({ health: 'up', lastError: '', scrapeUrl: `${stratum.admin}/metrics` });
    const up = await prom.query('up{job="stratum"}');
    expect(up.map((s) => s.value[1])).toEqual(['1']);
  });

  it('answers per-layer request rates for each of the four layers', async () => {
    const rates = byLayer(await prom.query('sum by (layer) (rate(stratum_layer_duration_seconds_count[30s]))'));
    expect(Object.keys(rates).sort()).toEqual([...LAYERS].sort());
    for (const layer of LAYERS) expect(rates[layer], `${layer} rate`).toBeGreaterThan(0);
    // Every request crosses every layer once: the four rates are one rate.
    for (const layer of LAYERS) expect(rates[layer]).toBeCloseTo(rates.app!, 6);
  });

  it('answers per-layer p99 latencies for each of the four layers', async () => {
    const p99 = byLayer(await prom.query('histogram_quantile(0.99, sum by (layer, le) (rate(stratum_layer_duration_seconds_bucket[30s])))'));
    expect(Object.keys(p99).sort()).toEqual([...LAYERS].sort());
    for (const layer of LAYERS) {
      expect(Number.isFinite(p99[layer]), `${layer} p99 = ${p99[layer]}`).toBe(true);
      expect(p99[layer]).toBeGreaterThan(0);
    }
    // Over 1 % of the requests slept 150 ms in the app, so the app's p99 is in their bucket.
    expect(p99.app).toBeGreaterThanOrEqual(0.1);
    expect(p99.app).toBeGreaterThan(p99.proxy!);
  });

  it('stores the merged process metrics of master and workers under their own names', async () => {
    // Prometheus asks for OpenMetrics; a counter must keep one _total suffix there.
    const cpu = await prom.query('process_cpu_user_seconds_total{job="stratum"}');
    expect(new Set(cpu.map((s) => s.metric.worker))).toEqual(new Set(['master', '1', '2']));
    expect(await prom.query('{__name__=~".+_total_total"}')).toEqual([]);
    const requests = await prom.query('sum(stratum_requests_total{job="stratum"})');
    expect(requests.map((s) => Number(s.value[1]))).toEqual([TOTAL]);
  });

  it('passes promtool check metrics', async () => {
    const scrape = await rawRequest(stratum.admin, { path: '/metrics' });
    expect(scrape.status).toBe(200);
    const run = spawnSync('promtool', ['check', 'metrics'], { input: scrape.body, encoding: 'utf8', timeout: 30_000 });
    expect(run.error).toBeUndefined();
    expect(`${run.stdout}${run.stderr}`.trim(), 'promtool findings').toBe('');
    expect(run.status).toBe(0);
  });

  it('counts every request sent once in each layer\'s histogram', async () => {
    const scrape = await rawRequest(stratum.admin, { path: '/metrics' });
    const counts = layerCounts(scrape.body.toString());
    expect(counts).toEqual(Object.fromEntries(LAYERS.map((l) => [l, TOTAL])));
  });
});
