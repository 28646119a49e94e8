// The `pool` target in the worker topology: the front runs inside the worker, so a pool route
// calls the app host in this very process — no uwsgi encode or decode, no second HTTP parse, no
// socket hop. What uWSGI gives a request still holds: a slot under pool.maxInflight (or a place in
// the bounded listen queue, then 503), harakiri, X-Forwarded-* and X-Request-Id, a buffered body.
//
// Layers on this path (src/observability/layers.ts adds them up the same way as over uwsgi):
//   queue  = dispatch → a slot under maxInflight is free (the listen queue)
//   worker = slot → the app is called (the host's hand-off: headers, buffered body, tracing)
//   app    = the app called → its response head (Server-Timing), → its last byte (metrics)

import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import type { Duplex, Readable } from 'node:stream';
import { HarakiriTimeout } from '../errors.ts';
import type { RequestListener, UpgradeHandler } from '../host/app.ts';
import { refuseUpgrade } from '../host/app.ts';
import { Dispatcher } from '../pool/dispatch.ts';
import { socketFd, type HarakiriKeeper } from '../pool/harakiri.ts';
import { httpRequestHeaders, presentClient, type ForwardInfo } from './forward.ts';
import type { HostResponse } from '../host/response.ts';
import { offerCompression } from './compress.ts';
import { bufferingFor, type BufferingConfig } from './response-buffer.ts';
import { slotFor, type ProxyContext, type RequestBody, type Upstream, type UpgradeContext } from './upstream.ts';

const http = process.getBuiltinModule('node:http');

export interface AppUpstreamOptions {
  label: string;
  maxInflight: number;
  /** Requests that may wait for a slot (pool.listen); beyond it, 503 at once. */
  queueLimit: number;
  queueTimeoutMs: number;
  harakiri: HarakiriKeeper | null;
  /** Response buffering (proxy.buffering); a route's `buffering: false` turns it off for that route. */
  buffering: BufferingConfig | null;
}

export class AppUpstream implements Upstream {
  readonly kind = 'pool' as const;
  readonly label: string;
  readonly dispatch: Dispatcher<AppUpstream>;
  inflight = 0;
  #listener: RequestListener;
  #upgrade: UpgradeHandler | null;
  #opts: AppUpstreamOptions;

  constructor(listener: RequestListener, upgrade: UpgradeHandler | null, opts: AppUpstreamOptions) {
    this.#listener = listener;
    this.#upgrade = upgrade;
    this.#opts = opts;
    this.label = opts.label;
    this.dispatch = new Dispatcher<AppUpstream>(
      {
        pick: () => (this.inflight < opts.maxInflight ? this : null),
        take: () => void this.inflight++,
      },
      opts.queueLimit,
    );
  }

  handle(ctx: ProxyContext, body: RequestBody | null): Promise<void> {
    const got = this.dispatch.acquire(this.#opts.queueTimeoutMs);
    const slot = slotFor(got, ctx);
    return slot instanceof Promise ? slot.then(() => this.#serve(ctx, body)) : this.#serve(ctx, body);
  }

  #serve(ctx: ProxyContext, body: RequestBody | null): Promise<void> {
    const t = ctx.timings;
    const slotAt = (t.connectAt = performance.now());
    ctx.workerPid = process.pid;
    ctx.upstreamLabel = this.label;
    const res = ctx.res as HostResponse;
    const req = body !== null && body.replayable ? bufferedRequest(ctx.req, body) : ctx.req;
    forwardHeaders(req, ctx.forward, ctx.traceparent);
    return new Promise<void>((resolve, reject) => {
      let open = true;
      const finish = (err: Error | null) => {
        if (!open) return;
        open = false;
        t.endAt = performance.now();
        ctx.bytesOut = res.stratumBytes;
        ctx.onClientGone = null;
        watch?.done();
        this.inflight--;
        this.dispatch.pump();
        if (err) reject(err);
        else resolve();
      };
      const info = `${req.method ?? 'GET'} ${req.url ?? '/'} ${ctx.forward.requestId}`;
      const watch =
        this.#opts.harakiri?.watch(ctx.harakiriMs, socketFd(req.socket), info, () => {
          // Slow, with the event loop alive: answer 504 now (the proxy writes it) and let the app's
          // late writes fall on the floor; the worker is healthy and keeps serving.
          res.stratumHead = null;
          res.stratumAbandon = true;
          finish(new HarakiriTimeout(ctx.harakiriMs / 1000));
        }) ?? null;
      res.stratumBuffering = bufferingFor(ctx.route, this.#opts.buffering);
      offerCompression(ctx);
      res.stratumHead = (headers) => {
        const now = (t.headAt = performance.now());
        t.worker = { worker: appAt - slotAt, app: now - appAt };
        watch?.headSent();
        ctx.beforeHead(headers);
      };
      // harakiri measures the app's time, never the client's: the app, its slot and its watch are
      // released when it has ended its response; the client then reads it from the response buffer.
      // Without buffering the slot stays held until the last byte is on the socket ('finish').
      res.stratumEnd = () => {
        if (res.stratumBuffering !== null) finish(null);
        else watch?.done();
      };
      res.once('finish', () => finish(null));
      // The client went away mid-response: the app sees 'close' on its response.
      ctx.onClientGone = () => finish(null);
      const appAt = performance.now();
      this.#listener(req, res);
    });
  }

  upgrade(ctx: UpgradeContext, socket: Duplex, head: Buffer): void {
    if (!this.#upgrade) return refuseUpgrade(socket);
    // forwardHeaders drops hop-by-hop headers, Upgrade and Connection among them; the app's
    // WebSocket server needs them (ws answers 400 without Upgrade), so they go back as upstream-http does.
    const protocol = String(ctx.req.headers.upgrade ?? 'websocket');
    forwardHeaders(ctx.req, ctx.forward, null);
    ctx.req.rawHeaders.push('Connection', 'Upgrade', 'Upgrade', protocol);
    ctx.req.headers.connection = 'Upgrade';
    ctx.req.headers.upgrade = protocol;
    this.#upgrade(ctx.req, socket, head);
  }

  close(): void {
    this.dispatch.close();
  }
}

/** The app sees what an app behind nginx sees: hop-by-hop headers gone, X-Forwarded-* and X-Request-Id set. */
function forwardHeaders(req: IncomingMessage, f: ForwardInfo, traceparent: string | null): void {
  const raw = httpRequestHeaders(req, f, traceparent === null ? undefined : ['traceparent', traceparent]);
  const headers: IncomingHttpHeaders = {};
  const add = (req as unknown as { _addHeaderLine(k: string, v: string, d: IncomingHttpHeaders): void })._addHeaderLine;
  for (let i = 0; i < raw.length; i += 2) add.call(req, raw[i]!, raw[i + 1]!, headers);
  req.rawHeaders = raw;
  req.headers = headers;
  presentClient(req.socket, f); // the app reads the client from its socket (Express req.ip, Fastify request.ip)
}

/**
 * A request whose body the front has read whole (request buffering): the app gets an
 * IncomingMessage of its own that replays it, with Content-Length for a body that came chunked.
 */
function bufferedRequest(req: IncomingMessage, body: RequestBody): IncomingMessage {
  const r = new http.IncomingMessage(req.socket);
  r.method = req.method;
  r.url = req.url;
  r.httpVersion = req.httpVersion;
  r.httpVersionMajor = req.httpVersionMajor;
  r.httpVersionMinor = req.httpVersionMinor;
  const raw: string[] = [];
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const lower = req.rawHeaders[i]!.toLowerCase();
    if (lower !== 'transfer-encoding' && lower !== 'content-length')
      raw.push(req.rawHeaders[i]!, req.rawHeaders[i + 1]!);
  }
  r.rawHeaders = raw;
  r.headers = { ...req.headers };
  delete r.headers['transfer-encoding'];
  // The front sets the announced length (f.contentLength) and forwardHeaders writes it from there.
  const src = body.open();
  if (Buffer.isBuffer(src)) {
    r._read = () => {};
    if (src.length > 0) r.push(src);
    r.push(null);
    r.complete = true;
    return r;
  }
  const stream = src as Readable;
  r._read = () => void stream.resume();
  stream.on('data', (chunk: Buffer) => {
    if (!r.push(chunk)) stream.pause();
  });
  stream.once('end', () => {
    r.complete = true;
    r.push(null);
  });
  stream.once('error', (err) => r.destroy(err));
  return r;
}
