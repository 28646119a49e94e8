// uwsgi upstreams: the exchange of one request over a UwsgiClient (used by the pool route in the
// master topology too, upstream-pool.ts), and external uwsgi servers (a real uWSGI; several
// balanced with passive health, as nginx's `upstream` block with max_fails/fail_timeout).

import type { StratumConfig, Address } from '../config/schema.ts';
import { type StratumError, UpstreamUnreachable } from '../errors.ts';
import { UwsgiClient } from '../uwsgi/client.ts';
import type { ResponseHead } from '../uwsgi/response.ts';
import { KEEPALIVE_HEADER, TIMING_HEADER } from '../uwsgi/server.ts';
import { responseHeaders, uwsgiVars } from './forward.ts';
import { sendHead, type ProxyContext, type RequestBody, type Upstream } from './upstream.ts';

/**
 * Run one request over a UwsgiClient and stream the answer to the client. `extraVars` go after
 * the request's own (flat pairs: our pool's per-route harakiri).
 */
export function uwsgiExchange(
  client: UwsgiClient,
  ctx: ProxyContext,
  body: RequestBody | null,
  opts: { joinRepeated: boolean; extraVars?: string[] },
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const extra = opts.extraVars ?? [];
    if (ctx.traceparent !== null) extra.push('HTTP_TRACEPARENT', ctx.traceparent);
    const vars = uwsgiVars(ctx.req, ctx.forward, extra, opts.joinRepeated);
    const res = ctx.res;
    let settled = false;
    const settle = () => {
      settled = true;
      ctx.timings.endAt = performance.now();
      ctx.onClientGone = null;
    };
    const onDrain = () => exchange.resume();
    // A Content-Length body that arrives whole with its head (hello-world sizes) goes out with the
    // head in one string write; head + body buffer + end would be a three-part writev.
    let whole = -1;
    let ended = false;
    const exchange = client.request(
      vars,
      body ? body.open() : null,
      {
        onConnect() {
          ctx.timings.connectAt = performance.now();
        },
        onHead(head: ResponseHead) {
          ctx.timings.headAt = performance.now();
          const headers = responseHeaders(head.rawHeaders, KEEPALIVE_HEADER);
          for (let i = 0; i < headers.length; i += 2) {
            if (headers[i]!.length === TIMING_HEADER.length && headers[i]!.toLowerCase() === TIMING_HEADER) {
              ctx.timings.worker = parseTiming(headers[i + 1]!);
              headers.splice(i, 2);
              break;
            }
          }
          if (res.destroyed) return;
          whole = head.framing === 'length' && head.contentLength <= 16384 ? head.contentLength : -1;
          sendHead(ctx, head.statusCode, head.statusMessage, headers);
        },
        onBody(chunk) {
          if (chunk.length === whole && ctx.bytesOut === 0) {
            ctx.bytesOut = chunk.length;
            ended = true;
            res.end(chunk.toString('latin1'), 'latin1');
            return true;
          }
          ctx.bytesOut += chunk.length;
          if (res.write(chunk)) return true;
          res.once('drain', onDrain);
          return false;
        },
        onComplete() {
          settle();
          if (!ended) res.end();
          resolve();
        },
        onError(err) {
          settle();
          reject(err);
        },
      },
      { isHead: ctx.req.method === 'HEAD', readTimeoutMs: ctx.readTimeoutMs },
    );
    // The client went away first: drop the upstream connection (the proxy calls this on close).
    ctx.onClientGone = () => {
      if (settled) return;
      settle();
      exchange.abort();
      resolve();
    };
  });
}

/** `worker=0.310,app=50.200` (milliseconds) from our worker's timing header. */
export function parseTiming(v: string): { worker: number; app: number } {
  const out = { worker: 0, app: 0 };
  for (let at = 0; at < v.length;) {
    let comma = v.indexOf(',', at);
    if (comma < 0) comma = v.length;
    const eq = v.indexOf('=', at);
    if (eq > at && eq < comma) {
      const k = v.slice(at, eq).trim();
      const n = Number(v.slice(eq + 1, comma));
      if ((k === 'worker' || k === 'app') && Number.isFinite(n)) out[k] = n;
    }
    at = comma + 1;
  }
  return out;
}

interface Server {
  client: UwsgiClient;
  inflight: number;
  failures: number;
  downUntil: number;
}

export class ExternalUwsgiUpstream implements Upstream {
  readonly kind = 'uwsgi' as const;
  readonly label: string;
  #servers: Server[];
  #rr = 0;
  readonly failTimeoutMs = 10_000;
  readonly maxFails = 1;

  constructor(addresses: Address[], config: StratumConfig) {
    this.#servers = addresses.map((a) => ({
      client: new UwsgiClient(a, {
        // Offer keep-alive: a Stratum pool answers it, a real uWSGI never sees more than plain uwsgi.
        negotiate: true,
        connectTimeoutMs: config.proxy.connectTimeout * 1000,
        readTimeoutMs: config.proxy.readTimeout * 1000,
      }),
      inflight: 0,
      failures: 0,
      downUntil: 0,
    }));
    this.label = this.#servers.map((s) => s.client.label).join(',');
  }

  /** Health per server for metrics and stats. */
  health(): Array<{ target: string; up: boolean; inflight: number }> {
    const now = Date.now();
    return this.#servers.map((s) => ({ target: s.client.label, up: s.downUntil <= now, inflight: s.inflight }));
  }

  #pick(exclude: Set<Server>): Server | null {
    const now = Date.now();
    let best: Server | null = null;
    const n = this.#servers.length;
    for (let k = 0; k < n; k++) {
      const s = this.#servers[(this.#rr + k) % n]!;
      if (exclude.has(s) || s.downUntil > now) continue;
      if (!best || s.inflight < best.inflight) best = s;
    }
    this.#rr = (this.#rr + 1) % n;
    // All down: try the one that failed longest ago rather than refusing outright (nginx does too).
    if (!best) for (const s of this.#servers) if (!exclude.has(s) && (!best || s.downUntil < best.downUntil)) best = s;
    return best;
  }

  async handle(ctx: ProxyContext, body: RequestBody | null): Promise<void> {
    const tried = new Set<Server>();
    for (;;) {
      const s = this.#pick(tried);
      if (!s) throw new UpstreamUnreachable(this.label, 'no server left to try');
      tried.add(s);
      ctx.upstreamLabel = s.client.label;
      s.inflight++;
      try {
        await uwsgiExchange(s.client, ctx, body, { joinRepeated: true });
        s.failures = 0;
        return;
      } catch (err) {
        const e = err as StratumError;
        // Passive health: a server that refuses or resets is out for fail_timeout.
        if (e.code === 'STRATUM_ERR_UPSTREAM_UNREACHABLE' || e.code === 'STRATUM_ERR_UPSTREAM_RESET') {
          if (++s.failures >= this.maxFails) s.downUntil = Date.now() + this.failTimeoutMs;
        }
        // Retry on another server only when the request was never sent (refused connection).
        const neverSent = e.code === 'STRATUM_ERR_UPSTREAM_UNREACHABLE';
        if (!neverSent || ctx.res.headersSent || tried.size >= this.#servers.length) throw e;
      } finally {
        s.inflight--;
      }
    }
  }

  close(): void {
    for (const s of this.#servers) s.client.close();
  }
}
