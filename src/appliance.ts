// Assembles the appliance from its layers for each mode:
//   serve — front proxy + worker pool + admin (the whole nginx → uWSGI → app stack)
//   pool  — the worker pool alone on its uwsgi socket (for an external nginx or a remote proxy)
//   proxy — the front proxy alone, routing to pools elsewhere
// and owns the process's signals: SIGTERM/SIGINT drain and exit 0, SIGHUP reloads the workers.

import type { StratumConfig } from './config/schema.ts';
import { ConfigInvalid } from './errors.ts';
import { AdminServer, sendJson } from './admin/server.ts';
import { dashboardRoutes } from './admin/dashboard.ts';
import { createLogger } from './observability/log.ts';
import { Metrics } from './observability/metrics.ts';
import { createObserver } from './observability/observer.ts';
import { LiveFeed } from './observability/live.ts';
import { releaseStartupMemory } from './memory.ts';
import { startTracing } from './observability/tracing.ts';
import type { Supervisor } from './pool/supervisor.ts';
import { RouteTable, type RouteEntry } from './proxy/routes.ts';
import type { FrontProxy } from './proxy/server.ts';
import type { Upstream } from './proxy/upstream.ts';
import type { ExternalUwsgiUpstream } from './proxy/upstream-uwsgi.ts';

type Mode = 'serve' | 'pool' | 'proxy';

/**
 * The route table, loading only the upstream kinds the routes name: a process keeps every module
 * it ever imported, and the HTTP upstream's (with undici) alone is ~7 MiB resident in the master
 * (npm run bench, idle RSS) — a cost the default config (one pool route) has no use for.
 */
export async function buildRoutes(config: StratumConfig, pool: Supervisor | null): Promise<RouteTable<Upstream>> {
  const kinds = new Set(config.routes.map((route) => route.targets[0]!.kind));
  const uwsgi = kinds.has('pool') || kinds.has('uwsgi') ? await import('./proxy/upstream-uwsgi.ts') : null;
  const http = kinds.has('http') ? await import('./proxy/upstream-http.ts') : null;
  const files = kinds.has('static') ? await import('./proxy/upstream-static.ts') : null;
  const poolUpstream = pool && uwsgi ? new uwsgi.PoolUpstream(pool, config) : null;
  const entries: RouteEntry<Upstream>[] = config.routes.map((route, index) => {
    const t = route.targets[0]!;
    let upstream: Upstream;
    switch (t.kind) {
      case 'pool':
        if (!poolUpstream) throw new ConfigInvalid(`routes.${index}.target`, '"pool" needs stratum serve');
        upstream = poolUpstream;
        break;
      case 'uwsgi':
        upstream = new uwsgi!.ExternalUwsgiUpstream(route.targets.map((x) => (x as { address: typeof t.address }).address), config);
        break;
      case 'http':
        upstream = new http!.HttpUpstream(t.url, config);
        break;
      case 'static':
        upstream = new files!.StaticUpstream(t.root);
        break;
    }
    return { route, index, upstream, label: `${route.host ?? ''}${route.path}` };
  });
  return new RouteTable(entries);
}

async function run(config: StratumConfig, mode: Mode): Promise<void> {
  const log = createLogger(config.log.level);
  const tracing = await startTracing(config.tracing, 'master');
  const metrics = config.metrics.enabled ? new Metrics() : null;
  const observer = createObserver(config, log, metrics, tracing?.tracer ?? null);
  const pool = mode === 'proxy' ? null : new (await import('./pool/supervisor.ts')).Supervisor(config, log);
  const admin = new AdminServer(config);
  let ready = false;
  let proxy: FrontProxy | null = null;
  let live: LiveFeed | null = null;

  // Signals are ours from the first moment: a SIGTERM during start-up stops cleanly too.
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    ready = false;
    log.info({ signal }, 'draining');
    const grace = config.pool.gracefulTimeout * 1000;
    live?.close();
    await proxy?.close(grace);
    await pool?.stop();
    admin.close();
    await tracing?.shutdown().catch(() => {});
    log.info('stopped');
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGHUP', () => {
    if (pool) void pool.reload();
  });

  admin.add({ method: 'GET', path: '/livez', public: true, handler: (_q, res) => sendJson(res, 200, { status: 'ok' }) });
  admin.add({
    method: 'GET', path: '/readyz', public: true,
    handler: (_q, res) => {
      const serving = pool ? pool.workers.some((w) => w.state === 'idle' || w.state === 'busy') : true;
      sendJson(res, ready && serving ? 200 : 503, { status: ready && serving ? 'ready' : 'not ready' });
    },
  });
  admin.add({
    method: 'GET', path: '/metrics',
    handler: async (req, res) => {
      if (!metrics) return sendJson(res, 404, { error: 'metrics are off (metrics.enabled: false)' });
      const { contentType, body } = await metrics.render(req.headers.accept);
      res.writeHead(200, { 'content-type': contentType, 'content-length': Buffer.byteLength(body) });
      res.end(body);
    },
  });
  let upstreamHealth: () => Array<{ target: string; up: boolean }> = () => [];
  live = new LiveFeed({ pool: () => pool?.stats() ?? null, health: () => upstreamHealth() });
  observer.listeners.push((ctx, layers, totalMs) => {
    const t = ctx.timings;
    live.record({
      route: ctx.routeLabel,
      status: ctx.res.statusCode,
      totalMs,
      layers,
      pool: ctx.workerPid > 0,
      upstream: t.dispatchAt && ctx.upstreamLabel ? { target: ctx.upstreamKind === 'pool' ? 'pool' : ctx.upstreamLabel, kind: ctx.upstreamKind, ms: (t.endAt || performance.now()) - t.dispatchAt } : null,
    });
  });
  for (const route of dashboardRoutes()) admin.add(route);
  admin.add({ method: 'GET', path: '/live', handler: (req, res) => live.stream(req, res) });
  admin.add({ method: 'GET', path: '/live/history', handler: (_q, res) => sendJson(res, 200, { ticks: live.history }) });
  admin.add({
    method: 'GET', path: '/traces',
    handler: (_q, res, url) => {
      const kind = url.searchParams.get('kind');
      const limit = Math.min(Number(url.searchParams.get('limit')) || 50, 200);
      sendJson(res, 200, { traces: observer.recent.list(kind === 'slow' || kind === 'failed' ? kind : 'latest', limit) });
    },
  });
  admin.add({
    method: 'GET', path: '/traces/', prefix: true,
    handler: (_q, res, url) => {
      const t = observer.recent.get(decodeURIComponent(url.pathname.slice('/traces/'.length)));
      if (t) sendJson(res, 200, t);
      else sendJson(res, 404, { error: 'no such trace in the recent memory' });
    },
  });
  if (pool) {
    metrics?.attachPool(pool);
    metrics?.setWorkerSource(() => pool.collectWorkerMetrics() as never);
    admin.add({ method: 'GET', path: '/stats', handler: (_q, res) => sendJson(res, 200, pool.stats()) });
    admin.add({
      method: 'POST', path: '/reload',
      handler: (_q, res) => {
        void pool.reload();
        sendJson(res, 202, { status: 'reloading' });
      },
    });
  }

  if (pool) {
    pool.on('worker-fatal', (_rec, msg: { message: string; code?: string }) => {
      if (!ready) {
        log.fatal({ code: msg.code }, msg.message);
      }
    });
    await pool.start().catch(async (err: Error & { code?: string }) => {
      await pool.stop().catch(() => {});
      throw err;
    });
  }
  let frontUrl: string | undefined;
  let adminUrl: string;
  try {
    if (mode !== 'pool') {
      const routes = await buildRoutes(config, pool);
      const external = routes.entries.map((e) => e.upstream).filter((u): u is ExternalUwsgiUpstream => u.kind === 'uwsgi');
      upstreamHealth = () => external.flatMap((u) => u.health());
      if (external.length > 0) metrics?.attachUpstreamHealth(upstreamHealth);
      const { FrontProxy } = await import('./proxy/server.ts');
      proxy = new FrontProxy(config, routes, log, observer);
      frontUrl = await proxy.listen();
    }
    adminUrl = await admin.listen();
  } catch (err) {
    // A listener that cannot bind: leave nothing running behind the error.
    await proxy?.close(0);
    await pool?.stop();
    admin.close();
    throw err;
  }
  releaseStartupMemory();
  ready = true;
  log.info({
    front: frontUrl,
    admin: adminUrl,
    pool: pool?.publicLabel ?? undefined,
    workers: pool?.workers.map((w) => w.pid),
  }, 'stratum ready');
  log.flush(); // the line operators and scripts wait for goes out now, not with the next batch

}

export const runServe = (config: StratumConfig) => run(config, 'serve');
export const runPool = (config: StratumConfig) => run(config, 'pool');
export const runProxy = (config: StratumConfig) => run(config, 'proxy');
