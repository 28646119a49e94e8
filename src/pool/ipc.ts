// Messages between the master and its workers over the cluster IPC channel. Kept small and
// infrequent: per-request traffic never crosses IPC for requests our proxy sends (the master
// already knows them); only foreign requests (nginx on the shared socket) are announced, so
// harakiri can see them.

/** Everything a worker needs, passed in the STRATUM_WORKER environment variable as JSON. */
export interface WorkerSpec {
  id: number;
  generation: number;
  app: { module: string; export: string };
  /**
   * The shared uwsgi socket (for nginx, a remote proxy): a file descriptor the master bound and
   * passed down at fork. The worker listens and accepts on it; the master holds it.
   */
  publicFd: number;
  /** This worker's own socket, where our proxy keeps connections. */
  privatePath: string;
  maxVarsSize: number;
  socketTimeoutMs: number;
  maxRequests: number;
  statusIntervalMs: number;
  tracing: { enabled: boolean; sampleRatio: number; serviceName: string };
}

export type WorkerMessage =
  | { type: 'ready'; pid: number }
  | { type: 'status'; requests: number; inflight: number; exceptions: number; rss: number; totalMs: number; heapUsed: number; eventLoopP99Ms: number }
  | { type: 'foreign-start'; rid: number; method: string; path: string; requestId: string; at: number }
  | { type: 'foreign-end'; rid: number }
  | { type: 'recycle'; reason: 'max-requests' | 'reload-on-rss' }
  | { type: 'fatal'; message: string; code?: string }
  | { type: 'metrics'; seq: number; metrics: unknown[] };

export type MasterMessage =
  | { type: 'drain'; graceMs: number }
  | { type: 'metrics'; seq: number };

export const WORKER_ENV = 'STRATUM_WORKER';
