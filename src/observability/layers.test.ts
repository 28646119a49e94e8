import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { layerTimes, serverTiming, type LayerTimes } from './layers.ts';
import type { ProxyContext, UpstreamTimings } from '../proxy/upstream.ts';

/** Only what layerTimes reads: the arrival mark, the upstream marks and the worker pid. */
function ctx(startAt: number, timings: Partial<UpstreamTimings>, workerPid = 4242): ProxyContext {
  return {
    startAt,
    workerPid,
    timings: { dispatchAt: 0, connectAt: 0, headAt: 0, endAt: 0, worker: null, ...timings },
  } as unknown as ProxyContext;
}

const sum = (l: LayerTimes) => l.proxy + l.queue + l.worker + l.app;

describe('layerTimes', () => {
  // arrival 100 → dispatch 101 → head 161 → end 170; the worker says 0.5 ms of protocol work and
  // 55 ms in the app before its head.
  const marks = { dispatchAt: 101, headAt: 161, endAt: 170, worker: { worker: 0.5, app: 55 } };

  it('splits a pooled request at head time: proxy, queue (the rest of the hop), worker, app', () => {
    const l = layerTimes(ctx(100, marks), 161.3, true)!;
    expect(l.total).toBeCloseTo(61.3, 9);
    expect(l.proxy).toBeCloseTo(1.3, 9); // total − (head − dispatch)
    expect(l.queue).toBeCloseTo(4.5, 9); // 60 − 0.5 − 55
    expect(l.worker).toBe(0.5);
    expect(l.app).toBeCloseTo(55, 9);
    expect(sum(l)).toBeCloseTo(l.total, 9);
  });

  it('counts body streaming into the app layer at the end of the response', () => {
    const l = layerTimes(ctx(100, marks), 170.2, false)!;
    expect(l.total).toBeCloseTo(70.2, 9);
    expect(l.proxy).toBeCloseTo(1.2, 9); // total − (end − dispatch)
    expect(l.queue).toBeCloseTo(4.5, 9); // the queue is fixed by the head
    expect(l.worker).toBe(0.5);
    expect(l.app).toBeCloseTo(64, 9); // 55 before the head + 9 streaming the body
    expect(sum(l)).toBeCloseTo(l.total, 9);
  });

  it('uses `now` for an upstream end not reached yet', () => {
    const l = layerTimes(ctx(100, { ...marks, endAt: 0 }), 165, false)!;
    expect(l.proxy).toBeCloseTo(1, 9);
    expect(sum(l)).toBeCloseTo(65, 9);
  });

  it('gives all the time to the proxy when nothing was dispatched (no route, static refusal)', () => {
    expect(layerTimes(ctx(100, {}), 102.5, false)).toEqual({ proxy: 2.5, queue: 0, worker: 0, app: 0, total: 2.5 });
  });

  it("counts a pool request without the worker's report (it never answered) as waiting", () => {
    const l = layerTimes(ctx(100, { dispatchAt: 101, endAt: 131 }), 131.5, false)!;
    expect(l).toEqual({ proxy: 1.5, queue: 30, worker: 0, app: 0, total: 31.5 });
  });

  it('has no layers for a foreign upstream (no worker pid, no report)', () => {
    expect(layerTimes(ctx(100, { dispatchAt: 101, headAt: 110, endAt: 111 }, 0), 112, false)).toBeNull();
  });

  it("never goes negative when the worker's rounded report exceeds the hop", () => {
    const l = layerTimes(
      ctx(100, { dispatchAt: 101, headAt: 111, endAt: 111, worker: { worker: 0.2, app: 9.9 } }),
      111,
      true,
    )!;
    expect(l.queue).toBe(0);
    for (const v of Object.values(l)) expect(v).toBeGreaterThanOrEqual(0);
    expect(sum(l)).toBeCloseTo(l.total, 9);
  });

  it("always partitions the total when the worker's interval nests in the hop (property)", () => {
    const arb = fc.record({
      toDispatch: fc.double({ min: 0, max: 50, noNaN: true }),
      hopToHead: fc.double({ min: 0, max: 5000, noNaN: true }),
      headToEnd: fc.double({ min: 0, max: 5000, noNaN: true }),
      endToNow: fc.double({ min: 0, max: 50, noNaN: true }),
      workerShare: fc.double({ min: 0, max: 1, noNaN: true }),
      appShare: fc.double({ min: 0, max: 1, noNaN: true }),
      atHead: fc.boolean(),
    });
    fc.assert(
      fc.property(arb, (a) => {
        const start = 1000;
        const dispatchAt = start + a.toDispatch;
        const headAt = dispatchAt + a.hopToHead;
        const endAt = headAt + a.headToEnd;
        // The worker's interval lies inside dispatch → head: worker + app ≤ hopToHead.
        const worker = a.hopToHead * a.workerShare;
        const app = (a.hopToHead - worker) * a.appShare;
        const now = a.atHead ? headAt + a.endToNow : endAt + a.endToNow;
        const l = layerTimes(
          ctx(start, { dispatchAt, headAt, endAt: a.atHead ? 0 : endAt, worker: { worker, app } }),
          now,
          a.atHead,
        )!;
        expect(l.total).toBeCloseTo(now - start, 6);
        expect(Math.abs(sum(l) - l.total)).toBeLessThan(1e-6);
        for (const v of [l.proxy, l.queue, l.worker, l.app]) expect(v).toBeGreaterThanOrEqual(-1e-9);
        expect(l.worker).toBe(worker);
        if (a.atHead) expect(l.app).toBeCloseTo(app, 6);
        else expect(l.app).toBeCloseTo(app + a.headToEnd, 6);
      }),
      { numRuns: 500 },
    );
  });
});

describe('serverTiming', () => {
  it('writes the four layers and the total in ms, three decimals, in the Server-Timing syntax', () => {
    const value = serverTiming({ proxy: 1.3, queue: 4.5, worker: 0.5, app: 55, total: 61.3 });
    expect(value).toBe('proxy;dur=1.300, queue;dur=4.500, worker;dur=0.500, app;dur=55.000, total;dur=61.300');
    // RFC-style: metric *( OWS ";" OWS param ), comma separated.
    for (const metric of value.split(', ')) expect(metric).toMatch(/^[a-z]+;dur=\d+\.\d{3}$/);
  });

  it('rounds each value on its own, so the printed layers add up to the printed total within 5 µs', () => {
    const l = layerTimes(
      ctx(100.0004, { dispatchAt: 101.00049, headAt: 161.12345, worker: { worker: 0.4444, app: 55.5555 } }),
      161.77777,
      true,
    )!;
    const printed = Object.fromEntries(
      serverTiming(l)
        .split(', ')
        .map((m) => [m.split(';')[0], Number(m.split('dur=')[1])]),
    );
    const layers = printed.proxy! + printed.queue! + printed.worker! + printed.app!;
    expect(Math.abs(layers - printed.total!)).toBeLessThanOrEqual(0.005);
  });
});
