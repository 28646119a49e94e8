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
