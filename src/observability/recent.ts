// Recent traces, kept in the master for the dashboard: a bounded memory that favours what a
// person looks for — the slowest requests of the last minutes and the failed ones — over the
// ordinary. Three bounded lists: the latest N, the slowest N (aging out after `slowWindowMs`),
// and the latest N failures. Each entry carries its layer times and a waterfall of spans built
// from the measured marks (proxy → upstream → worker → app), with the worker's pid.

import type { LayerTimes } from './layers.ts';

export interface TraceSpan {
  name: string;
  layer: 'proxy' | 'queue' | 'worker' | 'app';
  /** ms from the start of the request. */
  start: number;
  duration: number;
  pid: number;
}

export interface RecentTrace {
  id: string;
  traceId: string | null;
  requestId: string;
  method: string;
  path: string;
  route: string;
  status: number;
  error: string | null;
  /** Epoch ms when the request arrived. */
  at: number;
  durationMs: number;
  upstream: string;
  workerPid: number;
  layers: LayerTimes | null;
  spans: TraceSpan[];
}

/**
 * What the proxy records per request: the trace without its waterfall, which is drawn only when
 * someone reads it (the dashboard asks for a few; every request is recorded).
 */
export interface RecentEntry extends Omit<RecentTrace, 'spans'> {
  /** ms from arrival to dispatch upstream (0: never dispatched). */
  dispatchMs?: number;
  /** ms spent upstream, for the waterfall of a request without layer times. */
  upstreamMs?: number;
}

export class RecentTraces {
  readonly size: number;
  readonly slowWindowMs: number;
  // Latest: a ring, so recording a request moves nothing. Slow and failed change rarely.
  #ring: Array<RecentEntry | undefined>;
  #next = 0;
  #slow: RecentEntry[] = [];
  #slowOldest = Infinity;
  #failed: RecentEntry[] = [];

  constructor(size = 100, slowWindowMs = 10 * 60_000) {
    this.size = size;
    this.slowWindowMs = slowWindowMs;
    this.#ring = new Array<RecentEntry | undefined>(size);
  }

  add(t: RecentEntry): void {
    this.#ring[this.#next] = t;
    this.#next = (this.#next + 1) % this.size;
    if (t.status >= 500 || t.error) {
      this.#failed.push(t);
      if (this.#failed.length > this.size) this.#failed.shift();
    }
    // The slow list is sorted by duration, not age: any entry may have aged out.
    const cutoff = t.at - this.slowWindowMs;
    if (this.#slowOldest < cutoff) {
      this.#slow = this.#slow.filter((x) => x.at >= cutoff);
      this.#slowOldest = this.#slow.reduce((m, x) => Math.min(m, x.at), Infinity);
    }
    const min = this.#slow.length < this.size ? -1 : this.#slow[this.#slow.length - 1]!.durationMs;
    if (t.durationMs > min) {
      // Sorted slowest first; insert in place.
      let i = this.#slow.findIndex((x) => x.durationMs < t.durationMs);
      if (i < 0) i = this.#slow.length;
      this.#slow.splice(i, 0, t);
      if (this.#slow.length > this.size) this.#slow.pop();
      if (t.at < this.#slowOldest) this.#slowOldest = t.at;
    }
  }

  list(kind: 'latest' | 'slow' | 'failed', limit = 50): RecentTrace[] {
    const src = kind === 'slow' ? this.#slow : kind === 'failed' ? [...this.#failed].reverse() : this.#latest();
    return src.slice(0, limit).map(withSpans);
  }

  /** The newest recorded request with this id, while it is in any list. */
  get(id: string): RecentTrace | undefined {
    let found: RecentEntry | undefined;
    for (const t of this.#latest()) if (t.id === id) return withSpans(t);
    for (const t of this.#failed) if (t.id === id) found = t;
    for (const t of this.#slow) if (t.id === id && (!found || t.at > found.at)) found = t;
    return found && withSpans(found);
  }

  /** The ring, newest first. */
  #latest(): RecentEntry[] {
    const out: RecentEntry[] = [];
    for (let k = 1; k <= this.size; k++) {
      const t = this.#ring[(this.#next - k + this.size) % this.size];
      if (t === undefined) break;
      out.push(t);
    }
    return out;
  }
}

function withSpans(t: RecentEntry): RecentTrace {
  const { dispatchMs = 0, upstreamMs = 0, ...rest } = t;
  const l = t.layers ?? { proxy: t.durationMs - upstreamMs, queue: upstreamMs, worker: 0, app: 0, total: t.durationMs };
  return {
    ...rest,
    spans: waterfall(l, dispatchMs, { master: process.pid, worker: t.workerPid }, t.upstream, `${t.method} ${t.route}`),
  };
}

/** The waterfall of one request from its layer times; `dispatch` = ms from arrival to dispatch. */
export function waterfall(
  l: LayerTimes,
  dispatch: number,
  pids: { master: number; worker: number },
  upstreamLabel: string,
  name: string,
): TraceSpan[] {
  const spans: TraceSpan[] = [{ name, layer: 'proxy', start: 0, duration: l.total, pid: pids.master }];
  const upstream = l.queue + l.worker + l.app;
  if (upstream <= 0 && !pids.worker) return spans;
  spans.push({
    name: `upstream ${upstreamLabel}`,
    layer: 'queue',
    start: dispatch,
    duration: upstream,
    pid: pids.master,
  });
  if (pids.worker && (l.worker > 0 || l.app > 0)) {
    spans.push({
      name: 'uwsgi request',
      layer: 'worker',
      start: dispatch + l.queue,
      duration: l.worker + l.app,
      pid: pids.worker,
    });
    spans.push({
      name: 'app handler',
      layer: 'app',
      start: dispatch + l.queue + l.worker,
      duration: l.app,
      pid: pids.worker,
    });
  }
  return spans;
}
