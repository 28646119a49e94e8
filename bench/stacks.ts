// The stacks the benchmark compares. Every one binds 127.0.0.1 (or sockets in its temp dir),
// runs 2 app processes, and answers GET / with the same bytes: {"hello":"world"},
// Content-Type application/json; charset=utf-8.
import { spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseDocument } from 'yaml';
import { canConnect, childrenOf, freePort, startChild, waitForLine, waitUntil, describeChild, type Child } from './procs.ts';

export const REPO = fileURLToPath(new URL('../', import.meta.url));
const APPS = fileURLToPath(new URL('./apps/', import.meta.url));
// The Stratum rows run what production runs: the compiled build (bin/stratum-dist.js, as `npm
// start` and the image do), built from the current sources before the first row starts.
const STRATUM_BIN = join(REPO, 'bin/stratum-dist.js');
const STRATUM_APP = join(APPS, 'fastify-hello.ts');
const DEFAULT_CONFIG = join(REPO, 'config/stratum.yaml');

let stratumBuilt = false;
/**
 * `npm run build:server`, once per benchmark; then the app's entry in Node's compile cache, as a
 * host that has started Stratum before has it (a worker writes it once it has loaded the app):
 * every row measures the steady state, where no worker loads the TypeScript stripper (~20 MiB).
 */
function buildStratum(): void {
  if (stratumBuilt) return;
  const run = (what: string, command: string, args: string[]) => {
    const r = spawnSync(command, args, { cwd: REPO, encoding: 'utf8', env: nodeEnv(), timeout: 120_000 });
    if (r.status !== 0) throw new Error(`${what} failed (${r.error?.message ?? `exit ${r.status}`})\n${r.stdout}${r.stderr}`);
  };
  run('npm run build:server', 'npm', ['run', '--silent', 'build:server']);
  run('warming the compile cache', process.execPath, ['--input-type=module', '-e',
    `import { enableCompileCache, flushCompileCache } from 'node:module'; enableCompileCache(); await import(${JSON.stringify(STRATUM_APP)}); flushCompileCache(); process.exit(0);`]);
  stratumBuilt = true;
}
const UWSGI_PARAMS = '/etc/nginx/uwsgi_params';
const UWSGI_PLUGIN_DIR = '/usr/lib/uwsgi/plugins';

export const APP_PROCESSES = 2;
export const EXPECTED_BODY = '{"hello":"world"}';

export interface StackContext {
  /** A temp dir of this stack's own (configs, sockets, logs). */
  dir: string;
  /** --cpu-prof DIR: profile the Stratum master and workers into it. */
  cpuProfDir?: string;
}

export interface RunningStack {
  url: string;
  /** Roots of the serving process trees (their descendants count too). */
  roots(): number[];
  /** Named process roles (Stratum: master and workers) for per-process RSS. */
  roles?(): Record<string, number[]>;
  /** Helper processes that are not part of the stack (the OTLP sink): not counted anywhere. */
  auxiliary?(): number[];
  /** Counters diffed over the measured run (the OTLP sink's spans). */
  counters?(): Promise<Record<string, number>>;
  stop(): Promise<void>;
}

export interface StackDef {
  name: string;
  title: string;
  notes: string;
  stratum?: boolean;
  start(ctx: StackContext): Promise<RunningStack>;
}

function onPath(binary: string): boolean {
  for (const dir of (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin'])) {
    if (dir && existsSync(join(dir, binary))) return true;
  }
  return false;
}

function requireFile(path: string, why: string): void {
  try {
    accessSync(path, constants.R_OK);
  } catch {
    throw new Error(`${path} is missing (${why})`);
  }
}

function requirePeers(...binaries: string[]): void {
  for (const b of binaries) {
    if (!onPath(b)) throw new Error(`${b} is not installed (apt-get install nginx-light uwsgi-core uwsgi-plugin-python3 python3-flask wrk)`);
  }
  if (binaries.includes('nginx')) requireFile(UWSGI_PARAMS, 'nginx-light / nginx-common');
  if (binaries.includes('uwsgi')) requireFile(join(UWSGI_PLUGIN_DIR, 'python3_plugin.so'), 'uwsgi-plugin-python3');
}

function nodeEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  // Nothing from the caller's environment may change what a row measures.
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('OTEL_') || k.startsWith('STRATUM_') || k === 'NODE_OPTIONS') continue;
    env[k] = v;
  }
  return { ...env, NODE_ENV: 'production', ...extra };
}

/** A node script of bench/apps that prints "ready" when it serves. */
async function startNodeApp(ctx: StackContext, name: string, script: string, env: Record<string, string>): Promise<Child> {
  const child = startChild(name, process.execPath, [join(APPS, script)], { dir: ctx.dir, env: nodeEnv(env), cwd: REPO });
  await waitForLine(child, /^ready$/, 20_000);
  return child;
}

async function startNginx(ctx: StackContext, inside: { upstreams?: string; location: string }): Promise<{ child: Child; port: number }> {
  const dir = join(ctx.dir, 'nginx');
  mkdirSync(dir);
  for (const sub of ['client_body', 'proxy', 'uwsgi', 'fastcgi', 'scgi']) mkdirSync(join(dir, sub));
  const port = await freePort();
  // nginx's workers run as nobody unless told otherwise; as root they must reach root's sockets.
  const user = process.getuid?.() === 0 ? 'user root;' : '';
  const conf = `${user}
# One worker process: the proxy in front gets one process, as Stratum's master is one process.
worker_processes 1;
error_log ${dir}/error.log warn;
pid ${dir}/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  uwsgi_temp_path ${dir}/uwsgi;
  fastcgi_temp_path ${dir}/fastcgi;
  scgi_temp_path ${dir}/scgi;
  ${inside.upstreams ?? ''}
  server {
    listen 127.0.0.1:${port};
    location / {
      ${inside.location}
    }
  }
}
`;
  const confPath = join(dir, 'nginx.conf');
  writeFileSync(confPath, conf);
  const child = startChild('nginx', 'nginx', ['-p', dir, '-e', join(dir, 'error.log'), '-c', confPath, '-g', 'daemon off;'], { dir: ctx.dir });
  await waitUntil(async () => {
    if (!child.alive()) throw new Error(`nginx exited at start-up\n${describeChild(child)}\n${readFileSync(join(dir, 'error.log'), 'utf8')}`);
    return canConnect(port);
  }, 10_000, () => `nginx did not listen on 127.0.0.1:${port}\n${describeChild(child)}`);
  return { child, port };
}

async function startUwsgi(ctx: StackContext, wsgiFile: string, callable: string): Promise<{ child: Child; socket: string }> {
  const socket = join(ctx.dir, 'uwsgi.sock');
  const child = startChild('uwsgi', 'uwsgi', [
    '--plugin-dir', UWSGI_PLUGIN_DIR,
    '--plugin', 'python3',
    '--master',
    '--processes', String(APP_PROCESSES),
    '--socket', socket,
    '--chmod-socket=666',
    '--wsgi-file', wsgiFile,
    '--callable', callable,
    '--disable-logging',
    '--die-on-term',
    '--need-app',
    '--no-orphans',
    '--chdir', ctx.dir,
  ], { dir: ctx.dir });
  await waitUntil(() => {
    if (!child.alive()) throw new Error(`uWSGI exited at start-up\n${describeChild(child)}`);
    return existsSync(socket) && childrenOf(child.pid).length >= APP_PROCESSES;
  }, 20_000, () => `uWSGI did not start ${APP_PROCESSES} workers on ${socket}\n${describeChild(child)}`);
  return { child, socket };
}

function nginxUwsgi(name: string, title: string, file: string, callable: string, notes: string): StackDef {
  return {
    name,
    title,
    notes,
    async start(ctx) {
      requirePeers('nginx', 'uwsgi');
      const uwsgi = await startUwsgi(ctx, join(APPS, file), callable);
      const nginx = await startNginx(ctx, { location: `include ${UWSGI_PARAMS};\n      uwsgi_pass unix:${uwsgi.socket};` });
      return {
        url: `http://127.0.0.1:${nginx.port}/`,
        roots: () => [nginx.child.pid, uwsgi.child.pid],
        async stop() {
          await nginx.child.stop('SIGTERM', 5000);
          await uwsgi.child.stop('SIGTERM', 5000);
        },
      };
    },
  };
}

export interface StratumVariant {
  /** null = config/stratum.yaml exactly as shipped. */
  changes: null | Array<[path: string[], value: unknown]>;
  tracing?: boolean;
}

async function startStratum(ctx: StackContext, variant: StratumVariant): Promise<RunningStack> {
  buildStratum();
  let config = DEFAULT_CONFIG;
  if (variant.changes) {
    // The shipped default file with only the named fields changed, so every variant follows it.
    const doc = parseDocument(readFileSync(DEFAULT_CONFIG, 'utf8'));
    for (const [path, value] of variant.changes) doc.setIn(path, value);
    config = join(ctx.dir, 'stratum.yaml');
    writeFileSync(config, String(doc));
  }
  const env: Record<string, string> = {};
  let sink: Child | null = null;
  let sinkPort = 0;
  if (variant.tracing) {
    sinkPort = await freePort();
    sink = await startNodeApp(ctx, 'otlp-sink', 'otlp-sink.ts', { PORT: String(sinkPort) });
    // The SDK's standard variables; the batch span processor keeps its defaults (OTEL_BSP_*
    // unset: queue 2048, batch 512, 5 s delay), as a deployment that sets only the endpoint.
    env.OTEL_EXPORTER_OTLP_ENDPOINT = `http://127.0.0.1:${sinkPort}`;
  }
  if (ctx.cpuProfDir) env.NODE_OPTIONS = `--cpu-prof --cpu-prof-dir=${ctx.cpuProfDir}`;
  const args = [
    STRATUM_BIN, 'serve',
    '--config', config,
    '--listen', '127.0.0.1:0',
    '--admin', '127.0.0.1:0',
    '--workers', String(APP_PROCESSES),
    '--app', STRATUM_APP,
  ];
  // stdout (the JSON log, access log included) goes to a file, as to a log shipper's file.
  const child = startChild('stratum', process.execPath, args, { dir: ctx.dir, env: nodeEnv(env), cwd: REPO });
  let readyLine: string;
  try {
    readyLine = await waitForLine(child, /"msg":"stratum ready"/, 30_000);
  } catch (err) {
    await sink?.stop();
    await child.stop('SIGKILL');
    throw err;
  }
  const ready = JSON.parse(readyLine) as { front: string; admin: string };
  const front = ready.front.replace('0.0.0.0', '127.0.0.1');
  return {
    url: `${front}/`,
    roots: () => [child.pid],
    roles: () => ({ master: [child.pid], workers: childrenOf(child.pid) }),
    auxiliary: () => (sink ? [sink.pid] : []),
    async counters() {
      // Stratum's own account of where the time went: the per-layer histograms' sums and counts.
      const out: Record<string, number> = {};
      const metrics = await (await fetch(`${ready.admin}/metrics`)).text();
      for (const m of metrics.matchAll(/^stratum_layer_duration_seconds_(sum|count)\{[^}]*layer="(\w+)"[^}]*\} (\S+)$/gm)) {
        const key = `layer.${m[2]}.${m[1]}`;
        out[key] = (out[key] ?? 0) + Number(m[3]);
      }
      if (sink) {
        const stats = (await (await fetch(`http://127.0.0.1:${sinkPort}/stats`)).json()) as Record<string, number>;
        for (const [k, v] of Object.entries(stats)) out[`otlp.${k}`] = v;
      }
      return out;
    },
    async stop() {
      // SIGTERM drains and exits 0, so a --cpu-prof profile gets written by every process.
      await child.stop('SIGTERM', 40_000);
      await sink?.stop('SIGTERM', 5000);
    },
  };
}

function stratum(name: string, title: string, notes: string, variant: StratumVariant): StackDef {
  return { name, title, notes, stratum: true, start: (ctx) => startStratum(ctx, variant) };
}

export const STACKS: StackDef[] = [
  nginxUwsgi('nginx-uwsgi-flask', 'nginx → uWSGI → Flask', 'flask_app.py', 'app',
    'nginx 1.22 (worker_processes 1, access_log off) uwsgi_pass to a Unix socket; uWSGI --master --processes 2; Flask app'),
  nginxUwsgi('nginx-uwsgi-wsgi', 'nginx → uWSGI → raw WSGI', 'wsgi_app.py', 'application',
    'as above with a bare WSGI callable instead of Flask'),
  {
    name: 'http-proxy-fastify',
    title: 'http-proxy → Fastify',
    notes: 'npm http-proxy in 1 process, keep-alive http.Agent, xfwd; Fastify in node:cluster with 2 workers (round-robin) on TCP',
    async start(ctx) {
      const app = await startFastifyCluster(ctx);
      const port = await freePort();
      const proxy = await startNodeApp(ctx, 'http-proxy', 'http-proxy.ts', { PORT: String(port), UPSTREAM: `http://127.0.0.1:${app.port}` });
      return {
        url: `http://127.0.0.1:${port}/`,
        roots: () => [proxy.pid, app.child.pid],
        async stop() {
          await proxy.stop('SIGKILL');
          await app.child.stop('SIGKILL');
        },
      };
    },
  },
  {
    name: 'nginx-node',
    title: 'nginx → Node (keep-alive)',
    notes: 'nginx (worker_processes 1, access_log off) proxy_pass HTTP/1.1 to upstream { keepalive 64; }; node:http in node:cluster with 2 workers on TCP',
    async start(ctx) {
      requirePeers('nginx');
      const appPort = await freePort();
      const app = await startNodeApp(ctx, 'node', 'node-cluster.ts', { PORT: String(appPort), WORKERS: String(APP_PROCESSES) });
      const nginx = await startNginx(ctx, {
        upstreams: `upstream node_app {\n    server 127.0.0.1:${appPort};\n    keepalive 64;\n  }`,
        location: 'proxy_pass http://node_app;\n      proxy_http_version 1.1;\n      proxy_set_header Connection "";',
      });
      return {
        url: `http://127.0.0.1:${nginx.port}/`,
        roots: () => [nginx.child.pid, app.pid],
        async stop() {
          await nginx.child.stop('SIGTERM', 5000);
          await app.stop('SIGKILL');
        },
      };
    },
  },
  {
    name: 'fastify',
    title: 'Fastify alone',
    notes: 'the Fastify app in node:cluster with 2 workers (round-robin), no proxy: the ceiling',
    async start(ctx) {
      const app = await startFastifyCluster(ctx);
      return {
        url: `http://127.0.0.1:${app.port}/`,
        roots: () => [app.child.pid],
        async stop() {
          await app.child.stop('SIGKILL');
        },
      };
    },
  },
  stratum('stratum-default', 'Stratum default', 'config/stratum.yaml as shipped (worker topology: the front in each worker; metrics, Server-Timing, access log on, tracing off), --workers 2, app bench/apps/fastify-hello.ts; stdout (JSON + access log) to a file',
    { changes: null }),
  stratum('stratum-master', 'Stratum, master topology', 'the default with topology: master (the front in the master, uwsgi over kept connections to the 2 workers)',
    { changes: [[['topology'], 'master']] }),
  stratum('stratum-no-access-log', 'Stratum, access log off', 'the default with log.access false (metrics and Server-Timing still on)',
    { changes: [[['log', 'access'], false]] }),
  stratum('stratum-tracing', 'Stratum + tracing 100%', 'the default with tracing.enabled true, sampleRatio 1, OTLP/HTTP protobuf to a local sink (OTEL_BSP_* defaults)',
    { changes: [[['tracing', 'enabled'], true], [['tracing', 'sampleRatio'], 1]], tracing: true }),
  stratum('stratum-tracing-10', 'Stratum + tracing 10%', 'the default with tracing.enabled true, sampleRatio 0.1, OTLP/HTTP protobuf to a local sink',
    { changes: [[['tracing', 'enabled'], true], [['tracing', 'sampleRatio'], 0.1]], tracing: true }),
  stratum('stratum-metrics-only', 'Stratum, metrics only', 'log.access false, proxy.serverTiming false, tracing off; metrics on',
    { changes: [[['log', 'access'], false], [['proxy', 'serverTiming'], false], [['tracing', 'enabled'], false]] }),
  stratum('stratum-all-off', 'Stratum, instrumentation off', 'metrics.enabled false, log.access false, proxy.serverTiming false, tracing off',
    { changes: [[['metrics', 'enabled'], false], [['log', 'access'], false], [['proxy', 'serverTiming'], false], [['tracing', 'enabled'], false]] }),
  // HTTP upstreams: Stratum's front proxy to the Fastify cluster over HTTP, beside a plain undici
  // proxy doing the same (what Stratum's HTTP upstream is built on).
  {
    name: 'stratum-http-upstream',
    title: 'Stratum → HTTP → Fastify',
    notes: 'config/stratum.yaml as shipped with routes[0] (/) targeting the Fastify cluster over HTTP (undici Pool); the 2 pool workers stay idle; Fastify in node:cluster with 2 workers on TCP',
    stratum: true,
    async start(ctx) {
      const app = await startFastifyCluster(ctx);
      let stratum: RunningStack;
      try {
        stratum = await startStratum(ctx, { changes: [[['routes', '0', 'target'], `http://127.0.0.1:${app.port}`]] });
      } catch (err) {
        await app.child.stop('SIGKILL');
        throw err;
      }
      return {
        ...stratum,
        roots: () => [...stratum.roots(), app.child.pid],
        async stop() {
          await stratum.stop();
          await app.child.stop('SIGKILL');
        },
      };
    },
  },
  {
    name: 'undici-proxy-fastify',
    title: 'undici Pool proxy → Fastify',
    notes: 'bench/apps/undici-proxy.ts: an undici Pool (pipelining 1) behind node:http in 1 process, X-Forwarded-* added; Fastify in node:cluster with 2 workers on TCP',
    async start(ctx) {
      const app = await startFastifyCluster(ctx);
      const port = await freePort();
      const proxy = await startNodeApp(ctx, 'undici-proxy', 'undici-proxy.ts', { PORT: String(port), UPSTREAM: `http://127.0.0.1:${app.port}` });
      return {
        url: `http://127.0.0.1:${port}/`,
        roots: () => [proxy.pid, app.child.pid],
        async stop() {
          await proxy.stop('SIGKILL');
          await app.child.stop('SIGKILL');
        },
      };
    },
  },
  {
    name: 'node-uwsgi-floor',
    title: 'minimal Node proxy → Stratum pool (floor)',
    notes: 'bench/apps/uwsgi-floor-proxy.ts: node:http + 32 kept uwsgi connections, nothing else (no routing, timeouts, errors, observability), in front of `stratum pool` (2 workers, the same app); the least any Node front can spend on this hop',
    async start(ctx) {
      buildStratum();
      const socket = join(ctx.dir, 'pool.sock');
      const args = [STRATUM_BIN, 'pool', '--socket', socket, '--admin', '127.0.0.1:0', '--workers', String(APP_PROCESSES), '--app', STRATUM_APP];
      const pool = startChild('stratum-pool', process.execPath, args, { dir: ctx.dir, env: nodeEnv(), cwd: REPO });
      await waitForLine(pool, /"msg":"stratum ready"/, 30_000);
      const port = await freePort();
      const proxy = await startNodeApp(ctx, 'floor-proxy', 'uwsgi-floor-proxy.ts', { PORT: String(port), UPSTREAM: socket, CONNECTIONS: '32' });
      return {
        url: `http://127.0.0.1:${port}/`,
        roots: () => [proxy.pid, pool.pid],
        async stop() {
          await proxy.stop('SIGKILL');
          await pool.stop('SIGTERM', 20_000);
        },
      };
    },
  },
];

/** The Fastify app in node:cluster on a free port: the fastify row, and the upstream of every HTTP-proxy row. */
async function startFastifyCluster(ctx: StackContext): Promise<{ child: Child; port: number }> {
  const port = await freePort();
  const child = await startNodeApp(ctx, 'fastify', 'fastify-cluster.ts', { PORT: String(port), WORKERS: String(APP_PROCESSES) });
  return { child, port };
}
