// The pool as /stats, `stratum top` and the dashboard show it: one row per live worker (from its
// last status report and the master's own counts) and the pool's counters.

export type WorkerState = 'starting' | 'idle' | 'busy' | 'draining';

export interface PoolCounters {
  rejected: number;
  reloads: number;
  respawns: number;
  harakiriKills: number;
  harakiriTimeouts: number;
  recycles: number;
  /** Exceptions the apps threw (caught as 500s, and uncaught ones, each of which replaced its worker). */
  exceptions: number;
}

export interface WorkerRow {
  /** The app the worker belongs to (several apps, /stats); absent in one pool's own stats. */
  app?: string;
  id: number;
  pid: number;
  state: WorkerState;
  requests: number;
  inflight: number;
  exceptions: number;
  harakiri: number;
  rss: number;
  avgMs: number;
  startedAt: string;
  respawns: number;
  generation: number;
}

export interface PoolStats extends PoolCounters {
  /** The app this pool hosts (apps.ts); `default` for a lone `app.module`. */
  app?: string;
  topology: 'worker' | 'master';
  workers: WorkerRow[];
  queue: number;
  queueLimit: number;
  socket: string | null;
}

/** What stats() reads of a worker record. */
export interface WorkerFacts {
  id: number;
  pid: number;
  state: WorkerState;
  generation: number;
  startedAt: number;
  respawns: number;
  inflight: number;
  status: { requests: number; inflight: number; exceptions: number; rss: number; totalMs: number };
  harakiri: number;
}

export function workerRow(w: WorkerFacts): WorkerRow {
  const s = w.status;
  return {
    id: w.id,
    pid: w.pid,
    state: w.state,
    requests: s.requests,
    inflight: Math.max(w.inflight, s.inflight),
    exceptions: s.exceptions,
    harakiri: w.harakiri,
    rss: s.rss,
    avgMs: s.requests > 0 ? Math.round((s.totalMs / s.requests) * 100) / 100 : 0,
    startedAt: new Date(w.startedAt).toISOString(),
    respawns: w.respawns,
    generation: w.generation,
  };
}

/** One upstream server as a front process reports it (active and fails absent from older reports). */
export interface UpstreamReport {
  target: string;
  up: boolean;
  active?: number;
  fails?: number;
}

export interface UpstreamHealth {
  target: string;
  up: boolean;
  active: number;
  fails: number;
}

/**
 * Upstream servers over several front processes (the workers of a pool, the pools of several apps):
 * down in any is down; requests in flight and failed tries summed.
 */
export function mergeUpstreamHealth(reports: Iterable<Iterable<UpstreamReport>>): UpstreamHealth[] {
  const all = new Map<string, UpstreamHealth>();
  for (const list of reports)
    for (const h of list) {
      const s = all.get(h.target) ?? { target: h.target, up: true, active: 0, fails: 0 };
      s.up &&= h.up;
      s.active += h.active ?? 0;
      s.fails += h.fails ?? 0;
      all.set(h.target, s);
    }
  return [...all.values()];
}
