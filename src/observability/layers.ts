// Per-layer time of one request, from the marks the proxy records and the worker's own report
// (x-stratum-timing). All durations are intervals inside one process, so no clock sync is
// needed: the worker's interval nests inside the proxy's upstream interval, and
//   proxy  = total − upstream            (the front proxy's own time)
//   queue  = upstream − worker − app     (waiting for a worker or connection, plus the hop)
//   worker = packet received → app called (uwsgi decode, hand-off, response encoding)
//   app    = app called → response head  (+ body streaming, when measured at the end)
// so the four always add up to the total.

import type { ProxyContext } from '../proxy/upstream.ts';

export interface LayerTimes {
  proxy: number;
  queue: number;
  worker: number;
  app: number;
  total: number;
}

/** Layers in ms at `now`: at head time (Server-Timing) or at the end (metrics, traces). */
export function layerTimes(ctx: ProxyContext, now: number, atHead: boolean): LayerTimes | null {
  const t = ctx.timings;
  const total = now - ctx.startAt;
  if (!t.dispatchAt) return { proxy: total, queue: 0, worker: 0, app: 0, total };
  const upEnd = atHead ? t.headAt || now : t.endAt || now;
  const upstream = Math.max(0, upEnd - t.dispatchAt);
  const proxy = total - upstream;
  if (!t.worker) {
    // Not our worker (or it never answered): everything upstream counts as waiting.
    return ctx.workerPid ? { proxy, queue: upstream, worker: 0, app: 0, total } : null;
  }
  const head = t.headAt ? t.headAt - t.dispatchAt : upstream;
  const queue = Math.max(0, head - t.worker.worker - t.worker.app);
  const worker = t.worker.worker;
  const app = Math.max(0, upstream - queue - worker);
  return { proxy, queue, worker, app, total };
}

/** The Server-Timing header value (durations in ms, as the spec wants). */
export function serverTiming(l: LayerTimes): string {
  return (
    `proxy;dur=${l.proxy.toFixed(3)}, queue;dur=${l.queue.toFixed(3)}, worker;dur=${l.worker.toFixed(3)}, ` +
    `app;dur=${l.app.toFixed(3)}, total;dur=${l.total.toFixed(3)}`
  );
}
