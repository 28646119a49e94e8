// OpenTelemetry tracing in the master and in every worker. One trace per request: a SERVER span
// at the proxy, a CLIENT span for the upstream call, a SERVER span in the worker for the uwsgi
// request, and the app's own spans beneath it (@fastify/otel). Context crosses the uwsgi hop as
// the HTTP_TRACEPARENT var — to our workers and to a foreign uWSGI — and as the traceparent
// header to HTTP upstreams.
//
// The SDK is assembled here from its parts (sdk-trace, resources, the AsyncLocalStorage context
// manager, one OTLP/HTTP exporter) rather than taken whole from @opentelemetry/sdk-node: sdk-node
// depends on every exporter of every signal (traces, metrics, logs; gRPC, HTTP, proto, Zipkin,
// Prometheus) and measured 82 of the 123 MB of production node_modules; the parts used here are
// 30 MB, and dropping sdk-node let the whole OpenTelemetry set move to the line @fastify/otel
// supports (@opentelemetry/core 2.x, api 1.9), which ended npm's peer conflict (docs/tracing.md).
// What sdk-node read from the environment is read here, variable by variable; docs/tracing.md
// lists them and test/observability/otel-env.test.ts has a test for each.
//
// When tracing is off nothing here runs: no SDK, no span objects, no header work — and nothing of
// OpenTelemetry is even loaded: @opentelemetry/api alone is ~2–4 MiB of resident memory per
// process (npm run bench, idle RSS), so it is imported by startTracing, not at the top.

import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Context, DiagLogger, Span, TextMapGetter, Tracer } from '@opentelemetry/api';
import type { Sampler, SpanExporter, SpanLimits, SpanProcessor } from '@opentelemetry/sdk-trace';
import type * as SdkTrace from '@opentelemetry/sdk-trace';
import type * as OtelCore from '@opentelemetry/core';
import type { StratumConfig } from '../config/schema.ts';

type OtelApi = typeof import('@opentelemetry/api');
/** Set by startTracing; ProxySpans and tracedListener only exist once it has run (they need a tracer). */
let api: OtelApi;

const headerGetter: TextMapGetter<IncomingMessage['headers']> = {
  keys: (h) => Object.keys(h),
  get: (h, key) => h[key],
};

export interface TracingHandle {
  tracer: Tracer;
  /** Flushes the queued spans, waiting at most the shutdown bound; never rejects. */
  shutdown(): Promise<void>;
}

/** The part of a pino logger tracing writes to; without one, JSON lines of the same shape go to stdout. */
export interface TracingLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

/**
 * Lines in pino's shape (level label, ISO time, pid) for a process that passes no logger: the
 * workers have none, and the master's is made after this module's caller asked for tracing.
 * process.stdout is synchronous for files and pipes on Linux, so a line written just before
 * process.exit is not lost.
 */
function stdoutLog(role: string): TracingLog {
  const line = (level: string, obj: object, msg: string) =>
    process.stdout.write(
      `${JSON.stringify({ level, time: new Date().toISOString(), pid: process.pid, role, ...obj, msg })}\n`,
    );
  return { info: (obj, msg) => line('info', obj, msg), warn: (obj, msg) => line('warn', obj, msg) };
}

/** Without OTEL_BSP_EXPORT_TIMEOUT, shutdown waits this long for the collector (the SDK's own default is 30 s). */
export const DEFAULT_SHUTDOWN_BOUND_MS = 2000;
/** Export failures are logged once per this interval with a count, not once per failed batch. */
const EXPORT_ERROR_LOG_INTERVAL_MS = 60_000;

const env = (name: string): string | undefined => {
  const v = process.env[name]?.trim();
  return v ? v : undefined;
};

/** A non-negative number from the environment; anything else is reported and ignored. */
function envNumber(name: string, warnings: string[]): number | undefined {
  const raw = env(name);
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (Number.isFinite(n) && n >= 0) return n;
  warnings.push(`${name}=${JSON.stringify(raw)} is not a non-negative number; ignored`);
  return undefined;
}

const envList = (name: string): string[] =>
  [...new Set((env(name) ?? '').split(',').map((s) => s.trim()).filter(Boolean))];

type TraceModules = {
  sdk: typeof SdkTrace;
};

/** OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG, as the specification names them; null when unset. */
function samplerFromEnv({ sdk }: TraceModules, warnings: string[]): { sampler: Sampler; name: string } | null {
  const name = env('OTEL_TRACES_SAMPLER');
  if (!name) return null;
  const ratio = (): number => {
    const raw = env('OTEL_TRACES_SAMPLER_ARG');
    const n = raw === undefined ? NaN : Number(raw);
    if (Number.isFinite(n) && n >= 0 && n <= 1) return n;
    warnings.push(`OTEL_TRACES_SAMPLER_ARG=${JSON.stringify(raw ?? '')} is not a ratio in [0, 1]; using 1`);
    return 1;
  };
  const parentBased = (root: Sampler) => new sdk.ParentBasedSampler({ root });
  switch (name) {
    case 'always_on': return { sampler: new sdk.AlwaysOnSampler(), name };
    case 'always_off': return { sampler: new sdk.AlwaysOffSampler(), name };
    case 'traceidratio': return { sampler: new sdk.TraceIdRatioBasedSampler(ratio()), name };
    case 'parentbased_always_on': return { sampler: parentBased(new sdk.AlwaysOnSampler()), name };
    case 'parentbased_always_off': return { sampler: parentBased(new sdk.AlwaysOffSampler()), name };
    case 'parentbased_traceidratio': return { sampler: parentBased(new sdk.TraceIdRatioBasedSampler(ratio())), name };
    default:
      warnings.push(`OTEL_TRACES_SAMPLER=${JSON.stringify(name)} is not supported (always_on, always_off, `
        + 'traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio); '
        + 'using tracing.sampleRatio');
      return null;
  }
}

/** OTEL_SPAN_* and OTEL_ATTRIBUTE_* limits; unset ones keep the SDK's defaults. */
function spanLimitsFromEnv(warnings: string[]): SpanLimits {
  const n = (name: string) => envNumber(name, warnings);
  return {
    attributeCountLimit: n('OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT') ?? n('OTEL_ATTRIBUTE_COUNT_LIMIT'),
    attributeValueLengthLimit: n('OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT') ?? n('OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT'),
    eventCountLimit: n('OTEL_SPAN_EVENT_COUNT_LIMIT'),
    linkCountLimit: n('OTEL_SPAN_LINK_COUNT_LIMIT'),
    attributePerEventCountLimit: n('OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT'),
    attributePerLinkCountLimit: n('OTEL_LINK_ATTRIBUTE_COUNT_LIMIT'),
  };
}

/** Where OTLP/HTTP spans go, as the exporter itself resolves it (for the log line only). */
function tracesEndpoint(): string {
  const specific = env('OTEL_EXPORTER_OTLP_TRACES_ENDPOINT');
  if (specific) return specific;
  const base = env('OTEL_EXPORTER_OTLP_ENDPOINT') ?? 'http://localhost:4318';
  return `${base.replace(/\/+$/, '')}/v1/traces`;
}

interface ExportPlan {
  processors: SpanProcessor[];
  /** What the start-up line says: "otlp http/protobuf → URL", "console", "none". */
  exporters: string[];
  endpoint: string | null;
}

/** OTEL_TRACES_EXPORTER (otlp, console, none), OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL and OTEL_BSP_*. */
async function exportersFromEnv({ sdk }: TraceModules, warnings: string[]): Promise<ExportPlan> {
  let names = envList('OTEL_TRACES_EXPORTER');
  if (names.length === 0) names = ['otlp'];
  if (names.includes('none')) return { processors: [], exporters: ['none'], endpoint: null };
  const plan: ExportPlan = { processors: [], exporters: [], endpoint: null };
  const batch = (exporter: SpanExporter) => new sdk.BatchSpanProcessor({
    exporter,
    maxQueueSize: envNumber('OTEL_BSP_MAX_QUEUE_SIZE', warnings),
    maxExportBatchSize: envNumber('OTEL_BSP_MAX_EXPORT_BATCH_SIZE', warnings),
    scheduledDelayMillis: envNumber('OTEL_BSP_SCHEDULE_DELAY', warnings),
    exportTimeoutMillis: envNumber('OTEL_BSP_EXPORT_TIMEOUT', warnings),
  });
  for (const name of names) {
    if (name === 'otlp') {
      let protocol = env('OTEL_EXPORTER_OTLP_TRACES_PROTOCOL') ?? env('OTEL_EXPORTER_OTLP_PROTOCOL') ?? 'http/protobuf';
      if (protocol !== 'http/protobuf' && protocol !== 'http/json') {
        // gRPC would add @grpc/grpc-js and its exporter to every install for one transport
        // that every collector also offers as OTLP/HTTP (port 4318).
        warnings.push(`OTLP protocol ${JSON.stringify(protocol)} is not supported (http/protobuf, http/json); `
          + 'using http/protobuf — point OTEL_EXPORTER_OTLP_ENDPOINT at the collector\'s OTLP/HTTP port (4318)');
        protocol = 'http/protobuf';
      }
      // Endpoint, headers, timeout, compression and TLS files: the exporter reads OTEL_EXPORTER_OTLP_* itself.
      const { OTLPTraceExporter } = protocol === 'http/json'
        ? await import('@opentelemetry/exporter-trace-otlp-http')
        : await import('@opentelemetry/exporter-trace-otlp-proto');
      plan.processors.push(batch(new OTLPTraceExporter()));
      plan.endpoint = tracesEndpoint();
      plan.exporters.push(`otlp ${protocol}`);
    } else if (name === 'console') {
      plan.processors.push(new sdk.SimpleSpanProcessor({ exporter: new sdk.ConsoleSpanExporter() }));
      plan.exporters.push('console');
    } else {
      warnings.push(`OTEL_TRACES_EXPORTER value ${JSON.stringify(name)} is not supported (otlp, console, none); `
        + 'ignored');
    }
  }
  return plan;
}

/** OTEL_PROPAGATORS: tracecontext and baggage (the default), or none. */
function propagatorFromEnv(core: typeof OtelCore, warnings: string[]) {
  let names = envList('OTEL_PROPAGATORS');
  if (names.length === 0) names = ['tracecontext', 'baggage'];
  if (names.includes('none')) return null;
  const propagators = [];
  for (const name of names) {
    if (name === 'tracecontext') propagators.push(new core.W3CTraceContextPropagator());
    else if (name === 'baggage') propagators.push(new core.W3CBaggagePropagator());
    else {
      warnings.push(`OTEL_PROPAGATORS value ${JSON.stringify(name)} is not supported (tracecontext, baggage, none); `
        + 'ignored');
    }
  }
  return new core.CompositePropagator({ propagators });
}

/** The SDK's own diagnostics (bad values, exporter trouble) into our log, at OTEL_LOG_LEVEL (default warn). */
function diagLogger(log: TracingLog): DiagLogger {
  const at = (fn: 'info' | 'warn') => (message: string, ...args: unknown[]) =>
    log[fn]({ otel: args.length ? args.map(String) : undefined }, `opentelemetry: ${message}`);
  return { error: at('warn'), warn: at('warn'), info: at('info'), debug: at('info'), verbose: at('info') };
}

/**
 * Start the SDK for this process. The app's instrumentation (@fastify/otel, registered on every
 * Fastify instance as it is created) is enabled here, so start tracing before loading the app.
 * `log` receives the start-up line (master only), configuration warnings, export failures
 * (at most one line a minute, with a count) and a shutdown that gave up on the collector.
 */
export async function startTracing(
  config: StratumConfig['tracing'],
  role: string,
  log: TracingLog = stdoutLog(role),
): Promise<TracingHandle | null> {
  if (!config.enabled) return null;
  // Every process reads the same environment: the master alone says what it found.
  const announce = role === 'master';
  if (/^true$/i.test(env('OTEL_SDK_DISABLED') ?? '')) {
    if (announce) log.info({ role }, 'tracing off: OTEL_SDK_DISABLED=true overrides tracing.enabled');
    return null;
  }
  api = await import('@opentelemetry/api');
  const [sdk, core, resources, { AsyncLocalStorageContextManager }] = await Promise.all([
    import('@opentelemetry/sdk-trace'),
    import('@opentelemetry/core'),
    import('@opentelemetry/resources'),
    import('@opentelemetry/context-async-hooks'),
  ]);
  const warnings: string[] = [];

  const level = env('OTEL_LOG_LEVEL');
  const diagLevel = (level ? core.diagLogLevelFromString(level) : undefined) ?? api.DiagLogLevel.WARN;
  api.diag.setLogger(diagLogger(log), { logLevel: diagLevel, suppressOverrideMessage: true });

  // service.name: OTEL_SERVICE_NAME, else OTEL_RESOURCE_ATTRIBUTES, else tracing.serviceName
  // (the precedence the specification gives the two variables). Role and pid are always ours:
  // they tell the processes of one stratum apart.
  const detected = resources.envDetector.detect().attributes ?? {};
  const rawAttributes = env('OTEL_RESOURCE_ATTRIBUTES');
  if (rawAttributes && Object.keys(detected).every((k) => k === 'service.name' && env('OTEL_SERVICE_NAME'))) {
    warnings.push(`OTEL_RESOURCE_ATTRIBUTES=${JSON.stringify(rawAttributes)} has no valid key=value pair; ignored`);
  }
  const resource = resources.defaultResource()
    .merge(resources.resourceFromAttributes({ 'service.name': config.serviceName }))
    .merge(resources.resourceFromAttributes(detected))
    .merge(resources.resourceFromAttributes({ 'stratum.role': role, 'process.pid': process.pid }));

  // OTEL_TRACES_SAMPLER, when set, replaces tracing.sampleRatio (a parent-based ratio sampler).
  const envSampler = samplerFromEnv({ sdk }, warnings);
  const sampler = envSampler?.sampler
    ?? new sdk.ParentBasedSampler({ root: new sdk.TraceIdRatioBasedSampler(config.sampleRatio) });
  const plan = await exportersFromEnv({ sdk }, warnings);
  const limits = Object.fromEntries(Object.entries(spanLimitsFromEnv(warnings)).filter(([, v]) => v !== undefined));
  // With OTEL_TRACES_EXPORTER=none the provider still makes spans (no processor): trace ids keep
  // reaching the access log, the exemplars and the upstreams, and nothing is sent anywhere.
  const provider = new sdk.TracerProvider({ resource, sampler, spanLimits: limits, spanProcessors: plan.processors });
  api.context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  const propagator = propagatorFromEnv(core, warnings);
  if (propagator) api.propagation.setGlobalPropagator(propagator);
  api.trace.setGlobalTracerProvider(provider);

  // The BatchSpanProcessor reports a failed export here; the default handler is diag.error.
  let failed = 0;
  let lastLine = -Infinity;
  core.setGlobalErrorHandler((err) => {
    failed++;
    const now = Date.now();
    if (now - lastLine < EXPORT_ERROR_LOG_INTERVAL_MS) return;
    lastLine = now;
    const message = err instanceof Error ? err.message : String(err);
    log.warn({ role, endpoint: plan.endpoint, failures: failed, err: message }, 'tracing: exporting spans failed');
    failed = 0;
  });

  if (role !== 'master') {
    const { FastifyOtelInstrumentation } = await import('@fastify/otel');
    const fastify = new FastifyOtelInstrumentation({ registerOnInitialization: true });
    fastify.setTracerProvider(provider);
  }

  if (announce) {
    log.info({
      role,
      exporters: plan.exporters,
      endpoint: plan.endpoint,
      sampler: envSampler?.name ?? `parentbased_traceidratio ${config.sampleRatio}`,
      serviceName: resource.attributes['service.name'],
    }, 'tracing on');
    for (const w of warnings) log.warn({ role }, `tracing: ${w}`);
  }

  // Shutdown flushes what is queued. An unreachable collector would hold it for the exporter's
  // retries (seconds); the stop sequence gets a bound instead, and a line saying spans were lost.
  // The BatchSpanProcessor's own export timeout is the same variable, so either may fire first.
  const boundMs = envNumber('OTEL_BSP_EXPORT_TIMEOUT', []) ?? DEFAULT_SHUTDOWN_BOUND_MS;
  const shutdown = async (): Promise<void> => {
    const started = Date.now();
    let timer: NodeJS.Timeout | undefined;
    const outcome = await Promise.race([
      provider.shutdown().then(() => null, (err: unknown) => (err instanceof Error ? err.message : String(err))),
      new Promise<string>((resolve) => { timer = setTimeout(resolve, boundMs, `no answer within ${boundMs} ms`); }),
    ]);
    clearTimeout(timer);
    if (outcome !== null) {
      log.warn({ role, endpoint: plan.endpoint, boundMs, waitedMs: Date.now() - started, err: outcome },
        'tracing: the last spans were not exported; stopping without them');
    }
  };
  return { tracer: api.trace.getTracer('stratum'), shutdown };
}

/** The proxy's spans for one request. */
export class ProxySpans {
  readonly server: Span;
  readonly ctx: Context;
  client: Span | null = null;

  /** `scheme` and `client`: the real client's (behind trusted proxies, src/proxy/forward.ts), not the socket's. */
  constructor(tracer: Tracer, req: IncomingMessage, route: string, scheme: string, client: string) {
    // A client's traceparent is honoured: our SERVER span continues its trace.
    const parent = api.propagation.extract(api.ROOT_CONTEXT, req.headers, headerGetter);
    const host = req.headers.host ?? '';
    const colon = host.lastIndexOf(':');
    this.server = tracer.startSpan(`${req.method} ${route}`, {
      kind: api.SpanKind.SERVER,
      attributes: {
        'http.request.method': req.method ?? 'GET',
        'url.path': (req.url ?? '/').split('?')[0],
        'url.scheme': scheme,
        'http.route': route,
        'server.address': colon > 0 ? host.slice(0, colon) : host,
        'client.address': client,
        'network.protocol.version': req.httpVersion,
        'user_agent.original': req.headers['user-agent'] ?? '',
        'stratum.layer': 'proxy',
      },
    }, parent);
    this.ctx = api.trace.setSpan(parent, this.server);
  }

  get traceId(): string {
    return this.server.spanContext().traceId;
  }

  /** Start the CLIENT span for the upstream call; returns the traceparent to send upstream. */
  startClient(tracer: Tracer, method: string, kind: string, target: string): string | null {
    this.client = tracer.startSpan(`${method}`, {
      kind: api.SpanKind.CLIENT,
      attributes: { 'http.request.method': method, 'server.address': target, 'stratum.upstream.kind': kind, 'stratum.layer': 'queue' },
    }, this.ctx);
    const carrier: Record<string, string> = {};
    api.propagation.inject(api.trace.setSpan(this.ctx, this.client), carrier);
    return carrier.traceparent ?? null;
  }

  end(status: number, error: { code: string; message: string } | null, extra: Record<string, string | number>): void {
    for (const span of [this.client, this.server]) {
      if (!span) continue;
      span.setAttribute('http.response.status_code', status);
      for (const [k, v] of Object.entries(extra)) span.setAttribute(k, v);
      if (status >= 500 || error) {
        span.setStatus({ code: api.SpanStatusCode.ERROR, message: error?.message });
        if (error) span.setAttribute('error.type', error.code);
      }
    }
    this.client?.end();
    this.server.end();
  }
}

/** Worker side: a SERVER span around the app, child of the proxy's CLIENT span. */
export function tracedListener(tracer: Tracer, listener: (req: IncomingMessage, res: ServerResponse) => void, workerId: number) {
  return (req: IncomingMessage, res: ServerResponse): void => {
    const parent = api.propagation.extract(api.ROOT_CONTEXT, req.headers, headerGetter);
    const span = tracer.startSpan(`uwsgi ${req.method}`, {
      kind: api.SpanKind.SERVER,
      attributes: {
        'http.request.method': req.method ?? 'GET',
        'url.path': (req.url ?? '/').split('?')[0],
        'stratum.layer': 'worker',
        'stratum.worker.id': workerId,
        'process.pid': process.pid,
      },
    }, parent);
    res.once('close', () => {
      span.setAttribute('http.response.status_code', res.statusCode);
      if (res.statusCode >= 500) span.setStatus({ code: api.SpanStatusCode.ERROR });
      span.end();
    });
    api.context.with(api.trace.setSpan(parent, span), () => listener(req, res));
  };
}
