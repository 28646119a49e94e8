// OpenTelemetry tracing (@opentelemetry/sdk-node) in the master and in every worker. One trace
// per request: a SERVER span at the proxy, a CLIENT span for the upstream call, a SERVER span in
// the worker for the uwsgi request, and the app's own spans beneath it (@fastify/otel). Context
// crosses the uwsgi hop as the HTTP_TRACEPARENT var — to our workers and to a foreign uWSGI — and
// as the traceparent header to HTTP upstreams. Export: OTLP/HTTP, configured by OTEL_* vars.
// When tracing is off nothing here runs: no SDK, no span objects, no header work — and nothing of
// OpenTelemetry is even loaded: @opentelemetry/api alone is ~2–4 MiB of resident memory per
// process (npm run bench, idle RSS), so it is imported by startTracing, not at the top.

import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Context, Span, TextMapGetter, Tracer } from '@opentelemetry/api';
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
  shutdown(): Promise<void>;
}

/**
 * Start the SDK for this process. The app's instrumentation (@fastify/otel, registered on every
 * Fastify instance as it is created) is enabled here, so start tracing before loading the app.
 */
export async function startTracing(config: StratumConfig['tracing'], role: string): Promise<TracingHandle | null> {
  if (!config.enabled) return null;
  api = await import('@opentelemetry/api');
  const [{ NodeSDK }, { ParentBasedSampler, TraceIdRatioBasedSampler }, { resourceFromAttributes }] = await Promise.all([
    import('@opentelemetry/sdk-node'),
    import('@opentelemetry/sdk-trace'),
    import('@opentelemetry/resources'),
  ]);
  const instrumentations = [];
  if (role !== 'master') {
    const { FastifyOtelInstrumentation } = await import('@fastify/otel');
    instrumentations.push(new FastifyOtelInstrumentation({ registerOnInitialization: true }));
  }
  const sdk = new NodeSDK({
    resource: resourceFromAttributes({ 'service.name': config.serviceName, 'stratum.role': role, 'process.pid': process.pid }),
    autoDetectResources: false,
    // No exporter given: the SDK builds it from OTEL_TRACES_EXPORTER (default otlp),
    // OTEL_EXPORTER_OTLP_PROTOCOL (default http/protobuf) and OTEL_EXPORTER_OTLP_*ENDPOINT.
    sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(config.sampleRatio) }),
    instrumentations,
  });
  sdk.start();
  return { tracer: api.trace.getTracer('stratum'), shutdown: () => sdk.shutdown() };
}

/** The proxy's spans for one request. */
export class ProxySpans {
  readonly server: Span;
  readonly ctx: Context;
  client: Span | null = null;

  constructor(tracer: Tracer, req: IncomingMessage, route: string, scheme: string) {
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
        'client.address': req.socket.remoteAddress ?? '',
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
