// Route matching (nginx `server_name` + `location` prefix; Traefik's routers): the most
// specific host wins (exact, then wildcard suffix, then any), then the longest path prefix.
// Prefixes match on segment boundaries: "/api" matches "/api", "/api/x", "/api?q" — not "/apix".

import type { Route } from '../config/schema.ts';

export interface RouteEntry<U> {
  route: Route;
  index: number;
  upstream: U;
  /** Label for metrics: bounded cardinality (one per configured route). */
  label: string;
}

export class RouteTable<U> {
  #entries: RouteEntry<U>[];

  constructor(entries: RouteEntry<U>[]) {
    this.#entries = [...entries].sort((a, b) => hostRank(b.route.host) - hostRank(a.route.host) || b.route.path.length - a.route.path.length);
  }

  get entries(): readonly RouteEntry<U>[] {
    return this.#entries;
  }

  match(hostHeader: string | undefined, url: string): RouteEntry<U> | null {
    const host = stripPort(hostHeader ?? '').toLowerCase();
    for (const e of this.#entries) {
      if (!hostMatches(e.route.host, host)) continue;
      if (pathMatches(e.route.path, url)) return e;
    }
    return null;
  }
}

function hostRank(h: string | null): number {
  if (h === null) return 0;
  return h.startsWith('*.') ? 1 : 2;
}

function hostMatches(pattern: string | null, host: string): boolean {
  if (pattern === null) return true;
  const p = pattern.toLowerCase();
  if (p.startsWith('*.')) return host.endsWith(p.slice(1)) && host.length > p.length - 1;
  return p === host;
}

function pathMatches(prefix: string, url: string): boolean {
  if (prefix === '/' || prefix === '') return true;
  if (!url.startsWith(prefix)) return false;
  if (url.length === prefix.length || prefix.endsWith('/')) return true;
  const next = url.charCodeAt(prefix.length);
  return next === 47 /* / */ || next === 63 /* ? */;
}

function stripPort(host: string): string {
  if (host.startsWith('[')) {
    const end = host.indexOf(']');
    return end > 0 ? host.slice(1, end) : host;
  }
  const i = host.indexOf(':');
  return i >= 0 ? host.slice(0, i) : host;
}
