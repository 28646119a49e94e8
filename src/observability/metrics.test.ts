import { describe, expect, it } from 'vitest';
import client, { Registry } from 'prom-client';
import { LAYERS, Metrics, statusClass, type RequestObservation } from './metrics.ts';

const TRACE = '0af7651916cd43dd8448eb211c80319c';
const OPENMETRICS_ACCEPT = 'application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5';

function pooled(over: Partial<RequestObservation> = {}): RequestObservation {
  return {
    route: '/',
    method: 'GET',
    status: 200,
    layers: { proxy: 0.0004, queue: 0.0011, worker: 0.0002, app: 0.051 },
    totalSeconds: 0.0527,
    upstream: { kind: 'pool', target: 'pool', seconds: 0.0523 },
    traceId: TRACE,
    ...over,
  };
}

/** A worker's process registry, as the master receives it over IPC. */
async function workerJson(id: string) {
  const registry = new Registry();
  client.collectDefaultMetrics({ register: registry });
  registry.setDefaultLabels({ worker: id });
  return registry.getMetricsAsJSON();
}

const lines = (text: string) => text.split('\n');
const typeLines = (text: string) => lines(text).filter((l) => l.startsWith('# TYPE '));

describe('statusClass', () => {
  it('groups by hundreds, anything outside 100..599 as other', () => {
    expect([100, 200, 204, 301, 404, 499, 500, 599].map(statusClass)).toEqual([
      '1xx',
      '2xx',
      '2xx',
      '3xx',
      '4xx',
      '4xx',
      '5xx',
      '5xx',
    ]);
    expect([0, 99, 600, 999].map(statusClass)).toEqual(['other', 'other', 'other', 'other']);
  });
});

describe('Metrics.render', () => {
  it('serves the Prometheus text format when the scraper does not ask for OpenMetrics', async () => {
    const m = new Metrics();
    m.observe(pooled());
    m.observe(pooled({ status: 503, traceId: null }));
    for (const accept of [undefined, '*/*', 'text/plain; version=0.0.4']) {
      const { contentType, body } = await m.render(accept);
      expect(contentType).toBe('text/plain; version=0.0.4; charset=utf-8');
      for (const layer of LAYERS) {
        expect(body).toContain(
          `stratum_layer_duration_seconds_count{layer="${layer}",route="/",status_class="2xx"} 1\n`,
        );
        expect(body).toContain(
          `stratum_layer_duration_seconds_count{layer="${layer}",route="/",status_class="5xx"} 1\n`,
        );
      }
      expect(body).toContain('# TYPE stratum_requests_total counter\n');
      expect(body).toContain('stratum_requests_total{route="/",status_class="2xx"} 1\n');
      expect(body).toContain(
        'http_server_request_duration_seconds_count' +
          '{http_request_method="GET",http_response_status_code="503",http_route="/"} 1\n',
      );
      expect(body).toContain(
        'http_client_request_duration_seconds_count' +
          '{server_address="pool",stratum_upstream_kind="pool",http_response_status_code="200"} 1\n',
      );
      // No exemplars and no EOF marker in this format.
      expect(body).not.toContain('trace_id');
      expect(body).not.toContain('# EOF');
      // The master's own process metrics, labelled.
      expect(body).toMatch(/^process_cpu_user_seconds_total\{worker="master"\} /m);
    }
  });

  it('serves OpenMetrics with trace-id exemplars when asked', async () => {
    const m = new Metrics();
    m.observe(pooled());
    const { contentType, body } = await m.render(OPENMETRICS_ACCEPT);
    expect(contentType).toBe('application/openmetrics-text; version=1.0.0; charset=utf-8');
    expect(body.endsWith('\n# EOF\n')).toBe(true);
    expect(body.match(/^# EOF$/gm)).toHaveLength(1);
    for (const layer of LAYERS) {
      const bucket = lines(body).find(
        (l) =>
          l.startsWith('stratum_layer_duration_seconds_bucket{') && l.includes(`layer="${layer}"`) && l.includes('#'),
      );
      expect(bucket, `${layer} bucket with an exemplar`).toMatch(
        new RegExp(` # \\{trace_id="${TRACE}"\\} [0-9.e-]+ \\d+(\\.\\d+)?$`),
      );
    }
    // The exemplar sits on the bucket the value fell in: app 0.051 s → le 0.1.
    expect(body).toMatch(
      new RegExp(
        '^stratum_layer_duration_seconds_bucket\\{le="0.1",layer="app",route="/",status_class="2xx"\\} 1 ' +
          `# \\{trace_id="${TRACE}"\\} 0.051 `,
        'm',
      ),
    );
    expect(body).toMatch(/^http_server_request_duration_seconds_bucket\{[^}]*\} 1 # \{trace_id="/m);
  });

  it('records no exemplar for an untraced request', async () => {
    const m = new Metrics();
    m.observe(pooled({ traceId: null }));
    const { body } = await m.render(OPENMETRICS_ACCEPT);
    expect(body).not.toContain(' # {');
  });

  it(
    'names counters the OpenMetrics way (family without _total, samples with one) for own and merged metrics',
    async () => {
      const m = new Metrics();
      m.setWorkerSource(
        async () => [
          { process: await workerJson('1'), requests: null },
          { process: await workerJson('2'), requests: null },
        ],
        false,
      );
      m.observe(pooled());
      const { body } = await m.render(OPENMETRICS_ACCEPT);
      expect(body).toContain('# TYPE stratum_requests counter\n');
      expect(body).toContain('stratum_requests_total{route="/",status_class="2xx"} 1\n');
      expect(body).toContain('# TYPE process_cpu_user_seconds counter\n');
      for (const w of ['master', '1', '2'])
        expect(body).toMatch(new RegExp(`^process_cpu_user_seconds_total\\{worker="${w}"\\} `, 'm'));
      expect(body).not.toMatch(/_total_total/);
      for (const t of typeLines(body)) if (t.endsWith(' counter')) expect(t, t).not.toMatch(/_total counter$/);
    },
  );

  it('keeps the Prometheus names after an OpenMetrics scrape, and the reverse', async () => {
    const m = new Metrics();
    m.observe(pooled());
    const text1 = (await m.render(undefined)).body;
    await m.render(OPENMETRICS_ACCEPT);
    const text2 = (await m.render(undefined)).body;
    const types = (t: string) => typeLines(t).filter((l) => l.includes('stratum_'));
    expect(types(text2)).toEqual(types(text1));
    expect(text2).toContain('# TYPE stratum_requests_total counter\n');
    const om1 = (await m.render(OPENMETRICS_ACCEPT)).body;
    expect(om1).toContain('# TYPE stratum_requests counter\n');
  });

  it('answers concurrent scrapes of both formats each in its own format', async () => {
    const m = new Metrics();
    m.setWorkerSource(async () => [{ process: await workerJson('1'), requests: null }], false);
    m.observe(pooled());
    const [a, b, c] = await Promise.all([m.render(undefined), m.render(OPENMETRICS_ACCEPT), m.render(undefined)]);
    for (const r of [a, c]) {
      expect(r.body).toContain('# TYPE stratum_requests_total counter\n');
      expect(r.body).not.toContain('# EOF');
    }
    expect(b.body).toContain('# TYPE stratum_requests counter\n');
    expect(b.body.endsWith('# EOF\n')).toBe(true);
  });

  it("merges the workers' process metrics with the master's in one scrape, one family each", async () => {
    const m = new Metrics();
    m.setWorkerSource(
      async () => [
        { process: await workerJson('1'), requests: null },
        { process: await workerJson('2'), requests: null },
      ],
      false,
    );
    const { body } = await m.render(undefined);
    const types = typeLines(body);
    expect(new Set(types).size, 'each family once').toBe(types.length);
    for (const w of ['master', '1', '2'])
      expect(body).toMatch(new RegExp(`^nodejs_heap_size_used_bytes\\{worker="${w}"\\} `, 'm'));
    // prom-client's *_total gauges (rejected by promtool) are left out.
    expect(body).not.toMatch(/^nodejs_active_(handles|requests|resources)_total/m);
  });

  it('observes only the proxy layer for requests that did not reach a worker', async () => {
    const m = new Metrics();
    m.observe(
      pooled({
        layers: null,
        totalSeconds: 0.01,
        upstream: { kind: 'http', target: '127.0.0.1:9', seconds: 0.008 },
        method: 'BREW',
      }),
    );
    const { body } = await m.render(undefined);
    expect(body).toContain('stratum_layer_duration_seconds_count{layer="proxy",route="/",status_class="2xx"} 1\n');
    expect(body).toMatch(/^stratum_layer_duration_seconds_sum\{layer="proxy",route="\/",status_class="2xx"\} 0\.002/m);
    expect(body).not.toContain('layer="app"');
    expect(body).toContain('http_request_method="_OTHER"');
    expect(body).toContain('server_address="127.0.0.1:9",stratum_upstream_kind="http"');
  });
});
