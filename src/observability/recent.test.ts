import { describe, expect, it } from 'vitest';
import { RecentTraces, waterfall, type RecentTrace } from './recent.ts';

let seq = 0;
function trace(over: Partial<RecentTrace> & { at: number; durationMs: number }): RecentTrace {
  const n = ++seq;
  return {
    id: `t${n}`,
    traceId: null,
    requestId: `r${n}`,
    method: 'GET',
    path: `/${n}`,
    route: '/',
    status: 200,
    error: null,
    upstream: 'pool',
    workerPid: 1,
    layers: null,
    spans: [],
    ...over,
  };
}

const ids = (list: RecentTrace[]) => list.map((t) => t.id);

describe('RecentTraces', () => {
  it('keeps the latest N, newest first', () => {
    const r = new RecentTraces(3);
    const all = [1, 2, 3, 4, 5].map((i) => trace({ id: `a${i}`, at: i, durationMs: 1 }));
    for (const t of all) r.add(t);
    expect(ids(r.list('latest'))).toEqual(['a5', 'a4', 'a3']);
    expect(ids(r.list('latest', 2))).toEqual(['a5', 'a4']);
  });

  it('keeps the latest N failures (5xx or a proxy error) apart from the flow of successes', () => {
    const r = new RecentTraces(2);
    r.add(trace({ id: 'e1', at: 1, durationMs: 1, status: 502, error: 'STRATUM_ERR_UPSTREAM_RESET' }));
    r.add(trace({ id: 'e2', at: 2, durationMs: 1, status: 500 }));
    r.add(trace({ id: 'n404', at: 3, durationMs: 1, status: 404 }));
    for (let i = 0; i < 10; i++) r.add(trace({ at: 4 + i, durationMs: 5 })); // pushes them out of the slow list
    expect(ids(r.list('failed'))).toEqual(['e2', 'e1']);
    r.add(trace({ id: 'e3', at: 20, durationMs: 1, status: 200, error: 'STRATUM_ERR_CLIENT_ABORT' }));
    expect(ids(r.list('failed'))).toEqual(['e3', 'e2']);
    expect(r.get('e1')).toBeUndefined(); // out of every list: forgotten
    expect(r.get('e2')?.status).toBe(500);
  });

  it('keeps the slowest N, slowest first, whatever came after', () => {
    const r = new RecentTraces(3);
    const durations = [5, 50, 1, 20, 2, 100, 3, 4, 6, 7];
    durations.forEach((d, i) => r.add(trace({ id: `d${d}`, at: i, durationMs: d })));
    expect(ids(r.list('slow'))).toEqual(['d100', 'd50', 'd20']);
    // Reachable by id while in a list, though long gone from the latest.
    expect(r.get('d50')?.durationMs).toBe(50);
    expect(r.get('d5')).toBeUndefined();
  });

  it('ages the slow list out after the window, even an entry slower than the fresh ones', () => {
    const r = new RecentTraces(2, 1000);
    r.add(trace({ id: 'old-slow', at: 0, durationMs: 900 }));
    r.add(trace({ id: 'fresh-fast', at: 900, durationMs: 1 }));
    r.add(trace({ id: 'fresh', at: 1200, durationMs: 2 })); // old-slow is 1200 ms old now
    expect(ids(r.list('slow'))).toEqual(['fresh', 'fresh-fast']);
    // Gone from every list, so gone from the index too (the memory stays bounded).
    expect(r.get('old-slow')).toBeUndefined();
  });

  it('stays bounded in its index over a long run', () => {
    const r = new RecentTraces(5, 100);
    for (let i = 0; i < 5000; i++)
      r.add(trace({ id: `x${i}`, at: i, durationMs: (i * 7919) % 1000, status: i % 13 === 0 ? 503 : 200 }));
    const kept = new Set([...r.list('latest', 100), ...r.list('slow', 100), ...r.list('failed', 100)].map((t) => t.id));
    expect(kept.size).toBeLessThanOrEqual(15);
    for (let i = 0; i < 5000; i++) expect(r.get(`x${i}`) !== undefined).toBe(kept.has(`x${i}`));
  });

  it('finds by id the newest of several requests that share one trace id', () => {
    // Two requests of one client trace carry the same trace id (the memory's id for them).
    const r = new RecentTraces(2);
    r.add(trace({ id: 'shared', at: 1, durationMs: 1 }));
    r.add(trace({ id: 'shared', at: 2, durationMs: 50, path: '/second' }));
    r.add(trace({ at: 3, durationMs: 5 }));
    // The first one has left every list; the second is still among the slowest, and findable.
    expect(ids(r.list('slow'))).toEqual(['shared', 't' + String(seq)]);
    expect(r.get('shared')?.path).toBe('/second');
  });
});

describe('waterfall', () => {
  const l = { proxy: 1, queue: 4, worker: 0.5, app: 55, total: 60.5 };

  it('draws proxy → upstream → worker → app with their pids and offsets', () => {
    expect(waterfall(l, 0.6, { master: 10, worker: 20 }, 'worker 1', 'GET /')).toEqual([
      { name: 'GET /', layer: 'proxy', start: 0, duration: 60.5, pid: 10 },
      { name: 'upstream worker 1', layer: 'queue', start: 0.6, duration: 59.5, pid: 10 },
      { name: 'uwsgi request', layer: 'worker', start: 4.6, duration: 55.5, pid: 20 },
      { name: 'app handler', layer: 'app', start: 5.1, duration: 55, pid: 20 },
    ]);
  });

  it('is one span for a request that never left the proxy', () => {
    expect(
      waterfall({ proxy: 2, queue: 0, worker: 0, app: 0, total: 2 }, 0, { master: 10, worker: 0 }, '', 'GET /x'),
    ).toHaveLength(1);
  });

  it('has no worker spans for a foreign upstream', () => {
    const spans = waterfall(
      { proxy: 1, queue: 9, worker: 0, app: 0, total: 10 },
      1,
      { master: 10, worker: 0 },
      '127.0.0.1:3031',
      'GET /',
    );
    expect(spans.map((s) => s.layer)).toEqual(['proxy', 'queue']);
  });
});
