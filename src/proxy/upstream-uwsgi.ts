// uwsgi upstreams: the exchange of one request over a UwsgiClient (used by the pool route in the
// master topology too, upstream-pool.ts), and external uwsgi servers (a real uWSGI): a group of
// them balanced, retried and health-checked as nginx's `upstream` block (balancer.ts, health.ts).

import type { Address, StratumConfig, Route, Target } from '../config/schema.ts';
import { UpstreamNextServer } from '../errors.ts';
import { UwsgiClient } from '../uwsgi/client.ts';
import type { UwsgiVars } from '../uwsgi/codec.ts';
import type { ResponseHead } from '../uwsgi/response.ts';
import { KEEPALIVE_HEADER, TIMING_HEADER } from '../uwsgi/server.ts';
import { offerCompression } from './compress.ts';
import { Balancer, serveFromGroup, type Attempt, type GroupOptions, type PeerHealth } from './balancer.ts';
import { groupOptions, HealthChecker } from './health.ts';
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
  opts: { joinRepeated: boolean; extraVars?: string[]; next?: Attempt },
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
          // An upstream group drops a 502/503 for its next server before a byte goes to the client.
          if (opts.next?.nextOnStatus(head.statusCode)) {
            settle();
            exchange.abort();
            reject(new UpstreamNextServer(client.label, head.statusCode));
            return;
          }
          if (res.destroyed) return;
          whole = head.framing === 'length' && head.contentLength <= 16384 ? head.contentLength : -1;
          sendHead(ctx, head.statusCode, head.statusMessage, headers);
        },
        onBody(chunk) {
          if (settled) return true;
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
          if (settled) return;
          settle();
          if (!ended) res.end();
          resolve();
        },
        onError(err) {
          if (settled) return;
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

/** A GET for `path` as uwsgi vars, as the front would send it: what an active health check asks a uwsgi server. */
export function checkVars(path: string, client: UwsgiClient): UwsgiVars {
  const q = path.indexOf('?');
  const a = client.address;
  const host = a.kind === 'tcp' ? a.host : 'localhost';
  const port = a.kind === 'tcp' ? String(a.port) : '80';
  return [
    'REQUEST_METHOD',
    'GET',
    'REQUEST_URI',
    path,
    'PATH_INFO',
    decodeURIComponent(q >= 0 ? path.slice(0, q) : path),
    'QUERY_STRING',
    q >= 0 ? path.slice(q + 1) : '',
    'SERVER_PROTOCOL',
    'HTTP/1.1',
    'REQUEST_SCHEME',
    'http',
    'REMOTE_ADDR',
    '127.0.0.1',
    'REMOTE_PORT',
    '0',
    'SERVER_NAME',
    host,
    'SERVER_PORT',
    port,
    'HTTP_HOST',
    a.kind === 'tcp' ? `${host.includes(':') ? `[${host}]` : host}:${port}` : host,
    'HTTP_USER_AGENT',
    'stratum-health-check',
  ];
}

/** One GET over uwsgi; resolves with the answer's status (the body is read and dropped). */
export function probeUwsgi(client: UwsgiClient, path: string, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    let status = 0;
    const timer = setTimeout(() => {
      exchange.abort();
      reject(new Error(`no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    const exchange = client.request(
      checkVars(path, client),
      null,
      {
        onConnect() {},
        onHead(head) {
          status = head.statusCode;
        },
        onBody: () => true,
        onComplete() {
          clearTimeout(timer);
          resolve(status);
        },
        onError(err) {
          clearTimeout(timer);
          reject(err);
        },
      },
      { isHead: false, readTimeoutMs: timeoutMs },
    );
  });
}

/** A list without a route's `upstream` section (another app's pool): round-robin, nginx's defaults. */
const PLAIN_GROUP: GroupOptions = {
  policy: 'round-robin',
  hashKey: 'client',
  maxFails: 1,
  failTimeoutMs: 10_000,
  tries: 0,
  tryTimeoutMs: 0,
};

/** A route's uwsgi servers: one, or a group balanced, retried and checked as nginx's `upstream`. */
export class ExternalUwsgiUpstream implements Upstream {
  readonly kind = 'uwsgi' as const;
  readonly label: string;
  #group: Balancer<UwsgiClient>;
  #checker: HealthChecker<UwsgiClient> | null = null;
  #routed: boolean;

  /** `servers`: a route's uwsgi targets (with their weight and backup), or plain addresses. */
  constructor(servers: Array<Target | Address>, config: StratumConfig, route?: Route) {
    const specs = servers.map((s) => {
      const t = s.kind === 'tcp' || s.kind === 'unix' ? { kind: 'uwsgi' as const, raw: '', address: s } : s;
      if (t.kind !== 'uwsgi') throw new TypeError(`not a uwsgi target: ${t.raw}`);
      const client = new UwsgiClient(t.address, {
        // Offer keep-alive: a Stratum pool answers it, a real uWSGI never sees more than plain uwsgi.
        negotiate: true,
        connectTimeoutMs: config.proxy.connectTimeout * 1000,
        readTimeoutMs: config.proxy.readTimeout * 1000,
      });
      return { label: client.label, weight: t.weight ?? 1, backup: t.backup ?? false, target: client };
    });
    this.#routed = route !== undefined;
    this.#group = new Balancer(specs, route ? groupOptions(route) : PLAIN_GROUP);
    this.label = specs.map((s) => s.label).join(',');
    const hc = route?.upstream.healthCheck;
    if (hc?.enabled) this.#checker = new HealthChecker(this.#group, hc, (c, path, ms) => probeUwsgi(c, path, ms));
  }

  /** Each server's state, for metrics, /stats and the dashboard. */
  health(): PeerHealth[] {
    return this.#group.health();
  }

  handle(ctx: ProxyContext, body: RequestBody | null): Promise<void> {
    offerCompression(ctx);
    return serveFromGroup(this.#group, this.label, ctx, body, (client, c, b, next) =>
      uwsgiExchange(client, c, b, { joinRepeated: true, next }),
    );
  }

  retire(): void {
    this.#checker?.close();
    // Built for a route: its own clients (UwsgiClient.close() drops idle connections, busy ones
    // close when their exchange ends). Without a route it is another app's pool, which the worker
    // keeps and may hand to the next table.
    if (this.#routed) for (const p of this.#group.peers) p.target.close();
  }

  close(): void {
    this.#checker?.close();
    for (const p of this.#group.peers) p.target.close();
  }
}
