// The front proxy (nginx's role; Traefik's entrypoint → router → service): HTTP/1.1 with
// keep-alive, a route per request, the upstream fills the response. Failures become short plain
// answers — 502 unreachable/broken, 504 timeout/harakiri, 503 overload (with Retry-After),
// 413 too large, 404 no route — each logged with its code.

import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { StratumConfig } from '../config/schema.ts';
import { listenAt } from '../listen.ts';
import { RouteNotFound, StratumError } from '../errors.ts';
import type { RouteTable } from './routes.ts';
import { prepareBody, type ProxyContext, type RequestBody, type Upstream } from './upstream.ts';

/** Moments of a request's life the observability layer attaches to (Fastify's hooks idea). */
export interface ProxyHooks {
  onRequest?(ctx: ProxyContext): void;
  /** The request is about to leave for its upstream (add trace context to extraVars/extraHeaders). */
  onDispatch?(ctx: ProxyContext, kind: Upstream['kind']): void;
  onHead?(ctx: ProxyContext, headers: string[]): void;
  onResponse?(ctx: ProxyContext): void;
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

export class FrontProxy {
  readonly config: StratumConfig;
  readonly server: http.Server;
  #routes: RouteTable<Upstream>;
  #log: Logger;
  #hooks: ProxyHooks;
  #inflight = 0;
  #sockets = new Set<Socket>();
  #closing = false;
  #idleWaiters: Array<() => void> = [];

  constructor(config: StratumConfig, routes: RouteTable<Upstream>, log: Logger, hooks: ProxyHooks = {}) {
    this.config = config;
    this.#routes = routes;
    this.#log = log;
    this.#hooks = hooks;
    this.server = http.createServer({
      maxHeaderSize: config.proxy.maxHeaderSize,
      keepAliveTimeout: config.proxy.keepAliveTimeout * 1000,
      headersTimeout: 60_000,
      requestTimeout: 0, // bodies of any size stream; slow clients are bounded by sendTimeout below
      noDelay: true,
    });
    this.server.on('request', (req, res) => this.#handle(req, res));
    this.server.on('connection', (socket: Socket) => {
      this.#sockets.add(socket);
      socket.once('close', () => this.#sockets.delete(socket));
    });
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
      if (!socket.writable || (socket as Socket & { _httpMessage?: unknown })._httpMessage) return socket.destroy();
      const status = err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? '408 Request Timeout' : '400 Bad Request';
      this.#log.info({ code: err.code, remote: socket.remoteAddress }, `refused malformed request: ${status}`);
      const body = `${status.slice(4)}\n`;
      socket.end(`HTTP/1.1 ${status}\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
    });
  }

  get inflight(): number {
    return this.#inflight;
  }

  listen(): Promise<string> {
    return listenAt(this.server, this.config.listen, 'listen', 2048);
  }


  /** Stop accepting; idle keep-alive connections close; resolves when in-flight requests end. */
  async close(graceMs: number): Promise<void> {
    this.#closing = true;
    this.server.close();
    this.server.closeIdleConnections();
    if (this.#inflight > 0) {
      await Promise.race([
        new Promise<void>((r) => this.#idleWaiters.push(r)),
        new Promise<void>((r) => setTimeout(r, graceMs).unref()),
      ]);
    }
    for (const s of this.#sockets) s.destroy();
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const startAt = performance.now();
    this.#inflight++;
    if (this.#closing) res.shouldKeepAlive = false;
    const given = req.headers['x-request-id'];
    const requestId = typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
    const entry = this.#routes.match(req.headers.host, req.url ?? '/');
    const socket = req.socket;
    const ctx: ProxyContext = {
      req, res,
      route: entry?.route ?? (null as never),
      routeLabel: entry?.label ?? 'none',
      forward: {
        requestId,
        clientAddress: socket.remoteAddress ?? '',
        clientPort: socket.remotePort ?? 0,
        scheme: (socket as Socket & { encrypted?: boolean }).encrypted ? 'https' : 'http',
        serverPort: socket.localPort ?? 0,
        contentLength: -1,
        replaceTrace: false,
      },
      startAt,
      readTimeoutMs: (entry?.route.readTimeout ?? this.config.proxy.readTimeout) * 1000,
      harakiriMs: (entry?.route.harakiri ?? this.config.pool.harakiri) * 1000,
      timings: { dispatchAt: 0, connectAt: 0, headAt: 0, endAt: 0, worker: null },
      upstreamLabel: entry?.upstream.label ?? '',
      upstreamKind: entry?.upstream.kind ?? 'static',
      workerPid: 0,
      extraVars: [],
      extraHeaders: [],
      beforeHead: (headers) => {
        headers.push('x-request-id', requestId);
        this.#hooks.onHead?.(ctx, headers);
      },
      bytesOut: 0,
      error: null,
    };
    res.once('close', () => {
      this.#inflight--;
      this.#hooks.onResponse?.(ctx);
      if (this.#inflight === 0) for (const w of this.#idleWaiters.splice(0)) w();
    });
    this.#hooks.onRequest?.(ctx);
    if (!entry) return this.#fail(ctx, new RouteNotFound(req.headers.host ?? '', req.url ?? '/'), null);
    let body: RequestBody | null = null;
    const limit = entry.route.clientMaxBodySize ?? this.config.proxy.clientMaxBodySize;
    // 0 = no limit, as nginx's client_max_body_size 0.
    prepareBody(req, limit === 0 ? Infinity : limit)
      .then((b) => {
        body = b;
        this.#hooks.onDispatch?.(ctx, entry.upstream.kind);
        ctx.timings.dispatchAt = performance.now();
        return entry.upstream.handle(ctx, b);
      })
      .then(() => body?.cleanup())
      .catch((err: unknown) => {
        body?.cleanup();
        this.#fail(ctx, err, body);
      });
  }

  #fail(ctx: ProxyContext, err: unknown, body: RequestBody | null): void {
    const { req, res } = ctx;
    const e = err instanceof StratumError ? err : new StratumError('STRATUM_ERR_INTERNAL', String((err as Error)?.message ?? err), 500);
    ctx.error = e;
    const level = e.statusCode >= 500 ? 'warn' : 'info';
    this.#log[level]({ code: e.code, method: req.method, path: req.url, requestId: ctx.forward.requestId, route: ctx.routeLabel, upstream: ctx.upstreamLabel, workerPid: ctx.workerPid || undefined }, e.message);
    if (res.headersSent || res.destroyed) {
      res.destroy();
      return;
    }
    const text = `${http.STATUS_CODES[e.statusCode] ?? 'Error'}\n`;
    const headers: string[] = ['content-type', 'text/plain; charset=utf-8', 'content-length', String(Buffer.byteLength(text)), 'cache-control', 'no-store'];
    if (e.statusCode === 503) headers.push('retry-after', '1');
    // A body we did not read (413, or failure before streaming it) cannot stay on a kept connection.
    const unread = !req.complete && (body === null || !body.replayable);
    if (unread) {
      headers.push('connection', 'close');
      res.shouldKeepAlive = false;
    }
    ctx.beforeHead(headers);
    res.writeHead(e.statusCode, headers);
    res.end(req.method === 'HEAD' ? undefined : text);
    if (unread) res.once('finish', () => req.socket.destroySoon?.());
  }
}
