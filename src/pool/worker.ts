// A worker process (uWSGI's worker): loads the app and serves it.
//   - Worker topology (the default): it accepts client connections on the front listener the
//     master holds and runs the whole front layer itself (src/proxy/), calling the app in this
//     process for pool routes.
//   - Both topologies: it serves uwsgi on the shared socket (for nginx, a remote proxy) and on its
//     own private socket (the master's front keeps connections there in the master topology).
// It keeps harakiri for every request it serves (harakiri.ts), reports its status to the master,
// answers the master's questions (metrics, traces, the live feed), and drains on request.

import { flushCompileCache } from 'node:module';
import net from 'node:net';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Registry, collectDefaultMetrics } from 'prom-client';
import { ClientBadRequest, rawHttpAnswer } from '../errors.ts';
import { guardedListener, loadApp, type LoadedApp, type RequestListener } from '../host/app.ts';
import { HostResponse } from '../host/response.ts';
import { releaseStartupMemory } from '../memory.ts';
import { createLogger, logDrained, type Logger } from '../observability/log.ts';
import { LiveRecorder, liveListener } from '../observability/live.ts';
import { Metrics } from '../observability/metrics.ts';
import { createObserver, type Observer } from '../observability/observer.ts';
import { startTracing, tracedListener } from '../observability/tracing.ts';
import type { FrontProxy } from '../proxy/server.ts';
import { requestMeta, serveUwsgiConnection, uwsgiRequestListener } from '../uwsgi/server.ts';
import { BAD_GATEWAY, HarakiriKeeper, socketFd } from './harakiri.ts';
import {
  reviveConfig, WORKER_ENV, type MasterMessage, type Question, type WorkerMessage, type WorkerSpec,
} from './ipc.ts';
import { listenOnFd } from './sockets.ts';
import { SiblingPoolUpstream } from './sibling-upstream.ts';
import type { Address } from '../config/schema.ts';
import type { PoolResolver } from '../proxy/targets.ts';
import type { Upstream } from '../proxy/upstream.ts';

// Not `import http from 'node:http'`: an ES import of node:http reads every export of the module,
// WebSocket and its events included, which loads Node's bundled undici (~3 MiB resident, npm run
// bench). getBuiltinModule hands over the CommonJS exports and leaves the lazy ones unread.
const http = process.getBuiltinModule('node:http');

const spec = JSON.parse(process.env[WORKER_ENV] ?? 'null') as WorkerSpec | null;
if (!spec || typeof process.send !== 'function') {
  console.error('stratum worker: must be started by the stratum master');
  process.exit(2);
}
let config = reviveConfig(spec.config);
const workerTopology = spec.topology === 'worker' && spec.frontFd >= 0;

function send(msg: WorkerMessage): void {
  if (process.connected) process.send!(msg);
}

let requests = 0;
let inflight = 0;
let exceptions = 0;
let totalMs = 0;
let draining = false;

function logError(msg: string, err: unknown): void {
  console.error(JSON.stringify({ level: 50, msg, pid: process.pid, err: String((err as Error)?.stack ?? err) }));
}
// An exception thrown where no request's code can catch it (a timer, setImmediate, an event
// handler) leaves the app in a state nobody knows: as uWSGI and PM2 do, the worker is replaced.
// The requests it holds without an answer get 500 now (none waits for readTimeout or harakiri);
// it stops taking work, finishes what has begun within the grace period, and the master starts its
// replacement first.
let broken = false;
/** Status can be reported (the event-loop monitor and the front exist). */
let statusReady = false;
process.on('uncaughtException', (err) => {
  exceptions++;
  logError('uncaught exception in worker: replacing it', err);
  if (broken) return;
  broken = true;
  for (const res of holding) {
    if (!res.headersSent) res.abandon(500, 'Internal Server Error\n');
  }
  front?.drain(0);
  // The counts go out now: this worker may be gone before its next report.
  if (statusReady) sendStatus();
  send({ type: 'recycle', reason: 'exception' });
});
process.on('unhandledRejection', (err) => {
  exceptions++;
  logError('unhandled rejection in worker', err);
});

// Tracing starts before the app is imported, so @fastify/otel hooks every Fastify instance.
const tracing = await startTracing(config.tracing, `worker-${spec.id}`);

// Request metrics are recorded here when this worker runs the front; process metrics always. The
// master gathers both at scrape time.
// The `worker` label of this process's metrics: its slot, prefixed by its app's name beside the default app.
const workerLabel = spec.app.name === 'default' ? String(spec.id) : `${spec.app.name}-${spec.id}`;
const metrics = workerTopology && config.metrics.enabled ? new Metrics(workerLabel) : null;
let processRegistry: Registry;
if (metrics) processRegistry = metrics.processRegistry;
else {
  processRegistry = new Registry();
  collectDefaultMetrics({ register: processRegistry });
  processRegistry.setDefaultLabels({ worker: workerLabel });
}

let app: LoadedApp;
try {
  app = await loadApp(spec.app.module, spec.app.export);
} catch (err) {
  send({ type: 'fatal', message: (err as Error).message, code: (err as { code?: string }).code });
  process.exit(3);
}
// The compile cache (enabled by the master, NODE_COMPILE_CACHE) is written now rather than at exit:
// a worker that dies by harakiri or SIGKILL never exits cleanly, and every worker forked after
// this one then finds a TypeScript app already stripped, without loading the stripper (~20 MiB).
flushCompileCache();

const loop = monitorEventLoopDelay({ resolution: 20 });
loop.enable();
const harakiri = new HarakiriKeeper(config.pool.harakiri * 1000, spec.runDir);

/** The app, guarded (a throw answers 500) and counted: what both the front and the uwsgi bridge call. */
const served = countRequests(
  guardedListener(tracing ? tracedListener(tracing.tracer, app.listener, spec.id) : app.listener, (err) => {
    exceptions++;
    logError('app threw', err);
  }),
);

/** The responses this worker owes (for the answers of an uncaught exception). */
const holding = new Set<HostResponse>();

function countRequests(listener: RequestListener): RequestListener {
  return (req, res) => {
    requests++;
    inflight++;
    holding.add(res as HostResponse);
    if (config.pool.maxRequests > 0 && requests === config.pool.maxRequests) spent();
    const started = performance.now();
    res.once('close', () => {
      inflight--;
      holding.delete(res as HostResponse);
      totalMs += performance.now() - started;
      if (draining && inflight === 0 && !front?.busy) void finishDrain();
    });
    listener(req, res);
  };
}

// --- uwsgi: the shared socket (nginx, a remote proxy) and the private one (our master's front) ---

const uwsgiServer = http.createServer({
  ServerResponse: HostResponse as unknown as typeof http.ServerResponse,
  maxHeaderSize: 128 * 1024, // a full 64 KiB vars block re-expressed as a head
  requestTimeout: 0, // harakiri is ours, below
  headersTimeout: 0,
  keepAliveTimeout: 0, // kept connections are the proxy's to close
  connectionsCheckingInterval: 3_600_000,
});
/** Connections on the private socket: the master's own front, trusted to set a route's harakiri. */
const privateBridges = new WeakSet<object>();

uwsgiServer.on(
  'request',
  uwsgiRequestListener((req, res) => {
    const meta = requestMeta(req);
    const limit = meta && meta.harakiriMs >= 0 && privateBridges.has(req.socket) ? meta.harakiriMs : harakiri.defaultMs;
    const bridge = req.socket as unknown as { socket: net.Socket };
    const watch = harakiri.watch(
      limit,
      socketFd(bridge.socket),
      `${req.method} ${req.url} ${String(req.headers['x-request-id'] ?? '')}`,
      () => {
        // Slow, with the loop alive: 504 now (Connection: close), the app's late writes dropped.
        watch.done();
        const out = res as HostResponse;
        out.abandon(504, 'Gateway Timeout\n');
      },
    );
    const stamp = res.stratumHead;
    res.stratumHead = (headers) => {
      watch.headSent();
      stamp?.(headers);
    };
    // harakiri measures the app's time, not the reader's: it stops when the app ends its response.
    res.stratumEnd = () => watch.done();
    res.once('close', () => watch.done());
    served(req, res);
  }),
);
uwsgiServer.on('clientError', (err: NodeJS.ErrnoException, socket: net.Socket) => {
  // The head the bridge re-expressed did not parse: the packet's vars were refused one by one
  // before, so this is a bug or a limit of ours; the client gets a coded 400, not a reset.
  if (socket.writable && !socket.destroyed)
    socket.end(rawHttpAnswer(new ClientBadRequest(`uwsgi bridge: ${err.code ?? err.message}`)));
  else socket.destroy();
});

const uwsgiOptions = {
  maxVarsSize: config.pool.bufferSize,
  readTimeoutMs: config.pool.socketTimeout * 1000,
  onProtocolError(err: { code: string; message: string }, socket: net.Socket) {
    console.error(
      JSON.stringify({
        level: 40,
        msg: 'malformed uwsgi packet',
        code: err.code,
        detail: err.message,
        pid: process.pid,
        remote: socket.remoteAddress ?? 'unix',
      }),
    );
  },
};

function accept(socket: net.Socket, isPrivate: boolean): void {
  if (draining) {
    socket.destroy();
    return;
  }
  const bridge = serveUwsgiConnection(socket, uwsgiServer, uwsgiOptions);
  if (isPrivate) privateBridges.add(bridge);
}

const privateServer = net.createServer((socket) => accept(socket, true));
await new Promise<void>((resolve, reject) => {
  privateServer.once('error', reject);
  // exclusive: bind our own socket instead of asking the cluster master to share one.
  privateServer.listen({ path: spec.privatePath, exclusive: true }, () => resolve());
});
const publicServer = net.createServer((socket) => accept(socket, false));
await listenOnFd(publicServer, spec.publicFd, config.pool.listen);

// --- the front (worker topology) ----------------------------------------------------------------

let front: FrontProxy | null = null;
let frontLog: Logger | null = null;
let observer: Observer | null = null;
const live = workerTopology ? new LiveRecorder() : null;
let appUpstream: { dispatch: { queueLength: number; rejected: number } } | null = null;
let upstreamHealth: () => Array<{ target: string; up: boolean }> = () => [];
/** A config reload's new routes (worker topology): the front swaps its table between two requests. */
let rebuildRoutes: ((cfg: typeof config, pools: WorkerSpec['pools']) => Promise<void>) | null = null;
function samePlace(a: Address, b: Address | undefined): boolean {
  if (!b) return false;
  return a.kind === 'unix' ? b.kind === 'unix' && a.path === b.path : b.kind === 'tcp' && a.port === b.port;
}
if (workerTopology) {
  const [{ FrontProxy }, { buildRoutes, upstreamHealth: healthOf }, { AppUpstream }] = await Promise.all([
    import('../proxy/server.ts'),
    import('../proxy/targets.ts'),
    import('../proxy/upstream-app.ts'),
  ]);
  const log = (frontLog = createLogger(config.log.level));
  const pool = new AppUpstream(served, app.upgrade, {
    label: `worker ${spec.id}`,
    maxInflight: config.pool.maxInflight,
    queueLimit: config.pool.listen,
    queueTimeoutMs: config.proxy.readTimeout * 1000,
    harakiri,
    buffering: config.proxy.buffering,
  });
  appUpstream = pool;
  observer = createObserver(config, log, metrics, tracing?.tracer ?? null);
  observer.listeners.push(liveListener(live!));
  // Its own app's routes are served in this process; another app's go over uwsgi to that app's socket.
  const others = new Map<string, Upstream>();
  const upstreamOf = (cfg: typeof config, pools: WorkerSpec['pools']) => async (): Promise<PoolResolver> => {
    const remote = Object.values(pools).some((a) => !samePlace(a, pools[spec.app.name]));
    const uwsgi = remote ? await import('../proxy/upstream-uwsgi.ts') : null;
    return (name) => {
      const at = pools[name ?? ''];
      if (!at || samePlace(at, pools[spec.app.name])) return pool;
      const key = `${JSON.stringify(at)} ${cfg.proxy.connectTimeout} ${cfg.proxy.readTimeout}`;
      let up = others.get(key);
      if (!up) others.set(key, (up = new SiblingPoolUpstream(new uwsgi!.ExternalUwsgiUpstream([at], cfg))));
      return up;
    };
  };
  const routes = await buildRoutes(config, await upstreamOf(config, spec.pools)());
  upstreamHealth = healthOf(routes);
  rebuildRoutes = async (cfg, pools) => {
    const table = await buildRoutes(cfg, await upstreamOf(cfg, pools)());
    front!.replaceRoutes(table);
    upstreamHealth = healthOf(table);
  };
  front = new FrontProxy(config, routes, log, observer);
  await front.listenOn(spec.frontFd);
  metrics?.attachFront(front);
}

releaseStartupMemory();
statusReady = true;
send({ type: 'ready', pid: process.pid });

function sendStatus(): void {
  const mem = process.memoryUsage();
  send({
    type: 'status',
    requests,
    inflight,
    exceptions,
    rss: mem.rss,
    heapUsed: mem.heapUsed,
    totalMs,
    eventLoopP99Ms: loop.percentile(99) / 1e6,
    harakiriTimeouts: harakiri.timeouts,
    queued: appUpstream?.dispatch.queueLength ?? 0,
    rejected: appUpstream?.dispatch.rejected ?? 0,
    upstreams: upstreamHealth(),
    connections: front?.connections,
  });
}
const statusTimer = setInterval(() => {
  sendStatus();
  loop.reset();
}, spec.statusIntervalMs);
statusTimer.unref();

// --- max-requests, drain ------------------------------------------------------------------------

/**
 * max-requests reached: stop accepting (the master holds the listeners, so new connections wait
 * in their backlog for the other workers), tell kept clients to reconnect, and ask for a
 * replacement; the master drains this worker once it is ready.
 */
function spent(): void {
  front?.drain(1000);
  send({ type: 'recycle', reason: 'max-requests' });
}

let drainTimer: NodeJS.Timeout | null = null;
let finishing = false;
async function finishDrain(): Promise<void> {
  if (finishing) return;
  finishing = true;
  if (drainTimer) clearTimeout(drainTimer);
  await front?.close(0).catch(() => {});
  // What this worker counted stays in the master's sums after it is gone.
  sendStatus(); // the last counts, kept by the master after this worker is gone
  if (metrics) send({ type: 'final', data: await metrics.dump() });
  await app.close().catch(() => {});
  await tracing?.shutdown().catch(() => {});
  harakiri.close();
  if (frontLog) await logDrained(frontLog);
  process.exit(0);
}

async function answer(q: Question): Promise<unknown> {
  switch (q.what) {
    case 'metrics':
      return { process: await processRegistry.getMetricsAsJSON(), requests: metrics ? await metrics.dump() : null };
    case 'traces':
      return observer?.recent.list(q.kind, q.limit) ?? [];
    case 'trace':
      return observer?.recent.get(q.id) ?? null;
    case 'live':
      return live?.take() ?? null;
  }
}

process.on('message', (msg: MasterMessage) => {
  if (msg?.type === 'routes') {
    const next = reviveConfig(msg.config);
    void (rebuildRoutes?.(next, msg.pools) ?? Promise.resolve()).then(
      () => {
        config = next;
      },
      (err) => logError('new routes refused, the old ones stay', err),
    );
    return;
  }
  if (msg?.type === 'ask') {
    const { type: _t, seq, ...q } = msg;
    void answer(q as Question).then(
      (data) => send({ type: 'reply', seq, data }),
      () => send({ type: 'reply', seq, data: null }),
    );
    return;
  }
  if (msg?.type !== 'drain' || draining) return;
  draining = true;
  // Stop taking new connections; requests in flight finish; kept connections close as their
  // clients finish with them (the master sends drain only once it has nothing in flight here).
  privateServer.close();
  publicServer.close();
  uwsgiServer.closeIdleConnections();
  front?.drain(msg.idleMs);
  if (inflight === 0 && !front?.busy) return void finishDrain();
  drainTimer = setTimeout(() => void finishDrain(), msg.graceMs);
  front?.onIdle(() => {
    if (inflight === 0) void finishDrain();
  });
});

// An app that ends the process in the middle of a request (process.exit, as a Flask app calling
// sys.exit under uWSGI): its clients get what nginx would answer them, a 502, instead of a reset.
process.on('exit', () => {
  if (!finishing) harakiri.answerAll(BAD_GATEWAY);
});

process.on('disconnect', () => {
  // The master is gone: nobody supervises us any more.
  process.exit(0);
});
// SIGTERM/SIGINT from a terminal's process group are the master's to handle.
process.on('SIGINT', () => {});
process.on('SIGTERM', () => {});
