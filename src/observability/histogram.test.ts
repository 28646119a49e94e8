import { describe, expect, it } from 'vitest';
import client, { Registry } from 'prom-client';
import { Histogram3 } from './histogram.ts';

const BUCKETS = [0.001, 0.01, 0.1, 1];
const LABELS = ['layer', 'route', 'status_class'] as const;
const OBSERVATIONS: Array<[string, string, string, number, string | null]> = [
  ['proxy', '/', '2xx', 0.0004, null],
  ['proxy', '/', '2xx', 0.02, 'a'.repeat(32)],
  ['app', '/api', '5xx', 3, 'b'.repeat(32)], // above every bound: +Inf only, with its exemplar
  ['app', '/api', '5xx', 0.001, null], // on a bound: counted in that bucket (le is inclusive)
  ['queue', '/', '2xx', Number.NaN, null], // not a duration: not recorded
];

/** The same observations through prom-client's own Histogram and through ours, in two registries. */
async function render(contentType: string): Promise<{ theirs: string; ours: string }> {
  const theirsRegistry = new (Registry as unknown as new (t: string) => Registry)(contentType);
  const oursRegistry = new (Registry as unknown as new (t: string) => Registry)(contentType);
  // prom-client takes exemplars only on an OpenMetrics registry (the text format has none).
  const exemplars = contentType === Registry.OPENMETRICS_CONTENT_TYPE;
  const theirs = new client.Histogram({
    name: 'h_seconds',
    help: 'h',
    labelNames: LABELS,
    buckets: BUCKETS,
    enableExemplars: exemplars,
    registers: [theirsRegistry],
  });
  const ours = new Histogram3({
    name: 'h_seconds',
    help: 'h',
    labelNames: LABELS,
    buckets: BUCKETS,
    registers: [oursRegistry],
  });
  for (const [layer, route, sc, value, trace] of OBSERVATIONS) {
    if (Number.isFinite(value)) {
      if (exemplars)
        theirs.observe({
          labels: { layer, route, status_class: sc },
          value,
          exemplarLabels: (trace ? { trace_id: trace } : undefined) as never,
        });
      else theirs.observe({ layer, route, status_class: sc }, value);
    }
    ours.observe(layer, route, sc, value, trace);
  }
  // Exemplar timestamps are wall-clock: compare everything else.
  const strip = (s: string) =>
    s.replace(/ (\d+\.\d+|\d+)$/gm, (m, _t, off, all: string) =>
      all.slice(all.lastIndexOf('\n', off) + 1, off).includes('#') ? ' <ts>' : m,
    );
  return { theirs: strip(await theirsRegistry.metrics()), ours: strip(await oursRegistry.metrics()) };
}

describe('Histogram3', () => {
  it("renders exactly as prom-client's Histogram in the Prometheus text format", async () => {
    const { theirs, ours } = await render(Registry.PROMETHEUS_CONTENT_TYPE);
    expect(ours).toBe(theirs);
    expect(ours).toContain('h_seconds_bucket{le="0.001",layer="app",route="/api",status_class="5xx"} 1');
    expect(ours).toContain('h_seconds_count{layer="proxy",route="/",status_class="2xx"} 2');
  });

  it("renders exactly as prom-client's Histogram in OpenMetrics, exemplars included", async () => {
    const { theirs, ours } = await render(Registry.OPENMETRICS_CONTENT_TYPE);
    expect(ours).toBe(theirs);
    expect(ours).toMatch(
      /h_seconds_bucket\{le="\+Inf",layer="app",route="\/api",status_class="5xx"\} 2 # \{trace_id="b{32}"\} 3 <ts>/,
    );
  });

  it("gives the merged-label JSON shape of prom-client's get()", () => {
    const h = new Histogram3({ name: 'x_seconds', help: 'x', labelNames: LABELS, buckets: BUCKETS, registers: [] });
    h.observe('proxy', '/', '2xx', 0.05);
    const { values } = h.get();
    expect(values).toHaveLength(BUCKETS.length + 3);
    expect(values[2]).toMatchObject({
      labels: { le: 0.1, layer: 'proxy', route: '/', status_class: '2xx' },
      value: 1,
      metricName: 'x_seconds_bucket',
    });
    expect(values.at(-2)).toMatchObject({ metricName: 'x_seconds_sum', value: 0.05 });
    h.reset();
    expect(h.get().values).toEqual([]);
  });
});
