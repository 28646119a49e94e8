// HTTP upstreams (nginx's proxy_pass): kept connections in an undici Pool per upstream origin,
// bodies streamed both ways with backpressure, connect / header / total times recorded as nginx's
// $upstream_connect_time, $upstream_header_time and $upstream_response_time.
//
// Why undici and not node:http: measured side by side on the bench row stratum-http-upstream
// (Stratum → a Fastify cluster over HTTP, wrk -t1 -c50 -d8s, three alternating runs each, see
// bench/README.md): node:http 18.0k req/s at 73 µs of CPU per request, undici 21.5k req/s at
// 60 µs. The master is CPU-bound at one core in both, so the CPU per request decides: node:http's
// client builds a ClientRequest and an IncomingMessage with their listeners for every request and
// hands the body over as a Readable; undici's Pool writes the head as one string and gives the
// body chunks straight to the callbacks below (a profile of this path shows the master's time in
// the socket writes, not in the client).
//
// WebSocket upgrades stay on node:http (upgrade() below): one request per connection, the
// socket then leaves the pool for good, so a pool brings nothing there.
//
// A route's http target is a group (balancer.ts): one server, or several balanced, retried and
// health-checked as nginx's `upstream {}`; each server is an HttpOrigin with its own Pool.

import http, { type IncomingHttpHeaders } from 'node:http';
import type { Socket } from 'node:net';
import { PassThrough, type Duplex } from 'node:stream';
import { errors, Pool, type Dispatcher } from 'undici';
import type { Route, StratumConfig, Target } from '../config/schema.ts';
import {
  ClientBadRequest,
  ClientClosed,
  StratumError,
  UpstreamBadResponse,
  UpstreamHeadersTooLarge,
  UpstreamNextServer,
  UpstreamReset,
  UpstreamTimeout,
  UpstreamTruncated,
  UpstreamUnreachable,
  UNREACHABLE_CODES,
  rawHttpAnswer,
} from '../errors.ts';
import { Balancer, hashKeyOf, serveFromGroup, type Attempt, type PeerHealth } from './balancer.ts';
import { groupOptions, HealthChecker } from './health.ts';
import { compressResponse, compressionFor, type Compression } from './compress.ts';
import { httpRequestHeaders, responseHeaders } from './forward.ts';
import { sendHead, type ProxyContext, type RequestBody, type UpgradeContext, type Upstream } from './upstream.ts';

/** Response head limit, as Node's own client (http.maxHeaderSize, 16 KiB unless --max-http-header-size). */
const MAX_RESPONSE_HEAD = http.maxHeaderSize;

/** A route's HTTP servers: a group of one or more, as nginx's `upstream {}` (balancer.ts). */
export class HttpUpstream implements Upstream {
  readonly kind = 'http' as const;
  readonly label: string;
  #group: Balancer<HttpOrigin>;
  #checker: HealthChecker<HttpOrigin> | null = null;

  constructor(targets: Target[], route: Route, config: StratumConfig) {
    const specs = targets.map((t) => {
      if (t.kind !== 'http') throw new TypeError(`not an http target: ${t.raw}`);
      const origin = new HttpOrigin(t.url, config);
      return { label: origin.label, weight: t.weight ?? 1, backup: t.backup ?? false, target: origin };
    });
    this.#group = new Balancer(specs, groupOptions(route));
    this.label = specs.map((s) => s.label).join(',');
    const hc = route.upstream.healthCheck;
    if (hc.enabled) this.#checker = new HealthChecker(this.#group, hc, (o, path, ms) => o.probe(path, ms));
  }

  /** Each server's state, for metrics, /stats and the dashboard. */
  health(): PeerHealth[] {
    return this.#group.health();
  }

  handle(ctx: ProxyContext, body: RequestBody | null): Promise<void> {
    return serveFromGroup(this.#group, this.label, ctx, body, (origin, c, b, next) => origin.exchange(c, b, next));
  }

  /** An upgrade goes to one server as the policy picks it, not retried (the client's socket is the body). */
  upgrade(ctx: UpgradeContext, clientSocket: Duplex, head: Buffer): void {
    const { options } = this.#group;
    const key = options.policy === 'hash' ? hashKeyOf(options.hashKey, ctx.req, ctx.forward.clientAddress) : null;
    const peer = this.#group.pick(key, new Set());
    if (!peer) {
      ctx.error = new UpstreamUnreachable(this.label, 'no live server in the group');
      return void clientSocket.end(rawHttpAnswer(ctx.error));
    }
    peer.target.upgrade(ctx, clientSocket, head);
  }

  retire(): void {
    this.#checker?.close();
    for (const p of this.#group.peers) p.target.retire();
  }

  close(): void {
    this.#checker?.close();
    for (const p of this.#group.peers) p.target.close();
  }
}

/** One HTTP server of a group: its kept connections (an undici Pool) and how a request goes over them. */
class HttpOrigin {
  readonly label: string;
  #url: URL;
  #base: string;
  #pool: Pool;
  #connectTimeoutMs: number;

  constructor(url: URL, config: StratumConfig) {
    this.#url = url;
    this.label = url.host;
    this.#base = url.pathname === '/' ? '' : url.pathname.replace(/\/$/, '');
    this.#connectTimeoutMs = config.proxy.connectTimeout * 1000;
    this.#pool = new Pool(url.origin, {
      // As the keep-alive http.Agent before it (maxSockets 1024): one connection per request in
      // flight, no pipelining (a reset would lose every request queued behind the first).
      connections: 1024,
      pipelining: 1,
      connectTimeout: this.#connectTimeoutMs,
      maxHeaderSize: MAX_RESPONSE_HEAD,
      // Idle connections close after 4 s (or 2 s before the upstream's Keep-Alive: timeout=N
      // hint): under Node's 5 s server default, so we close an idle connection before the
      // upstream does, rather than write a request into one it is closing.
      keepAliveTimeout: 4000,
    });
  }

  /** One try of ctx on this server; `next` lets the group drop a 502/503 for its next server. */
  exchange(ctx: ProxyContext, body: RequestBody | null, next: Attempt | null): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const { req } = ctx;
      const exchange = new Exchange(ctx, this.label, this.#connectTimeoutMs, next, resolve, reject);
      let headers = httpRequestHeaders(
        req,
        ctx.forward,
        ctx.traceparent === null ? undefined : ['traceparent', ctx.traceparent],
      );
      // We answered the client's 100-continue ourselves and send the body anyway; undici refuses
      // an Expect header outright.
      if (req.headers.expect !== undefined) headers = withoutExpect(headers);
      let b = body?.open() ?? null;
      // undici destroys a stream body once it stops writing it — also when the upstream answered
      // before reading it all. Destroying the client's request would cut the client's connection
      // before our answer reaches it: give undici a pipe of its own instead.
      if (b === req) b = req.pipe(new PassThrough());
      ctx.onClientGone = () => exchange.clientClosed(); // the proxy's own close listener calls it
      this.#pool.dispatch(
        {
          method: req.method ?? 'GET',
          path: this.#base + (req.url ?? '/'),
          headers,
          body: b,
          headersTimeout: ctx.readTimeoutMs,
          bodyTimeout: ctx.readTimeoutMs,
        },
        exchange,
      );
    });
  }

  /**
   * An Upgrade request (WebSocket): forward the head, and once the upstream answers 101, splice
   * the two sockets together. Anything else the upstream answers goes back as a response.
   * node:http, on purpose: see the top of this file.
   */
  upgrade(ctx: UpgradeContext, clientSocket: Duplex, head: Buffer): void {
    const { req } = ctx;
    const headers = httpRequestHeaders(req, ctx.forward); // no body: contentLength is -1
    // Hop-by-hop headers were dropped; an upgrade needs exactly these two back.
    headers.push('connection', 'upgrade', 'upgrade', String(req.headers.upgrade ?? 'websocket'));
    const upstream = http.request({
      host: this.#url.hostname,
      port: this.#url.port || 80,
      method: req.method,
      path: req.url ?? '/',
      headers,
      setHost: false,
    });
    const fail = (err: StratumError) => {
      if (clientSocket.writable) clientSocket.end(rawHttpAnswer(err));
      else clientSocket.destroy();
    };
    upstream.setTimeout(this.#connectTimeoutMs, () =>
      upstream.destroy(new UpstreamTimeout(this.label, 'upgrade', this.#connectTimeoutMs)),
    );
    upstream.once('error', (err: NodeJS.ErrnoException) => {
      ctx.error = err instanceof StratumError ? err : new UpstreamUnreachable(this.label, err.code ?? err.message);
      fail(ctx.error);
    });
    upstream.once('response', (res) => {
      // No upgrade: relay the answer and close.
      let text = `HTTP/1.1 ${res.statusCode} ${res.statusMessage}\r\n`;
      const raw = responseHeaders(res.rawHeaders, null);
      for (let i = 0; i < raw.length; i += 2) text += `${raw[i]}: ${raw[i + 1]}\r\n`;
      clientSocket.write(`${text}connection: close\r\n\r\n`);
      res.pipe(clientSocket);
    });
    upstream.once('upgrade', (res, upSocket: Socket, upHead: Buffer) => {
      upstream.setTimeout(0);
      let text = `HTTP/1.1 101 ${res.statusMessage || 'Switching Protocols'}\r\n`;
      for (let i = 0; i < res.rawHeaders.length; i += 2) text += `${res.rawHeaders[i]}: ${res.rawHeaders[i + 1]}\r\n`;
      clientSocket.write(`${text}\r\n`);
      if (upHead.length > 0) clientSocket.write(upHead);
      if (head.length > 0) upSocket.write(head);
      upSocket.pipe(clientSocket).pipe(upSocket);
      const close = () => {
        upSocket.destroy();
        clientSocket.destroy();
      };
      upSocket.once('error', close).once('close', close);
      clientSocket.once('error', close).once('close', close);
    });
    upstream.end();
  }

  /** An active health check: GET `path` on a kept connection; resolves with the status. */
  async probe(path: string, timeoutMs: number): Promise<number> {
    const res = await this.#pool.request({
      method: 'GET',
      path: this.#base + path,
      headers: { host: this.#url.host, 'user-agent': 'stratum-health-check' },
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
      signal: AbortSignal.timeout(timeoutMs),
    });
    await res.body.dump();
    return res.statusCode;
  }

  /** Closes the connections once the requests on them are done (undici's graceful close). */
  retire(): void {
    void this.#pool.close().catch(() => {});
  }

  close(): void {
    void this.#pool.destroy().catch(() => {});
  }
}

function withoutExpect(headers: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < headers.length; i += 2) {
    if (headers[i]!.toLowerCase() !== 'expect') out.push(headers[i]!, headers[i + 1]!);
  }
  return out;
}

/**
 * One request's life on the pool, as undici's handler callbacks: the response head and body go
 * to the client as they come, pausing the upstream while the client's socket is full. A class,
 * not closures: one object per request on the hot path.
 */
class Exchange implements Dispatcher.DispatchHandler {
  #ctx: ProxyContext;
  #label: string;
  #connectTimeoutMs: number;
  #next: Attempt | null;
  #resolve: () => void;
  #reject: (err: StratumError) => void;
  #controller: Dispatcher.DispatchController | null = null;
  #settled = false;
  #lengthKnown = false;
  #resume: (() => void) | null = null;
  /** The body goes through it when the response is compressed (compress.ts), else straight to the client. */
  #encoder: Compression | null = null;

  constructor(
    ctx: ProxyContext,
    label: string,
    connectTimeoutMs: number,
    next: Attempt | null,
    resolve: () => void,
    reject: (err: StratumError) => void,
  ) {
    this.#ctx = ctx;
    this.#label = label;
    this.#connectTimeoutMs = connectTimeoutMs;
    this.#next = next;
    this.#resolve = resolve;
    this.#reject = reject;
  }

  /** A connection was obtained (new or kept) and the request is about to be written on it. */
  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller;
    // The client left while the request waited for a connection: do not send it at all.
    if (this.#settled) return controller.abort(new ClientClosed());
    this.#ctx.timings.connectAt = performance.now();
  }

  onResponseStart(
    controller: Dispatcher.DispatchController,
    statusCode: number,
    headers: IncomingHttpHeaders,
    statusMessage?: string,
  ): void {
    // 1xx interim answers (103 Early Hints) are not relayed, as node:http's client did not either.
    if (statusCode < 200 || this.#settled) return;
    // An upstream group drops a 502/503 for its next server before a byte goes to the client.
    if (this.#next?.nextOnStatus(statusCode)) return this.#fail(new UpstreamNextServer(this.#label, statusCode));
    const ctx = this.#ctx;
    ctx.timings.headAt = performance.now();
    if (ctx.res.destroyed) return this.#fail(new UpstreamReset(this.#label, 'client went away'));
    this.#lengthKnown = headers['content-length'] !== undefined;
    // undici gives the head as raw Buffers, names with their case and repeats kept; Node's own
    // client would have decoded them as latin1 too.
    const raw = controller.rawHeaders as Buffer[];
    const pairs = new Array<string>(raw.length);
    for (let i = 0; i < raw.length; i++) pairs[i] = raw[i]!.toString('latin1');
    try {
      const head = responseHeaders(pairs, null);
      const c = compressResponse(ctx.req, ctx.res, statusCode, head, compressionFor(ctx.route));
      this.#encoder = c?.compression ?? null;
      sendHead(ctx, statusCode, statusMessage ?? '', c?.headers ?? head);
    } catch (err) {
      this.#fail(new UpstreamBadResponse(`head not forwardable: ${(err as Error).message}`));
    }
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.#settled) return;
    const res = this.#ctx.res;
    this.#ctx.bytesOut += chunk.length;
    const out = this.#encoder ?? res;
    if (!out.write(chunk)) {
      controller.pause();
      this.#resume ??= () => this.#controller?.resume();
      out.once('drain', this.#resume);
    }
  }

  onResponseEnd(): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#ctx.timings.endAt = performance.now();
    (this.#encoder ?? this.#ctx.res).end();
    this.#resolve();
  }

  onResponseError(_controller: Dispatcher.DispatchController | null, err: Error): void {
    this.#fail(this.#classify(err as NodeJS.ErrnoException));
  }

  /** The client's response closed: before it finished, the upstream request stops too. */
  clientClosed(): void {
    const res = this.#ctx.res;
    if (this.#settled || res.writableFinished) return;
    this.#settled = true;
    this.#controller?.abort(new ClientClosed());
    this.#resolve();
  }

  #fail(err: StratumError): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#ctx.timings.endAt = performance.now();
    // Stops the request and destroys its connection; nothing once undici already failed it.
    this.#controller?.abort(err);
    this.#reject(err);
  }

  #truncated(): StratumError {
    return new UpstreamTruncated(
      this.#ctx.timings.headAt
        ? `${this.#lengthKnown ? 'Content-Length' : 'chunked'} body ended early`
        : 'closed before the response head',
    );
  }

  /** undici's error, as the coded error for it. */
  #classify(err: NodeJS.ErrnoException): StratumError {
    if (err instanceof StratumError) return err;
    const ctx = this.#ctx;
    const code = err.code ?? err.message;
    const where = ctx.timings.headAt ? ' inside the response body' : ' before the response head';
    switch (err.code) {
      case 'UND_ERR_CONNECT_TIMEOUT':
        return new UpstreamTimeout(this.#label, 'connect', this.#connectTimeoutMs);
      case 'UND_ERR_HEADERS_TIMEOUT':
        return new UpstreamTimeout(this.#label, 'response head', ctx.readTimeoutMs);
      case 'UND_ERR_BODY_TIMEOUT':
        return new UpstreamTimeout(this.#label, 'read', ctx.readTimeoutMs);
      case 'UND_ERR_HEADERS_OVERFLOW':
        return new UpstreamHeadersTooLarge(MAX_RESPONSE_HEAD);
      // The upstream closed cleanly (FIN) inside a Content-Length body it announced with
      // Connection: close.
      case 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH':
        return this.#truncated();
      case 'UND_ERR_SOCKET':
        // 'other side closed': the upstream's FIN came while a response was still owed;
        // 'bad response' / 'bad upgrade': an answer nobody asked for (a 100 without Expect, an
        // unrequested 101); otherwise the socket was lost under us.
        if (err.message === 'other side closed') return this.#truncated();
        if (err.message.startsWith('bad ')) return new UpstreamBadResponse(err.message);
        return new UpstreamReset(this.#label, `${err.message}${where}`);
      // undici refused the request itself (a header it will not send): nothing went out.
      case 'UND_ERR_INVALID_ARG':
      case 'UND_ERR_NOT_SUPPORTED':
        return new ClientBadRequest(err.message);
    }
    // Nothing was sent: the connection was never made.
    if (!ctx.timings.connectAt && UNREACHABLE_CODES.has(err.code ?? ''))
      return new UpstreamUnreachable(this.#label, code);
    // llhttp refused the response (garbage status line, bad header, bad framing) — undici's
    // parser errors carry no code, only the parser's reason. "Invalid EOF state" is the clean
    // close inside a chunked body sent with Connection: close.
    if (err instanceof errors.HTTPParserError) {
      return /EOF state/.test(err.message)
        ? this.#truncated()
        : new UpstreamBadResponse(err.message.replace(/^Response does not match the HTTP\/1\.1 protocol /, ''));
    }
    // ECONNRESET and the rest. (An RST ending a body delimited by the close itself counts as its
    // end in undici, as in browsers: such a body has no length to be short of.)
    return new UpstreamReset(this.#label, `${code}${where}`);
  }
}
