// Active health checks of an upstream group's servers (nginx Plus `health_check`): every
// `interval`, each server gets one GET for `path` — over HTTP for http servers, over uwsgi for
// uwsgi ones — and `fails` bad answers in a row take it out until `passes` good ones bring it back.
//
// Which process checks: each process that runs the front checks the groups of its own routes, so
// in the worker topology every worker does (N workers × servers GETs per interval). Sharing one
// verdict would mean the master checking and telling every worker over IPC, for a cost that is
// one small request per server per interval and process; a worker also sees at once what its own
// checks see, with no lag from a relay. /metrics and the live feed show a server down when any
// worker has it down.

import type { Route } from '../config/schema.ts';
import type { Balancer, GroupOptions, Peer } from './balancer.ts';

export type HealthCheckConfig = Route['upstream']['healthCheck'];

/** The balancer's options from a route's `upstream` section. */
export function groupOptions(route: Route): GroupOptions {
  const u = route.upstream;
  return {
    policy: u.balance,
    hashKey: u.hashKey,
    maxFails: u.maxFails,
    failTimeoutMs: u.failTimeout * 1000,
    tries: u.tries,
    tryTimeoutMs: u.tryTimeout * 1000,
  };
}

/** One check: resolves with the answer's status, rejects when there is none within timeoutMs. */
export type Probe<T> = (target: T, path: string, timeoutMs: number) => Promise<number>;

interface CheckState {
  running: boolean;
  fails: number;
  passes: number;
}

export class HealthChecker<T> {
  #config: HealthCheckConfig;
  #probe: Probe<T>;
  #timers: NodeJS.Timeout[] = [];
  #state = new Map<Peer<T>, CheckState>();
  #closed = false;
  /** Checks done and failed, for tests and the curious. */
  checks = 0;
  failed = 0;

  constructor(group: Balancer<T>, config: HealthCheckConfig, probe: Probe<T>) {
    this.#config = config;
    this.#probe = probe;
    const ms = config.interval * 1000;
    group.peers.forEach((peer, i) => {
      this.#state.set(peer, { running: false, fails: 0, passes: 0 });
      // Spread over the interval, so a group's servers are not all asked in the same instant.
      const first = setTimeout(
        () => {
          void this.#check(peer);
          const t = setInterval(() => void this.#check(peer), ms);
          t.unref();
          this.#timers.push(t);
        },
        Math.min(ms, 1000) * (i / group.peers.length),
      );
      first.unref();
      this.#timers.push(first);
    });
  }

  async #check(peer: Peer<T>): Promise<void> {
    const st = this.#state.get(peer)!;
    if (st.running || this.#closed) return; // a slow check is not stacked behind another
    st.running = true;
    let ok: boolean;
    try {
      const status = await this.#probe(peer.target, this.#config.path, this.#config.timeout * 1000);
      ok = this.#config.status.includes(status);
    } catch {
      ok = false;
    } finally {
      st.running = false;
    }
    if (this.#closed) return;
    this.checks++;
    if (ok) {
      st.fails = 0;
      if (!peer.checkedUp && ++st.passes >= this.#config.passes) {
        peer.checkedUp = true;
        // Back by its checks: the passive timeout that may still run is not held against it.
        peer.downUntil = 0;
        st.passes = 0;
      }
    } else {
      this.failed++;
      st.passes = 0;
      if (peer.checkedUp && ++st.fails >= this.#config.fails) {
        peer.checkedUp = false;
        st.fails = 0;
      }
    }
  }

  close(): void {
    this.#closed = true;
    for (const t of this.#timers) clearTimeout(t);
    this.#timers = [];
  }
}
