// The master's side of the worker pool (uWSGI's master): forks workers with the cluster module
// in SCHED_NONE mode — the master binds the shared uwsgi socket once, every worker accepts on it
// (pre-fork, as uWSGI does) — and supervises them: respawn with capped back-off, harakiri,
// graceful recycling (max-requests, reload-on-rss), rolling reload, and the bounded listen
// queue in front of the workers for our own proxy.

import cluster, { type Worker } from 'node:cluster';
import { EventEmitter } from 'node:events';
import { chmodSync, existsSync, mkdtempSync, rmSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import util from 'node:util';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { parseAddress, type Address, type StratumConfig } from '../config/schema.ts';
import { PoolOverloaded, PoolUnavailable, StratumError } from '../errors.ts';
import { UwsgiClient } from '../uwsgi/client.ts';
import { WORKER_ENV, type MasterMessage, type WorkerMessage, type WorkerSpec } from './ipc.ts';

export type WorkerState = 'starting' | 'idle' | 'busy' | 'draining';

export interface WorkerRecord {
  id: number;
  pid: number;
  generation: number;
  state: WorkerState;
  worker: Worker;
  client: UwsgiClient;
  /** Requests our proxy has in flight on this worker (authoritative for balancing). */
  inflight: number;
  /** Requests counted by the worker itself (includes foreign ones), from its last status. */
  requests: number;
  workerInflight: number;
  exceptions: number;
  harakiri: number;
  rss: number;
  totalMs: number;
  eventLoopP99Ms: number;
  startedAt: number;
  respawns: number;
  /** Foreign (nginx) requests in flight, announced by the worker, for harakiri. */
  foreign: Map<number, { method: string; path: string; requestId: string; at: number }>;
  exitExpected: boolean;
  /** A replacement is starting; this worker keeps serving until it is ready. */
  recycling: boolean;
  /** Set while draining: called once the proxy has nothing in flight on this worker. */
  onIdle: (() => void) | null;
  ready: Promise<void>;
}

export interface PoolStats {
  workers: Array<{
    id: number; pid: number; state: WorkerState; requests: number; inflight: number; exceptions: number;
    harakiri: number; rss: number; avgMs: number; startedAt: string; respawns: number; generation: number;
  }>;
  queue: number;
  queueLimit: number;
  rejected: number;
  reloads: number;
  respawns: number;
  harakiriKills: number;
  recycles: number;
  socket: string | null;
}

interface Waiter {
  resolve(w: WorkerRecord): void;
  reject(err: StratumError): void;
  timer: NodeJS.Timeout | null;
}

/** Where the shared uwsgi socket sits in every worker's descriptor table (after stdio and IPC). */
const PUBLIC_FD = 4;
// The worker runs the same build as the master: worker.ts beside supervisor.ts (sources), or
// worker.js beside supervisor.js (the production build in dist/).
const WORKER_MAIN = fileURLToPath(new URL(import.meta.url.endsWith('.ts') ? './worker.ts' : './worker.js', import.meta.url));

/**
 * The master's Node options, plus a cap on the workers' young generation unless one is given.
 * Left to itself V8 doubles it under load, in steps tens of seconds apart, up to 32 MiB: a worker's RSS
 * then climbs ~12 MiB in the middle of a soak (`npm run bench -- --soak`) although nothing leaks.
 * At 4 MiB semi-spaces it reaches its size within seconds of load and stays there, and the bench
 * showed no loss (stratum-default, quiet runs: 17.5k and 17.6k req/s capped, 17.1k and 16.2k not;
 * the master, the bottleneck, keeps V8's default).
 */
function workerExecArgv(): string[] {
  const given = [...process.execArgv, process.env.NODE_OPTIONS ?? ''].some((a) => /semi[-_]space/.test(a));
  return given ? process.execArgv : [...process.execArgv, '--max-semi-space-size=4'];
}

export class Supervisor extends EventEmitter {
  readonly config: StratumConfig;
  readonly log: Logger;
  readonly runDir: string;
  readonly publicAddress: Address;
  publicLabel: string | null = null;
  #slots: Array<WorkerRecord | null>;
  #byWorker = new Map<Worker, WorkerRecord>();
  #live = new Set<WorkerRecord>();
  #queue: Waiter[] = [];
  #rejected = 0;
  #reloads = 0;
  #respawns = 0;
  #harakiriKills = 0;
  #recycles = 0;
  #crashStreak = new Map<number, { count: number; last: number }>();
  #stopping = false;
  #generation = 0;
  #harakiriTimer: NodeJS.Timeout | null = null;
  #cheaperTimer: NodeJS.Timeout | null = null;
  #idleSince = 0;
  #metricSeq = 0;
  #metricWaiters = new Map<number, (m: unknown[]) => void>();
  /** Workers whose connection just failed a request: no new request until known alive. */
  #suspects = new WeakSet<WorkerRecord>();
  /** Requests our proxy has given each worker, for max-requests (foreign ones the worker counts). */
  #dispatched = new WeakMap<WorkerRecord, number>();
  /** Workers told to drain before they were ready. */
  #drainOnReady = new WeakSet<WorkerRecord>();

  /** The shared uwsgi socket, bound by the master and held for the pool's whole life. */
  #publicHandle: BoundSocket | null = null;

  constructor(config: StratumConfig, log: Logger) {
    super();
    this.config = config;
    this.log = log;
    this.runDir = mkdtempSync(path.join(os.tmpdir(), 'stratum-'));
    const socket = config.pool.socket;
    this.publicAddress = socket === null ? { kind: 'unix', path: path.join(this.runDir, 'pool.sock') } : parseAddress(socket, 'pool.socket');
    // Slots up to the most workers the pool may run; with cheaper, only `min` start.
    const max = config.pool.cheaper.enabled ? (config.pool.cheaper.max ?? config.pool.workers) : config.pool.workers;
    this.#slots = new Array(max).fill(null);
  }

  /** Every live worker: the current one of each slot, plus old ones still serving or draining. */
  get workers(): WorkerRecord[] {
    return [...this.#live].sort((a, b) => a.id - b.id || a.startedAt - b.startedAt);
  }

  async start(): Promise<void> {
    const a = this.publicAddress;
    if (a.kind === 'unix') await removeStaleSocket(a.path);
    this.#publicHandle = bindSocket(a);
    this.publicLabel = socketLabel(this.#publicHandle, a);
    if (a.kind === 'unix') chmodSync(a.path, parseInt(this.config.pool.socketMode, 8));
    // The bound socket reaches every worker as fd PUBLIC_FD (uWSGI's pre-fork model: the master
    // binds, the workers accept); a dead worker never takes it down, so nothing is refused meanwhile.
    cluster.setupPrimary({ exec: WORKER_MAIN, args: [], execArgv: workerExecArgv(), stdio: [0, 1, 2, 'ipc', this.#publicHandle.fd] });
    const initial = this.config.pool.cheaper.enabled ? this.config.pool.cheaper.min : this.#slots.length;
    const started = this.#slots.slice(0, initial).map((_, i) => this.#spawn(i + 1, 0));
    await Promise.all(started.map((w) => w.ready));
    this.#harakiriTimer = setInterval(() => this.#checkHarakiri(), 250);
    this.#harakiriTimer.unref();
    if (this.config.pool.cheaper.enabled) {
      this.#cheaperTimer = setInterval(() => this.#cheaper(), 1000);
      this.#cheaperTimer.unref();
    }
  }

  #spawn(id: number, respawns: number): WorkerRecord {
    const generation = this.#generation;
    const spec: WorkerSpec = {
      id,
      generation,
      app: { module: path.resolve(this.config.app.module!), export: this.config.app.export },
      publicFd: PUBLIC_FD,
      privatePath: path.join(this.runDir, `w${id}-${generation}-${respawns}-${Date.now() % 1e6}.sock`),
      maxVarsSize: this.config.pool.bufferSize,
      socketTimeoutMs: this.config.pool.socketTimeout * 1000,
      maxRequests: this.config.pool.maxRequests,
      statusIntervalMs: 500,
      tracing: this.config.tracing,
    };
    const worker = cluster.fork({ [WORKER_ENV]: JSON.stringify(spec) });
    const client = new UwsgiClient({ kind: 'unix', path: spec.privatePath }, {
      negotiate: true,
      connectTimeoutMs: this.config.proxy.connectTimeout * 1000,
      readTimeoutMs: this.config.proxy.readTimeout * 1000,
      maxIdle: this.config.pool.maxInflight,
    });
    let markReady!: () => void;
    let markFailed!: (err: Error) => void;
    const rec: WorkerRecord = {
      id, pid: worker.process.pid ?? 0, generation, state: 'starting', worker, client,
      inflight: 0, requests: 0, workerInflight: 0, exceptions: 0, harakiri: 0, rss: 0, totalMs: 0, eventLoopP99Ms: 0,
      startedAt: Date.now(), respawns, foreign: new Map(), exitExpected: false, recycling: false, onIdle: null,
      ready: new Promise<void>((res, rej) => { markReady = res; markFailed = rej; }),
    };
    rec.ready.catch(() => {});
    this.#slots[id - 1] = rec;
    this.#byWorker.set(worker, rec);
    this.#live.add(rec);
    worker.on('message', (msg: WorkerMessage) => this.#onMessage(rec, msg, markReady, markFailed));
    // An IPC send to a worker that is exiting fails with EPIPE, emitted here: the exit handler
    // does what is needed; without a listener the error would take the master down.
    worker.on('error', (err: NodeJS.ErrnoException) => this.log.debug({ worker: id, code: err.code }, 'worker channel error'));
    worker.on('exit', (code, signal) => {
      markFailed(new PoolUnavailable());
      this.#onExit(rec, code, signal);
    });
    return rec;
  }

  #onMessage(rec: WorkerRecord, msg: WorkerMessage, markReady: () => void, markFailed: (e: Error) => void): void {
    switch (msg.type) {
      case 'ready': {
        if (this.#drainOnReady.has(rec)) {
          // Told to drain while it was starting (a stop during start-up): it could not hear it then.
          this.#drainOnReady.delete(rec);
          this.#sendDrain(rec);
        } else rec.state = 'idle';
        markReady();
        this.log.debug({ worker: rec.id, pid: rec.pid }, 'worker ready');
        this.emit('worker-ready', rec);
        this.#pump();
        break;
      }
      case 'status':
        rec.requests = msg.requests;
        rec.workerInflight = msg.inflight;
        rec.exceptions = msg.exceptions;
        rec.rss = msg.rss;
        rec.totalMs = msg.totalMs;
        rec.eventLoopP99Ms = msg.eventLoopP99Ms;
        if (rec.state !== 'draining' && rec.state !== 'starting') rec.state = rec.inflight + msg.inflight > 0 ? 'busy' : 'idle';
        if (this.config.pool.reloadOnRss > 0 && msg.rss > this.config.pool.reloadOnRss * 1024 * 1024 && rec.state !== 'draining') {
          this.log.info({ worker: rec.id, pid: rec.pid, rss: msg.rss }, 'worker passed reload-on-rss: recycling');
          this.recycle(rec, 'reload-on-rss');
        }
        break;
      case 'foreign-start':
        rec.foreign.set(msg.rid, { method: msg.method, path: msg.path, requestId: msg.requestId, at: msg.at });
        break;
      case 'foreign-end':
        rec.foreign.delete(msg.rid);
        break;
      case 'recycle':
        if (rec.state !== 'draining') this.recycle(rec, msg.reason);
        break;
      case 'metrics': {
        const waiter = this.#metricWaiters.get(msg.seq);
        waiter?.(msg.metrics);
        break;
      }
      case 'fatal':
        this.log.error({ worker: rec.id, pid: rec.pid, code: msg.code }, `worker failed to start: ${msg.message}`);
        markFailed(Object.assign(new Error(msg.message), { code: msg.code }));
        this.emit('worker-fatal', rec, msg);
        break;
    }
  }

  #onExit(rec: WorkerRecord, code: number | null, signal: string | null): void {
    this.#byWorker.delete(rec.worker);
    this.#live.delete(rec);
    rec.client.close();
    const wasCurrent = this.#slots[rec.id - 1] === rec;
    const expected = rec.exitExpected;
    if (!expected) this.log.warn({ worker: rec.id, pid: rec.pid, code, signal }, 'worker died');
    this.emit('worker-exit', rec, { code, signal, expected });
    if (!wasCurrent || this.#stopping) {
      if (wasCurrent) this.#slots[rec.id - 1] = null;
      this.#pump();
      return;
    }
    this.#slots[rec.id - 1] = null;
    // Respawn at once; a crash loop (a second death soon after start, and on) backs off
    // exponentially, capped. One death (kill -9, OOM) is not a loop: its replacement goes at once.
    const streak = this.#crashStreak.get(rec.id) ?? { count: 0, last: 0 };
    const crashedYoung = !expected && Date.now() - rec.startedAt < 5_000;
    streak.count = crashedYoung ? streak.count + 1 : 0;
    streak.last = Date.now();
    this.#crashStreak.set(rec.id, streak);
    const delay = streak.count <= 1 ? 0 : Math.min(100 * 2 ** (streak.count - 2), 10_000);
    if (delay > 0) this.log.error({ worker: rec.id, crashes: streak.count, delayMs: delay }, 'worker crash loop: backing off');
    this.#respawns++;
    const respawn = () => {
      if (this.#stopping || this.#slots[rec.id - 1]) return;
      this.#spawn(rec.id, rec.respawns + 1);
    };
    if (delay === 0) respawn();
    else setTimeout(respawn, delay).unref();
  }

  /**
   * Graceful recycle: the replacement starts first while this worker keeps serving; once it is
   * ready, this one drains. If the replacement cannot start (say a reload with broken code), the
   * old worker stays and the recycle reports false.
   */
  recycle(rec: WorkerRecord, reason: string): Promise<boolean> {
    if (rec.state === 'draining' || rec.recycling || this.#slots[rec.id - 1] !== rec) return Promise.resolve(true);
    rec.recycling = true;
    this.log.info({ worker: rec.id, pid: rec.pid, reason }, 'recycling worker');
    const next = this.#spawn(rec.id, rec.respawns + 1);
    return next.ready.then(
      () => {
        this.#recycles++;
        this.#drain(rec);
        return new Promise<boolean>((resolve) => {
          if (rec.worker.isDead()) resolve(true);
          else rec.worker.once('exit', () => resolve(true));
        });
      },
      () => {
        // The new worker died before it was ready: put the old one back in its slot.
        if (this.#slots[rec.id - 1] === next) this.#slots[rec.id - 1] = rec;
        rec.recycling = false;
        // A worker recycled for max-requests is kept: it serves again, its count starting over.
        this.#dispatched.delete(rec);
        if (!next.worker.isDead()) next.worker.process.kill('SIGKILL');
        this.log.error({ worker: rec.id, pid: rec.pid, reason }, 'replacement worker failed to start: keeping the old one');
        return false;
      },
    );
  }

  #drain(rec: WorkerRecord): void {
    // Once: a stop and a recycle finishing may both ask; the second must not message a gone worker.
    if (rec.exitExpected) return;
    const starting = rec.state === 'starting';
    rec.state = 'draining';
    rec.exitExpected = true;
    const graceMs = this.config.pool.gracefulTimeout * 1000;
    // No new request goes to a draining worker. Tell it to drain only once the requests our
    // proxy already sent are answered, so none is in transit on a connection it closes.
    const send = () => {
      rec.client.close();
      this.#sendDrain(rec);
    };
    if (starting) this.#drainOnReady.add(rec);
    else if (rec.inflight === 0) send();
    else rec.onIdle = send;
    // Whatever happens inside, the worker is gone after the grace period.
    setTimeout(() => {
      if (!rec.worker.isDead()) rec.worker.process.kill('SIGKILL');
    }, graceMs + 2_000).unref();
  }

  #sendDrain(rec: WorkerRecord): void {
    const kill = () => {
      if (!rec.worker.isDead()) rec.worker.process.kill('SIGKILL');
    };
    if (!rec.worker.isConnected()) return kill();
    // With a callback, a failed send reports here instead of as an 'error' event nobody handles.
    rec.worker.send({ type: 'drain', graceMs: this.config.pool.gracefulTimeout * 1000 } satisfies MasterMessage, undefined, (err) => {
      if (err) kill();
    });
  }

  /** Rolling reload: replace workers one by one with freshly loaded code; none fails a request. */
  async reload(): Promise<void> {
    this.#reloads++;
    this.#generation++;
    this.log.info({ generation: this.#generation }, 'rolling reload');
    for (const rec of [...this.workers]) {
      if (rec.state === 'draining') continue;
      if (!(await this.recycle(rec, 'reload'))) {
        this.log.error('rolling reload stopped: the new code does not start; the running workers keep the old code');
        return;
      }
    }
  }

  /** Kill a worker at once (harakiri); its slot is refilled by the exit handler. */
  kill(rec: WorkerRecord, why: string): void {
    this.#suspects.add(rec);
    this.log.warn({ worker: rec.id, pid: rec.pid, why }, 'killing worker');
    rec.worker.process.kill('SIGKILL');
  }

  /**
   * A request on this worker failed at the connection level (refused, or reset before its
   * answer): the worker may be dead (kill -9, OOM killer) before its exit reaches us, and least
   * in-flight would send it every next request. It takes none until a probe connection to its
   * socket is accepted; a refused probe keeps it out, and it is killed if it has not exited in 1 s.
   */
  suspect(rec: WorkerRecord): void {
    if (this.#suspects.has(rec) || (rec.state !== 'idle' && rec.state !== 'busy') || rec.worker.isDead()) return;
    this.#suspects.add(rec);
    const a = rec.client.address;
    const probe = a.kind === 'unix' ? net.connect({ path: a.path }) : net.connect({ host: a.host, port: a.port });
    probe.setTimeout(1_000);
    const alive = () => {
      probe.destroy();
      this.#suspects.delete(rec);
      this.#pump();
    };
    probe.once('connect', alive);
    probe.once('timeout', alive);
    probe.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'ECONNREFUSED' && err.code !== 'ENOENT') return alive();
      setTimeout(() => {
        if (!rec.worker.isDead()) this.kill(rec, 'its socket refuses connections');
      }, 1_000).unref();
    });
  }

  noteHarakiri(rec: WorkerRecord, info: { method: string; path: string; requestId: string }): void {
    this.#suspects.add(rec);
    rec.harakiri++;
    this.#harakiriKills++;
    this.log.error({ worker: rec.id, pid: rec.pid, method: info.method, path: info.path, requestId: info.requestId, harakiri: this.config.pool.harakiri }, 'harakiri: request ran past its limit, killing worker');
    this.emit('harakiri', rec, info);
    rec.worker.process.kill('SIGKILL');
  }

  /**
   * uWSGI's cheaper ("spare" algorithm): when every running worker is busy or requests wait in
   * the queue, add one worker (up to max); after 10 s in which some worker stayed idle, retire
   * one (down to min). One step a second, so the pool follows load without flapping.
   */
  #cheaper(): void {
    if (this.#stopping) return;
    const active = this.workers.filter((w) => w.state !== 'draining' && !w.recycling);
    const running = active.filter((w) => w.state === 'idle' || w.state === 'busy');
    const allBusy = running.length > 0 && running.every((w) => w.inflight + w.workerInflight > 0);
    if ((allBusy || this.#queue.length > 0) && active.length < this.#slots.length) {
      const free = this.#slots.findIndex((w) => w === null);
      if (free >= 0) {
        this.log.info({ workers: active.length + 1 }, 'cheaper: load is up, adding a worker');
        this.#spawn(free + 1, 0);
      }
      this.#idleSince = 0;
      return;
    }
    const idle = running.filter((w) => w.inflight + w.workerInflight === 0);
    if (idle.length === 0 || active.length <= this.config.pool.cheaper.min) {
      this.#idleSince = 0;
      return;
    }
    const now = Date.now();
    if (this.#idleSince === 0) this.#idleSince = now;
    if (now - this.#idleSince < 10_000) return;
    this.#idleSince = now;
    // Retire the highest slot that is idle, so low slots stay warm.
    const victim = idle.sort((a, b) => b.id - a.id)[0]!;
    this.log.info({ worker: victim.id, pid: victim.pid, workers: active.length - 1 }, 'cheaper: load is down, retiring a worker');
    this.#slots[victim.id - 1] = null;
    this.#drain(victim);
  }

  #checkHarakiri(): void {
    const limit = this.config.pool.harakiri * 1000;
    if (limit <= 0) return;
    const now = Date.now();
    for (const rec of this.workers) {
      for (const [, r] of rec.foreign) {
        if (now - r.at > limit) {
          this.noteHarakiri(rec, r);
          break;
        }
      }
    }
  }

  // --- dispatch: least in-flight, bounded listen queue ------------------------------------

  /** A worker with spare capacity, least in flight first, or null. */
  #pick(): WorkerRecord | null {
    let best: WorkerRecord | null = null;
    const cap = this.config.pool.maxInflight;
    for (const rec of this.#live) {
      if ((rec.state !== 'idle' && rec.state !== 'busy') || rec.inflight >= cap || this.#suspects.has(rec) || this.#spent(rec)) continue;
      if (!best || rec.inflight < best.inflight) best = rec;
    }
    return best;
  }

  /**
   * Reserve a slot on a worker. Resolves at once when one has capacity; otherwise waits in the
   * bounded queue; when the queue is full, rejects at once with 503 (PoolOverloaded).
   */
  acquire(timeoutMs: number): Promise<WorkerRecord> | WorkerRecord {
    if (this.#queue.length === 0) {
      const rec = this.#pick();
      if (rec) {
        this.#take(rec);
        return rec;
      }
    }
    if (this.#stopping) return Promise.reject(new PoolUnavailable());
    if (this.#queue.length >= this.config.pool.listen) {
      this.#rejected++;
      this.emit('rejected');
      return Promise.reject(new PoolOverloaded(this.#queue.length));
    }
    return new Promise<WorkerRecord>((resolve, reject) => {
      const waiter: Waiter = { resolve, reject, timer: null };
      waiter.timer = setTimeout(() => {
        const i = this.#queue.indexOf(waiter);
        if (i >= 0) this.#queue.splice(i, 1);
        reject(new PoolUnavailable());
      }, timeoutMs);
      this.#queue.push(waiter);
    });
  }

  release(rec: WorkerRecord): void {
    rec.inflight--;
    if (rec.inflight === 0 && rec.onIdle) {
      const idle = rec.onIdle;
      rec.onIdle = null;
      idle();
    }
    if (rec.state === 'busy' && rec.inflight === 0 && rec.workerInflight === 0) rec.state = 'idle';
    this.#pump();
  }

  #take(rec: WorkerRecord): void {
    rec.inflight++;
    if (rec.state === 'idle') rec.state = 'busy';
    const max = this.config.pool.maxRequests;
    if (max > 0) {
      // max-requests counts what we send: a worker gets exactly N, not N plus whatever was
      // dispatched before its own count reached us over IPC.
      const n = (this.#dispatched.get(rec) ?? 0) + 1;
      this.#dispatched.set(rec, n);
      if (n === max) void this.recycle(rec, 'max-requests');
    }
  }

  /** The worker has been given its max-requests: it finishes them, takes no more. */
  #spent(rec: WorkerRecord): boolean {
    const max = this.config.pool.maxRequests;
    return max > 0 && (this.#dispatched.get(rec) ?? 0) >= max;
  }

  #pump(): void {
    while (this.#queue.length > 0) {
      const rec = this.#pick();
      if (!rec) return;
      const waiter = this.#queue.shift()!;
      if (waiter.timer) clearTimeout(waiter.timer);
      this.#take(rec);
      waiter.resolve(rec);
    }
  }

  /** Every live worker's process metrics (prom-client JSON), gathered over IPC; 1 s at most. */
  async collectWorkerMetrics(): Promise<unknown[][]> {
    const live = this.workers.filter((w) => w.state !== 'starting' && !w.worker.isDead());
    const replies = live.map((rec) => new Promise<unknown[] | null>((resolve) => {
      const seq = ++this.#metricSeq;
      const timer = setTimeout(() => {
        this.#metricWaiters.delete(seq);
        resolve(null);
      }, 1000);
      this.#metricWaiters.set(seq, (m) => {
        clearTimeout(timer);
        this.#metricWaiters.delete(seq);
        resolve(m);
      });
      try {
        rec.worker.send({ type: 'metrics', seq } satisfies MasterMessage);
      } catch {
        clearTimeout(timer);
        this.#metricWaiters.delete(seq);
        resolve(null);
      }
    }));
    return (await Promise.all(replies)).filter((m): m is unknown[] => m !== null);
  }

  get queueLength(): number {
    return this.#queue.length;
  }

  stats(): PoolStats {
    return {
      workers: this.workers.map((w) => ({
        id: w.id, pid: w.pid, state: w.state, requests: w.requests, inflight: Math.max(w.inflight, w.workerInflight),
        exceptions: w.exceptions, harakiri: w.harakiri, rss: w.rss,
        avgMs: w.requests > 0 ? Math.round((w.totalMs / w.requests) * 100) / 100 : 0,
        startedAt: new Date(w.startedAt).toISOString(), respawns: w.respawns, generation: w.generation,
      })),
      queue: this.#queue.length,
      queueLimit: this.config.pool.listen,
      rejected: this.#rejected,
      reloads: this.#reloads,
      respawns: this.#respawns,
      harakiriKills: this.#harakiriKills,
      recycles: this.#recycles,
      socket: this.publicLabel,
    };
  }

  get counters() {
    return { rejected: this.#rejected, reloads: this.#reloads, respawns: this.#respawns, harakiriKills: this.#harakiriKills, recycles: this.#recycles };
  }

  /** SIGTERM: stop taking work, let every worker finish what it has, within the grace period. */
  async stop(): Promise<void> {
    this.#stopping = true;
    if (this.#harakiriTimer) clearInterval(this.#harakiriTimer);
    if (this.#cheaperTimer) clearInterval(this.#cheaperTimer);
    for (const w of this.#queue.splice(0)) {
      if (w.timer) clearTimeout(w.timer);
      w.reject(new PoolUnavailable());
    }
    const exits = this.workers.map((rec) => new Promise<void>((resolve) => {
      if (rec.worker.isDead()) return resolve();
      rec.worker.once('exit', () => resolve());
      this.#drain(rec);
    }));
    await Promise.all(exits);
    try {
      rmSync(this.runDir, { recursive: true, force: true });
    } catch {}
    this.#publicHandle?.close(); // a Unix socket file goes with it
    this.#publicHandle = null;
  }
}

/**
 * Bind (without listening) the way the cluster module's primary does, with Node's own
 * net._createServerHandle: the master never accepts; workers call listen() on their copies.
 */
interface BoundSocket {
  fd: number;
  close(): void;
  getsockname?(out: Record<string, unknown>): number;
}

function bindSocket(a: Address): BoundSocket {
  const create = (net as unknown as { _createServerHandle(address: string, port: number, addressType: number): BoundSocket | number })._createServerHandle;
  const h = a.kind === 'unix' ? create(a.path, -1, -1) : create(a.host, a.port, net.isIPv6(a.host) ? 6 : 4);
  if (typeof h === 'number') {
    const code = util.getSystemErrorName(h);
    const where = a.kind === 'unix' ? a.path : `${a.host}:${a.port}`;
    throw Object.assign(new Error(`listen ${code}: ${where}`), { code, syscall: 'listen', address: a.kind === 'unix' ? a.path : a.host, port: a.kind === 'unix' ? undefined : a.port });
  }
  return h;
}

function socketLabel(h: BoundSocket, a: Address): string {
  if (a.kind === 'unix') return `unix:${a.path}`;
  const out: Record<string, unknown> = {};
  h.getsockname?.(out);
  return `tcp:${a.host}:${(out.port as number | undefined) ?? a.port}`;
}

/** A socket file nobody listens on (a previous run's) is removed; a live one is left alone. */
async function removeStaleSocket(p: string): Promise<void> {
  if (!existsSync(p)) return;
  const live = await new Promise<boolean>((resolve) => {
    const c = net.connect({ path: p });
    c.once('connect', () => { c.destroy(); resolve(true); });
    c.once('error', () => resolve(false));
  });
  if (!live) unlinkSync(p);
}
