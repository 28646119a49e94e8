// What the page shows, computed from the live feed's ticks (one per second, see
// src/observability/live.ts). The types are the server's own: a change there breaks the build here.

import type { LiveTick, Quantiles } from '../../src/observability/live.ts';

export type { LiveTick, Quantiles } from '../../src/observability/live.ts';
export type { RecentTrace, TraceSpan } from '../../src/observability/recent.ts';
export type { PoolStats } from '../../src/pool/supervisor.ts';
export type { ConnectionCounts } from '../../src/proxy/conn-cap.ts';

export type LayerKey = 'proxy' | 'queue' | 'worker' | 'app';
export type StatusClass = '2xx' | '3xx' | '4xx' | '5xx';
export const LAYER_KEYS: readonly LayerKey[] = ['proxy', 'queue', 'worker', 'app'];
export const STATUS_CLASSES: readonly StatusClass[] = ['2xx', '3xx', '4xx', '5xx'];

/** The ticks of the last `seconds` before the newest one. */
export function lastSeconds(ticks: readonly LiveTick[], seconds: number): LiveTick[] {
  const end = ticks.at(-1)?.t;
  if (end === undefined) return [];
  return ticks.filter((t) => t.t > end - seconds * 1000);
}

/**
 * Quantiles over several seconds, from per-second ones: each second weighs as many requests as it
 * had. An estimate (the exact figure needs the samples), close when the seconds are alike.
 */
export function mergeQuantiles(qs: readonly Quantiles[]): Quantiles {
  let count = 0,
    p50 = 0,
    p95 = 0,
    p99 = 0,
    mean = 0;
  for (const q of qs) {
    if (q.count === 0) continue;
    count += q.count;
    p50 += q.p50 * q.count;
    p95 += q.p95 * q.count;
    p99 += q.p99 * q.count;
    mean += q.mean * q.count;
  }
  if (count === 0) return { p50: 0, p95: 0, p99: 0, mean: 0, count: 0 };
  return { p50: p50 / count, p95: p95 / count, p99: p99 / count, mean: mean / count, count };
}

export interface WindowSummary {
  seconds: number;
  /** Requests per second. */
  rate: number;
  status: Record<StatusClass, number>;
  layers: Record<LayerKey, Quantiles>;
  total: Quantiles;
  /** The layer holding the largest share of the mean request, or null without requests. */
  slowest: LayerKey | null;
}

export function summarize(ticks: readonly LiveTick[], seconds: number): WindowSummary {
  const w = lastSeconds(ticks, seconds);
  const n = Math.max(1, w.length);
  const status = { '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 0 };
  for (const t of w) for (const c of STATUS_CLASSES) status[c] += t.status[c] / n;
  const layers = Object.fromEntries(LAYER_KEYS.map((k) => [k, mergeQuantiles(w.map((t) => t.layers[k]))])) as Record<
    LayerKey,
    Quantiles
  >;
  const total = mergeQuantiles(w.map((t) => t.total));
  let slowest: LayerKey | null = null;
  for (const k of LAYER_KEYS) {
    if (layers[k].count === 0) continue;
    if (!slowest || layers[k].mean * layers[k].count > layers[slowest].mean * layers[slowest].count) slowest = k;
  }
  return { seconds, rate: total.count / n, status, layers, total, slowest };
}

export interface FlowRow {
  key: string;
  kind?: string;
  /** Requests per second over the window. */
  rate: number;
  /** 5xx per second over the window. */
  errors: number;
  errorShare: number;
  /** ms; request-weighted mean of the per-second p95s. */
  p95: number;
  up?: boolean;
}

/**
 * Per-route or per-upstream figures over the last `seconds`; every name seen in the history
 * keeps its row (at 0 req/s) so a route that stopped taking traffic does not vanish.
 */
export function flows(ticks: readonly LiveTick[], seconds: number, pick: 'routes' | 'upstreams'): FlowRow[] {
  const w = lastSeconds(ticks, seconds);
  const n = Math.max(1, w.length);
  const rows = new Map<string, FlowRow & { weight: number }>();
  const row = (key: string) => {
    let r = rows.get(key);
    if (!r) rows.set(key, (r = { key, rate: 0, errors: 0, errorShare: 0, p95: 0, weight: 0 }));
    return r;
  };
  for (const t of ticks) {
    for (const f of t[pick]) {
      const r = row('route' in f ? f.route : f.target);
      if ('kind' in f) {
        r.kind = f.kind;
        r.up = f.up;
      }
    }
  }
  for (const t of w) {
    for (const f of t[pick]) {
      const r = row('route' in f ? f.route : f.target);
      r.rate += f.rate / n;
      r.errors += f.errors / n;
      r.p95 += f.p95 * f.rate;
      r.weight += f.rate;
    }
  }
  return [...rows.values()]
    .map(({ weight, ...r }) => ({
      ...r,
      p95: weight > 0 ? r.p95 / weight : 0,
      errorShare: r.rate > 0 ? r.errors / r.rate : 0,
    }))
    .sort((a, b) => b.rate - a.rate || a.key.localeCompare(b.key));
}
