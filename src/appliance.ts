// Assembles the appliance from its layers for each mode:
//   serve — front proxy + worker pool + admin (the whole nginx → uWSGI → app stack), in one of
//           two topologies: the front in every worker (`worker`, the default: one hop) or in the
//           master (`master`: the front isolated from app code, uwsgi to the workers)
//   pool  — the worker pool alone on its uwsgi socket (for an external nginx or a remote proxy)
//   proxy — the front proxy alone, routing to pools elsewhere
// and owns the process's signals: SIGTERM/SIGINT drain and exit 0, SIGHUP reloads the workers.
// Whichever process runs the front, the admin listener stays in the master and shows one view:
// what the workers record (metrics, recent traces, the live feed) is gathered when it is read.

import type { StratumConfig } from './config/schema.ts';
import { parseAddress } from './config/schema.ts';
import { AdminServer, sendJson } from './admin/server.ts';
import { dashboardRoutes } from './admin/dashboard.ts';
import { createLogger, logDrained } from './observability/log.ts';
import { Metrics, type RequestMetricsDump, type WorkerMetrics } from './observability/metrics.ts';
import { createObserver, type Observer } from './observability/observer.ts';
import { LiveFeed, liveListener, type LivePart } from './observability/live.ts';
import type { RecentTrace } from './observability/recent.ts';
import { releaseStartupMemory } from './memory.ts';
import { startTracing } from './observability/tracing.ts';
import { bindSocket, boundPort, type BoundSocket } from './pool/sockets.ts';
import type { FrontProxy } from './proxy/server.ts';
import { sumConnections } from './proxy/conn-cap.ts';
import { raiseFdLimit } from './pool/rlimit.ts';

type Mode = 'serve' | 'pool' | 'proxy';

/** How the appliance re-reads its config (SIGHUP, POST /reload): the CLI's loader, with the same flags and env. */
export interface RunOptions {
  reload?: () => Promise<StratumConfig>;
}

async function run(config: StratumConfig, mode: Mode, opts: RunOptions = {}): Promise<void> {
  const log = createLogger(config.log.level);
  raiseFdLimit(log); // before any worker is forked: they inherit it
  const tracing = await startTracing(config.tracing, 'master');
  const metrics = config.metrics.enabled ? new Metrics() : null;
  const frontInWorkers = mode === 'serve' && config.topology === 'worker';
  const frontInMaster = mode === 'proxy' || (mode === 'serve' && !frontInWorkers);
  const observer: Observer | null = frontInMaster
    ? createObserver(config, log, metrics, tracing?.tracer ?? null)
    : null;

  // The worker topology's front listener: bound here, held for the master's whole life, so a
  // respawn or a reload never closes it (no ECONNREFUSED at any moment); every worker accepts on it.
  let frontHandle: BoundSocket | null = null;
  let frontUrl: string | undefined;
  if (frontInWorkers) {
    const a = parseAddress(config.listen, 'listen');
    frontHandle = bindSocket(a);
    frontUrl =
      a.kind === 'unix'
        ? `unix:${a.path}`
        : `${config.tls ? 'https' : 'http'}://${a.host.includes(':') ? `[${a.host}]` : a.host}:` +
          `${boundPort(frontHandle, a)}`;
  }
  // One pool per http app, one supervised process group per process app (src/pool/apps.ts).
  const pool = mode === 'proxy' ? null : new (await import('./pool/apps.ts')).AppSet(config, log, frontHandle);
  // The master's copy of the certificates: the expiry metric, SIGHUP's reload, and (worker topology)
  // the last good copy the workers fall back on (src/proxy/tls.ts).
  const certs =
    config.tls && mode !== 'pool'
      ? new (await import('./proxy/tls.ts')).TlsStore(config.tls, log, { snapshot: frontInWorkers })
      : null;
  // Registered without TLS too (no series then): the alert rule's metric always exists.
  metrics?.attachTls(() => certs?.expiries() ?? []);
  if (certs && frontInWorkers) certs.watch();
  let redirect: { url: string; close(): void } | null = null; // tls.redirect, once the front listens
  const admin = new AdminServer(config, log);
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
    frontHandle?.close();
    certs?.close();
    redirect?.close();
    admin.close();
    await tracing?.shutdown().catch(() => {}); // bounded and logged by tracing.ts
    log.info('stopped');
    await logDrained(log);
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGHUP', () => {
    certs?.reload('SIGHUP');
    if (pool) void reloadConfig('SIGHUP', false);
  });

  // Config reload: the file is read and validated again first; a bad one changes nothing (the field
  // is logged and POST /reload answers it). Then the apps are reconciled (pool/apps.ts), and the
  // front in the master takes the new routes here.
  let onRoutes: ((next: StratumConfig) => Promise<void>) | undefined;
  const reloadConfig = async (
    source: string,
    wait: boolean,
  ): Promise<{ status: number; body: Record<string, unknown> }> => {
    const refuse = (err: unknown) => {
      const e = err as Error & { code?: string; path?: string };
      const fields = { source, code: e.code, path: e.path };
      log.error(fields, `config reload refused, the running config stays: ${e.message}`);
      const status = e.code === 'STRATUM_ERR_CONFIG' ? 400 : 500;
      return { status, body: { error: { code: e.code ?? 'STRATUM_ERR_RELOAD', path: e.path, message: e.message } } };
    };
    // SIGHUP reloads the certificates itself (above); a POST does it here, as part of the same reload.
    if (source !== 'SIGHUP') certs?.reload(source);
    let next: StratumConfig;
    try {
      next = opts.reload ? await opts.reload() : config;
      (await import('./pool/apps.ts')).resolveApps(next); // env files readable, before anything changes
    } catch (err) {
      return refuse(err);
    }
    const applied = pool!.reload(next, onRoutes).then((outcome) => {
      if (outcome.status === 'failed') {
        log.error({ source, ...outcome }, 'config reload failed: an app did not start, the routes stay as they were');
        return outcome;
      }
      config = next;
      log.info({ source, ...outcome }, 'config reloaded');
      return outcome;
    });
    if (!wait) {
      applied.catch((err: unknown) => refuse(err));
      return { status: 202, body: { status: 'reloading' } };
    }
    try {
      const outcome = await applied;
      if (outcome.status === 'failed') {
        const why = `apps that did not start: ${outcome.failed.join(', ')} (see the log)`;
        return { status: 500, body: { ...outcome, error: { code: 'STRATUM_ERR_RELOAD', message: why } } };
      }
      return { status: 200, body: { ...outcome } };
    } catch (err) {
      return refuse(err);
    }
  };

  admin.add({
    method: 'GET',
    path: '/livez',
    public: true,
    handler: (_q, res) => sendJson(res, 200, { status: 'ok' }),
  });
  admin.add({
    method: 'GET',
    path: '/readyz',
    public: true,
    handler: (_q, res) => {
      const serving = pool ? pool.workers.some((w) => w.state === 'idle' || w.state === 'busy') : true;
      sendJson(res, ready && serving ? 200 : 503, { status: ready && serving ? 'ready' : 'not ready' });
    },
  });
  admin.add({
    method: 'GET',
    path: '/metrics',
    handler: async (req, res) => {
      if (!metrics) return sendJson(res, 404, { error: 'metrics are off (metrics.enabled: false)' });
      const { contentType, body } = await metrics.render(req.headers.accept);
      res.writeHead(200, { 'content-type': contentType, 'content-length': Buffer.byteLength(body) });
      res.end(body);
    },
  });
  let upstreamHealth: () => Array<{ target: string; up: boolean; active?: number; fails?: number }> = () => [];
  if (frontInWorkers && pool) {
    upstreamHealth = () => pool.upstreamHealth();
    const groups = config.routes.some((r) => r.targets[0]!.kind === 'uwsgi' || r.targets[0]!.kind === 'http');
    if (groups) metrics?.attachUpstreamHealth(upstreamHealth);
  }
  const parts =
    frontInWorkers && pool ? async () => (await pool.ask({ what: 'live' })).map((r) => r.data as LivePart) : undefined;
  const connections = () =>
    proxy ? [proxy.connections] : sumConnections(pool?.workers.map((w) => w.status.connections) ?? []);
  live = new LiveFeed({ pool: () => pool?.stats() ?? null, health: () => upstreamHealth(), parts, connections });
  if (observer) observer.listeners.push(liveListener(live.recorder));
  for (const route of dashboardRoutes()) admin.add(route);
  admin.add({ method: 'GET', path: '/live', handler: (req, res) => live.stream(req, res) });
  admin.add({
    method: 'GET',
    path: '/live/history',
    handler: (_q, res) => sendJson(res, 200, { ticks: live.history }),
  });
  admin.add({
    method: 'GET',
    path: '/traces',
    handler: async (_q, res, url) => {
      const k = url.searchParams.get('kind');
      const kind = k === 'slow' || k === 'failed' ? k : 'latest';
      const limit = Math.min(Number(url.searchParams.get('limit')) || 50, 200);
      let traces = observer?.recent.list(kind, limit) ?? [];
      if (frontInWorkers && pool)
        traces = mergeTraces(
          (await pool.ask({ what: 'traces', kind, limit })).flatMap((r) => r.data as RecentTrace[]),
          kind,
          limit,
        );
      sendJson(res, 200, { traces });
    },
  });
  admin.add({
    method: 'GET',
    path: '/traces/',
    prefix: true,
    handler: async (_q, res, url) => {
      const id = decodeURIComponent(url.pathname.slice('/traces/'.length));
      let t: RecentTrace | undefined = observer?.recent.get(id);
      if (!t && frontInWorkers && pool)
        t =
          (await pool.ask({ what: 'trace', id })).map((r) => r.data as RecentTrace | null).find((x) => x) ?? undefined;
      if (t) sendJson(res, 200, t);
      else sendJson(res, 404, { error: 'no such trace in the recent memory' });
    },
  });
  if (pool) {
    // `apps:` labels the pool series by app; a lone app.module keeps them as they were (no label).
    const whole = {
      get workers() {
        return pool.workers;
      },
      get queueLength() {
        return pool.queueLength;
      },
      get counters() {
        return pool.counters;
      },
    };
    metrics?.attachPool(config.apps.length > 0 ? { views: () => pool.views() } : whole);
    metrics?.attachProcesses(() =>
      pool.processes.map((p) => ({ app: p.name, restarts: p.restarts, processes: p.stats().processes })),
    );
    if (metrics) {
      // The last request metrics each worker reported, so that a worker killed before it could
      // send its final count still leaves what it had counted in the sums.
      const last = new Map<number, RequestMetricsDump>();
      pool.on('worker-final', (rec: { pid: number }, dump: RequestMetricsDump) => {
        last.delete(rec.pid);
        metrics.retire(dump);
      });
      pool.on('worker-exit', (rec: { pid: number }) => {
        const dump = last.get(rec.pid);
        last.delete(rec.pid);
        if (dump) metrics.retire(dump);
      });
      metrics.setWorkerSource(async () => {
        const replies = await pool.ask({ what: 'metrics' });
        for (const r of replies) {
          const m = r.data as WorkerMetrics;
          if (m.requests) last.set(r.pid, m.requests);
        }
        return replies.map((r) => r.data as WorkerMetrics);
      }, frontInWorkers);
    }
    admin.add({
      method: 'GET',
      path: '/stats',
      handler: (_q, res) => sendJson(res, 200, { ...pool.stats(), upstreams: upstreamHealth() }),
    });
    admin.add({
      method: 'POST',
      path: '/reload',
      // 202 once the new config is valid (the apps roll on); ?wait=1: 200 with the outcome once applied.
      handler: async (_q, res, url) => {
        const r = await reloadConfig('POST /reload', url.searchParams.get('wait') === '1');
        sendJson(res, r.status, r.body);
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
      frontHandle?.close();
      throw err;
    });
  }
  let adminUrl: string;
  try {
    if (frontInMaster) {
      const [{ buildRoutes, upstreamHealth: health }, { PoolUpstream }, { FrontProxy }] = await Promise.all([
        import('./proxy/targets.ts'),
        import('./proxy/upstream-pool.ts'),
        import('./proxy/server.ts'),
      ]);
      // One PoolUpstream per app's pool, made once: `pool:NAME` (and `pool`, the default app) reach it.
      const upstreams = new WeakMap<object, InstanceType<typeof PoolUpstream>>();
      const resolver = (c: StratumConfig) => (name: string | undefined) => {
        const sup = pool?.supervisor(name);
        if (!sup) return null;
        let up = upstreams.get(sup);
        if (!up) upstreams.set(sup, (up = new PoolUpstream(sup, c.proxy.readTimeout * 1000)));
        return up;
      };
      const routes = await buildRoutes(config, pool ? resolver(config) : null);
      onRoutes = async (next) => {
        const table = await buildRoutes(next, pool ? resolver(next) : null);
        proxy?.replaceRoutes(table);
        upstreamHealth = health(table);
      };
      upstreamHealth = health(routes);
      const groups = routes.entries.some((e) => e.upstream.kind === 'uwsgi' || e.upstream.kind === 'http');
      if (groups) metrics?.attachUpstreamHealth(upstreamHealth);
      proxy = new FrontProxy(config, routes, log, observer!, { tls: certs ?? undefined });
      metrics?.attachFront(proxy);
      frontUrl = await proxy.listen();
    }
    adminUrl = await admin.listen();
    if (config.tls?.redirect && frontUrl?.startsWith('https://'))
      redirect = await (await import('./proxy/tls.ts')).startRedirect(
        config.tls.redirect,
        Number(new URL(frontUrl).port),
        log,
      );
  } catch (err) {
    // A listener that cannot bind: leave nothing running behind the error.
    redirect?.close();
    await proxy?.close(0);
    await pool?.stop();
    frontHandle?.close();
    admin.close();
    throw err;
  }
  releaseStartupMemory();
  ready = true;
  log.info(
    {
      front: frontUrl,
      redirect: redirect?.url,
      topology: mode === 'serve' ? config.topology : undefined,
      admin: adminUrl,
      pool: pool?.publicLabel ?? undefined,
      workers: pool?.workers.map((w) => w.pid),
      apps:
        pool && config.apps.length > 0
          ? Object.fromEntries(
              pool.stats().apps.map((a) => [a.name, (a.workers ?? a.processes ?? []).map((w) => w.pid)]),
            )
          : undefined,
    },
    'stratum ready',
  );
  log.flush(); // the line operators and scripts wait for goes out now, not with the next batch
}

/** The workers' recent traces as one list, ordered as each list is (newest, slowest, newest failed). */
function mergeTraces(all: RecentTrace[], kind: 'latest' | 'slow' | 'failed', limit: number): RecentTrace[] {
  return all.sort(kind === 'slow' ? (a, b) => b.durationMs - a.durationMs : (a, b) => b.at - a.at).slice(0, limit);
}

export const runServe = (config: StratumConfig, opts?: RunOptions) => run(config, 'serve', opts);
export const runPool = (config: StratumConfig, opts?: RunOptions) => run(config, 'pool', opts);
export const runProxy = (config: StratumConfig) => run(config, 'proxy');
