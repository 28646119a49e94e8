// The admin listener (uWSGI's stats server, nginx's stub_status, Traefik's API): health,
// stats, reload, metrics, recent traces and the dashboard. It binds 127.0.0.1 by default;
// exposing it takes an explicit address, and then a bearer token guards it (POST endpoints
// always need the token when one is set; /metrics can stay open for scrapers).
//
// A web page must not drive it either (the admin is often on a developer's loopback, with no
// token): every request must name the admin in its Host (an IP literal, localhost, or one of
// admin.allowedHosts) or gets 421, which stops DNS rebinding; a POST with a foreign Origin, a
// cross-site Sec-Fetch-Site or a non-JSON Content-Type (what an HTML form or a no-cors fetch sends)
// gets 403. Bound beyond loopback without a token, it serves only /metrics, /livez and /readyz.

import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';
import { parseAddress, type StratumConfig } from '../config/schema.ts';
import { AdminCrossSite, AdminExposed, AdminHostRefused, type StratumError } from '../errors.ts';
import { listenAt } from '../listen.ts';
import { createLogger, type Logger } from '../observability/log.ts';

// Not `import http from 'node:http'`: an ES import of node:http reads every export of the module,
// WebSocket and its events included, which loads Node's bundled undici (~3 MiB resident, npm run
// bench). getBuiltinModule hands over the CommonJS exports and leaves the lazy ones unread.
const http = process.getBuiltinModule('node:http');

export type AdminHandler = (req: IncomingMessage, res: ServerResponse, url: URL) => void | Promise<void>;

export interface AdminRoute {
  method: 'GET' | 'POST';
  path: string;
  /** Reachable without the token (liveness, readiness, and /metrics when metricsPublic). */
  public?: boolean;
  /** Match any path below `path` too. */
  prefix?: boolean;
  handler: AdminHandler;
}

export function sendJson(res: ServerResponse, status: number, value: unknown): void {
  const body = JSON.stringify(value);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
  });
  res.end(body);
}

function sendText(res: ServerResponse, status: number, text: string, extra: Record<string, string> = {}): void {
  res.writeHead(status, {
    'content-type': 'text/plain; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    ...extra,
  });
  res.end(text);
}

/** What an admin bound beyond loopback without a token still serves (scrapers and probes). */
const EXPOSED_PATHS = new Set(['/metrics', '/livez', '/readyz']);
/** A refusal of each kind is logged at most this often. */
const REFUSAL_LOG_MS = 60_000;

/** The host name of a Host header: port and IPv6 brackets stripped, lower case. */
function hostName(host: string): string {
  const h = host.trim().toLowerCase();
  if (h.startsWith('[')) {
    const end = h.indexOf(']');
    return end > 0 ? h.slice(1, end) : h;
  }
  const i = h.lastIndexOf(':');
  return i >= 0 ? h.slice(0, i) : h;
}

function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** The media type of a Content-Type header, lower case, parameters dropped. */
function mediaType(ct: string): string {
  return ct.split(';')[0]!.trim().toLowerCase();
}

export class AdminServer {
  readonly server: Server;
  #routes: AdminRoute[] = [];
  #token: Buffer | null;
  #config: StratumConfig;
  #log: Logger | null;
  /** Unix socket: no browser can reach it by a name, the Host check does not apply. */
  #unix: boolean;
  /** On a non-loopback address with no token: only EXPOSED_PATHS are served. */
  readonly exposed: boolean;
  #hosts: Set<string>;
  #anyHost: boolean;
  #lastRefusal = new Map<string, number>();

  constructor(config: StratumConfig, log: Logger | null = null) {
    this.#config = config;
    this.#log = log;
    this.#token = config.admin.token ? Buffer.from(config.admin.token) : null;
    const a = parseAddress(config.admin.listen, 'admin.listen');
    this.#unix = a.kind === 'unix';
    this.exposed = a.kind === 'tcp' && !isLoopbackHost(a.host.toLowerCase()) && this.#token === null;
    this.#hosts = new Set(['localhost', ...config.admin.allowedHosts]);
    if (a.kind === 'tcp' && !isIP(a.host)) this.#hosts.add(a.host.toLowerCase());
    this.#anyHost = this.#hosts.has('*');
    this.server = http.createServer({ maxHeaderSize: 16384, requestTimeout: 30_000 }, (req, res) => {
      Promise.resolve(this.#handle(req, res)).catch((err: Error) => {
        if (!res.headersSent) sendText(res, 500, `${err.message}\n`);
        else res.destroy();
      });
    });
  }

  add(route: AdminRoute): this {
    this.#routes.push(route);
    return this;
  }

  #authorized(req: IncomingMessage): boolean {
    if (!this.#token) return true;
    const h = req.headers.authorization ?? '';
    const given = Buffer.from(h.startsWith('Bearer ') ? h.slice(7) : '');
    return given.length === this.#token.length && timingSafeEqual(given, this.#token);
  }

  /**
   * The Host names the admin: an IP literal (a page cannot get a browser to send one that is not
   * the page's own origin, so no rebinding), localhost, the name it listens on, or allowedHosts.
   * No Host at all (HTTP/1.0 tools) is let through: browsers always send one.
   */
  #hostAllowed(req: IncomingMessage): boolean {
    const host = req.headers.host;
    if (this.#unix || this.#anyHost || host === undefined) return true;
    const name = hostName(host);
    return isIP(name) !== 0 || this.#hosts.has(name) || name.endsWith('.localhost');
  }

  /** Why a state-changing request looks like it came from another site, or null. */
  #crossSite(req: IncomingMessage): string | null {
    const origin = req.headers.origin;
    if (origin !== undefined && origin !== `http://${req.headers.host}` && origin !== `https://${req.headers.host}`) {
      return `foreign Origin ${JSON.stringify(origin)}`;
    }
    const site = req.headers['sec-fetch-site'];
    if (site !== undefined && site !== 'same-origin' && site !== 'none') return `Sec-Fetch-Site: ${site}`;
    const ct = req.headers['content-type'];
    // text/plain, form and multipart bodies are what a page may send anywhere without a preflight.
    if (ct !== undefined && mediaType(ct) !== 'application/json') {
      return `Content-Type ${JSON.stringify(ct)} is not JSON`;
    }
    return null;
  }

  #refuse(req: IncomingMessage, res: ServerResponse, e: StratumError): void {
    const now = Date.now();
    if (now - (this.#lastRefusal.get(e.code) ?? 0) >= REFUSAL_LOG_MS) {
      this.#lastRefusal.set(e.code, now);
      const { host, origin } = req.headers;
      const fields = { code: e.code, method: req.method, path: req.url, host, origin };
      this.#logger().info(fields, `${e.message} (more like it are not logged for 60 s)`);
    }
    res.setHeader('connection', 'close');
    sendText(res, e.statusCode, `${e.code}: ${e.message}\n`, { 'cache-control': 'no-store' });
  }

  #logger(): Logger {
    this.#log ??= createLogger(this.#config.log.level);
    return this.#log;
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!this.#hostAllowed(req)) return this.#refuse(req, res, new AdminHostRefused(req.headers.host ?? ''));
    const url = new URL(req.url ?? '/', 'http://admin');
    const path = url.pathname;
    const candidates = this.#routes.filter((r) => r.path === path || (r.prefix && path.startsWith(r.path)));
    if (candidates.length === 0) return sendText(res, 404, 'Not Found\n');
    const route = candidates.find((r) => r.method === req.method || (r.method === 'GET' && req.method === 'HEAD'));
    if (!route) {
      const allow = [...new Set(candidates.map((r) => r.method))].join(', ');
      return sendText(res, 405, 'Method Not Allowed\n', { allow });
    }
    if (this.exposed && !EXPOSED_PATHS.has(url.pathname)) return this.#refuse(req, res, new AdminExposed(url.pathname));
    if (route.method === 'POST') {
      const why = this.#crossSite(req);
      if (why) return this.#refuse(req, res, new AdminCrossSite(why));
    }
    const isPublic = route.public || (route.path === '/metrics' && this.#config.admin.metricsPublic);
    if (!isPublic && !this.#authorized(req)) {
      return sendText(res, 401, 'Unauthorized\n', { 'www-authenticate': 'Bearer realm="stratum"' });
    }
    await route.handler(req, res, url);
  }

  async listen(): Promise<string> {
    const url = await listenAt(this.server, this.#config.admin.listen, 'admin.listen');
    if (this.exposed) {
      const log = this.#logger();
      log.warn(
        { code: AdminExposed.code, admin: url },
        `the admin listens on ${this.#config.admin.listen}, beyond loopback, without admin.token: it serves only ` +
          '/metrics, /livez and /readyz there (403 for the rest); set admin.token to use the others',
      );
      log.flush();
    }
    return url;
  }


  close(): void {
    this.server.close();
    this.server.closeAllConnections();
  }
}
