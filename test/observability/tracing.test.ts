// OpenTelemetry across the whole stack, as exported for real: `stratum serve` with tracing on,
// its exporters pointed at an OTLP/HTTP receiver by the standard OTEL_* variables only, and the
// Fastify fixture app (instrumented by @fastify/otel in the workers). One request with a known
// W3C traceparent must come back as one trace: the proxy's SERVER span (child of the client's
// span) → its CLIENT span → the worker's SERVER span → the app's spans, from several processes;
// and the same trace id must mark the latency histograms as OpenMetrics exemplars.
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace';
import { JsonTraceSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { ROOT_CONTEXT, SpanKind, trace } from '@opentelemetry/api';
import { rawRequest, headerValues } from '../helpers/http.ts';
import { makeTempDir, waitUntil } from '../helpers/processes.ts';
import { decodeTraceRequest, startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from '../helpers/otlp.ts';
import { REPO_ROOT, startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';

/** Which process runs the front in these tests (the vitest projects run both). */
const TOPOLOGY = process.env.STRATUM_TOPOLOGY ?? 'worker';

const FASTIFY = join(REPO_ROOT, 'test/fixtures/apps/fastify.ts');
const LAYERS = ['proxy', 'queue', 'worker', 'app'] as const;

const hex = (bytes: number) => randomBytes(bytes).toString('hex');
const newTraceparent = () => {
  const traceId = hex(16);
  const spanId = hex(8);
  return { traceId, spanId, header: `00-${traceId}-${spanId}-01` };
};

afterAll(stopAllStratum);

describe('the OTLP receiver used by these tests', () => {
  it('decodes the request body OpenTelemetry\'s own JSON serializer produces', async () => {
    const exporter = new InMemorySpanExporter();
    const provider = new TracerProvider({
      resource: resourceFromAttributes({ 'service.name': 'check', 'process.pid': 1234 }),
      spanProcessors: [new SimpleSpanProcessor({ exporter })],
    });
    const tracer = provider.getTracer('decoder-check');
    const parent = tracer.startSpan('parent', { kind: SpanKind.SERVER, attributes: { 'http.route': '/x', n: 7, ok: true } });
    const child = tracer.startSpan('child', { kind: SpanKind.CLIENT }, trace.setSpan(ROOT_CONTEXT, parent));
    child.end();
    parent.end();
    await provider.forceFlush();
    const body = JsonTraceSerializer.serializeRequest(exporter.getFinishedSpans());
    expect(body).toBeDefined();
    const spans = decodeTraceRequest(body!);
    await provider.shutdown();

    const p = spans.find((s) => s.name === 'parent')!;
    const c = spans.find((s) => s.name === 'child')!;
    expect(p).toMatchObject({
      traceId: parent.spanContext().traceId,
      spanId: parent.spanContext().spanId,
      parentSpanId: null,
      kind: 'SERVER',
      scope: 'decoder-check',
      attributes: { 'http.route': '/x', n: 7, ok: true },
      resource: { 'service.name': 'check', 'process.pid': 1234 },
    });
    expect(c).toMatchObject({ traceId: p.traceId, parentSpanId: p.spanId, kind: 'CLIENT' });
    expect(p.endNs).toBeGreaterThanOrEqual(p.startNs);
  });
});

describe('tracing through proxy, worker and app', () => {
  let receiver: OtlpReceiver;
  let stratum: StratumProcess;

  beforeAll(async () => {
    receiver = await startOtlpReceiver();
    const dir = makeTempDir('obs-tracing');
    const config = join(dir, 'stratum.yaml');
    // Tracing is switched on by the config; where spans go is only the OTEL_* environment.
    writeFileSync(config, 'tracing:\n  enabled: true\n  sampleRatio: 1\n');
    stratum = await startStratum(
      ['serve', '--config', config, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--socket', join(dir, 'pool.sock'), '--workers', '2', '--app', FASTIFY],
      { env: receiver.env },
    );
  });

  afterAll(async () => {
    if (stratum) expect(await stratum.stop(), 'exit code after SIGTERM').toBe(0);
    await receiver?.close();
  });

  it('continues the client\'s trace: proxy SERVER → CLIENT → worker SERVER → @fastify/otel spans', async () => {
    const tp = newTraceparent();
    const path = `/echo/${hex(6)}`;
    const res = await rawRequest(stratum.front!, { path: `${path}?q=1`, headers: [['traceparent', tp.header]] });
    expect(res.status).toBe(200);

    // The app sees our proxy's context, not the client's: same trace, a new parent.
    const echoed = JSON.parse(res.body.toString()) as { headers: [string, string][] };
    const seen = echoed.headers.filter(([n]) => n.toLowerCase() === 'traceparent').map(([, v]) => v);
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatch(new RegExp(`^00-${tp.traceId}-[0-9a-f]{16}-01$`));
    expect(seen[0]).not.toContain(tp.spanId);

    const byKind = (spans: ReceivedSpan[]) => ({
      proxy: spans.filter((s) => s.kind === 'SERVER' && s.attributes['stratum.layer'] === 'proxy'),
      client: spans.filter((s) => s.kind === 'CLIENT'),
      worker: spans.filter((s) => s.kind === 'SERVER' && s.scope === 'stratum' && s.attributes['stratum.layer'] === 'worker'),
      app: spans.filter((s) => s.scope === '@fastify/otel'),
    });
    await receiver.waitFor(() => {
      const k = byKind(receiver.spansOf(tp.traceId));
      return k.proxy.length > 0 && k.client.length > 0 && k.worker.length > 0 && k.app.length >= 2;
    }, { describe: () => `spans of trace ${tp.traceId} did not all arrive` });
    // Let a late batch (a duplicate would be a bug) arrive before counting.
    await new Promise((r) => setTimeout(r, 500));
    expect(receiver.errors).toEqual([]);

    const spans = receiver.spansOf(tp.traceId);
    const k = byKind(spans);
    expect(k.proxy, 'one proxy SERVER span').toHaveLength(1);
    expect(k.client, 'one upstream CLIENT span').toHaveLength(1);
    expect(k.worker, 'one worker SERVER span').toHaveLength(1);
    const [proxy, client, worker] = [k.proxy[0]!, k.client[0]!, k.worker[0]!];

    // The chain, by parent ids.
    expect(proxy.name).toBe('GET /');
    expect(proxy.parentSpanId, 'the proxy span is a child of the client\'s span').toBe(tp.spanId);
    expect(client.parentSpanId).toBe(proxy.spanId);
    expect(worker.name).toBe('uwsgi GET');
    expect(worker.parentSpanId).toBe(client.spanId);
    const appRequest = k.app.find((s) => s.name === 'request');
    expect(appRequest, '@fastify/otel request span').toBeDefined();
    expect(appRequest!.parentSpanId).toBe(worker.spanId);
    expect(appRequest!.attributes['url.path']).toBe(`${path}?q=1`);
    const handler = k.app.find((s) => s.name.startsWith('handler'));
    expect(handler, '@fastify/otel handler span').toBeDefined();
    expect(handler!.parentSpanId).toBe(appRequest!.spanId);

    // Every span of the trace hangs from another span of it, except the proxy's (remote parent).
    const ids = new Set(spans.map((s) => s.spanId));
    expect(ids.size, 'span ids are unique').toBe(spans.length);
    for (const s of spans) {
      if (s === proxy) continue;
      expect(ids.has(s.parentSpanId ?? ''), `parent of ${s.kind} ${s.name}`).toBe(true);
    }

    // The request was traced under the client's id alone: no span for this path in another trace.
    const forPath = receiver.spans.filter((s) => s.attributes['url.path'] === path || s.attributes['url.path'] === `${path}?q=1`);
    expect(forPath.length).toBeGreaterThanOrEqual(3);
    expect(new Set(forPath.map((s) => s.traceId))).toEqual(new Set([tp.traceId]));

    // The processes, told apart by their resources: in the master topology the proxy's spans come
    // from the master; in the worker topology the whole trace is one worker's.
    expect(stratum.workers).toContain(worker.resource['process.pid']);
    expect(worker.resource['stratum.role']).toMatch(/^worker-\d+$/);
    for (const s of k.app) expect(s.resource['process.pid']).toBe(worker.resource['process.pid']);
    const frontPid = TOPOLOGY === 'master' ? stratum.proc.pid : worker.resource['process.pid'];
    expect(proxy.resource['process.pid']).toBe(frontPid);
    expect(client.resource['process.pid']).toBe(frontPid);
    expect(new Set(spans.map((s) => s.resource['process.pid'])).size).toBe(TOPOLOGY === 'master' ? 2 : 1);
    expect(new Set(spans.map((s) => s.resource['service.name']))).toEqual(new Set(['stratum']));

    // Nesting in time as well: the worker's span lies within the CLIENT span, which lies within
    // the proxy's (clocks of one host; slack for the processes' own time origins, and for a
    // worker's 'close' callback, which ends its span, running after the proxy read the last byte).
    const slack = 10_000_000n; // 10 ms
    expect(client.startNs + slack).toBeGreaterThanOrEqual(proxy.startNs);
    expect(client.endNs).toBeLessThanOrEqual(proxy.endNs + slack);
    expect(worker.startNs + slack).toBeGreaterThanOrEqual(client.startNs);
    expect(worker.endNs).toBeLessThanOrEqual(client.endNs + slack);
  });

  it('gives each request the trace id its client sent, across both workers', async () => {
    const sent = Array.from({ length: 8 }, () => newTraceparent());
    const answers = await Promise.all(sent.map((tp) => rawRequest(stratum.front!, { path: '/slow?ms=20', headers: [['traceparent', tp.header]] })));
    for (const a of answers) expect(a.status).toBe(200);
    await receiver.waitFor(
      () => sent.every((tp) => receiver.spansOf(tp.traceId).filter((s) => s.kind === 'SERVER').length >= 2),
      { describe: () => 'not every request came back as a trace with proxy and worker SERVER spans' },
    );
    const workerPids = new Set<unknown>();
    for (const tp of sent) {
      const spans = receiver.spansOf(tp.traceId);
      const proxy = spans.filter((s) => s.kind === 'SERVER' && s.attributes['stratum.layer'] === 'proxy');
      expect(proxy).toHaveLength(1);
      expect(proxy[0]!.parentSpanId).toBe(tp.spanId);
      for (const s of spans) if (s.attributes['stratum.layer'] === 'worker') workerPids.add(s.resource['process.pid']);
    }
    // Eight concurrent 20 ms requests are spread over the two workers: least in-flight in the
    // master topology; in the worker topology the kernel hands each connection to one worker.
    if (TOPOLOGY === 'master') expect(workerPids.size).toBe(2);
    else expect(workerPids.size).toBeGreaterThanOrEqual(1);
    expect(receiver.errors).toEqual([]);
  });

  it('marks the latency histograms with the trace id as OpenMetrics exemplars', async () => {
    const tp = newTraceparent();
    const res = await rawRequest(stratum.front!, { path: '/', headers: [['traceparent', tp.header]] });
    expect(res.status).toBe(200);
    // The access log carries the same id.
    // (written when the response closes, so it may trail the answer by a moment).
    const requestId = headerValues(res.rawHeaders, 'x-request-id')[0];
    const accessLine = () => stratum.logs().find((l) => l.type === 'access' && l.requestId === requestId);
    await waitUntil(async () => accessLine() !== undefined, { timeoutMs: 5000, describe: () => `no access log line for ${requestId}` });
    expect(accessLine()!.traceId).toBe(tp.traceId);

    // Nothing else is sent before the scrape, so the bucket each layer's observation fell in
    // still carries this request's exemplar (a later observation in a bucket replaces it).
    const om = await rawRequest(stratum.admin, { path: '/metrics', headers: [['accept', 'application/openmetrics-text; version=1.0.0']] });
    expect(om.status).toBe(200);
    expect(om.headers['content-type']).toMatch(/^application\/openmetrics-text/);
    const text = om.body.toString();
    expect(text.endsWith('# EOF\n')).toBe(true);
    expect(text.match(/^# EOF$/gm)).toHaveLength(1);
    const withExemplar = text.split('\n').filter((l) => l.includes(`# {trace_id="${tp.traceId}"}`));
    for (const layer of LAYERS) {
      expect(
        withExemplar.some((l) => l.startsWith('stratum_layer_duration_seconds_bucket{') && l.includes(`layer="${layer}"`)),
        `a ${layer} bucket with exemplar trace_id=${tp.traceId}`,
      ).toBe(true);
    }
    expect(withExemplar.some((l) => l.startsWith('http_server_request_duration_seconds_bucket{'))).toBe(true);
    expect(withExemplar.some((l) => l.startsWith('http_client_request_duration_seconds_bucket{'))).toBe(true);
    // An exemplar is `# {labels} value timestamp` after the sample.
    for (const l of withExemplar) expect(l).toMatch(/^\S+\{[^}]*\} \d+ # \{trace_id="[0-9a-f]{32}"\} [0-9.e-]+ \d+(\.\d+)?$/);

    // The Prometheus text format has no exemplars.
    const plain = await rawRequest(stratum.admin, { path: '/metrics' });
    expect(plain.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(plain.body.toString()).not.toContain('trace_id');
  });
});
