// The admin listener (uWSGI's stats server, nginx's stub_status, Traefik's API): health,
// stats, reload, metrics, recent traces and the dashboard. It binds 127.0.0.1 by default;
// exposing it takes an explicit address, and then a bearer token guards it (POST endpoints
// always need the token when one is set; /metrics can stay open for scrapers).

import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { timingSafeEqual } from 'node:crypto';
import type { StratumConfig } from '../config/schema.ts';
import { listenAt } from '../listen.ts';

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
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
  res.end(body);
}

function sendText(res: ServerResponse, status: number, text: string, extra: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(text), ...extra });
  res.end(text);
}

export class AdminServer {
  readonly server: Server;
  #routes: AdminRoute[] = [];
  #token: Buffer | null;
  #config: StratumConfig;

  constructor(config: StratumConfig) {
    this.#config = config;
    this.#token = config.admin.token ? Buffer.from(config.admin.token) : null;
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

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://admin');
    const candidates = this.#routes.filter((r) => r.path === url.pathname || (r.prefix && url.pathname.startsWith(r.path)));
    if (candidates.length === 0) return sendText(res, 404, 'Not Found\n');
    const route = candidates.find((r) => r.method === req.method || (r.method === 'GET' && req.method === 'HEAD'));
    if (!route) return sendText(res, 405, 'Method Not Allowed\n', { allow: [...new Set(candidates.map((r) => r.method))].join(', ') });
    const isPublic = route.public || (route.path === '/metrics' && this.#config.admin.metricsPublic);
    if (!isPublic && !this.#authorized(req)) return sendText(res, 401, 'Unauthorized\n', { 'www-authenticate': 'Bearer realm="stratum"' });
    await route.handler(req, res, url);
  }

  listen(): Promise<string> {
    return listenAt(this.server, this.#config.admin.listen, 'admin.listen');
  }


  close(): void {
    this.server.close();
    this.server.closeAllConnections();
  }
}
