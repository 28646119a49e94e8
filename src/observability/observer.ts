// Attaches observability to the proxy's moments (onRequest → onDispatch → onHead → onResponse):
// spans, Server-Timing, metrics, the recent-traces memory and the JSON access log, each from
// the same layer times so they always agree.

import type { Logger } from 'pino';
import type { Tracer } from '@opentelemetry/api';
import type { StratumConfig } from '../config/schema.ts';
import type { ProxyHooks } from '../proxy/server.ts';
import type { ProxyContext } from '../proxy/upstream.ts';
import { layerTimes, serverTiming, type LayerTimes } from './layers.ts';
import type { Metrics } from './metrics.ts';
import { RecentTraces } from './recent.ts';
import { ProxySpans } from './tracing.ts';
import { infoLineWriter } from './log.ts';

export interface Observer extends ProxyHooks {
  recent: RecentTraces;
  /** Called for every finished request (the live dashboard feed listens here). */
  listeners: Array<(ctx: ProxyContext, layers: LayerTimes | null, totalMs: number) => void>;
}

const spansKey = Symbol('stratum.spans');
const sentKey = Symbol('stratum.sentAt');
type Traced = ProxyContext & { [spansKey]?: ProxySpans; [sentKey]?: number };

export function createObserver(
  config: StratumConfig,
  log: Logger,
  metrics: Metrics | null,
  tracer: Tracer | null,
): Observer {
  const recent = new RecentTraces();
  const listeners: Observer['listeners'] = [];
  const writeLine = config.log.access ? infoLineWriter(log) : null;
  const timingHeader = config.proxy.serverTiming;
  return {
    recent,
    listeners,
    onRequest(ctx) {
      // Bytes sent for this request (nginx $bytes_sent, the head included) are what its connection
      // wrote meanwhile: a connection serves one request at a time. An h2 stream shares its socket.
      if (writeLine && ctx.req.httpVersionMajor === 1) (ctx as Traced)[sentKey] = ctx.req.socket.bytesWritten;
      if (tracer) {
        const f = ctx.forward;
        (ctx as Traced)[spansKey] = new ProxySpans(tracer, ctx.req, ctx.routeLabel, f.scheme, f.clientAddress);
        ctx.forward.replaceTrace = true;
      }
    },
    onDispatch(ctx, kind) {
      const spans = (ctx as Traced)[spansKey];
      if (!spans || !tracer) return;
      ctx.traceparent = spans.startClient(tracer, ctx.req.method ?? 'GET', kind, ctx.upstreamLabel);
    },
    onHead(ctx, headers) {
      if (!timingHeader) return;
      const l = layerTimes(ctx, performance.now(), true);
      if (l) headers.push('server-timing', serverTiming(l));
    },
    onResponse(ctx) {
      const end = performance.now();
      const layers = layerTimes(ctx, end, false);
      const totalMs = end - ctx.startAt;
      const status = ctx.res.statusCode;
      const spans = (ctx as Traced)[spansKey];
      const traceId = spans?.traceId ?? null;
      const t = ctx.timings;
      const upstreamMs = t.dispatchAt ? (t.endAt || end) - t.dispatchAt : 0;
      if (spans) {
        spans.end(status, ctx.error, {
          'stratum.worker.pid': ctx.workerPid,
          'stratum.layer.proxy_ms': layers?.proxy ?? totalMs,
          'stratum.layer.queue_ms': layers?.queue ?? 0,
          'stratum.layer.worker_ms': layers?.worker ?? 0,
          'stratum.layer.app_ms': layers?.app ?? 0,
        });
      }
      const isPool = ctx.workerPid > 0;
      metrics?.observe({
        route: ctx.routeLabel,
        method: ctx.req.method ?? 'GET',
        status,
        layers:
          isPool && layers
            ? {
                proxy: layers.proxy / 1000,
                queue: layers.queue / 1000,
                worker: layers.worker / 1000,
                app: layers.app / 1000,
              }
            : null,
        totalSeconds: totalMs / 1000,
        upstream:
          t.dispatchAt && ctx.upstreamLabel
            ? {
                kind: ctx.upstreamKind,
                target: ctx.upstreamKind === 'pool' ? 'pool' : ctx.upstreamLabel,
                seconds: upstreamMs / 1000,
              }
            : null,
        traceId,
      });
      if (ctx.error && ctx.error.statusCode >= 500 && ctx.upstreamLabel)
        metrics?.upstreamErrors.inc({
          target: ctx.upstreamKind === 'pool' ? 'pool' : ctx.upstreamLabel,
          code: ctx.error.code,
        });
      recent.add({
        id: traceId ?? ctx.forward.requestId,
        traceId,
        requestId: ctx.forward.requestId,
        method: ctx.req.method ?? 'GET',
        path: ctx.req.url ?? '/',
        route: ctx.routeLabel,
        status,
        error: ctx.error?.code ?? null,
        at: Date.now() - totalMs,
        durationMs: totalMs,
        upstream: ctx.upstreamLabel,
        workerPid: ctx.workerPid,
        layers,
        dispatchMs: t.dispatchAt ? t.dispatchAt - ctx.startAt : 0,
        upstreamMs,
      });
      for (const l of listeners) l(ctx, layers, totalMs);
      if (writeLine) {
        // The same fields pino would write, serialized by hand on this hot path (log.ts).
        let line =
          `{"level":"info","time":"${isoNow()}","pid":${process.pid},"type":"access",` +
          `"method":${JSON.stringify(ctx.req.method ?? '')},"path":${JSON.stringify(ctx.req.url ?? '')},` +
          `"status":${status},"bytes":${ctx.bytesOut}`;
        const sentAt = (ctx as Traced)[sentKey];
        if (sentAt !== undefined) line += `,"bytesSent":${ctx.req.socket.bytesWritten - sentAt}`;
        const f = ctx.forward;
        line += `,"client":${JSON.stringify(f.clientAddress)},"scheme":"${f.scheme}"`;
        line += `,"host":${JSON.stringify(ctx.req.headers.host ?? '')}`;
        const ua = ctx.req.headers['user-agent'];
        if (ua !== undefined) line += `,"userAgent":${JSON.stringify(ua)}`;
        line += `,"route":${JSON.stringify(ctx.routeLabel)}`;
        if (ctx.upstreamLabel) line += `,"upstream":${JSON.stringify(ctx.upstreamLabel)}`;
        if (ctx.workerPid) line += `,"workerPid":${ctx.workerPid}`;
        line += `,"requestId":${JSON.stringify(ctx.forward.requestId)}`;
        if (traceId) line += `,"traceId":"${traceId}"`;
        line += `,"ms":${round(totalMs)}`;
        if (layers) {
          line +=
            `,"layers":{"proxy":${round(layers.proxy)},"queue":${round(layers.queue)},` +
            `"worker":${round(layers.worker)},"app":${round(layers.app)}}`;
        }
        if (t.dispatchAt) {
          line +=
            `,"upstreamMs":{"connect":${t.connectAt ? round(t.connectAt - t.dispatchAt) : null},` +
            `"header":${t.headAt ? round(t.headAt - t.dispatchAt) : null},"response":${round(upstreamMs)}}`;
        }
        writeLine(`${line},"msg":"request"}\n`);
      }
    },
  };
}

// Thousands of access lines share each millisecond: format its timestamp once.
let isoAt = 0;
let iso = '';
function isoNow(): string {
  const now = Date.now();
  if (now !== isoAt) {
    isoAt = now;
    iso = new Date(now).toISOString();
  }
  return iso;
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}
