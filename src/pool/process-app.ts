// A `kind: process` app (PM2's fork mode): a Node program that serves no HTTP — a queue consumer,
// a scheduler — run as `workers` plain child processes and supervised as the pool's workers are:
// respawned at once after a death, with capped exponential back-off when it keeps dying young;
// restarted gracefully (SIGTERM, then SIGKILL after gracefulTimeout) on reload, on cron and when its
// resident memory passes reloadOnRss (PM2 `max_memory_restart`); its stdout and stderr logged line by
// line with the app's name; its RSS and CPU read from /proc once a second for /stats and the metrics.

import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import type { Logger } from 'pino';
import type { AppSpec } from './apps.ts';

/** Clock ticks per second of /proc/PID/stat's utime and stime (USER_HZ, 100 on every Linux port). */
const USER_HZ = 100;
/** A process that dies within this long of its start counts toward a crash loop. */
const YOUNG_MS = 5_000;

interface Instance {
  id: number;
  child: ChildProcess | null;
  pid: number;
  startedAt: number;
  /** Being stopped on purpose: its exit is not a crash and is not respawned by the exit handler. */
  stopping: boolean;
  restarts: number;
  streak: number;
  rss: number;
  cpuSeconds: number;
  exited: Promise<void>;
  respawnTimer: NodeJS.Timeout | null;
}

export interface ProcessStats {
  processes: Array<{
    id: number;
    pid: number;
    up: boolean;
    rss: number;
    cpuSeconds: number;
    restarts: number;
    startedAt: string;
  }>;
  restarts: number;
}

/** RSS in bytes and CPU seconds (user + system) of a live process, from /proc; null when gone. */
export function procUsage(pid: number): { rss: number; cpuSeconds: number } | null {
  try {
    const statm = readFileSync(`/proc/${pid}/statm`, 'utf8').split(' ');
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name in parentheses may hold spaces: the fields after it are counted from its end.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(fields[11]) + Number(fields[12]); // utime, stime (fields 14 and 15 of stat)
    return { rss: Number(statm[1]) * 4096, cpuSeconds: ticks / USER_HZ };
  } catch {
    return null;
  }
}

export class ProcessApp extends EventEmitter {
  spec: AppSpec;
  readonly log: Logger;
  #instances: Instance[] = [];
  #stopped = false;
  #timer: NodeJS.Timeout | null = null;
  #restarts = 0;

  constructor(spec: AppSpec, log: Logger) {
    super();
    this.spec = spec;
    this.log = log.child({ app: spec.name });
  }

  get name(): string {
    return this.spec.name;
  }

  get restarts(): number {
    return this.#restarts;
  }

  get instances(): ReadonlyArray<Readonly<Instance>> {
    return this.#instances;
  }

  /** Starts every instance; resolves once each has been running for a moment (it did not die at once). */
  async start(): Promise<void> {
    const n = this.spec.config.pool.workers;
    for (let id = 1; id <= n; id++) this.#instances.push(this.#spawn(this.#blank(id)));
    this.#timer = setInterval(() => this.#check(), 1000);
    this.#timer.unref();
    await this.#settled(this.#instances);
    this.#check(); // a first reading now: /stats and the metrics have one from the start
  }

  #blank(id: number): Instance {
    return {
      id,
      child: null,
      pid: 0,
      startedAt: 0,
      stopping: false,
      restarts: 0,
      streak: 0,
      rss: 0,
      cpuSeconds: 0,
      exited: Promise.resolve(),
      respawnTimer: null,
    };
  }

  /** A process that exits within 300 ms of its start fails the start (a typo in the module, say). */
  async #settled(list: Instance[]): Promise<void> {
    await new Promise((r) => setTimeout(r, 300));
    const dead = list.filter((i) => !i.child || i.child.exitCode !== null || i.child.signalCode !== null);
    if (dead.length > 0 && list.length > 0) {
      throw new Error(`process app ${this.name}: ${dead.length} of ${list.length} processes exited at start`);
    }
  }

  #spawn(inst: Instance): Instance {
    const { module, args, cwd, env } = this.spec;
    const child = spawn(process.execPath, [module, ...args], {
      cwd: cwd ?? undefined,
      env: { ...process.env, ...env, STRATUM_APP_NAME: this.name, STRATUM_APP_INSTANCE: String(inst.id) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    inst.child = child;
    inst.pid = child.pid ?? 0;
    inst.startedAt = Date.now();
    inst.stopping = false;
    inst.rss = 0;
    inst.cpuSeconds = 0;
    const log = this.log.child({ instance: inst.id, workerPid: inst.pid });
    for (const [stream, level] of [
      [child.stdout, 'info'],
      [child.stderr, 'warn'],
    ] as const) {
      if (!stream) continue;
      createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => {
        if (line !== '') log[level]({ stream: level === 'info' ? 'stdout' : 'stderr' }, line);
      });
    }
    inst.exited = new Promise<void>((resolve) => {
      child.once('error', (err) => {
        log.error({ err: err.message }, 'process app could not start');
        resolve();
      });
      child.once('exit', (code, signal) => {
        resolve();
        this.#onExit(inst, child, code, signal);
      });
    });
    log.info({ module }, 'process started');
    return inst;
  }

  #onExit(inst: Instance, child: ChildProcess, code: number | null, signal: string | null): void {
    if (inst.child !== child) return;
    inst.child = null;
    if (inst.stopping || this.#stopped) return;
    const young = Date.now() - inst.startedAt < YOUNG_MS;
    inst.streak = young ? inst.streak + 1 : 0;
    // As the pool's workers: one death is respawned at once, a crash loop backs off, capped.
    const delay = inst.streak <= 1 ? 0 : Math.min(100 * 2 ** (inst.streak - 2), 10_000);
    this.log.warn({ instance: inst.id, workerPid: inst.pid, code, signal, respawnInMs: delay }, 'process died');
    inst.restarts++;
    this.#restarts++;
    this.emit('restart', { id: inst.id, reason: 'died' });
    inst.respawnTimer = setTimeout(() => {
      inst.respawnTimer = null;
      if (!this.#stopped && !inst.child) this.#spawn(inst);
    }, delay);
    inst.respawnTimer.unref();
  }

  /** SIGTERM, SIGKILL after the grace period; resolves once the process is gone. */
  async #stopOne(inst: Instance): Promise<void> {
    if (inst.respawnTimer) clearTimeout(inst.respawnTimer);
    inst.respawnTimer = null;
    const child = inst.child;
    if (!child) return;
    inst.stopping = true;
    const graceMs = this.spec.config.pool.gracefulTimeout * 1000;
    const kill = setTimeout(() => child.kill('SIGKILL'), graceMs);
    kill.unref();
    child.kill('SIGTERM');
    await inst.exited;
    clearTimeout(kill);
  }

  /** Graceful restart of one instance after the other, so the others keep working meanwhile. */
  async reload(reason: string): Promise<void> {
    for (const inst of [...this.#instances]) {
      if (this.#stopped) return;
      await this.#restart(inst, reason);
    }
  }

  async #restart(inst: Instance, reason: string): Promise<void> {
    this.log.info({ instance: inst.id, workerPid: inst.pid, reason }, 'restarting process');
    await this.#stopOne(inst);
    if (this.#stopped) return;
    inst.restarts++;
    this.#restarts++;
    this.emit('restart', { id: inst.id, reason });
    this.#spawn(inst);
  }

  /** A reload's new settings: the instance count follows at once, the rest at the next restart. */
  reconfigure(spec: AppSpec): void {
    this.spec = spec;
    const n = spec.config.pool.workers;
    while (this.#instances.length > n) void this.#stopOne(this.#instances.pop()!);
    for (let id = this.#instances.length + 1; id <= n; id++) this.#instances.push(this.#spawn(this.#blank(id)));
  }

  #restarting = new WeakSet<Instance>();

  /** Once a second: memory and CPU, and the memory bound. */
  #check(): void {
    const limit = this.spec.config.pool.reloadOnRss * 1024 * 1024;
    for (const inst of this.#instances) {
      if (!inst.child) continue;
      const u = procUsage(inst.pid);
      if (!u) continue;
      inst.rss = u.rss;
      inst.cpuSeconds = u.cpuSeconds;
      if (limit > 0 && u.rss > limit && !inst.stopping && !this.#restarting.has(inst)) {
        this.#restarting.add(inst);
        this.log.warn({ instance: inst.id, workerPid: inst.pid, rss: u.rss, limit }, 'process over its memory limit');
        void this.#restart(inst, 'reload-on-rss').finally(() => this.#restarting.delete(inst));
      }
    }
  }

  stats(): ProcessStats {
    return {
      processes: this.#instances.map((i) => ({
        id: i.id,
        pid: i.pid,
        up: i.child !== null && !i.stopping,
        rss: i.rss,
        cpuSeconds: i.cpuSeconds,
        restarts: i.restarts,
        startedAt: new Date(i.startedAt).toISOString(),
      })),
      restarts: this.#restarts,
    };
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearInterval(this.#timer);
    await Promise.all(this.#instances.map((i) => this.#stopOne(i)));
  }
}
