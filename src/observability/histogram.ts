// A latency histogram for the request path: prom-client's exposition (it registers in a
// prom-client Registry and renders exactly as prom-client's Histogram, exemplars included) with
// a record path that allocates nothing. prom-client's observe() builds a closure, a label object
// and a hash string, validates the labels and looks buckets up by stringified bound on every call;
// at six observations per request that was most of what metrics cost the front proxy. Here the
// labels are three values, positional, resolved through nested maps to a series of plain numbers.

import type { Registry } from 'prom-client';

interface Exemplar {
  labelSet: Record<string, string>;
  value: number;
  timestamp: number;
}

interface Series {
  labels: Record<string, string>;
  /** Observations per bucket (not cumulative); the last slot is above every bound (+Inf only). */
  counts: Float64Array;
  exemplars: Array<Exemplar | undefined>;
  sum: number;
  count: number;
}

interface MetricValue {
  labels: Record<string, string | number>;
  sharedLabels?: Record<string, string>;
  value: number;
  metricName: string;
  exemplar?: Exemplar;
}

interface MetricJson {
  name: string;
  help: string;
  type: string;
  aggregator: string;
  values: MetricValue[];
}

/** A histogram's series as plain data (JSON-safe, for IPC). */
export type HistogramDump = Array<{
  l: [string, string, string];
  counts: number[];
  exemplars: Array<Exemplar | undefined | null>;
  sum: number;
  count: number;
}>;

export interface HistogramOptions {
  name: string;
  help: string;
  labelNames: readonly [string, string, string];
  buckets: readonly number[];
  registers: Registry[];
}

export class Histogram3 {
  readonly name: string;
  readonly help: string;
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  readonly labelNames: readonly [string, string, string];
  #bounds: Float64Array;
  #series = new Map<string, Map<string, Map<string, Series>>>();

  constructor(opts: HistogramOptions) {
    this.name = opts.name;
    this.help = opts.help;
    this.labelNames = opts.labelNames;
    this.#bounds = Float64Array.from([...opts.buckets].sort((x, y) => x - y));
    for (const r of opts.registers) r.registerMetric(this as never);
  }

  /** Record `value` (seconds) under the label values a, b, c; a trace id becomes the bucket's exemplar. */
  observe(a: string, b: string, c: string, value: number, traceId: string | null = null): void {
    if (!Number.isFinite(value)) return;
    const s = this.#get(a, b, c);
    const bounds = this.#bounds;
    let i = 0;
    while (i < bounds.length && value > bounds[i]!) i++;
    s.counts[i]!++;
    s.sum += value;
    s.count++;
    if (traceId !== null) s.exemplars[i] = { labelSet: { trace_id: traceId }, value, timestamp: Date.now() / 1000 };
  }

  reset(): void {
    this.#series.clear();
  }

  /** Every series as plain data, to carry to another process (the master's scrape). */
  dump(): HistogramDump {
    const out: HistogramDump = [];
    for (const [a, byB] of this.#series) {
      for (const [b, byC] of byB) {
        for (const [c, s] of byC)
          out.push({ l: [a, b, c], counts: Array.from(s.counts), exemplars: s.exemplars, sum: s.sum, count: s.count });
      }
    }
    return out;
  }

  /** Add another histogram's dump (same buckets) to this one: how the master sums its workers. */
  add(dump: HistogramDump): void {
    for (const d of dump) {
      const s = this.#get(d.l[0], d.l[1], d.l[2]);
      for (let i = 0; i < s.counts.length && i < d.counts.length; i++) {
        s.counts[i]! += d.counts[i]!;
        const e = d.exemplars[i];
        if (e && (!s.exemplars[i] || s.exemplars[i]!.timestamp < e.timestamp)) s.exemplars[i] = e;
      }
      s.sum += d.sum;
      s.count += d.count;
    }
  }

  #get(a: string, b: string, c: string): Series {
    let byB = this.#series.get(a);
    if (byB === undefined) this.#series.set(a, (byB = new Map()));
    let byC = byB.get(b);
    if (byC === undefined) byB.set(b, (byC = new Map()));
    let s = byC.get(c);
    if (s === undefined) {
      const [na, nb, nc] = this.labelNames;
      s = {
        labels: { [na]: a, [nb]: b, [nc]: c },
        counts: new Float64Array(this.#bounds.length + 1),
        exemplars: [],
        sum: 0,
        count: 0,
      };
      byC.set(c, s);
    }
    return s;
  }

  /** As prom-client's Histogram renders for the registry: `le` first, the series' labels shared. */
  getForPromString(): MetricJson {
    return this.#collect((le, shared) => ({ labels: le, sharedLabels: shared }));
  }

  /** As prom-client's Histogram get(): the same values with the labels merged (le first). */
  get(): MetricJson {
    return this.#collect((le, shared) => ({ labels: { ...le, ...shared } }));
  }

  #collect(
    labelsOf: (
      le: Record<string, string | number>,
      shared: Record<string, string>,
    ) => Pick<MetricValue, 'labels' | 'sharedLabels'>,
  ): MetricJson {
    const values: MetricValue[] = [];
    const bucket = `${this.name}_bucket`;
    const n = this.#bounds.length;
    for (const byB of this.#series.values()) {
      for (const byC of byB.values()) {
        for (const s of byC.values()) {
          let cumulative = 0;
          for (let i = 0; i <= n; i++) {
            cumulative += s.counts[i]!;
            const v: MetricValue = {
              ...labelsOf({ le: i < n ? this.#bounds[i]! : '+Inf' }, s.labels),
              value: cumulative,
              metricName: bucket,
            };
            if (s.exemplars[i]) v.exemplar = s.exemplars[i];
            values.push(v);
          }
          values.push({ ...labelsOf({}, s.labels), value: s.sum, metricName: `${this.name}_sum` });
          values.push({ ...labelsOf({}, s.labels), value: s.count, metricName: `${this.name}_count` });
        }
      }
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }
}
