// Messages between the master and its workers over the cluster IPC channel. Kept small and
// infrequent: nothing crosses IPC per request. A worker reports its status twice a second; the
// master asks the workers for what they alone hold (process and request metrics, recent traces,
// the live feed's last second) when someone reads it.

import type { Address, StratumConfig } from '../config/schema.ts';
import type { ConnectionCounts } from '../proxy/conn-cap.ts';

export type Topology = StratumConfig['topology'];

/** Everything a worker needs, passed in the STRATUM_WORKER environment variable as JSON. */
export interface WorkerSpec {
  id: number;
  generation: number;
  topology: Topology;
  /** `name`: the app this worker belongs to (apps.ts); `default` for a lone `app.module`. */
  app: { module: string; export: string; name: string };
  /**
   * Every http app's uwsgi socket by name (a Unix path or TCP): the front in this worker reaches
   * another app's route there, over uwsgi, and its own app in-process.
   */
  pools: Record<string, Address>;
  /**
   * The shared uwsgi socket (for nginx, a remote proxy): a file descriptor the master bound and
   * passed down at fork. The worker listens and accepts on it; the master holds it.
   */
  publicFd: number;
  /** The front listener (worker topology), passed down the same way; -1 in the master topology. */
  frontFd: number;
  /** This worker's own socket, where the master's front keeps connections (master topology). */
  privatePath: string;
  /** The master's private directory: the harakiri watchdog leaves its note there. */
  runDir: string;
  maxRequests: number;
  statusIntervalMs: number;
  /** The whole configuration, for the front a worker runs (see reviveConfig). */
  config: string;
}

/** What a worker reports twice a second. */
export interface WorkerStatus {
  requests: number;
  inflight: number;
  exceptions: number;
  rss: number;
  totalMs: number;
  heapUsed: number;
  eventLoopP99Ms: number;
  /** Requests answered 504 at harakiri without a kill (the event loop was alive). */
  harakiriTimeouts: number;
  /** Requests waiting for a slot under maxInflight, and refused with 503 when that queue was full (worker topology). */
  queued: number;
  rejected: number;
  /** Each upstream group server as this worker's front sees it (src/proxy/balancer.ts PeerHealth). */
  upstreams: Array<{ target: string; up: boolean; active?: number; fails?: number }>;
  /** This worker's front: its open client connections, its proxy.maxConnections and its refusals (worker topology). */
  connections?: ConnectionCounts;
}

/** What the master can ask every worker for; the answer comes back as a `reply` with the same seq. */
export type Question =
  | { what: 'metrics' }
  | { what: 'traces'; kind: 'latest' | 'slow' | 'failed'; limit: number }
  | { what: 'trace'; id: string }
  | { what: 'live' };

export type WorkerMessage =
  | { type: 'ready'; pid: number }
  | ({ type: 'status' } & WorkerStatus)
  | { type: 'recycle'; reason: 'max-requests' | 'reload-on-rss' | 'exception' }
  | { type: 'fatal'; message: string; code?: string }
  | { type: 'reply'; seq: number; data: unknown }
  /** Draining: what this worker's front counted, for the master to keep after it exits. */
  | { type: 'final'; data: unknown };

export type MasterMessage =
  /** Finish and exit: kept client connections idle for idleMs are closed (0: at once, as on stop). */
  | { type: 'drain'; graceMs: number; idleMs: number }
  | ({ type: 'ask'; seq: number } & Question)
  /** A config reload changed the routes: the front rebuilds its table from this config (serializeConfig). */
  | { type: 'routes'; config: string; pools: Record<string, Address> };

export const WORKER_ENV = 'STRATUM_WORKER';

/**
 * The configuration as the master validated it, sent to a worker as JSON. A worker does not
 * validate it again: that would load the schema library (zod), ~150 ms of every worker's start
 * and its memory for its whole life. Only the routes' URL objects need reviving.
 */
export function serializeConfig(config: StratumConfig): string {
  return JSON.stringify(config);
}

export function reviveConfig(json: string): StratumConfig {
  const config = JSON.parse(json) as StratumConfig;
  for (const route of config.routes) {
    for (const t of route.targets) if (t.kind === 'http') t.url = new URL(t.url as unknown as string);
  }
  return config;
}
