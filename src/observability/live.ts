// The live feed behind the dashboard: once a second, per-layer p50/p95/p99 and mean, request
// and error rates, per-route and per-upstream figures, and the pool's workers — pushed to
// every open Server-Sent Events stream, with the last minutes kept for a page that just opened.
// Samples per second are bounded (reservoir), so a flood costs no more memory than a trickle.
// Recording (LiveRecorder) happens in whichever process runs the front; the master's LiveFeed
// merges its own second with every worker's (asked over IPC) before it draws the tick.

import type { IncomingMessage, ServerResponse } from 'node:http';
import type { LayerTimes } from './layers.ts';
import type { ProxyContext } from '../proxy/upstream.ts';
import type { PoolStats } from '../pool/stats.ts';
import type { ConnectionCounts } from '../proxy/conn-cap.ts';

const LAYER_NAMES = ['proxy', 'queue', 'worker', 'app'] as const;
const RESERVOIR = 2000;
const PART_SAMPLES = 250;

export interface Quantiles {
  p50: number;
  p95: number;
  p99: number;
  mean: number;
  count: number;
}

export interface LiveTick {
  /** Epoch ms at the end of the second. */
  t: number;
  rate: number;
  status: Record<'2xx' | '3xx' | '4xx' | '5xx', number>;
  errorRate: number;
  /** Milliseconds per layer; only requests served by the pool carry all four layers. */
  layers: Record<(typeof LAYER_NAMES)[number], Quantiles>;
  total: Quantiles;
  routes: Array<{ route: string; rate: number; errors: number; p95: number }>;
  upstreams: Array<{ target: string; kind: string; rate: number; errors: number; p95: number; up: boolean }>;
  pool: PoolStats | null;
  /** The front's client connections per listener, against proxy.maxConnections (summed over workers). */
  connections?: ConnectionCounts[];
}

interface ReservoirJson {
  values: number[];
  seen: number;
  sum: number;
}

class Reservoir implements ReservoirJson {
  values: number[] = [];
  seen = 0;
  sum = 0;
  /** Another process's second: its samples join in proportion to what each side saw. */
  merge(o: ReservoirJson): void {
    const total = this.seen + o.seen;
    if (total === 0) return;
    if (this.values.length + o.values.length <= RESERVOIR) this.values.push(...o.values);
    else {
      const mine = Math.round((RESERVOIR * this.seen) / total);
      this.values = sample(this.values, mine).concat(sample(o.values, RESERVOIR - mine));
    }
    this.seen = total;
    this.sum += o.sum;
  }
  add(v: number): void {
    this.seen++;
    this.sum += v;
    if (this.values.length < RESERVOIR) this.values.push(v);
    else {
      const j = Math.floor(Math.random() * this.seen);
      if (j < RESERVOIR) this.values[j] = v;
    }
  }
  quantiles(): Quantiles {
    if (this.seen === 0) return { p50: 0, p95: 0, p99: 0, mean: 0, count: 0 };
    const v = this.values.sort((a, b) => a - b);
    const q = (p: number) => v[Math.min(v.length - 1, Math.floor(p * v.length))]!;
    return { p50: r(q(0.5)), p95: r(q(0.95)), p99: r(q(0.99)), mean: r(this.sum / this.seen), count: this.seen };
  }
}

function sample(v: number[], n: number): number[] {
  if (v.length <= n) return v;
  const out = v.slice();
  for (let i = 0; i < n; i++) {
    const j = i + Math.floor(Math.random() * (out.length - i));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out.slice(0, n);
}

function r(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}

interface Group {
  count: number;
  errors: number;
  lat: Reservoir;
  kind?: string;
}

/** One process's second, as plain data (JSON-safe, for IPC). */
export interface LivePart {
  layers: ReservoirJson[];
  total: ReservoirJson;
  status: LiveTick['status'];
  routes: Array<[string, { count: number; errors: number; lat: ReservoirJson }]>;
  upstreams: Array<[string, { count: number; errors: number; lat: ReservoirJson; kind?: string }]>;
}

/** Records each request the front answers, one second at a time. */
export class LiveRecorder {
  #layers = LAYER_NAMES.map(() => new Reservoir());
  #total = new Reservoir();
  #status = { '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 0 };
  #routes = new Map<string, Group>();
  #upstreams = new Map<string, Group>();

  record(o: {
    route: string;
    status: number;
    totalMs: number;
    layers: LayerTimes | null;
    pool: boolean;
    upstream: { target: string; kind: string; ms: number } | null;
  }): void {
    this.#total.add(o.totalMs);
    const cls = o.status >= 500 ? '5xx' : o.status >= 400 ? '4xx' : o.status >= 300 ? '3xx' : '2xx';
    this.#status[cls]++;
    if (o.layers && o.pool) {
      this.#layers[0]!.add(o.layers.proxy);
      this.#layers[1]!.add(o.layers.queue);
      this.#layers[2]!.add(o.layers.worker);
      this.#layers[3]!.add(o.layers.app);
    } else {
      this.#layers[0]!.add(o.layers ? o.layers.proxy : o.totalMs);
    }
    group(this.#routes, o.route, o.totalMs, o.status >= 500);
    if (o.upstream) group(this.#upstreams, o.upstream.target, o.upstream.ms, o.status >= 500).kind = o.upstream.kind;
  }

  /** The second so far, and start a new one. */
  take(forIpc = true): LivePart {
    // What crosses IPC each second is at most PART_SAMPLES values a series: enough for a dashboard's
    // quantiles, and the master parsing 2 × 5 × 2,000 numbers a second grew its heap 17% over a
    // 5-minute soak (`npm run bench -- --soak`). The counts and sums stay exact.
    const keep = forIpc ? PART_SAMPLES : RESERVOIR;
    const thin = (r: Reservoir): ReservoirJson => ({ values: sample(r.values, keep), seen: r.seen, sum: r.sum });
    const group = ([k, g]: [string, Group]): [string, LivePart['upstreams'][number][1]] =>
      [k, { count: g.count, errors: g.errors, lat: thin(g.lat), kind: g.kind }];
    const part: LivePart = {
      layers: this.#layers.map(thin),
      total: thin(this.#total),
      status: this.#status,
      routes: [...this.#routes].map(group),
      upstreams: [...this.#upstreams].map(group),
    };
    this.#layers = LAYER_NAMES.map(() => new Reservoir());
    this.#total = new Reservoir();
    this.#status = { '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 0 };
    this.#routes = new Map();
    this.#upstreams = new Map();
    return part;
  }
}

export class LiveFeed {
  readonly history: LiveTick[] = [];
  readonly historySize: number;
  /** The master's own front (master topology); the workers' seconds come from `parts`. */
  readonly recorder = new LiveRecorder();
  #clients = new Set<ServerResponse>();
  #timer: NodeJS.Timeout;
  #pool: () => PoolStats | null;
  #health: () => Array<{ target: string; up: boolean }>;
  #parts: () => Promise<LivePart[]>;
  #connections: () => ConnectionCounts[];

  constructor(opts: {
    pool: () => PoolStats | null;
    health: () => Array<{ target: string; up: boolean }>;
    parts?: () => Promise<LivePart[]>;
    connections?: () => ConnectionCounts[];
    historySize?: number;
  }) {
    this.#pool = opts.pool;
    this.#connections = opts.connections ?? (() => []);
    this.#health = opts.health;
    this.#parts = opts.parts ?? (() => Promise.resolve([]));
    this.historySize = opts.historySize ?? 300;
    this.#timer = setInterval(() => void this.#tick(), 1000);
    this.#timer.unref();
  }

  async #tick(): Promise<void> {
    const own = this.recorder.take(false);
    const parts = await this.#parts().catch(() => []);
    const layers = LAYER_NAMES.map(() => new Reservoir());
    const all = new Reservoir();
    const status = { '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 0 };
    const routes = new Map<string, Group>();
    const upstreams = new Map<string, Group>();
    const fold = (into: Map<string, Group>, from: LivePart['upstreams']) => {
      for (const [k, g] of from) {
        let m = into.get(k);
        if (!m) into.set(k, (m = { count: 0, errors: 0, lat: new Reservoir(), kind: g.kind }));
        m.count += g.count;
        m.errors += g.errors;
        m.lat.merge(g.lat);
      }
    };
    for (const p of [own, ...parts]) {
      p.layers.forEach((l, i) => layers[i]!.merge(l));
      all.merge(p.total);
      for (const k of Object.keys(status) as Array<keyof typeof status>) status[k] += p.status[k];
      fold(routes, p.routes);
      fold(upstreams, p.upstreams);
    }
    const total = all.quantiles();
    const health = new Map(this.#health().map((h) => [h.target, h.up]));
    const tick: LiveTick = {
      t: Date.now(),
      rate: total.count,
      status,
      errorRate: status['5xx'],
      layers: Object.fromEntries(LAYER_NAMES.map((n, i) => [n, layers[i]!.quantiles()])) as LiveTick['layers'],
      total,
      routes: [...routes].map(([route, g]) => ({ route, rate: g.count, errors: g.errors, p95: g.lat.quantiles().p95 })),
      upstreams: [...upstreams].map(([target, g]) => ({
        target,
        kind: g.kind ?? '',
        rate: g.count,
        errors: g.errors,
        p95: g.lat.quantiles().p95,
        up: health.get(target) ?? true,
      })),
      pool: this.#pool(),
      connections: this.#connections(),
    };
    for (const h of health.keys())
      if (!upstreams.has(h))
        tick.upstreams.push({ target: h, kind: 'uwsgi', rate: 0, errors: 0, p95: 0, up: health.get(h)! });
    this.history.push(tick);
    if (this.history.length > this.historySize) this.history.shift();
    const data = `event: tick\ndata: ${JSON.stringify(tick)}\n\n`;
    for (const c of this.#clients) c.write(data);
  }

  /** An SSE stream: the history first (one `history` event), then a `tick` every second. */
  stream(req: IncomingMessage, res: ServerResponse): void {
    res.writeHead(200, {
      'content-type': 'text/event-stream',
      'cache-control': 'no-store',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    res.write(`retry: 2000\nevent: history\ndata: ${JSON.stringify(this.history)}\n\n`);
    this.#clients.add(res);
    req.socket.setTimeout(0);
    const ping = setInterval(() => res.write(': ping\n\n'), 15_000);
    res.once('close', () => {
      clearInterval(ping);
      this.#clients.delete(res);
    });
  }

  close(): void {
    clearInterval(this.#timer);
    for (const c of this.#clients) c.end();
  }
}

function group(map: Map<string, Group>, key: string, ms: number, error: boolean): Group {
  let g = map.get(key);
  if (!g) {
    if (map.size >= 200) return { count: 0, errors: 0, lat: new Reservoir() }; // bounded cardinality
    g = { count: 0, errors: 0, lat: new Reservoir() };
    map.set(key, g);
  }
  g.count++;
  if (error) g.errors++;
  g.lat.add(ms);
  return g;
}

/** The observer's listener that feeds a recorder (src/observability/observer.ts). */
export function liveListener(
  rec: LiveRecorder,
): (ctx: ProxyContext, layers: LayerTimes | null, totalMs: number) => void {
  return (ctx, layers, totalMs) => {
    const t = ctx.timings;
    rec.record({
      route: ctx.routeLabel,
      status: ctx.res.statusCode,
      totalMs,
      layers,
      pool: ctx.workerPid > 0,
      upstream:
        t.dispatchAt && ctx.upstreamLabel
          ? {
              target: ctx.upstreamKind === 'pool' ? 'pool' : ctx.upstreamLabel,
              kind: ctx.upstreamKind,
              ms: (t.endAt || performance.now()) - t.dispatchAt,
            }
          : null,
    });
  };
}
