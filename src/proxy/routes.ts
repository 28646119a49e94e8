// Route matching (nginx `server_name` + `location` prefix; Traefik's routers): the most
// specific host wins (exact, then wildcard suffix, then any), then the longest path prefix.
// Prefixes match on segment boundaries: "/api" matches "/api", "/api/x", "/api?q" — not "/apix".
// They match the normalised path, as nginx's `location` does, so a prefix route can neither be
// escaped ("/rec/../x" is "/x") nor bypassed ("/%72ec/x", "//rec/x", "/x/../rec" are under "/rec");
// the raw target still goes upstream unchanged.

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

  /** Each entry's prefix, normalised like the paths it is matched against. */
  #prefixes = new Map<RouteEntry<U>, string>();

  constructor(entries: RouteEntry<U>[]) {
    this.#entries = [...entries].sort(
      (a, b) => hostRank(b.route.host) - hostRank(a.route.host) || b.route.path.length - a.route.path.length,
    );
    for (const e of this.#entries) this.#prefixes.set(e, normalisePath(e.route.path));
  }

  get entries(): readonly RouteEntry<U>[] {
    return this.#entries;
  }

  match(hostHeader: string | undefined, url: string): RouteEntry<U> | null {
    const host = stripPort(hostHeader ?? '').toLowerCase();
    const path = normalisePath(pathOf(url));
    for (const e of this.#entries) {
      if (!hostMatches(e.route.host, host)) continue;
      if (pathMatches(this.#prefixes.get(e)!, path)) return e;
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

/** `path` is normalised and has no query. */
function pathMatches(prefix: string, path: string): boolean {
  if (prefix === '/' || prefix === '') return true;
  if (!path.startsWith(prefix)) return false;
  if (path.length === prefix.length || prefix.endsWith('/')) return true;
  return path.charCodeAt(prefix.length) === 47; /* / */
}

/**
 * The path of a request target: origin-form up to "?" (or "#", which a client should not send);
 * absolute-form ("http://host/p", sent to proxies) gives its path; anything else ("*") is "/".
 */
export function pathOf(target: string): string {
  let start = 0;
  if (target.charCodeAt(0) !== 47 /* / */) {
    const scheme = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/?#]*/.exec(target);
    if (!scheme) return '/';
    start = scheme[0].length;
  }
  let end = target.length;
  for (let i = start; i < end; i++) {
    const c = target.charCodeAt(i);
    if (c === 63 /* ? */ || c === 35 /* # */) end = i;
  }
  const path = target.slice(start, end);
  return path === '' ? '/' : path;
}

/** RFC 3986 §2.3 unreserved: ALPHA / DIGIT / "-" / "." / "_" / "~". */
function isUnreserved(c: number): boolean {
  const alnum = (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || (c >= 48 && c <= 57);
  return alnum || c === 45 || c === 46 || c === 95 || c === 126;
}

/**
 * The path as routing sees it (nginx's normalised $uri, RFC 3986 §6.2.2): percent-encoded
 * unreserved characters decoded ("%72" is "r", "%2e" is "."), then repeated slashes merged
 * (merge_slashes) and "." / ".." segments resolved (§5.2.4; ".." above the root stays at the
 * root). Reserved characters stay encoded: "%2F" is not a segment boundary.
 */
export function normalisePath(path: string): string {
  // Most paths need nothing: no "%", no "//", no dot segment.
  if (!/%|\/\/|\/\.(?:\.)?(?:\/|$)/.test(path)) return path;
  let decoded = path;
  if (path.includes('%')) {
    decoded = path.replace(/%([0-9A-Fa-f]{2})/g, (m, hex: string) => {
      const c = parseInt(hex, 16);
      return isUnreserved(c) ? String.fromCharCode(c) : m.toUpperCase();
    });
  }
  const out: string[] = [];
  const segments = decoded.split('/');
  // segments[0] is what precedes the leading "/" (empty for origin-form paths).
  for (let i = 1; i < segments.length; i++) {
    const seg = segments[i]!;
    const last = i === segments.length - 1;
    if (seg === '.' || seg === '..') {
      if (seg === '..') out.pop();
      // A trailing dot segment leaves a directory: "/a/b/.." is "/a/".
      if (last) out.push('');
      continue;
    }
    if (seg === '' && !last) continue; // merged slash
    out.push(seg);
  }
  return `/${out.join('/')}`;
}

function stripPort(host: string): string {
  if (host.startsWith('[')) {
    const end = host.indexOf(']');
    return end > 0 ? host.slice(1, end) : host;
  }
  const i = host.indexOf(':');
  return i >= 0 ? host.slice(0, i) : host;
}
