// A worker process (uWSGI's worker): loads the app, serves uwsgi on the shared socket (for
// foreign clients such as nginx) and on its own private socket (for our proxy's kept
// connections), reports status to the master, and drains on request.

import { flushCompileCache } from 'node:module';
import net from 'node:net';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { loadApp, type LoadedApp } from '../host/app.ts';
import { requestMeta, serveUwsgiConnection, uwsgiRequestListener, UwsgiServerResponse } from '../uwsgi/server.ts';
import { collectDefaultMetrics, Registry } from 'prom-client';
import { startTracing, tracedListener } from '../observability/tracing.ts';
import { releaseStartupMemory } from '../memory.ts';
import { WORKER_ENV, type MasterMessage, type WorkerMessage, type WorkerSpec } from './ipc.ts';

// Not `import http from 'node:http'`: an ES import of node:http reads every export of the module,
// WebSocket and its events included, which loads Node's bundled undici (~3 MiB resident, npm run
// bench). getBuiltinModule hands over the CommonJS exports and leaves the lazy ones unread.
const http = process.getBuiltinModule('node:http');

const spec = JSON.parse(process.env[WORKER_ENV] ?? 'null') as WorkerSpec | null;
if (!spec || typeof process.send !== 'function') {
  console.error('stratum worker: must be started by the stratum master');
  process.exit(2);
}

function send(msg: WorkerMessage): void {
  if (process.connected) process.send!(msg);
}

let requests = 0;
let inflight = 0;
let exceptions = 0;
let totalMs = 0;
let draining = false;
let foreignSeq = 0;

process.on('uncaughtException', (err) => {
  // An app bug must not take the worker's other requests down silently: count and report it;
  // the master replaces us if we exit.
  exceptions++;
  console.error(JSON.stringify({ level: 50, msg: 'uncaught exception in worker', pid: process.pid, err: String(err?.stack ?? err) }));
});
process.on('unhandledRejection', (err) => {
  exceptions++;
  console.error(JSON.stringify({ level: 50, msg: 'unhandled rejection in worker', pid: process.pid, err: String((err as Error)?.stack ?? err) }));
});

// Tracing starts before the app is imported, so @fastify/otel hooks every Fastify instance.
const tracing = await startTracing(spec.tracing, `worker-${spec.id}`);

// This worker's Node process metrics, gathered by the master at scrape time.
const processRegistry = new Registry();
collectDefaultMetrics({ register: processRegistry });
processRegistry.setDefaultLabels({ worker: String(spec.id) });

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

const server = http.createServer({
  ServerResponse: UwsgiServerResponse as unknown as typeof http.ServerResponse,
  maxHeaderSize: 128 * 1024, // a full 64 KiB vars block re-expressed as a head
  requestTimeout: 0, // harakiri is the master's job
  headersTimeout: 0,
  keepAliveTimeout: 0, // kept connections are the proxy's to close
  connectionsCheckingInterval: 3_600_000,
});

const appListener = tracing ? tracedListener(tracing.tracer, app.listener, spec.id) : app.listener;
server.on(
  'request',
  uwsgiRequestListener((req, res) => {
    requests++;
    inflight++;
    const meta = requestMeta(req);
    const started = performance.now();
    let rid = 0;
    if (meta?.foreign || publicBridges.has(req.socket)) {
      rid = ++foreignSeq;
      send({ type: 'foreign-start', rid, method: req.method ?? 'GET', path: req.url ?? '/', requestId: String(req.headers['x-request-id'] ?? ''), at: Date.now() });
    }
    res.once('close', () => {
      inflight--;
      totalMs += performance.now() - started;
      if (rid) send({ type: 'foreign-end', rid });
      if (spec.maxRequests > 0 && requests >= spec.maxRequests && !draining) send({ type: 'recycle', reason: 'max-requests' });
      if (draining && inflight === 0) finishDrain();
    });
    // A listener that throws, or an async one whose promise rejects, answers 500 (or cuts a
    // response already begun) and is counted — it never takes the worker's other requests down.
    const failed = (err: unknown) => {
      exceptions++;
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' }).end('Internal Server Error\n');
      else res.destroy();
      console.error(JSON.stringify({ level: 50, msg: 'app threw', pid: process.pid, err: String((err as Error)?.stack ?? err) }));
    };
    try {
      const result: unknown = (appListener as (q: typeof req, r: typeof res) => unknown)(req, res);
      if (result && typeof (result as Promise<unknown>).then === 'function') (result as Promise<unknown>).then(undefined, failed);
    } catch (err) {
      failed(err);
    }
  }),
);
server.on('clientError', (err: NodeJS.ErrnoException, socket: net.Socket) => {
  if (socket.writable && !socket.destroyed) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
  else socket.destroy();
  void err;
});

const uwsgiOptions = {
  maxVarsSize: spec.maxVarsSize,
  readTimeoutMs: spec.socketTimeoutMs,
  onProtocolError(err: { code: string; message: string }, socket: net.Socket) {
    console.error(JSON.stringify({ level: 40, msg: 'malformed uwsgi packet', code: err.code, detail: err.message, pid: process.pid, remote: socket.remoteAddress ?? 'unix' }));
  },
};

// Requests on the shared (public) socket come from nginx or a remote `stratum proxy`: the master
// cannot see them, so they are announced for harakiri. Our own proxy uses the private socket.
const publicBridges = new WeakSet<object>();

function accept(socket: net.Socket, isPublic: boolean): void {
  if (draining) {
    socket.destroy();
    return;
  }
  const bridge = serveUwsgiConnection(socket, server, uwsgiOptions);
  if (isPublic) publicBridges.add(bridge);
}

const privateServer = net.createServer((socket) => accept(socket, false));
await new Promise<void>((resolve, reject) => {
  privateServer.once('error', reject);
  // exclusive: bind our own socket instead of asking the cluster master to share one.
  privateServer.listen({ path: spec.privatePath, exclusive: true }, () => resolve());
});

const publicServer = net.createServer((socket) => accept(socket, true));
await new Promise<void>((resolve, reject) => {
  publicServer.once('error', reject);
  publicServer.once('listening', () => resolve());
  // The master bound the socket and holds it (so it outlives any worker, as uWSGI's does);
  // every worker listens and accepts on its own copy of the descriptor — pre-fork, no hand-off.
  // listen({ fd }) would route through the cluster primary; _listen2 (what the cluster module
  // itself calls for an exclusive listen) opens the descriptor here, for TCP and Unix alike.
  (publicServer as unknown as { _listen2(a: null, p: null, t: null, backlog: number, fd: number): void })._listen2(null, null, null, 1024, spec.publicFd);
});

releaseStartupMemory();
send({ type: 'ready', pid: process.pid });

const statusTimer = setInterval(() => {
  const mem = process.memoryUsage();
  send({ type: 'status', requests, inflight, exceptions, rss: mem.rss, heapUsed: mem.heapUsed, totalMs, eventLoopP99Ms: loop.percentile(99) / 1e6 });
  loop.reset();
}, spec.statusIntervalMs);
statusTimer.unref();

let drainTimer: NodeJS.Timeout | null = null;
function finishDrain(): void {
  if (drainTimer) clearTimeout(drainTimer);
  void app.close().catch(() => {}).then(() => tracing?.shutdown()).catch(() => {}).finally(() => process.exit(0));
}

process.on('message', (msg: MasterMessage) => {
  if (msg?.type === 'metrics') {
    void processRegistry.getMetricsAsJSON().then((metrics) => send({ type: 'metrics', seq: msg.seq, metrics }));
    return;
  }
  if (msg?.type !== 'drain' || draining) return;
  draining = true;
  // Stop taking new connections; requests in flight finish; idle kept connections close (the
  // master sends drain only once it has nothing in flight here, so none is in transit).
  privateServer.close();
  publicServer.close();
  server.closeIdleConnections();
  if (inflight === 0) return finishDrain();
  drainTimer = setTimeout(() => process.exit(0), msg.graceMs);
});

process.on('disconnect', () => {
  // The master is gone: nobody supervises us any more.
  process.exit(0);
});
// SIGTERM/SIGINT from a terminal's process group are the master's to handle.
process.on('SIGINT', () => {});
process.on('SIGTERM', () => {});
