// Prometheus metrics (prom-client), named in Traefik's style for the layers and with the
// OpenTelemetry HTTP semantic-convention names for the front and upstream durations. Whichever
// process runs the front observes its requests: every worker (worker topology) or the master. The
// master gathers the workers' request metrics (summed, exemplars kept) and their Node process
// metrics (one `worker` label each) over IPC at scrape time, so one scrape of /metrics sees every
// process; what a worker counted before it exited stays in the sums.
//
// Exemplars (trace ids on the latency histograms) exist only in OpenMetrics; the registry is
// created in that mode and switched per scrape to what the scraper's Accept header asks for.

import client, { AggregatorRegistry, Registry } from 'prom-client';
import { Histogram3, type HistogramDump } from './histogram.ts';

type MetricJson = Awaited<ReturnType<Registry['getMetricsAsJSON']>>[number];
import type { PoolCounters, WorkerState } from '../pool/stats.ts';
import { sumConnections, type ConnectionCounts } from '../proxy/conn-cap.ts';
import { responseBufferStats } from '../proxy/response-buffer.ts';

/** What a front counts itself (src/proxy/server.ts), read at scrape time. */
export interface FrontView {
  readonly connections: ConnectionCounts;
  readonly spoolFailures: ReadonlyMap<string, number>;
}
/** The same, as plain data in a worker's dump. */
interface FrontDump {
  connections: ConnectionCounts;
  spoolFailures: Array<[string, number]>;
}

/** Several apps' pools (src/pool/apps.ts): the pool series once per app, with an `app` label. */
export interface AppPoolsView {
  views(): Array<{ app: string; pool: PoolView }>;
}

/** A `kind: process` app's processes, for their gauges (src/pool/process-app.ts). */
export interface ProcessAppView {
  app: string;
  restarts: number;
  processes: Array<{ id: number; up: boolean; rss: number; cpuSeconds: number }>;
}

/** What the pool gauges read at scrape time (the Supervisor provides it). */
export interface PoolView {
  readonly workers: Array<{ state: WorkerState; inflight: number; status: { inflight: number } }>;
  readonly queueLength: number;
  readonly counters: PoolCounters;
}

export const LAYERS = ['proxy', 'queue', 'worker', 'app'] as const;
export type Layer = (typeof LAYERS)[number];

const LATENCY_BUCKETS = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
];
const OPENMETRICS = Registry.OPENMETRICS_CONTENT_TYPE;
const PROMETHEUS = Registry.PROMETHEUS_CONTENT_TYPE;

export interface RequestObservation {
  route: string;
  method: string;
  status: number;
  /** Layer durations in seconds; null when the layer was not crossed (static, foreign upstream). */
  layers: Record<Layer, number> | null;
  totalSeconds: number;
  upstream: { kind: string; target: string; seconds: number } | null;
  traceId: string | null;
}

// prom-client's default gauges that end in _total: `promtool check metrics` rejects the names,
// and each repeats the sum of a labelled gauge it also exports (nodejs_active_handles{type}).
const MISNAMED = new Set([
  'nodejs_active_handles_total',
  'nodejs_active_requests_total',
  'nodejs_active_resources_total',
]);

const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH']);

const STATUS_CLASSES = ['other', '1xx', '2xx', '3xx', '4xx', '5xx'];
export function statusClass(status: number): string {
  return status >= 100 && status < 600 ? STATUS_CLASSES[Math.floor(status / 100)]! : 'other';
}

/** A front's request metrics as plain data, for the master to sum. */
export interface RequestMetricsDump {
  layer: HistogramDump;
  server: HistogramDump;
  client: HistogramDump;
  requests: Array<{ labels: Record<string, string | number>; value: number }>;
  upstreamErrors: Array<{ labels: Record<string, string | number>; value: number }>;
  /** The worker's front: connections and spool failures (absent from a dump without a front). */
  front?: FrontDump | null;
  /** Response buffering in this process (src/proxy/response-buffer.ts): temp-file bytes, temp-file failures. */
  responseBuffer?: [number, number];
}

/** What a worker answers the master's scrape with. */
export interface WorkerMetrics {
  process: MetricJson[];
  requests: RequestMetricsDump | null;
}

export type WorkerMetricsSource = () => Promise<WorkerMetrics[]>;

export class Metrics {
  // prom-client's types omit the constructor's content-type argument.
  readonly registry = new (Registry as unknown as new (t: string) => Registry)(OPENMETRICS);
  /** The master's own Node process metrics, merged with the workers' at scrape time. */
  readonly processRegistry = new Registry();
  #counterNames = new Map<client.Metric, string>();
  #scrape: Promise<unknown> = Promise.resolve();
  #workerSource: WorkerMetricsSource | null = null;

  readonly layerDuration = new Histogram3({
    name: 'stratum_layer_duration_seconds',
    help:
      "Time a request spent in each layer: proxy (front proxy's own), queue (waiting for a worker, plus the hop), " +
      'worker (uwsgi protocol work), app (the application handler).',
    labelNames: ['layer', 'route', 'status_class'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly serverDuration = new Histogram3({
    name: 'http_server_request_duration_seconds',
    help: 'Duration of HTTP server requests at the front proxy (OpenTelemetry http.server.request.duration).',
    labelNames: ['http_request_method', 'http_response_status_code', 'http_route'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly clientDuration = new Histogram3({
    name: 'http_client_request_duration_seconds',
    help: 'Duration of requests to upstreams, per target (OpenTelemetry http.client.request.duration).',
    labelNames: ['server_address', 'stratum_upstream_kind', 'http_response_status_code'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly requests = this.#counter('stratum_requests_total', 'Requests answered by the front proxy.', [
    'route',
    'status_class',
  ]);
  readonly upstreamErrors = this.#counter(
    'stratum_upstream_errors_total',
    'Upstream failures seen by the proxy, by target and error code.',
    ['target', 'code'],
  );

  /** Request metrics of workers that have exited, kept so the sums never go down. */
  #retired: RequestMetricsDump[] = [];

  /** The front in this process, if any; with #sumWorkers, the workers' fronts summed by #absorb instead. */
  #front: FrontView | null = null;
  #frontSum: { connections: ConnectionCounts[]; spoolFailures: Map<string, number> } | null = null;
  /** The workers' response buffering, summed by #absorb (worker topology). */
  #bufferSum: [number, number] = [0, 0];

  constructor(processLabel = 'master') {
    client.collectDefaultMetrics({ register: this.processRegistry });
    this.processRegistry.setDefaultLabels({ worker: processLabel });
    const front = () => this.#frontTotals();
    const gauge = (name: string, help: string, read: (c: ConnectionCounts) => number) =>
      new client.Gauge({
        name,
        help,
        labelNames: ['listener'] as const,
        registers: [this.registry],
        collect() {
          this.reset();
          for (const c of front()?.connections ?? []) this.set({ listener: c.listener }, read(c));
        },
      });
    gauge('stratum_connections', 'Client connections open on the front, summed over the processes running it.', (c) =>
      c.open,
    );
    gauge(
      'stratum_connections_limit',
      'proxy.maxConnections, summed over the processes running the front (each worker in the worker topology).',
      (c) => c.limit,
    );
    const refused = this.#counter(
      'stratum_connections_refused_total',
      'Client connections refused at once because proxy.maxConnections was reached (503, or closed for TLS).',
      ['listener'],
    );
    const spool = this.#counter(
      'stratum_body_spool_failures_total',
      'Request bodies that could not be spooled to the temp dir (answered 507), by errno.',
      ['errno'],
    );
    // Absolute totals from the fronts, set at each scrape (they only grow: retired workers stay in the sums).
    (refused as unknown as { collect: () => void }).collect = () => {
      refused.reset();
      for (const c of front()?.connections ?? []) refused.inc({ listener: c.listener }, c.refused);
    };
    (spool as unknown as { collect: () => void }).collect = () => {
      spool.reset();
      for (const [errno, n] of front()?.spoolFailures ?? []) spool.inc({ errno }, n);
    };
    const own = responseBufferStats;
    const buffered = (i: 0 | 1) =>
      this.#sumWorkers ? this.#bufferSum[i] : i === 0 ? own.tempFileBytes : own.tempFileFailures;
    for (const [name, help, i] of [
      ['stratum_response_buffer_temp_bytes_total', 'Response bytes held in temp files (clients slower than apps).', 0],
      ['stratum_response_buffer_temp_failures_total', 'Response temp files that could not be opened or written.', 1],
    ] as const) {
      const c = this.#counter(name, help, []);
      (c as unknown as { collect: () => void }).collect = () => {
        c.reset();
        c.inc(buffered(i));
      };
    }
  }

  /** The front running in this process (its counts are read at every scrape and dump). */
  attachFront(view: FrontView): void {
    this.#front = view;
  }

  #frontTotals(): { connections: ConnectionCounts[]; spoolFailures: Iterable<[string, number]> } | null {
    if (this.#sumWorkers) return this.#frontSum;
    const f = this.#front;
    return f ? { connections: [f.connections], spoolFailures: f.spoolFailures } : null;
  }

  /** This process's request metrics, for the master (worker topology). */
  async dump(): Promise<RequestMetricsDump> {
    const values = async (c: client.Counter) =>
      (await c.get()).values.map((v) => ({ labels: v.labels as Record<string, string | number>, value: v.value }));
    return {
      layer: this.layerDuration.dump(),
      server: this.serverDuration.dump(),
      client: this.clientDuration.dump(),
      requests: await values(this.requests),
      upstreamErrors: await values(this.upstreamErrors),
      front: this.#front
        ? { connections: this.#front.connections, spoolFailures: [...this.#front.spoolFailures] }
        : null,
      responseBuffer: [responseBufferStats.tempFileBytes, responseBufferStats.tempFileFailures],
    };
  }

  /** A worker is gone: what it counted (its last dump) stays in the sums. */
  retire(dump: RequestMetricsDump): void {
    this.#retired.push(dump);
  }

  /** Replace this process's request metrics with the sum of `dumps` (and of the retired workers'). */
  #absorb(dumps: RequestMetricsDump[]): void {
    this.layerDuration.reset();
    this.serverDuration.reset();
    this.clientDuration.reset();
    this.requests.reset();
    this.upstreamErrors.reset();
    for (const d of [...this.#retired, ...dumps]) {
      this.layerDuration.add(d.layer);
      this.serverDuration.add(d.server);
      this.clientDuration.add(d.client);
      for (const v of d.requests) this.requests.inc(v.labels as never, v.value);
      for (const v of d.upstreamErrors) this.upstreamErrors.inc(v.labels as never, v.value);
    }
    // Connections open and their caps are the live workers'; refusals and spool failures also the retired ones'.
    const spoolFailures = new Map<string, number>();
    const retired = this.#retired.flatMap((d) => (d.front ? [{ ...d.front.connections, open: 0, limit: 0 }] : []));
    for (const d of [...this.#retired, ...dumps]) {
      for (const [errno, n] of d.front?.spoolFailures ?? []) {
        spoolFailures.set(errno, (spoolFailures.get(errno) ?? 0) + n);
      }
    }
    this.#frontSum = {
      connections: sumConnections([...retired, ...dumps.map((d) => d.front?.connections)]),
      spoolFailures,
    };
    this.#bufferSum = [0, 0];
    for (const d of [...this.#retired, ...dumps]) {
      this.#bufferSum[0] += d.responseBuffer?.[0] ?? 0;
      this.#bufferSum[1] += d.responseBuffer?.[1] ?? 0;
    }
  }

  #counter<L extends string>(name: string, help: string, labelNames: readonly L[]) {
    const c = new client.Counter({ name, help, labelNames, registers: [this.registry] });
    this.#counterNames.set(c as client.Metric, name);
    return c;
  }

  /** Gauges read from the pool at scrape time. */
  attachPool(source: PoolView | AppPoolsView): void {
    // A lone app.module keeps its series unlabelled, as before `apps:`; several apps label each (`app`).
    const pools = 'views' in source ? () => source.views() : () => [{ app: '', pool: source }];
    const by = 'views' in source ? ['app'] : [];
    const lbl = (app: string, extra: Record<string, string> = {}) => (app ? { ...extra, app } : extra);
    const states: WorkerState[] = ['starting', 'idle', 'busy', 'draining'];
    new client.Gauge({
      name: 'stratum_workers',
      help: 'Worker processes by state.',
      labelNames: ['state', ...by],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const { app, pool } of pools()) {
          const counts = Object.fromEntries(states.map((s) => [s, 0])) as Record<WorkerState, number>;
          for (const w of pool.workers) counts[w.state]++;
          for (const s of states) this.set(lbl(app, { state: s }), counts[s]);
        }
      },
    });
    new client.Gauge({
      name: 'stratum_inflight_requests',
      help: 'Requests in flight on the workers.',
      labelNames: by,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const { app, pool } of pools())
          this.set(lbl(app), pool.workers.reduce((n, w) => n + Math.max(w.inflight, w.status.inflight), 0));
      },
    });
    new client.Gauge({
      name: 'stratum_queue_length',
      help: 'Requests waiting for a free worker (the listen queue).',
      labelNames: by,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const { app, pool } of pools()) this.set(lbl(app), pool.queueLength);
      },
    });
    const counters: Array<[string, string, (pool: PoolView) => number]> = [
      ['stratum_worker_respawns_total', 'Workers replaced after dying.', (pool) => pool.counters.respawns],
      [
        'stratum_harakiri_kills_total',
        'Workers killed by harakiri (their event loop was blocked past the limit).',
        (pool) => pool.counters.harakiriKills,
      ],
      [
        'stratum_harakiri_timeouts_total',
        'Requests answered 504 at harakiri while their worker stayed healthy (slow, not blocked).',
        (pool) => pool.counters.harakiriTimeouts,
      ],
      [
        'stratum_worker_recycles_total',
        'Workers recycled gracefully (max-requests, reload-on-rss, reload).',
        (pool) => pool.counters.recycles,
      ],
      [
        'stratum_app_exceptions_total',
        'Exceptions thrown by the app: answered 500, or uncaught (the worker was replaced).',
        (pool) => pool.counters.exceptions,
      ],
      [
        'stratum_queue_rejections_total',
        'Requests refused with 503 because the listen queue was full.',
        (pool) => pool.counters.rejected,
      ],
      ['stratum_reloads_total', 'Rolling reloads.', (pool) => pool.counters.reloads],
    ];
    for (const [name, help, read] of counters) {
      const c = new client.Counter({
        name,
        help,
        labelNames: by,
        registers: [this.registry],
        collect() {
          // The pools' own totals, set whole at each scrape (a counter's value is only ever read here).
          this.reset();
          for (const { app, pool } of pools()) this.inc(lbl(app), read(pool));
        },
      });
      this.#counterNames.set(c as client.Metric, name);
    }
  }

  /** `kind: process` apps: up, resident memory and CPU per process, restarts per app. */
  attachProcesses(read: () => ProcessAppView[]): void {
    const each = (
      name: string,
      help: string,
      value: (p: ProcessAppView['processes'][number]) => number,
      Kind: typeof client.Gauge | typeof client.Counter,
    ) => {
      const m = new Kind({
        name,
        help,
        labelNames: ['app', 'instance'] as const,
        registers: [this.registry],
        collect() {
          this.reset();
          for (const a of read())
            for (const p of a.processes) {
              const labels = { app: a.app, instance: String(p.id) };
              if (this instanceof client.Gauge) this.set(labels, value(p));
              else (this as client.Counter<'app' | 'instance'>).inc(labels, value(p));
            }
        },
      });
      if (Kind === client.Counter) this.#counterNames.set(m as client.Metric, name);
    };
    const G = client.Gauge;
    each('stratum_process_up', "A process app's process: 1 running, 0 down or restarting.", (p) => +p.up, G);
    each('stratum_process_resident_memory_bytes', "Resident memory of a process app's process.", (p) => p.rss, G);
    const cpu = "CPU seconds (user + system) of a process app's process.";
    each('stratum_process_cpu_seconds_total', cpu, (p) => p.cpuSeconds, client.Counter);
    const restarts = new client.Counter({
      name: 'stratum_process_restarts_total',
      help: 'Restarts of a process app\'s processes: deaths respawned, memory limit, reload, cron.',
      labelNames: ['app'] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const a of read()) this.inc({ app: a.app }, a.restarts);
      },
    });
    this.#counterNames.set(restarts as client.Metric, 'stratum_process_restarts_total');
  }

  attachUpstreamHealth(read: () => Array<{ target: string; up: boolean; active?: number; fails?: number }>): void {
    new client.Gauge({
      name: 'stratum_upstream_up',
      help: 'Health of each server of an upstream group, uwsgi or http (1 up, 0 out by passive or active checks).',
      labelNames: ['target'] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const h of read()) this.set({ target: h.target }, h.up ? 1 : 0);
      },
    });
    // Upstream groups (src/proxy/balancer.ts): requests in flight and failed tries per server.
    new client.Gauge({
      name: 'stratum_upstream_active_requests',
      help: 'Requests in flight to each server of an upstream group (least-conn balances on it).',
      labelNames: ['target'] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const h of read()) this.set({ target: h.target }, h.active ?? 0);
      },
    });
    new client.Counter({
      name: 'stratum_upstream_fails_total',
      help: 'Failed tries per server of an upstream group (connect errors, resets, timeouts, 502/503 answers).',
      labelNames: ['target'] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const h of read()) this.inc({ target: h.target }, h.fails ?? 0);
      },
    });
  }

  /** Expiry of each TLS certificate the front serves (the master's copy, src/proxy/tls.ts). */
  attachTls(read: () => Array<{ name: string; file: string; expiresAt: number }>): void {
    new client.Gauge({
      name: 'stratum_tls_certificate_expiry_seconds',
      help: 'When each TLS certificate served expires (notAfter), as a unix time in seconds.',
      labelNames: ['name', 'file'] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const c of read()) this.set({ name: c.name, file: c.file }, c.expiresAt);
      },
    });
  }

  /**
   * Where the workers' metrics come from (the supervisor's IPC round trip). With `requests`, the
   * workers run the front and their request metrics are summed into this process's.
   */
  setWorkerSource(source: WorkerMetricsSource, requests: boolean): void {
    this.#workerSource = source;
    this.#sumWorkers = requests;
  }
  #sumWorkers = false;

  observe(o: RequestObservation): void {
    const sc = statusClass(o.status);
    const status = String(o.status);
    const route = o.route;
    const trace = o.traceId;
    if (o.layers) {
      for (const layer of LAYERS) this.layerDuration.observe(layer, route, sc, Math.max(o.layers[layer], 0), trace);
    } else {
      this.layerDuration.observe('proxy', route, sc, o.totalSeconds - (o.upstream?.seconds ?? 0), trace);
    }
    this.serverDuration.observe(
      KNOWN_METHODS.has(o.method) ? o.method : '_OTHER',
      status,
      route,
      o.totalSeconds,
      trace,
    );
    if (o.upstream) this.clientDuration.observe(o.upstream.target, o.upstream.kind, status, o.upstream.seconds, trace);
    this.requests.inc({ route, status_class: sc });
  }

  /** Render for a scraper: OpenMetrics when its Accept header asks for it, else Prometheus text. */
  render(accept: string | undefined): Promise<{ contentType: string; body: string }> {
    const openMetrics = !!accept && accept.includes('application/openmetrics-text');
    const run = this.#scrape.then(() => this.#render(openMetrics));
    this.#scrape = run.catch(() => {});
    return run;
  }

  async #render(openMetrics: boolean): Promise<{ contentType: string; body: string }> {
    const type = openMetrics ? OPENMETRICS : PROMETHEUS;
    const workers = this.#workerSource ? await this.#workerSource() : [];
    if (this.#sumWorkers) this.#absorb(workers.flatMap((w) => (w.requests ? [w.requests] : [])));
    this.registry.setContentType(type as never);
    let own: string;
    try {
      own = await this.registry.metrics();
    } finally {
      // prom-client renames counters (drops _total) while rendering OpenMetrics; put names back.
      for (const [m, name] of this.#counterNames) (m as unknown as { name: string }).name = name;
      this.registry.setContentType(OPENMETRICS as never);
    }
    const perProcess = [await this.processRegistry.getMetricsAsJSON(), ...workers.map((w) => w.process)];
    for (let i = 0; i < perProcess.length; i++) {
      perProcess[i] = perProcess[i]!.filter((m) => !MISNAMED.has(m.name));
      // In OpenMetrics prom-client appends _total to counter samples, and strips it from the
      // family name only for metrics it owns, not for an aggregated registry's: without this,
      // `process_cpu_user_seconds_total_total` samples under a `..._total` family.
      // (prom-client's typings say MetricType is a numeric enum; at run time it is the string.)
      if (openMetrics)
        perProcess[i] = perProcess[i]!.map((m) =>
          (m.type as unknown) === 'counter' ? { ...m, name: m.name.replace(/_total$/, '') } : m,
        );
    }
    const merged = (AggregatorRegistry.aggregate as unknown as (m: MetricJson[][], t: string) => Registry)(
      perProcess,
      type,
    );
    const rest = await merged.metrics();
    if (openMetrics) {
      return { contentType: OPENMETRICS, body: own.replace(/# EOF\n$/, '') + rest };
    }
    return { contentType: PROMETHEUS, body: `${own}\n${rest}` };
  }
}
