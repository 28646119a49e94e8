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

export class RecentTraces {
  readonly size: number;
  readonly slowWindowMs: number;
  #latest: RecentTrace[] = [];
  #slow: RecentTrace[] = [];
  #failed: RecentTrace[] = [];
  #byId = new Map<string, RecentTrace>();

  constructor(size = 100, slowWindowMs = 10 * 60_000) {
    this.size = size;
    this.slowWindowMs = slowWindowMs;
  }

  add(t: RecentTrace): void {
    this.#push(this.#latest, t);
    if (t.status >= 500 || t.error) this.#push(this.#failed, t);
    // The slow list is sorted by duration, not age: any entry may have aged out.
    const cutoff = t.at - this.slowWindowMs;
    if (this.#slow.some((x) => x.at < cutoff)) {
      const aged = this.#slow.filter((x) => x.at < cutoff);
      this.#slow = this.#slow.filter((x) => x.at >= cutoff);
      for (const x of aged) this.#forget(x);
    }
    const min = this.#slow.length < this.size ? -1 : this.#slow[this.#slow.length - 1]!.durationMs;
    if (t.durationMs > min) {
      // Sorted slowest first; insert in place.
      let i = this.#slow.findIndex((x) => x.durationMs < t.durationMs);
      if (i < 0) i = this.#slow.length;
      this.#slow.splice(i, 0, t);
      this.#byId.set(t.id, t);
      if (this.#slow.length > this.size) this.#forget(this.#slow.pop()!);
    }
  }

  list(kind: 'latest' | 'slow' | 'failed', limit = 50): RecentTrace[] {
    const src = kind === 'slow' ? this.#slow : kind === 'failed' ? this.#failed : this.#latest;
    return (kind === 'slow' ? src : [...src].reverse()).slice(0, limit);
  }

  get(id: string): RecentTrace | undefined {
    return this.#byId.get(id);
  }

  #push(list: RecentTrace[], t: RecentTrace): void {
    list.push(t);
    this.#byId.set(t.id, t);
    if (list.length > this.size) this.#forget(list.shift()!);
  }

  #forget(t: RecentTrace): void {
    // Requests of one client trace share an id: drop the index entry only if it is this one.
    if (this.#byId.get(t.id) === t && !this.#latest.includes(t) && !this.#failed.includes(t) && !this.#slow.includes(t)) this.#byId.delete(t.id);
  }
}

/** The waterfall of one request from its layer times; `dispatch` = ms from arrival to dispatch. */
export function waterfall(l: LayerTimes, dispatch: number, pids: { master: number; worker: number }, upstreamLabel: string, name: string): TraceSpan[] {
  const spans: TraceSpan[] = [{ name, layer: 'proxy', start: 0, duration: l.total, pid: pids.master }];
  const upstream = l.queue + l.worker + l.app;
  if (upstream <= 0 && !pids.worker) return spans;
  spans.push({ name: `upstream ${upstreamLabel}`, layer: 'queue', start: dispatch, duration: upstream, pid: pids.master });
  if (pids.worker && (l.worker > 0 || l.app > 0)) {
    spans.push({ name: 'uwsgi request', layer: 'worker', start: dispatch + l.queue, duration: l.worker + l.app, pid: pids.worker });
    spans.push({ name: 'app handler', layer: 'app', start: dispatch + l.queue + l.worker, duration: l.app, pid: pids.worker });
  }
  return spans;
}
