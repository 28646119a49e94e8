// The front proxy (nginx's role; Traefik's entrypoint → router → service): HTTP/1.1 with
// keep-alive, a route per request, the upstream fills the response. Failures become short plain
// answers — 502 unreachable/broken, 504 timeout/harakiri, 503 overload (with Retry-After),
// 413 too large, 404 no route — each logged with its code.
//
// Hostile clients: Node's parser (llhttp, strict) refuses ambiguous framing (Content-Length with
// Transfer-Encoding, differing Content-Lengths, obs-fold, bare CR/LF, bad chunk sizes); we add
// what it lets through (two Host headers, Transfer-Encoding on HTTP/1.0) and answer every refusal
// with a coded 400/408/431 and a closed connection. Heads must arrive within
// clientHeaderTimeout, bodies may not stall longer than clientBodyTimeout, and bodies are read
// whole before a request goes upstream (requestBuffering), so slow clients never hold a worker.

import type { IncomingMessage, Server as HttpServer, ServerOptions } from 'node:http';
import type { Socket } from 'node:net';
import type { Server as TlsServer } from 'node:tls';
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { StratumConfig } from '../config/schema.ts';
import { TlsStore } from './tls.ts';
import { H2Front, sniffPreface } from './h2.ts';
import { listenOnFd } from '../pool/sockets.ts';
import {
  BodySpoolUnavailable,
  ClientBadRequest,
  ClientBodyTimeout,
  ClientHeadersTooLarge,
  ClientHeaderTimeout,
  RouteNotFound,
  StratumError,
  rawHttpAnswer,
  UpgradeUnsupported,
} from '../errors.ts';
import type { RouteTable } from './routes.ts';
import { forwardInfo } from './forward.ts';
import { requireProxyProtocol } from './proxy-protocol.ts';
import { HostResponse } from '../host/response.ts';
import { BurstLog } from '../observability/burst.ts';
import { ConnectionCap, maxConnections, type ConnectionCounts } from './conn-cap.ts';
import {
  announcesBody,
  prepareBody,
  type ProxyContext,
  type RequestBody,
  type UpgradeContext,
  type Upstream,
} from './upstream.ts';

// getBuiltinModule rather than an ES import, which would load Node's bundled undici (src/pool/worker.ts).
const http = process.getBuiltinModule('node:http');
const https = process.getBuiltinModule('node:https');

export interface FrontOptions {
  /** The certificates to serve (the master's, shared with its expiry metric); else loaded from config.tls. */
  tls?: TlsStore;
}

/** Moments of a request's life the observability layer attaches to (Fastify's hooks idea). */
export interface ProxyHooks {
  onRequest?(ctx: ProxyContext): void;
  /** The request is about to leave for its upstream (set ctx.traceparent). */
  onDispatch?(ctx: ProxyContext, kind: Upstream['kind']): void;
  onHead?(ctx: ProxyContext, headers: string[]): void;
  onResponse?(ctx: ProxyContext): void;
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** The client's X-Request-Id when it is a sane token, else a fresh one (nginx's $request_id). */
function requestIdOf(req: IncomingMessage): string {
  const given = req.headers['x-request-id'];
  return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
}
/** How long a refused connection may go on sending before we close it (nginx lingering_timeout). */
const LINGER_MS = 5_000;

type HttpSocket = Socket & { _httpMessage?: HostResponse | null };

const IDLE_SINCE = Symbol('stratum.idleSince');
const PIPELINED = Symbol('stratum.pipelined');
const UPGRADED = Symbol('stratum.upgraded');
/** A client connection and what the front keeps on it. */
type FrontSocket = Socket & {
  /** When it went idle (undefined while a request is on it). */
  [IDLE_SINCE]?: number;
  /** Requests pipelined behind the one in flight (undefined when none is in flight). */
  [PIPELINED]?: Array<() => void>;
  /** Upgraded to another protocol (WebSocket): a drain leaves it to finish, as nginx does. */
  [UPGRADED]?: boolean;
};

/** The coded error for a request Node's parser refused, or null for a plain socket error. */
function clientErrorFor(err: NodeJS.ErrnoException & { reason?: string }, config: StratumConfig): StratumError | null {
  if (err.code === 'HPE_HEADER_OVERFLOW') return new ClientHeadersTooLarge(config.proxy.maxHeaderSize);
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') return new ClientHeaderTimeout(config.proxy.clientHeaderTimeout);
  if (err.code?.startsWith('HPE_')) return new ClientBadRequest(`${err.code} (${err.reason ?? err.message})`);
  return null;
}

/** What the proxy refuses although Node's parser accepts it, or null. */
function framingProblem(req: IncomingMessage): string | null {
  const raw = req.rawHeaders;
  let hosts = 0;
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.length === 4 && raw[i]!.toLowerCase() === 'host') hosts++;
  // RFC 9112 §3.2: more than one Host is a 400 (the route and the upstream could read different ones).
  if (hosts > 1) return 'more than one Host header';
  // RFC 9112 §6.1: HTTP/1.0 has no chunked framing; Node would ignore the header, an upstream might not.
  if (req.httpVersionMinor === 0 && req.headers['transfer-encoding'] !== undefined)
    return 'Transfer-Encoding in an HTTP/1.0 request';
  return null;
}

export class FrontProxy {
  readonly config: StratumConfig;
  readonly server: HttpServer;
  /** The certificates served when config.tls is set (an https server), else null. */
  readonly tls: TlsStore | null;
  /** HTTP/2 sessions on the TLS listener (ALPN h2), each stream bridged into this server (h2.ts). */
  readonly h2: H2Front | null;
  /** tls.hsts: the Strict-Transport-Security every response of this TLS listener carries, or null. */
  readonly #hsts: string | null;
  #routes: RouteTable<Upstream>;
  #log: Logger;
  #hooks: ProxyHooks;
  #inflight = 0;
  #sockets = new Set<Socket>();
  #closing = false;
  #idleWaiters: Array<() => void> = [];
  #drainTimer: NodeJS.Timeout | null = null;
  /** proxy.maxConnections, and the raw client connections it counts (TLS ones from before their handshake). */
  #cap: ConnectionCap;
  #open = 0;
  /** Bodies that could not be spooled, by errno: counted, and logged once per burst rather than once each. */
  readonly spoolFailures = new Map<string, number>();
  #spoolLog: BurstLog;
  // Per-connection state lives on the socket itself (FrontSocket), not in WeakMaps: a WeakMap set and
  // delete per request cost measurable CPU and GC time on this path (`npm run bench -- --cpu-prof`).
  #goneWaiters: Array<() => void> = [];
  /** Stops the body read of an in-flight request whose framing broke (bad chunk) with a coded error. */
  #bodyAborts = new WeakMap<HostResponse, AbortController>();
  /** Connections being closed after a refusal: what they still send is read and dropped. */
  #lingering = new WeakSet<Socket>();

  constructor(
    config: StratumConfig,
    routes: RouteTable<Upstream>,
    log: Logger,
    hooks: ProxyHooks = {},
    opts: FrontOptions = {},
  ) {
    this.config = config;
    this.#routes = routes;
    this.#log = log;
    this.#hooks = hooks;
    const headersTimeout = config.proxy.clientHeaderTimeout * 1000;
    const options: ServerOptions = {
      ServerResponse: HostResponse as unknown as typeof http.ServerResponse,
      maxHeaderSize: config.proxy.maxHeaderSize,
      keepAliveTimeout: config.proxy.keepAliveTimeout * 1000,
      // From connecting (or a kept connection's next first byte) to a complete head; Node checks
      // the open connections every connectionsCheckingInterval, a tenth of it keeps the overrun small.
      headersTimeout,
      connectionsCheckingInterval: Math.min(30_000, Math.max(100, headersTimeout / 10)),
      requestTimeout: 0, // a body may take as long as it keeps moving: clientBodyTimeout bounds its stalls
      noDelay: true,
    };
    this.tls = config.tls ? (opts.tls ?? new TlsStore(config.tls, log)) : null;
    this.#hsts = config.tls?.hsts ?? null;
    // An https.Server is an http.Server over TLS sockets: the same events, options and request path.
    const alpn = config.tls?.http2 ? { ALPNProtocols: ['h2', 'http/1.1'] } : {};
    this.server = this.tls
      ? (https.createServer({ ...options, ...this.tls.serverOptions(), ...alpn }) as unknown as HttpServer)
      : http.createServer(options);
    if (this.tls) this.tls.attach(this.server as unknown as TlsServer);
    // Before TLS or HTTP sees a byte: the balancer's header (proxy-protocol.ts).
    if (config.proxy.proxyProtocol)
      requireProxyProtocol(this.server, { timeoutMs: headersTimeout, log });
    // What the 'connection' handler tracks is the socket requests run on: the TLS one, once its handshake is done.
    const accepted = this.tls ? 'secureConnection' : 'connection';
    this.server.on('request', (req, res) => this.#handle(req, res as HostResponse, false));
    // Expect: 100-continue — the size limit is checked before the client is invited to send.
    this.server.on('checkContinue', (req, res) => this.#handle(req, res as HostResponse, true));
    const track = (socket: Socket) => {
      this.#sockets.add(socket);
      (socket as FrontSocket)[IDLE_SINCE] = Date.now();
      socket.once('close', () => {
        this.#sockets.delete(socket);
        if (this.#sockets.size === 0) for (const w of this.#goneWaiters.splice(0)) w();
      });
    };
    this.server.on(accepted, track);
    this.h2 = (this.tls ? config.tls!.http2 : config.proxy.h2c) ? this.#offerH2(config, log, track) : null;
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => this.#clientError(err, socket));
    this.server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => this.#upgrade(req, socket, head));
    this.#cap = new ConnectionCap(maxConnections(config.proxy.maxConnections), config.listen, log);
    // An https server has TLS contexts: a refused connection there is closed, a plain one gets a 503.
    const plainHttp = !('addContext' in this.server);
    const closed = () => this.#open--;
    this.server.on('connection', (socket: Socket) => {
      if (this.#open >= this.#cap.limit) {
        this.#lingering.add(socket); // a request it still sends is dropped (#serve)
        return this.#cap.refuse(socket, plainHttp);
      }
      this.#open++;
      socket.once('close', closed);
    });
    this.#spoolLog = new BurstLog(
      (fields, msg) => log.warn(fields, msg),
      'more request bodies could not be spooled (507)',
      { code: BodySpoolUnavailable.code },
    );
  }

  /**
   * ALPN h2 connections (TLS), or those that begin with the h2 preface (h2c, plain), go to the h2
   * sessions instead of HTTP/1's parser (the listener http/https.Server registered); a drain leaves
   * them to their GOAWAY, as it leaves upgraded ones. `track` is what the front keeps of a connection.
   */
  #offerH2(config: StratumConfig, log: Logger, track: (socket: Socket) => void): H2Front {
    const h1 = (http as unknown as { _connectionListener: (this: HttpServer, s: Socket) => void })._connectionListener;
    // A stream's bridge is a connection of HTTP/1's, tracked as one; on a plain listener it skips the
    // 'connection' listeners (the connection cap, a PROXY header), which its real connection has been through.
    const serve = this.tls
      ? (bridge: Socket) => this.server.emit('secureConnection', bridge)
      : (bridge: Socket) => {
          h1.call(this.server, bridge);
          track(bridge);
        };
    const h2 = new H2Front(
      serve as never,
      {
        maxConcurrentStreams: 100,
        maxHeaderListSize: config.proxy.maxHeaderSize,
        initialWindowSize: 256 * 1024,
        sessionWindowSize: 4 * 1024 * 1024,
        idleTimeoutMs: config.proxy.keepAliveTimeout * 1000,
      },
      log,
    );
    const toH2 = (socket: Socket) => {
      (socket as FrontSocket)[UPGRADED] = true;
      h2.accept(socket);
    };
    if (this.tls) {
      this.server.removeListener('secureConnection', h1);
      this.server.prependListener('secureConnection', (socket: Socket) => {
        if ((socket as Socket & { alpnProtocol?: string }).alpnProtocol !== 'h2') return h1.call(this.server, socket);
        toH2(socket);
      });
    } else {
      const timeoutMs = config.proxy.clientHeaderTimeout * 1000;
      this.server.removeListener('connection', h1);
      this.server.prependListener('connection', (socket: Socket) =>
        sniffPreface(socket, timeoutMs, (isH2) => {
          if (socket.destroyed) return;
          if (isH2) toH2(socket);
          else h1.call(this.server, socket);
        }),
      );
    }
    return h2;
  }

  /** A config reload's routes (src/pool/apps.ts): requests matched from now on use them; those in flight finish. */
  replaceRoutes(routes: RouteTable<Upstream>): void {
    const old = this.#routes;
    this.#routes = routes;
    // What the new table no longer holds stops its health checks and lets its connections go.
    const kept = new Set(routes.entries.map((e) => e.upstream));
    for (const e of old.entries) if (!kept.has(e.upstream)) e.upstream.retire?.();
  }

  /**
   * Upgrade (WebSocket) requests go to upstreams that can take them: HTTP upstreams, and the app
   * itself when it runs in this process. uwsgi has no upgrade (nginx's uwsgi_pass has none): 501.
   */
  #upgrade(req: IncomingMessage, socket: Socket, head: Buffer): void {
    const entry = this.#routes.match(req.headers.host, req.url ?? '/');
    socket.on('error', () => socket.destroy());
    const problem = framingProblem(req);
    if (problem) {
      const e = new ClientBadRequest(problem);
      this.#log.info({ code: e.code, method: req.method, path: req.url }, e.message);
      socket.end(rawHttpAnswer(e));
      return;
    }
    const upstream = entry?.upstream;
    if (!entry || !upstream?.upgrade) {
      const e = entry ? new UpgradeUnsupported(entry.label) : new RouteNotFound(req.headers.host ?? '', req.url ?? '/');
      this.#log.info(
        { code: e.code, method: req.method, path: req.url, route: entry?.label ?? 'none' },
        `refused upgrade: ${e.message}`,
      );
      socket.end(rawHttpAnswer(e));
      return;
    }
    const ctx: UpgradeContext = {
      req,
      routeLabel: entry.label,
      forward: forwardInfo(req, socket, requestIdOf(req), this.config.proxy),
      error: null,
    };
    (socket as FrontSocket)[UPGRADED] = true;
    upstream.upgrade(ctx, socket, head);
  }

  #clientError(err: NodeJS.ErrnoException, socket: HttpSocket): void {
    const e = clientErrorFor(err, this.config);
    const res = socket._httpMessage;
    if (res) {
      if (!e) return void socket.destroy(); // a plain socket error
      if (this.#lingering.has(socket)) return; // closing already: what still arrives is dropped
      const abort = this.#bodyAborts.get(res);
      if (abort && !res.req.complete) {
        // The body of the request in flight broke its framing (a bad chunk): it fails with 400
        // through its own response. Chunked bodies are read whole before anything goes
        // upstream, so no upstream has seen a byte of it.
        if (!res.headersSent) abort.abort(e);
        else socket.destroy();
        return;
      }
      // A request pipelined behind the one in flight is malformed: that one is answered, then
      // the connection closes; the malformed one goes nowhere.
      this.#log.info({ code: e.code, parserCode: err.code, remote: socket.remoteAddress }, `${e.message} (pipelined)`);
      if (!res.headersSent) res.shouldKeepAlive = false;
      this.#linger(res.req);
      res.once('finish', () => socket.destroySoon());
      return;
    }
    if (!e || !socket.writable) return void socket.destroy();
    this.#log.info({ code: e.code, parserCode: err.code, remote: socket.remoteAddress }, e.message);
    socket.end(rawHttpAnswer(e));
    socket.setTimeout(LINGER_MS); // half-closed: the client's FIN ends it, or this does
  }

  get inflight(): number {
    return this.#inflight;
  }

  /** Open client connections against proxy.maxConnections, and those refused since start. */
  get connections(): ConnectionCounts {
    return this.#cap.counts(this.#open);
  }

  /** Listen on config.listen (the master topology; workers accept on the master's listener instead). */
  async listen(): Promise<string> {
    // Imported here: it brings the config schema (zod), which a worker's start does without.
    const { listenAt } = await import('../listen.ts');
    const url = await listenAt(this.server, this.config.listen, 'listen', 2048, this.tls ? 'https' : 'http');
    this.tls?.watch();
    return url;
  }

  /** Accept on a listener the master bound (the worker topology: every worker accepts on it). */
  async listenOn(fd: number): Promise<void> {
    await listenOnFd(this.server, fd, 2048);
    this.tls?.watch();
  }

  /**
   * Stop accepting new connections; the ones open go on. (http.Server.close() would also close
   * every idle kept connection at once, racing a client that is just sending on one.)
   */
  stopAccepting(): void {
    const s = this.server as unknown as { _handle: unknown };
    if (s._handle)
      (Object.getPrototypeOf(Object.getPrototypeOf(this.server)) as { close(this: unknown): void }).close.call(
        this.server,
      );
  }

  /**
   * Drain without cutting anyone off (a worker being recycled or stopped): stop accepting, tell
   * every client its connection ends with the response in flight (Connection: close), and close
   * kept connections once they have been idle for idleMs (0: at once).
   */
  drain(idleMs: number): void {
    this.#closing = true;
    this.h2?.drain();
    this.stopAccepting();
    for (const socket of this.#sockets) {
      const res = (socket as HttpSocket)._httpMessage;
      if (res && !res.headersSent) res.shouldKeepAlive = false;
    }
    const sweep = () => {
      const now = Date.now();
      for (const socket of this.#sockets) {
        const since = (socket as FrontSocket)[IDLE_SINCE];
        if (
          since !== undefined &&
          now - since >= idleMs &&
          !(socket as HttpSocket)._httpMessage &&
          !(socket as FrontSocket)[UPGRADED]
        )
          socket.end();
      }
    };
    sweep();
    this.#drainTimer = setInterval(sweep, Math.max(50, Math.min(250, idleMs)));
    this.#drainTimer.unref();
  }

  /** Connections are still open. */
  get busy(): boolean {
    return this.#sockets.size > 0;
  }

  /** Called once no connection is left open. */
  onIdle(cb: () => void): void {
    if (this.#sockets.size === 0) cb();
    else this.#goneWaiters.push(cb);
  }

  /** Stop accepting; idle keep-alive connections close; resolves when in-flight requests end. */
  async close(graceMs: number): Promise<void> {
    this.#closing = true;
    if (this.#drainTimer) clearInterval(this.#drainTimer);
    this.tls?.close();
    this.h2?.drain();
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

  /**
   * A connection's pipelined requests are served one at a time, as nginx does: one connection
   * cannot fan out over the whole pool. The next waits (and the connection is not read further)
   * until the response before it is done.
   */
  #handle(req: IncomingMessage, res: HostResponse, expectContinue: boolean): void {
    const socket = req.socket;
    const waiting = (socket as FrontSocket)[PIPELINED];
    if (waiting !== undefined) {
      waiting.push(() => this.#serve(req, res, expectContinue));
      socket.pause();
      return;
    }
    (socket as FrontSocket)[PIPELINED] = [];
    this.#serve(req, res, expectContinue);
  }

  /** The request before this one on its connection is done: start the next, if one waits. */
  #next(socket: Socket): void {
    const waiting = (socket as FrontSocket)[PIPELINED];
    const next = waiting?.shift();
    if (next === undefined) {
      (socket as FrontSocket)[PIPELINED] = undefined;
      return;
    }
    if (waiting!.length === 0) socket.resume();
    if (socket.destroyed) {
      // The client is gone: what it had pipelined is dropped (Node closes those responses).
      (socket as FrontSocket)[PIPELINED] = undefined;
      return;
    }
    next();
  }

  #serve(req: IncomingMessage, res: HostResponse, expectContinue: boolean): void {
    const startAt = performance.now();
    const socket = req.socket;
    // A request pipelined behind one we refused: that connection is closing, nothing more on it is served.
    if (this.#lingering.has(socket)) return void socket.destroy();
    this.#inflight++;
    (socket as FrontSocket)[IDLE_SINCE] = undefined;
    if (this.#closing) res.shouldKeepAlive = false;
    const requestId = requestIdOf(req);
    const entry = this.#routes.match(req.headers.host, req.url ?? '/');
    const ctx: ProxyContext = {
      req,
      res,
      route: entry?.route ?? (null as never),
      routeLabel: entry?.label ?? 'none',
      forward: forwardInfo(req, socket, requestId, this.config.proxy),
      startAt,
      readTimeoutMs: (entry?.route.readTimeout ?? this.config.proxy.readTimeout) * 1000,
      harakiriMs: (entry?.route.harakiri ?? this.config.pool.harakiri) * 1000,
      timings: { dispatchAt: 0, connectAt: 0, headAt: 0, endAt: 0, worker: null },
      upstreamLabel: entry?.upstream.label ?? '',
      upstreamKind: entry?.upstream.kind ?? 'static',
      workerPid: 0,
      traceparent: null,
      beforeHead: (headers) => {
        headers.push('x-request-id', requestId);
        if (this.#hsts !== null) headers.push('strict-transport-security', this.#hsts);
        this.#hooks.onHead?.(ctx, headers);
      },
      bytesOut: 0,
      error: null,
      onClientGone: null,
    };
    res.once('close', () => {
      if (ctx.onClientGone && !res.writableFinished) ctx.onClientGone();
      (socket as FrontSocket)[IDLE_SINCE] = Date.now();
      this.#inflight--;
      this.#hooks.onResponse?.(ctx);
      if (this.#inflight === 0) for (const w of this.#idleWaiters.splice(0)) w();
      this.#next(socket);
    });
    this.#hooks.onRequest?.(ctx);
    const problem = framingProblem(req);
    if (problem) return this.#fail(ctx, new ClientBadRequest(problem), null);
    if (!entry) return this.#fail(ctx, new RouteNotFound(req.headers.host ?? '', req.url ?? '/'), null);
    const configured = entry.route.clientMaxBodySize ?? this.config.proxy.clientMaxBodySize;
    const limit = configured === 0 ? Infinity : configured; // 0 = no limit, as nginx's client_max_body_size 0
    if (expectContinue && !(Number(req.headers['content-length']) > limit)) res.writeContinue();
    // No body announced (most requests): straight to the upstream, no body promise to wait on.
    if (!announcesBody(req)) return this.#dispatch(ctx, entry.upstream, null);
    const abort = this.#watchBody(ctx);
    const { requestBuffering, clientBodyMinRate, clientBodyMinRateGrace } = this.config.proxy;
    const bodyOpts = { minRate: clientBodyMinRate, minRateGraceMs: clientBodyMinRateGrace * 1000 };
    prepareBody(req, limit, { buffer: requestBuffering, signal: abort?.signal, ...bodyOpts }).then(
      (b) => this.#dispatch(ctx, entry.upstream, b),
      (err: unknown) => this.#fail(ctx, err, null),
    );
  }

  #dispatch(ctx: ProxyContext, upstream: Upstream, body: RequestBody | null): void {
    let p: Promise<void>;
    ctx.forward.contentLength = body ? body.length : -1;
    try {
      this.#hooks.onDispatch?.(ctx, upstream.kind);
      ctx.timings.dispatchAt = performance.now();
      p = upstream.handle(ctx, body);
    } catch (err) {
      body?.cleanup();
      return this.#fail(ctx, err, body);
    }
    p.then(
      () => body?.cleanup(),
      (err: unknown) => {
        body?.cleanup();
        this.#fail(ctx, err, body);
      },
    );
  }

  /**
   * nginx's client_body_timeout for a request still receiving its body: a stall longer than
   * clientBodyTimeout fails it with 408. Pauses of our own (backpressure from a slow upstream or
   * the spool file) do not count. Returns the controller that stops the body read, or null.
   */
  #watchBody(ctx: ProxyContext): AbortController | null {
    const { req, res } = ctx;
    const announced = req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length']) > 0;
    if (!announced || req.complete) return null;
    const socket = req.socket;
    const abort = new AbortController();
    this.#bodyAborts.set(res, abort);
    const ms = this.config.proxy.clientBodyTimeout * 1000;
    // Node's socket timeout is refreshed by every parsed chunk, and emitted on the request while
    // its body is incomplete; on the response otherwise (then it only has to stop).
    req.setTimeout(ms, () => {
      if (this.#lingering.has(socket)) return void socket.destroy();
      if (req.isPaused() || req.readableLength > 0 || socket.isPaused()) return void socket.setTimeout(ms);
      const err = new ClientBodyTimeout(this.config.proxy.clientBodyTimeout);
      if (ctx.timings.dispatchAt === 0) return abort.abort(err); // still being read: #fail answers 408
      // Streaming to an upstream (requestBuffering off): cut the connection; the upstream sees
      // a truncated body and the request ends there.
      ctx.error ??= err;
      this.#log.info(
        { code: err.code, method: req.method, path: req.url, requestId: ctx.forward.requestId, route: ctx.routeLabel },
        err.message,
      );
      socket.destroy();
    });
    res.on('timeout', () => {
      if (req.complete && !this.#lingering.has(socket)) socket.setTimeout(0);
    });
    req.once('end', () => {
      if (!this.#lingering.has(socket)) socket.setTimeout(0);
    });
    return abort;
  }

  #fail(ctx: ProxyContext, err: unknown, body: RequestBody | null): void {
    const { req, res } = ctx;
    const e =
      err instanceof StratumError
        ? err
        : new StratumError('STRATUM_ERR_INTERNAL', String((err as Error)?.message ?? err), 500);
    if (ctx.error && (res.headersSent || res.destroyed)) {
      // Already failed and answered (or cut): the first cause is the one on record.
      res.destroy();
      return;
    }
    ctx.error = e;
    const level = e.statusCode >= 500 ? 'warn' : 'info';
    const fields = {
      code: e.code,
      method: req.method,
      path: req.url,
      requestId: ctx.forward.requestId,
      route: ctx.routeLabel,
      upstream: ctx.upstreamLabel,
      workerPid: ctx.workerPid || undefined,
    };
    if (e.code === BodySpoolUnavailable.code) {
      // A full or read-only temp dir fails every large body alike: a line per burst, not per request.
      const errno = (e as StratumError & { errno?: string }).errno ?? 'EIO';
      this.spoolFailures.set(errno, (this.spoolFailures.get(errno) ?? 0) + 1);
      this.#spoolLog.hit(errno, fields, e.message);
    } else this.#log[level](fields, e.message);
    if (res.headersSent || res.destroyed) {
      res.destroy();
      return;
    }
    const text = `${http.STATUS_CODES[e.statusCode] ?? 'Error'}\n`;
    const headers: string[] = [
      'content-type',
      'text/plain; charset=utf-8',
      'content-length',
      String(Buffer.byteLength(text)),
      'cache-control',
      'no-store',
    ];
    if (e.statusCode === 503) headers.push('retry-after', '1');
    // A body we did not read (413, 408, or failure before streaming it) cannot stay on a kept
    // connection, nor can a request whose framing we refused.
    const unread = !req.complete && (body === null || !body.replayable);
    const close = unread || e.statusCode === 400 || e.statusCode === 408;
    if (close) {
      headers.push('connection', 'close');
      res.shouldKeepAlive = false;
      this.#linger(req);
    }
    res.stratumHead = null; // an app in this process never got as far as its head
    ctx.beforeHead(headers);
    res.answer(e.statusCode, headers, req.method === 'HEAD' ? undefined : text);
  }

  /**
   * Close a refused connection without resetting it (nginx lingering_close): Node ends a
   * `Connection: close` response with destroySoon(), which would close while the client is
   * still sending and reset the connection — possibly wiping our answer before the client has
   * read it. Instead: half-close after the answer, drop what still arrives, close when the
   * client does or after LINGER_MS.
   */
  #linger(req: IncomingMessage): void {
    const socket = req.socket;
    if (this.#lingering.has(socket)) return;
    this.#lingering.add(socket);
    socket.destroySoon = () => {
      req.removeAllListeners('data');
      req.resume();
      socket.end();
      socket.setTimeout(LINGER_MS);
    };
  }
}
