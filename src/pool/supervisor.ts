// The master's side of the worker pool (uWSGI's master): the workers' process lifecycle. It forks
// workers with the cluster module in SCHED_NONE mode — the listeners are bound once in the master
// (sockets.ts) and every worker accepts on them — and keeps them: respawn with capped back-off,
// graceful recycling, rolling reload, drain on stop. What it watches them for is in checks.ts;
// how requests from a front in the master wait for and pick a worker, in dispatch.ts.

import cluster, { type Worker } from 'node:cluster';
import { EventEmitter } from 'node:events';
import { chmodSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { parseAddress, type Address, type StratumConfig } from '../config/schema.ts';
import { PoolUnavailable } from '../errors.ts';
import type { WorkerDispatch, WorkerSlot } from '../proxy/upstream-pool.ts';
import { UwsgiClient } from '../uwsgi/client.ts';
import { MasterChecks, type CheckedPool } from './checks.ts';
import { Dispatcher, type Ticket } from './dispatch.ts';
import { harakiriNotePath, type HarakiriNote } from './harakiri.ts';
import {
  serializeConfig,
  WORKER_ENV,
  type MasterMessage,
  type Question,
  type WorkerMessage,
  type WorkerSpec,
  type WorkerStatus,
} from './ipc.ts';
import { bindSocket, boundPort, removeStaleSocket, socketLabel, type BoundSocket } from './sockets.ts';
import {
  mergeUpstreamHealth,
  workerRow,
  type PoolCounters,
  type PoolStats,
  type UpstreamHealth,
  type WorkerState,
} from './stats.ts';

export type { PoolStats, WorkerState } from './stats.ts';

export interface WorkerRecord extends WorkerSlot {
  id: number;
  pid: number;
  generation: number;
  state: WorkerState;
  worker: Worker;
  client: UwsgiClient;
  /** Requests the master's front has in flight on this worker (authoritative for balancing). */
  inflight: number;
  /** The worker's own last report. */
  status: WorkerStatus;
  statusAt: number;
  harakiri: number;
  startedAt: number;
  respawns: number;
  exitExpected: boolean;
  /** A replacement is starting; this worker keeps serving until it is ready. */
  recycling: boolean;
  /** Set while draining: called once the master's front has nothing in flight on this worker. */
  onIdle: (() => void) | null;
  ready: Promise<void>;
}

/** Where the shared uwsgi socket and the front listener sit in every worker's descriptor table (past stdio and IPC). */
const PUBLIC_FD = 4;
const FRONT_FD = 5;
// The worker runs the same build as the master: worker.ts beside supervisor.ts (sources), or
// worker.js beside supervisor.js (the production build in dist/).
const WORKER_MAIN = fileURLToPath(
  new URL(import.meta.url.endsWith('.ts') ? './worker.ts' : './worker.js', import.meta.url),
);

/**
 * The master's Node options, plus a cap on the workers' young generation unless one is given.
 * Left to itself V8 doubles it under load, in steps tens of seconds apart, up to 32 MiB: a worker's RSS
 * then climbs ~12 MiB in the middle of a soak (`npm run bench -- --soak`) although nothing leaks.
 * At 4 MiB semi-spaces it reaches its size within seconds of load and stays there.
 */
function workerExecArgv(): string[] {
  const given = [...process.execArgv, process.env.NODE_OPTIONS ?? ''].some((a) => /semi[-_]space/.test(a));
  return given ? process.execArgv : [...process.execArgv, '--max-semi-space-size=4'];
}

const NO_STATUS: WorkerStatus = {
  requests: 0,
  inflight: 0,
  exceptions: 0,
  rss: 0,
  totalMs: 0,
  heapUsed: 0,
  eventLoopP99Ms: 0,
  harakiriTimeouts: 0,
  queued: 0,
  rejected: 0,
  upstreams: [],
};

/** Which app a pool hosts (apps.ts): its name, the processes' working directory and environment. */
export interface PoolApp {
  name: string;
  cwd: string | null;
  env: Record<string, string>;
  /** Every http app's uwsgi socket by name ('' = the default app), for a front that runs in the workers. */
  pools: () => Record<string, Address>;
}

export class Supervisor extends EventEmitter implements WorkerDispatch, CheckedPool<WorkerRecord> {
  /** Replaced by reconfigure() and setRoutes() at a config reload; read at every spawn. */
  config: StratumConfig;
  readonly log: Logger;
  readonly app: PoolApp;
  /** Bumped by setRoutes(): a worker spawned before it is sent the routes once it is ready. */
  #routesVersion = 0;
  #workerRoutes = new WeakMap<WorkerRecord, number>();
  readonly runDir: string;
  readonly publicAddress: Address;
  publicLabel: string | null = null;
  readonly dispatcher: Dispatcher<WorkerRecord>;
  #checks: MasterChecks<WorkerRecord>;
  #slots: Array<WorkerRecord | null>;
  #live = new Set<WorkerRecord>();
  #counters: PoolCounters = {
    rejected: 0,
    reloads: 0,
    respawns: 0,
    harakiriKills: 0,
    harakiriTimeouts: 0,
    recycles: 0,
    exceptions: 0,
  };
  /** Soft harakiri answers and queue refusals of workers that are gone (their own counts went with them). */
  #pastTimeouts = 0;
  #pastRejected = 0;
  #pastExceptions = 0;
  #crashStreak = new Map<number, { count: number; last: number }>();
  #stopping = false;
  #generation = 0;
  #timers: NodeJS.Timeout[] = [];
  #seq = 0;
  #replies = new Map<number, (data: unknown) => void>();
  /** Workers whose connection just failed a request: no new request until known alive. */
  #suspects = new WeakSet<WorkerRecord>();
  /** Workers told to drain before they were ready. */
  #drainOnReady = new WeakSet<WorkerRecord>();
  /** The shared uwsgi socket, bound by the master and held for the pool's whole life. */
  #publicHandle: BoundSocket | null = null;
  /** The front listener the workers accept on (worker topology), bound by the appliance. */
  #front: BoundSocket | null;

  constructor(config: StratumConfig, log: Logger, front: BoundSocket | null = null, app?: PoolApp) {
    super();
    this.config = config;
    this.app = app ?? { name: 'default', cwd: null, env: {}, pools: () => ({}) };
    this.log = app ? log.child({ app: app.name }) : log;
    this.#front = front;
    this.runDir = mkdtempSync(path.join(os.tmpdir(), 'stratum-'));
    const socket = config.pool.socket;
    this.publicAddress =
      socket === null
        ? { kind: 'unix', path: path.join(this.runDir, 'pool.sock') }
        : parseAddress(socket, 'pool.socket');
    // Slots up to the most workers the pool may run; with cheaper, only `min` start.
    const max = config.pool.cheaper.enabled ? (config.pool.cheaper.max ?? config.pool.workers) : config.pool.workers;
    this.#slots = new Array<WorkerRecord | null>(max).fill(null);
    this.#checks = new MasterChecks(this, config.pool);
    this.dispatcher = new Dispatcher<WorkerRecord>(
      { pick: () => this.#pick(), take: (rec) => this.#take(rec) },
      config.pool.listen,
    );
    this.dispatcher.onRejected = () => {
      this.#counters.rejected++;
      this.emit('rejected');
    };
  }

  /** Every live worker: the current one of each slot, plus old ones still serving or draining. */
  get workers(): WorkerRecord[] {
    return [...this.#live].sort((a, b) => a.id - b.id || a.startedAt - b.startedAt);
  }

  /** Where the uwsgi socket is, with the port the OS picked (once started). */
  get boundAddress(): Address {
    const a = this.publicAddress;
    return a.kind === 'tcp' && this.#publicHandle ? { ...a, port: boundPort(this.#publicHandle, a) } : a;
  }

  get slots(): number {
    return this.#slots.length;
  }

  get size(): number {
    return this.config.pool.workers;
  }

  async start(): Promise<void> {
    const a = this.publicAddress;
    if (a.kind === 'unix') await removeStaleSocket(a.path);
    this.#publicHandle = bindSocket(a);
    this.publicLabel = socketLabel(this.#publicHandle, a);
    if (a.kind === 'unix') chmodSync(a.path, parseInt(this.config.pool.socketMode, 8));
    const initial = this.config.pool.cheaper.enabled ? this.config.pool.cheaper.min : this.#slots.length;
    const started = this.#slots.slice(0, initial).map((_, i) => this.#spawn(i + 1, 0));
    await Promise.all(started.map((w) => w.ready));
    const fast = setInterval(() => this.#checks.tick(Date.now()), 250);
    const slow = setInterval(() => this.#checks.slowTick(Date.now()), 1000);
    for (const t of [fast, slow]) t.unref();
    this.#timers.push(fast, slow);
  }

  #spawn(id: number, respawns: number): WorkerRecord {
    const generation = this.#generation;
    const spec: WorkerSpec = {
      id,
      generation,
      topology: this.config.topology,
      app: { module: path.resolve(this.config.app.module!), export: this.config.app.export, name: this.app.name },
      pools: this.app.pools(),
      publicFd: PUBLIC_FD,
      frontFd: this.#front ? FRONT_FD : -1,
      privatePath: path.join(this.runDir, `w${id}-${generation}-${respawns}-${Date.now() % 1e6}.sock`),
      runDir: this.runDir,
      maxRequests: this.config.pool.maxRequests,
      statusIntervalMs: 500,
      config: serializeConfig(this.config),
    };
    // The cluster's settings are global: set for this pool right before its fork (both synchronous),
    // since every pool has its own uwsgi socket, working directory and environment.
    const stdio = [0, 1, 2, 'ipc', this.#publicHandle!.fd, ...(this.#front ? [this.#front.fd] : [])];
    cluster.setupPrimary({
      exec: WORKER_MAIN,
      args: [],
      execArgv: workerExecArgv(),
      stdio,
      // Always set: the cluster merges each call's settings into the last, so another app's cwd would stay.
      cwd: this.app.cwd ?? process.cwd(),
    });
    const worker = cluster.fork({ ...this.app.env, [WORKER_ENV]: JSON.stringify(spec), ...acceptEnv() });
    const client = new UwsgiClient(
      { kind: 'unix', path: spec.privatePath },
      {
        negotiate: true,
        connectTimeoutMs: this.config.proxy.connectTimeout * 1000,
        readTimeoutMs: this.config.proxy.readTimeout * 1000,
        maxIdle: this.config.pool.maxInflight,
      },
    );
    let markReady!: () => void;
    let markFailed!: (err: Error) => void;
    const rec: WorkerRecord = {
      id,
      pid: worker.process.pid ?? 0,
      generation,
      state: 'starting',
      worker,
      client,
      inflight: 0,
      status: { ...NO_STATUS },
      statusAt: Date.now(),
      harakiri: 0,
      startedAt: Date.now(),
      respawns,
      exitExpected: false,
      recycling: false,
      onIdle: null,
      ready: new Promise<void>((res, rej) => {
        markReady = res;
        markFailed = rej;
      }),
    };
    rec.ready.catch(() => {});
    this.#slots[id - 1] = rec;
    this.#live.add(rec);
    this.#workerRoutes.set(rec, this.#routesVersion);
    worker.on('message', (msg: WorkerMessage) => this.#onMessage(rec, msg, markReady, markFailed));
    // An IPC send to a worker that is exiting fails with EPIPE, emitted here: the exit handler
    // does what is needed; without a listener the error would take the master down.
    worker.on('error', (err: NodeJS.ErrnoException) =>
      this.log.debug({ worker: id, code: err.code }, 'worker channel error'),
    );
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
        rec.statusAt = Date.now();
        if (this.#workerRoutes.get(rec) !== this.#routesVersion) this.#sendRoutes(rec);
        markReady();
        this.log.debug({ worker: rec.id, workerPid: rec.pid }, 'worker ready');
        this.emit('worker-ready', rec);
        this.dispatcher.pump();
        break;
      }
      case 'status': {
        const { type: _t, ...status } = msg;
        rec.status = status;
        rec.statusAt = Date.now();
        if (rec.state !== 'draining' && rec.state !== 'starting')
          rec.state = rec.inflight + msg.inflight > 0 ? 'busy' : 'idle';
        this.#checks.onStatus(rec);
        break;
      }
      case 'recycle':
        // A worker broken by an uncaught exception takes no new request from the master's front.
        if (msg.reason === 'exception') this.#suspects.add(rec);
        if (rec.state !== 'draining') void this.recycle(rec, msg.reason);
        break;
      case 'reply':
        this.#replies.get(msg.seq)?.(msg.data);
        break;
      case 'final':
        this.emit('worker-final', rec, msg.data);
        break;
      case 'fatal':
        this.log.error(
          { worker: rec.id, workerPid: rec.pid, code: msg.code },
          `worker failed to start: ${msg.message}`,
        );
        markFailed(Object.assign(new Error(msg.message), { code: msg.code }));
        this.emit('worker-fatal', rec, msg);
        break;
    }
  }

  #onExit(rec: WorkerRecord, code: number | null, signal: string | null): void {
    this.#live.delete(rec);
    rec.client.close();
    this.#pastTimeouts += rec.status.harakiriTimeouts;
    this.#pastRejected += rec.status.rejected;
    this.#pastExceptions += rec.status.exceptions;
    const note = this.#harakiriNote(rec);
    const wasCurrent = this.#slots[rec.id - 1] === rec;
    const expected = rec.exitExpected;
    if (!expected && !note) this.log.warn({ worker: rec.id, workerPid: rec.pid, code, signal }, 'worker died');
    this.emit('worker-exit', rec, { code, signal, expected });
    if (!wasCurrent || this.#stopping) {
      if (wasCurrent) this.#slots[rec.id - 1] = null;
      this.dispatcher.pump();
      return;
    }
    this.#slots[rec.id - 1] = null;
    // Respawn at once; a crash loop (a second death soon after start, and on) backs off
    // exponentially, capped. One death (kill -9, OOM, harakiri) is not a loop: its replacement goes at once.
    const streak = this.#crashStreak.get(rec.id) ?? { count: 0, last: 0 };
    const crashedYoung = !expected && !note && Date.now() - rec.startedAt < 5_000;
    streak.count = crashedYoung ? streak.count + 1 : 0;
    streak.last = Date.now();
    this.#crashStreak.set(rec.id, streak);
    const delay = streak.count <= 1 ? 0 : Math.min(100 * 2 ** (streak.count - 2), 10_000);
    if (delay > 0)
      this.log.error({ worker: rec.id, crashes: streak.count, delayMs: delay }, 'worker crash loop: backing off');
    this.#counters.respawns++;
    const respawn = () => {
      if (this.#stopping || this.#slots[rec.id - 1]) return;
      this.#spawn(rec.id, rec.respawns + 1);
    };
    if (delay === 0) respawn();
    else setTimeout(respawn, delay).unref();
  }

  /** The watchdog's note, if this worker killed itself for harakiri: counted once, here. */
  #harakiriNote(rec: WorkerRecord): HarakiriNote | null {
    const file = harakiriNotePath(this.runDir, rec.pid);
    let note: HarakiriNote;
    try {
      note = JSON.parse(readFileSync(file, 'utf8')) as HarakiriNote;
      rmSync(file, { force: true });
    } catch {
      return null;
    }
    this.#countHarakiri(rec, note.requests, `event loop blocked for ${note.blockedMs} ms`);
    return note;
  }

  #countHarakiri(rec: WorkerRecord, requests: string[], why: string): void {
    // A process dies once: the last-resort kill and a watchdog note of that same death count once.
    if (rec.harakiri > 0) return;
    this.#suspects.add(rec);
    rec.harakiri++;
    this.#counters.harakiriKills++;
    this.log.error(
      { worker: rec.id, workerPid: rec.pid, requests, harakiri: this.config.pool.harakiri, why },
      'harakiri: request ran past its limit, worker killed',
    );
    this.emit('harakiri', rec, { requests });
  }

  /**
   * Graceful recycle: the replacement starts first while this worker keeps serving; once it is
   * ready, this one drains. If the replacement cannot start (say a reload with broken code), the
   * old worker stays and the recycle reports false.
   */
  recycle(rec: WorkerRecord, reason: string): Promise<boolean> {
    if (rec.state === 'draining' || rec.recycling || this.#slots[rec.id - 1] !== rec) return Promise.resolve(true);
    rec.recycling = true;
    this.log.info({ worker: rec.id, workerPid: rec.pid, reason }, 'recycling worker');
    const next = this.#spawn(rec.id, rec.respawns + 1);
    return next.ready.then(
      () => {
        this.#counters.recycles++;
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
        this.#checks.forgive(rec);
        if (!next.worker.isDead()) next.worker.process.kill('SIGKILL');
        this.log.error(
          { worker: rec.id, workerPid: rec.pid, reason },
          'replacement worker failed to start: keeping the old one',
        );
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
    // No new request goes to a draining worker. Tell it to drain only once the requests the
    // master's front already sent are answered, so none is in transit on a connection it closes.
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
    // On stop, idle kept client connections close at once (as nginx's do on quit); on a recycle they
    // get a second of quiet first, so a client about to reuse one is not cut mid-send.
    const idleMs = this.#stopping ? 0 : 1000;
    rec.worker.send(
      { type: 'drain', graceMs: this.config.pool.gracefulTimeout * 1000, idleMs } satisfies MasterMessage,
      undefined,
      (err) => {
        if (err) kill();
      },
    );
  }

  /**
   * A config reload changed this app's settings: what the next workers are spawned with. The slots
   * follow the new worker count (a slot past it is retired once its worker is replaced); the
   * caller rolls the workers with reload(). The uwsgi socket stays: a new socket is a new pool (apps.ts).
   */
  reconfigure(config: StratumConfig): void {
    this.config = config;
    const max = config.pool.cheaper.enabled ? (config.pool.cheaper.max ?? config.pool.workers) : config.pool.workers;
    const initial = config.pool.cheaper.enabled ? config.pool.cheaper.min : max;
    for (let i = this.#slots.length; i < max; i++) this.#slots.push(null);
    for (let i = max; i < this.#slots.length; i++) {
      const rec = this.#slots[i];
      if (rec) this.retire(rec);
    }
    this.#slots.length = max;
    this.#checks = new MasterChecks(this, config.pool);
    this.#initial = initial;
  }

  #initial = 0;

  /** After a reconfigure and its roll: the slots a larger worker count added get their workers. */
  async fill(): Promise<void> {
    const started: WorkerRecord[] = [];
    for (let i = 0; i < this.#initial; i++) if (!this.#slots[i] && !this.#stopping) started.push(this.#spawn(i + 1, 0));
    await Promise.all(started.map((w) => w.ready.catch(() => {})));
  }

  /**
   * New routes (and the other apps' sockets) without a restart: kept for the next workers, and sent
   * to every running one, whose front swaps its route table between two requests (worker topology).
   */
  setRoutes(config: StratumConfig): void {
    this.config = config;
    this.#routesVersion++;
    for (const rec of this.#live) if (rec.state !== 'starting') this.#sendRoutes(rec);
  }

  #sendRoutes(rec: WorkerRecord): void {
    this.#workerRoutes.set(rec, this.#routesVersion);
    if (!rec.worker.isConnected()) return;
    const msg: MasterMessage = { type: 'routes', config: serializeConfig(this.config), pools: this.app.pools() };
    rec.worker.send(msg, undefined, (err) => {
      if (err) this.log.debug({ worker: rec.id, code: (err as NodeJS.ErrnoException).code }, 'routes not sent');
    });
  }

  /** Rolling reload: replace workers one by one with freshly loaded code; none fails a request. */
  async reload(): Promise<void> {
    this.#counters.reloads++;
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

  killUnresponsive(rec: WorkerRecord, silentMs: number): void {
    if (this.#suspects.has(rec)) return;
    this.#countHarakiri(rec, [], `no status report for ${silentMs} ms (event loop blocked, watchdog silent)`);
    rec.worker.process.kill('SIGKILL');
  }

  addWorker(): void {
    const free = this.#slots.findIndex((w) => w === null);
    if (free < 0) return;
    this.log.info(
      { workers: this.workers.filter((w) => w.state !== 'draining').length + 1 },
      'cheaper: load is up, adding a worker',
    );
    this.#spawn(free + 1, 0);
  }

  retire(rec: WorkerRecord): void {
    this.log.info({ worker: rec.id, workerPid: rec.pid }, 'cheaper: load is down, retiring a worker');
    this.#slots[rec.id - 1] = null;
    this.#drain(rec);
  }

  /**
   * A request on this worker failed at the connection level (refused, or reset before its
   * answer): the worker may be dead (kill -9, OOM killer) before its exit reaches us, and least
   * in-flight would send it every next request. It takes none until a probe connection to its
   * socket is accepted; a refused probe keeps it out, and it is killed if it has not exited in 1 s.
   */
  suspect(slot: WorkerSlot): void {
    const rec = slot as WorkerRecord;
    if (this.#suspects.has(rec) || (rec.state !== 'idle' && rec.state !== 'busy') || rec.worker.isDead()) return;
    this.#suspects.add(rec);
    const a = rec.client.address;
    const probe = a.kind === 'unix' ? net.connect({ path: a.path }) : net.connect({ host: a.host, port: a.port });
    probe.setTimeout(1_000);
    const alive = () => {
      probe.destroy();
      this.#suspects.delete(rec);
      this.dispatcher.pump();
    };
    probe.once('connect', alive);
    probe.once('timeout', alive);
    probe.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'ECONNREFUSED' && err.code !== 'ENOENT') return alive();
      setTimeout(() => {
        if (!rec.worker.isDead()) {
          this.log.warn({ worker: rec.id, workerPid: rec.pid }, 'killing worker: its socket refuses connections');
          rec.worker.process.kill('SIGKILL');
        }
      }, 1_000).unref();
    });
  }

  // --- dispatch for a front in the master: least in-flight, bounded listen queue -------------

  acquire(timeoutMs: number): WorkerRecord | Ticket<WorkerRecord> {
    return this.dispatcher.acquire(timeoutMs);
  }

  release(slot: WorkerSlot): void {
    const rec = slot as WorkerRecord;
    rec.inflight--;
    if (rec.inflight === 0 && rec.onIdle) {
      const idle = rec.onIdle;
      rec.onIdle = null;
      idle();
    }
    if (rec.state === 'busy' && rec.inflight === 0 && rec.status.inflight === 0) rec.state = 'idle';
    this.dispatcher.pump();
  }

  #pick(): WorkerRecord | null {
    let best: WorkerRecord | null = null;
    const cap = this.config.pool.maxInflight;
    for (const rec of this.#live) {
      if (
        (rec.state !== 'idle' && rec.state !== 'busy') ||
        rec.inflight >= cap ||
        this.#suspects.has(rec) ||
        this.#checks.spent(rec)
      )
        continue;
      if (!best || rec.inflight < best.inflight) best = rec;
    }
    return best;
  }

  #take(rec: WorkerRecord): void {
    rec.inflight++;
    if (rec.state === 'idle') rec.state = 'busy';
    this.#checks.onDispatch(rec);
  }

  // --- what only the workers know, gathered over IPC when someone reads it -------------------

  /** Ask every serving worker; answers that do not come within 1 s are left out. */
  async ask(question: Question): Promise<Array<{ pid: number; data: unknown }>> {
    const live = this.workers.filter((w) => w.state !== 'starting' && !w.worker.isDead());
    const replies = live.map(
      (rec) =>
        new Promise<{ pid: number; data: unknown } | null>((resolve) => {
          const seq = ++this.#seq;
          const timer = setTimeout(() => {
            this.#replies.delete(seq);
            resolve(null);
          }, 1000);
          this.#replies.set(seq, (data) => {
            clearTimeout(timer);
            this.#replies.delete(seq);
            resolve(data === null ? null : { pid: rec.pid, data });
          });
          rec.worker.send({ type: 'ask', seq, ...question } satisfies MasterMessage, undefined, (err) => {
            if (!err) return;
            clearTimeout(timer);
            this.#replies.delete(seq);
            resolve(null);
          });
        }),
    );
    return (await Promise.all(replies)).filter((r): r is { pid: number; data: unknown } => r !== null);
  }

  /**
   * Upstream group servers as the workers' fronts see them: down in any worker is down; requests
   * in flight and failed tries summed over the workers.
   */
  upstreamHealth(): UpstreamHealth[] {
    return mergeUpstreamHealth([...this.#live].map((w) => w.status.upstreams));
  }

  get queueLength(): number {
    let n = this.dispatcher.queueLength;
    for (const w of this.#live) n += w.status.queued;
    return n;
  }

  get counters(): PoolCounters {
    let timeouts = this.#pastTimeouts;
    let rejected = this.#counters.rejected + this.#pastRejected;
    let exceptions = this.#pastExceptions;
    for (const w of this.#live) {
      timeouts += w.status.harakiriTimeouts;
      rejected += w.status.rejected;
      exceptions += w.status.exceptions;
    }
    return { ...this.#counters, rejected, harakiriTimeouts: timeouts, exceptions };
  }

  stats(): PoolStats {
    return {
      app: this.app.name,
      topology: this.config.topology,
      workers: this.workers.map(workerRow),
      queue: this.queueLength,
      queueLimit: this.config.pool.listen,
      ...this.counters,
      socket: this.publicLabel,
    };
  }

  /** SIGTERM: stop taking work, let every worker finish what it has, within the grace period. */
  async stop(): Promise<void> {
    this.#stopping = true;
    for (const t of this.#timers) clearInterval(t);
    this.dispatcher.close();
    const exits = this.workers.map(
      (rec) =>
        new Promise<void>((resolve) => {
          if (rec.worker.isDead()) return resolve();
          rec.worker.once('exit', () => resolve());
          this.#drain(rec);
        }),
    );
    await Promise.all(exits);
    try {
      rmSync(this.runDir, { recursive: true, force: true });
    } catch {
      // Best effort at shutdown: a run dir left behind is harmless, and failing the stop over it is not.
    }
    this.#publicHandle?.close(); // a Unix socket file goes with it
    this.#publicHandle = null;
  }
}

/**
 * How the workers share the listeners. Every worker accepts on the same socket; left to itself
 * libuv accepts every pending connection in one go, so a burst of connections (a browser's six,
 * a load balancer's pool, wrk's 50) lands on whichever worker woke first. With libuv's
 * UV_TCP_SINGLE_ACCEPT a worker yields after each accept and the others get their turn.
 * STRATUM_ACCEPT=greedy restores libuv's default (for measuring).
 */
function acceptEnv(): Record<string, string> {
  return process.env.STRATUM_ACCEPT === 'greedy' ? {} : { UV_TCP_SINGLE_ACCEPT: '1' };
}
