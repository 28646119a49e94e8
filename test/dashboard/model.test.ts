// The dashboard's arithmetic over live ticks: per-second quantiles merged over a window, the
// layer that holds most of the time, and per-route rows that outlive their traffic.
import { describe, expect, it } from 'vitest';
import { flows, mergeQuantiles, summarize, type LiveTick, type Quantiles } from '../../dashboard/src/model.ts';

const q = (mean: number, count: number, p95 = mean * 2): Quantiles => ({ p50: mean, p95, p99: p95 * 1.5, mean, count });
const none = q(0, 0);

function tick(t: number, o: Partial<LiveTick> = {}): LiveTick {
  return {
    t,
    rate: 0,
    status: { '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 0 },
    errorRate: 0,
    layers: { proxy: none, queue: none, worker: none, app: none },
    total: none,
    routes: [],
    upstreams: [],
    pool: null,
    ...o,
  };
}

describe('mergeQuantiles', () => {
  it('weighs each second by its request count and ignores empty seconds', () => {
    const m = mergeQuantiles([q(10, 1), q(1, 9), none]);
    expect(m.count).toBe(10);
    expect(m.mean).toBeCloseTo(1.9);
    expect(m.p95).toBeCloseTo(3.8);
  });

  it('gives zeros, not NaN, without requests', () => {
    expect(mergeQuantiles([none, none])).toEqual({ p50: 0, p95: 0, p99: 0, mean: 0, count: 0 });
  });
});

describe('summarize', () => {
  it('names the layer holding the largest share of request time over the last seconds only', () => {
    const slowQueue = { proxy: q(1, 10), queue: q(50, 10), worker: q(1, 10), app: q(5, 10) };
    const slowApp = { proxy: q(1, 10), queue: q(1, 10), worker: q(1, 10), app: q(30, 10) };
    const ticks = [
      ...Array.from({ length: 20 }, (_, i) => tick(1000 * i, { layers: slowQueue, total: q(57, 10) })),
      ...Array.from({ length: 10 }, (_, i) =>
        tick(20_000 + 1000 * i, {
          layers: slowApp,
          total: q(33, 10),
          status: { '2xx': 8, '3xx': 0, '4xx': 0, '5xx': 2 },
        }),
      ),
    ];
    const sum = summarize(ticks, 10);
    expect(sum.slowest).toBe('app');
    expect(sum.rate).toBe(10);
    expect(sum.status['5xx']).toBeCloseTo(2);
    expect(summarize(ticks.slice(0, 20), 10).slowest).toBe('queue');
  });

  it('has no slowest layer when nothing was served', () => {
    expect(summarize([tick(0), tick(1000)], 10).slowest).toBeNull();
  });
});

describe('flows', () => {
  it('keeps a route seen earlier at 0 req/s and weighs p95 by each second’s rate', () => {
    const ticks = [
      tick(0, { routes: [{ route: '/old', rate: 5, errors: 0, p95: 1 }] }),
      ...Array.from({ length: 10 }, (_, i) =>
        tick(60_000 + 1000 * i, {
          routes: [{ route: '/api', rate: i % 2 ? 30 : 10, errors: i % 2 ? 3 : 0, p95: i % 2 ? 40 : 20 }],
          upstreams: [{ target: 'pool', kind: 'pool', rate: 20, errors: 1, p95: 5, up: i < 9 }],
        }),
      ),
    ];
    const routes = flows(ticks, 10, 'routes');
    expect(routes.map((r) => r.key)).toEqual(['/api', '/old']);
    expect(routes[0]!.rate).toBe(20);
    expect(routes[0]!.errors).toBeCloseTo(1.5);
    expect(routes[0]!.p95).toBeCloseTo(35);
    expect(routes[1]).toMatchObject({ key: '/old', rate: 0, p95: 0 });
    const [pool] = flows(ticks, 10, 'upstreams');
    expect(pool).toMatchObject({ key: 'pool', kind: 'pool', up: false });
  });
});
