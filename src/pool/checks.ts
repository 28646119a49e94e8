// The master's checks of its workers, each one small named function called from one place — as
// uWSGI's core/master_checks.c does (uwsgi_master_check_harakiri, _reload_on_rss, …):
//
//   reload-on-rss   a worker whose resident memory passed pool.reloadOnRss is recycled
//   max-requests    a worker that was given pool.maxRequests requests is recycled
//   harakiri        the per-request limit itself is kept inside each worker (harakiri.ts), which
//                   answers 504 or kills itself when its loop is blocked; the master counts those
//                   kills (the watchdog's note) and, as a last resort, kills a worker whose status
//                   reports stopped for longer than harakiri allows
//   cheaper         uWSGI's "spare" algorithm: one worker more while all are busy or requests
//                   wait, one fewer after 10 s in which some stayed idle
//
// A check decides; the supervisor (supervisor.ts) does: recycle, kill, spawn, retire.

import type { StratumConfig } from '../config/schema.ts';
import type { WorkerState } from './stats.ts';

/** What the checks read of a worker. */
export interface CheckedWorker {
  id: number;
  pid: number;
  state: WorkerState;
  recycling: boolean;
  /** Requests in flight as the master counts them (master topology) and as the worker reports them. */
  inflight: number;
  status: { inflight: number; rss: number };
  /** Date.now() of the last status report (or of the start). */
  statusAt: number;
}

/** What the checks may make the supervisor do. */
export interface CheckedPool<W extends CheckedWorker> {
  readonly workers: W[];
  /** Requests waiting for a worker, in the master's queue and in the workers' own. */
  readonly queueLength: number;
  readonly slots: number;
  recycle(w: W, reason: string): void;
  killUnresponsive(w: W, silentMs: number): void;
  addWorker(): void;
  retire(w: W): void;
}

export class MasterChecks<W extends CheckedWorker> {
  #pool: CheckedPool<W>;
  #config: StratumConfig['pool'];
  #idleSince = 0;
  #dispatched = new WeakMap<W, number>();

  constructor(pool: CheckedPool<W>, config: StratumConfig['pool']) {
    this.#pool = pool;
    this.#config = config;
  }

  /** The periodic tick (every 250 ms). */
  tick(now: number): void {
    for (const w of this.#pool.workers) this.unresponsive(w, now);
  }

  /** Once a second. */
  slowTick(now: number): void {
    if (this.#config.cheaper.enabled) this.cheaper(now);
  }

  /** A worker's status report arrived. */
  onStatus(w: W): void {
    this.reloadOnRss(w);
  }

  reloadOnRss(w: W): void {
    const limit = this.#config.reloadOnRss * 1024 * 1024;
    if (limit > 0 && w.status.rss > limit && w.state !== 'draining') this.#pool.recycle(w, 'reload-on-rss');
  }

  /**
   * max-requests counts what the master's front sends (master topology): a worker gets exactly N,
   * not N plus whatever was dispatched before its own count reached us over IPC. In the worker
   * topology the worker counts its own requests and asks for the recycle.
   */
  onDispatch(w: W): void {
    const max = this.#config.maxRequests;
    if (max <= 0) return;
    const n = (this.#dispatched.get(w) ?? 0) + 1;
    this.#dispatched.set(w, n);
    if (n === max) this.#pool.recycle(w, 'max-requests');
  }

  /** The worker has been given its max-requests: it finishes them, takes no more. */
  spent(w: W): boolean {
    const max = this.#config.maxRequests;
    return max > 0 && (this.#dispatched.get(w) ?? 0) >= max;
  }

  /** A recycle that could not replace the worker: it serves again, its count starting over. */
  forgive(w: W): void {
    this.#dispatched.delete(w);
  }

  /**
   * The last resort behind the watchdog: a serving worker that has sent no status for longer than
   * harakiri plus a margin has a blocked loop and a watchdog that did not act.
   */
  unresponsive(w: W, now: number): void {
    const harakiri = this.#config.harakiri * 1000;
    if (harakiri <= 0 || (w.state !== 'idle' && w.state !== 'busy')) return;
    const silent = now - w.statusAt;
    if (silent > harakiri + 5_000) this.#pool.killUnresponsive(w, silent);
  }

  cheaper(now: number): void {
    const active = this.#pool.workers.filter((w) => w.state !== 'draining' && !w.recycling);
    const running = active.filter((w) => w.state === 'idle' || w.state === 'busy');
    const busy = (w: W) => w.inflight + w.status.inflight > 0;
    const allBusy = running.length > 0 && running.every(busy);
    if ((allBusy || this.#pool.queueLength > 0) && active.length < this.#pool.slots) {
      this.#pool.addWorker();
      this.#idleSince = 0;
      return;
    }
    const idle = running.filter((w) => !busy(w));
    if (idle.length === 0 || active.length <= this.#config.cheaper.min) {
      this.#idleSince = 0;
      return;
    }
    if (this.#idleSince === 0) this.#idleSince = now;
    if (now - this.#idleSince < 10_000) return;
    this.#idleSince = now;
    // Retire the highest slot that is idle, so low slots stay warm.
    this.#pool.retire(idle.sort((a, b) => b.id - a.id)[0]!);
  }
}
