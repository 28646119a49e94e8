// The apps of one service (NGINX Unit's `applications`, a PM2 ecosystem file): one Supervisor per
// `http` app — its own workers, uwsgi socket, environment and limits — and one ProcessApp per
// `process` app. supervisor.ts stays the lifecycle of one pool; this file holds the set, answers
// for all of them (stats, questions to the workers), and applies a config reload: apps whose
// settings changed are rolled, the others keep their processes, removed apps are drained.
//
// How a request reaches another app's workers in the worker topology: the front runs in every
// worker of every http app (they all accept on the one front listener the master holds). A route
// to the worker's own app is served in-process; a route to another app goes over uwsgi to that
// app's pool socket (kept connections), where one of its workers serves it. In the master topology
// the master's front reaches each app's pool as before (PoolUpstream, one per app).

import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import type { Address, AppConfig, StratumConfig } from '../config/schema.ts';
import { ConfigInvalid } from '../errors.ts';
import { nextRun, parseCron } from './cron.ts';
import type { Question } from './ipc.ts';
import { ProcessApp, type ProcessStats } from './process-app.ts';
import type { BoundSocket } from './sockets.ts';
import {
  mergeUpstreamHealth,
  type PoolCounters,
  type PoolStats,
  type UpstreamHealth,
  type WorkerRow,
} from './stats.ts';
import { Supervisor, type WorkerRecord } from './supervisor.ts';

/** One app as the master runs it: the config its processes get, with the app's own settings applied. */
export interface AppSpec {
  name: string;
  kind: 'http' | 'process';
  module: string;
  export: string;
  args: string[];
  cwd: string | null;
  /** `envFile`'s variables, then `env`'s over them. */
  env: Record<string, string>;
  cron: string | null;
  /** The whole config with `app` and `pool` set to this app's (what its workers read). */
  config: StratumConfig;
}

/** A `NAME=value` file (dotenv): `#` comments, blank lines, optional `export `, single or double quotes. */
export function parseEnvFile(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/.exec(line);
    if (!m) continue;
    let v = m[2]!;
    const q = v[0];
    if ((q === '"' || q === "'") && v.endsWith(q) && v.length >= 2) {
      v = v.slice(1, -1);
      if (q === '"') v = v.replace(/\\n/g, '\n').replace(/\\"/g, '"');
    } else v = v.replace(/\s+#.*$/, '');
    out[m[1]!] = v;
  }
  return out;
}

function appEnv(a: AppConfig, index: number): Record<string, string> {
  const env: Record<string, string> = {};
  if (a.envFile) {
    let text: string;
    try {
      text = readFileSync(a.envFile, 'utf8');
    } catch (err) {
      throw new ConfigInvalid(`apps.${index}.envFile`, `cannot read ${a.envFile}: ${(err as Error).message}`);
    }
    Object.assign(env, parseEnvFile(text));
  }
  for (const [k, v] of Object.entries(a.env)) env[k] = String(v);
  return env;
}

/**
 * The apps a config names: `app.module` as the app named `default` (with the `pool` settings), then
 * every entry of `apps`, its null fields taken from `pool`. Reads env files (a reload reads them again).
 */
export function resolveApps(config: StratumConfig): AppSpec[] {
  const specs: AppSpec[] = [];
  if (config.app.module !== null) {
    specs.push({
      name: 'default',
      kind: 'http',
      module: config.app.module,
      export: config.app.export,
      args: [],
      cwd: null,
      env: {},
      cron: null,
      config,
    });
  }
  config.apps.forEach((a, i) => {
    const workers = a.workers ?? (a.kind === 'process' ? 1 : config.pool.workers);
    const cheaper = a.cheaper ?? config.pool.cheaper;
    const max = Math.min(cheaper.max ?? workers, workers);
    const pool: StratumConfig['pool'] = {
      ...config.pool,
      workers,
      harakiri: a.harakiri ?? config.pool.harakiri,
      maxRequests: a.maxRequests ?? config.pool.maxRequests,
      reloadOnRss: a.reloadOnRss ?? config.pool.reloadOnRss,
      gracefulTimeout: a.gracefulTimeout ?? config.pool.gracefulTimeout,
      cheaper: { enabled: cheaper.enabled, max, min: Math.min(cheaper.min, max) },
      socket: a.socket ?? (a.name === 'default' ? config.pool.socket : null),
    };
    specs.push({
      name: a.name,
      kind: a.kind,
      module: a.module,
      export: a.export,
      args: a.args,
      cwd: a.cwd,
      env: appEnv(a, i),
      cron: a.cron,
      config: { ...config, app: { module: a.module, export: a.export }, pool },
    });
  });
  return specs;
}

/** The name `pool` alone stands for: the app named default, else the first http app. */
export function defaultAppName(specs: Array<{ name: string; kind: string }>): string | null {
  const http = specs.filter((s) => s.kind === 'http');
  return (http.find((s) => s.name === 'default') ?? http[0])?.name ?? null;
}

/**
 * What, of an app, its processes were started with: a change rolls them. Routes are not in it (the
 * workers take new routes without a restart), nor the admin (the master's alone).
 */
function fingerprint(spec: AppSpec): string {
  const { routes: _r, admin: _a, apps: _p, ...rest } = spec.config;
  return JSON.stringify({ ...spec, config: rest });
}

function routesKey(config: StratumConfig): string {
  return JSON.stringify(config.routes.map((r) => ({ ...r, targets: r.targets.map((t) => t.raw) })));
}

type Running =
  | { kind: 'http'; spec: AppSpec; key: string; sup: Supervisor }
  | { kind: 'process'; spec: AppSpec; key: string; proc: ProcessApp };

export interface AppStats extends Partial<PoolStats> {
  name: string;
  kind: 'http' | 'process';
  processes?: ProcessStats['processes'];
  restarts?: number;
}

/** /stats: the pools' sums (and every worker, with its app) as before, plus one entry per app. */
export interface ServiceStats extends PoolStats {
  apps: AppStats[];
}

export interface ReloadOutcome {
  /** failed: an added or changed app did not start; the routes and the removed apps were left as they were. */
  status: 'reloaded' | 'failed';
  /** The apps that did not start (their old processes, if any, still run). */
  failed: string[];
  added: string[];
  changed: string[];
  removed: string[];
  unchanged: string[];
  routes: boolean;
  /** Settings a reload cannot change (the listeners, the topology): they need a restart. */
  needsRestart: string[];
}

export class AppSet extends EventEmitter {
  config: StratumConfig;
  readonly log: Logger;
  #front: BoundSocket | null;
  #apps = new Map<string, Running>();
  #cron = new Map<string, NodeJS.Timeout>();
  #stopping = false;
  /** The reload running, if any: the next one waits for it. */
  #reloading: Promise<unknown> = Promise.resolve();

  constructor(config: StratumConfig, log: Logger, front: BoundSocket | null) {
    super();
    this.config = config;
    this.log = log;
    this.#front = front;
    for (const spec of resolveApps(config)) this.#apps.set(spec.name, this.#create(spec));
  }

  #create(spec: AppSpec): Running {
    const key = fingerprint(spec);
    if (spec.kind === 'process') {
      const proc = new ProcessApp(spec, this.log);
      proc.on('restart', (info) => this.emit('process-restart', spec.name, info));
      return { kind: 'process', spec, key, proc };
    }
    const sup = new Supervisor(spec.config, this.log, this.#front, {
      name: spec.name,
      cwd: spec.cwd,
      env: spec.env,
      pools: () => this.pools(),
    });
    for (const event of ['worker-final', 'worker-exit', 'worker-fatal', 'worker-ready', 'harakiri', 'rejected'])
      sup.on(event, (...args: unknown[]) => this.emit(event, ...args));
    return { kind: 'http', spec, key, sup };
  }

  /** Every http app's uwsgi socket by name, and '' for the one `pool` alone stands for. */
  pools(): Record<string, Address> {
    const out: Record<string, Address> = {};
    for (const [name, r] of this.#apps) if (r.kind === 'http') out[name] = r.sup.boundAddress;
    const dflt = defaultAppName([...this.#apps.values()].map((r) => r.spec));
    if (dflt !== null) out[''] = out[dflt]!;
    return out;
  }

  get supervisors(): Supervisor[] {
    return [...this.#apps.values()].flatMap((r) => (r.kind === 'http' ? [r.sup] : []));
  }

  get processes(): ProcessApp[] {
    return [...this.#apps.values()].flatMap((r) => (r.kind === 'process' ? [r.proc] : []));
  }

  /** The pool of `pool:NAME` (undefined: `pool` alone). */
  supervisor(name: string | undefined): Supervisor | null {
    const n = name ?? defaultAppName([...this.#apps.values()].map((r) => r.spec));
    const r = n === null ? undefined : this.#apps.get(n);
    return r?.kind === 'http' ? r.sup : null;
  }

  /** The default app's pool: its socket is the one the ready line and `stratum pool` show. */
  get primary(): Supervisor | null {
    return this.supervisor(undefined);
  }

  get workers(): WorkerRecord[] {
    return this.supervisors.flatMap((s) => s.workers);
  }

  /** The default app's private directory (the TLS store's snapshot lives there). */
  get runDir(): string | undefined {
    return (this.primary ?? this.supervisors[0])?.runDir;
  }

  get publicLabel(): string | null {
    return this.primary?.publicLabel ?? null;
  }

  async start(): Promise<void> {
    const all = [...this.#apps.values()];
    try {
      await Promise.all(all.map((r) => (r.kind === 'http' ? r.sup.start() : r.proc.start())));
    } catch (err) {
      await this.stop().catch(() => {});
      throw err;
    }
    for (const r of all) this.#schedule(r);
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    for (const t of this.#cron.values()) clearTimeout(t);
    this.#cron.clear();
    await Promise.all([...this.#apps.values()].map((r) => (r.kind === 'http' ? r.sup.stop() : r.proc.stop())));
  }

  /** Ask every serving worker of every http app (the front runs in all of them). */
  async ask(question: Question): Promise<Array<{ pid: number; data: unknown }>> {
    return (await Promise.all(this.supervisors.map((s) => s.ask(question)))).flat();
  }

  /** Upstream servers over every app's workers: down in any is down; in-flight and failed tries summed. */
  upstreamHealth(): UpstreamHealth[] {
    return mergeUpstreamHealth(this.supervisors.map((s) => s.upstreamHealth()));
  }

  get queueLength(): number {
    return this.supervisors.reduce((n, s) => n + s.queueLength, 0);
  }

  get counters(): PoolCounters {
    const sum: PoolCounters = {
      rejected: 0,
      reloads: 0,
      respawns: 0,
      harakiriKills: 0,
      harakiriTimeouts: 0,
      recycles: 0,
      exceptions: 0,
    };
    for (const s of this.supervisors) {
      const c = s.counters;
      for (const k of Object.keys(sum) as Array<keyof PoolCounters>) sum[k] += c[k];
    }
    // A reload rolls several pools at once: the service counts it once.
    sum.reloads = this.#reloads;
    return sum;
  }

  #reloads = 0;

  /** Per app, for the pool metrics' `app` label. */
  views(): Array<{ app: string; pool: Supervisor }> {
    return [...this.#apps.values()].flatMap((r) => (r.kind === 'http' ? [{ app: r.spec.name, pool: r.sup }] : []));
  }

  stats(): ServiceStats {
    const apps: AppStats[] = [];
    const workers: Array<WorkerRow & { app: string }> = [];
    let queueLimit = 0;
    for (const r of this.#apps.values()) {
      if (r.kind === 'http') {
        const st = r.sup.stats();
        queueLimit += st.queueLimit;
        const rows = st.workers.map((w) => ({ ...w, app: r.spec.name }));
        workers.push(...rows);
        apps.push({ ...st, workers: rows, name: r.spec.name, kind: 'http' });
      } else {
        apps.push({ name: r.spec.name, kind: 'process', ...r.proc.stats() });
      }
    }
    return {
      topology: this.config.topology,
      workers,
      queue: this.queueLength,
      queueLimit,
      ...this.counters,
      socket: this.publicLabel,
      apps,
    };
  }

  // --- config reload --------------------------------------------------------------------------

  /**
   * Apply a new, already validated config. Nothing changed at all: every app is rolled (SIGHUP's
   * meaning before there was a config to re-read: load the new code). Otherwise added apps start
   * first, changed apps are rolled one worker at a time, every worker's front gets the new routes,
   * and removed apps are drained last, once no route names them. One reload at a time.
   */
  reload(next: StratumConfig, onRoutes?: (config: StratumConfig) => Promise<void>): Promise<ReloadOutcome> {
    this.#reloads++;
    const run = this.#reloading.then(() => this.#reload(next, onRoutes));
    this.#reloading = run.catch(() => {});
    return run;
  }

  async #reload(next: StratumConfig, onRoutes?: (config: StratumConfig) => Promise<void>): Promise<ReloadOutcome> {
    const specs = resolveApps(next);
    const prev = this.config;
    const needsRestart = (['listen', 'topology'] as const).filter((k) => prev[k] !== next[k]).map(String);
    if (JSON.stringify(prev.admin) !== JSON.stringify(next.admin)) needsRestart.push('admin');
    // The front in the master (master topology) is built once: its limits stay; its routes do change.
    if (next.topology === 'master' && JSON.stringify(prev.proxy) !== JSON.stringify(next.proxy))
      needsRestart.push('proxy');
    if (needsRestart.length > 0)
      this.log.warn({ fields: needsRestart }, 'config reload: these settings need a restart; the old ones stay');
    const wanted = new Map(specs.map((s) => [s.name, s]));
    const outcome: ReloadOutcome = {
      status: 'reloaded',
      failed: [],
      added: [],
      changed: [],
      removed: [],
      unchanged: [],
      routes: routesKey(prev) !== routesKey(next),
      needsRestart,
    };
    for (const [name, r] of this.#apps) {
      const s = wanted.get(name);
      if (!s) outcome.removed.push(name);
      else if (fingerprint(s) !== r.key || s.kind !== r.kind) outcome.changed.push(name);
      else outcome.unchanged.push(name);
    }
    for (const name of wanted.keys()) if (!this.#apps.has(name)) outcome.added.push(name);
    const nothing = !outcome.routes && outcome.added.length + outcome.changed.length + outcome.removed.length === 0;
    this.config = next;
    if (nothing) {
      // Same config: reload the code of every app.
      this.log.info({ apps: outcome.unchanged }, 'config reload: no change, rolling every app (new code)');
      for (const r of this.#apps.values()) await (r.kind === 'http' ? r.sup.reload() : r.proc.reload('reload'));
      return { ...outcome, changed: outcome.unchanged, unchanged: [] };
    }
    this.log.info(
      { added: outcome.added, changed: outcome.changed, removed: outcome.removed, routes: outcome.routes },
      'config reload',
    );
    // 1. Added apps: started (their workers get the new routes and every socket).
    const added = outcome.added.map((name) => {
      const r = this.#create(wanted.get(name)!);
      this.#apps.set(name, r);
      return r;
    });
    const failed: string[] = [];
    await Promise.all(
      added.map(async (r) => {
        try {
          await (r.kind === 'http' ? r.sup.start() : r.proc.start());
          this.#schedule(r);
        } catch (err) {
          failed.push(r.spec.name);
          this.log.error({ app: r.spec.name, err: (err as Error).message }, 'config reload: new app did not start');
          this.#apps.delete(r.spec.name);
          await (r.kind === 'http' ? r.sup.stop() : r.proc.stop()).catch(() => {});
        }
      }),
    );
    // 2. Changed apps: rolled with their new settings; a new kind or socket is a new pool, started first.
    const retired: Running[] = [];
    for (const name of outcome.changed) {
      const old = this.#apps.get(name)!;
      const spec = wanted.get(name)!;
      // A pool keeps its socket (a null one is in its own temporary directory): a new one is a new pool.
      const sameSocket =
        old.kind === 'http' && spec.kind === 'http' && old.sup.config.pool.socket === spec.config.pool.socket;
      if (old.kind === 'http' && sameSocket) {
        await this.#roll(old, spec);
      } else if (old.kind === 'process' && spec.kind === 'process') {
        old.proc.reconfigure(spec);
        old.key = fingerprint(spec);
        old.spec = spec;
        this.#schedule(old);
        await old.proc.reload('config');
      } else {
        const r = this.#create(spec);
        try {
          await (r.kind === 'http' ? r.sup.start() : r.proc.start());
        } catch (err) {
          failed.push(name);
          this.log.error({ app: name, err: (err as Error).message }, 'config reload: app did not start, old one stays');
          await (r.kind === 'http' ? r.sup.stop() : r.proc.stop()).catch(() => {});
          continue;
        }
        this.#apps.set(name, r);
        this.#schedule(r);
        retired.push(old);
      }
    }
    if (failed.length > 0) {
      // The new routes may name an app that is not running: keep the old ones, and the apps they reach.
      this.config = prev;
      await Promise.all(retired.map((r) => (r.kind === 'http' ? r.sup.stop() : r.proc.stop())));
      this.log.error({ apps: failed }, 'config reload failed: these apps did not start; the routes stay as they were');
      return { ...outcome, status: 'failed', failed };
    }
    // 3. Routes, and every pool's socket, to every worker's front (and the master's).
    for (const r of this.#apps.values()) {
      if (r.kind !== 'http') continue;
      const spec = wanted.get(r.spec.name);
      if (spec) r.sup.setRoutes(spec.config);
    }
    await onRoutes?.(next);
    // 4. Removed apps (and pools replaced above): drained.
    for (const name of outcome.removed) {
      const r = this.#apps.get(name)!;
      this.#apps.delete(name);
      this.#unschedule(name);
      retired.push(r);
    }
    await Promise.all(retired.map((r) => (r.kind === 'http' ? r.sup.stop() : r.proc.stop())));
    return outcome;
  }

  async #roll(r: Running & { kind: 'http' }, spec: AppSpec): Promise<void> {
    r.sup.reconfigure(spec.config);
    r.key = fingerprint(spec);
    r.spec = spec;
    Object.assign(r.sup.app, { cwd: spec.cwd, env: spec.env });
    this.#schedule(r);
    await r.sup.reload();
    await r.sup.fill();
  }

  // --- cron restarts --------------------------------------------------------------------------

  #unschedule(name: string): void {
    const t = this.#cron.get(name);
    if (t) clearTimeout(t);
    this.#cron.delete(name);
  }

  #schedule(r: Running): void {
    this.#unschedule(r.spec.name);
    if (this.#stopping || !r.spec.cron) return;
    const schedule = parseCron(r.spec.cron);
    if (typeof schedule === 'string') return; // the schema refused it already
    const at = nextRun(schedule, new Date());
    if (!at) return;
    // setTimeout's limit is ~24.8 days: a later run is re-armed on the way.
    const wait = Math.min(at.getTime() - Date.now(), 2 ** 31 - 1);
    const timer = setTimeout(() => {
      const cur = this.#apps.get(r.spec.name);
      if (cur !== r) return;
      if (Date.now() >= at.getTime() - 1000) {
        this.log.info({ app: r.spec.name, cron: r.spec.cron }, 'cron restart');
        void (r.kind === 'http' ? r.sup.reload() : r.proc.reload('cron'));
      }
      this.#schedule(r);
    }, wait);
    timer.unref();
    this.#cron.set(r.spec.name, timer);
  }
}
