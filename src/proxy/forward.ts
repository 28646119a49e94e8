// What the front proxy changes on the way through, for every upstream kind: hop-by-hop headers
// are dropped (RFC 9110 §7.6.1, plus any named in Connection), X-Forwarded-For/-Proto/-Host and
// X-Request-Id are added, and for uwsgi targets the request becomes CGI-style vars exactly as
// nginx's `include uwsgi_params` builds them.

import type { IncomingMessage } from 'node:http';
import type { UwsgiVars } from '../uwsgi/codec.ts';

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'proxy-authenticate',
  'proxy-authorization',
]);

export interface ForwardInfo {
  requestId: string;
  clientAddress: string;
  clientPort: number;
  scheme: 'http' | 'https';
  serverPort: number;
  /** The request body length to announce, or -1 when there is none (set when the request is dispatched). */
  contentLength: number;
  /** Tracing is on: the client's traceparent/tracestate are replaced by our span's. */
  replaceTrace: boolean;
}

function connectionTokens(req: IncomingMessage): Set<string> | null {
  const c = req.headers.connection;
  if (!c) return null;
  return new Set(
    c
      .toLowerCase()
      .split(',')
      .map((t) => t.trim())
      .filter(Boolean),
  );
}

function isDropped(lower: string, extra: Set<string> | null, replaceTrace: boolean): boolean {
  return (
    HOP_BY_HOP.has(lower) ||
    (extra !== null && extra.has(lower)) ||
    (replaceTrace && (lower === 'traceparent' || lower === 'tracestate')) ||
    lower === 'x-forwarded-for' ||
    lower === 'x-forwarded-proto' ||
    lower === 'x-forwarded-host' ||
    lower === 'x-request-id' ||
    lower === 'content-length'
  );
}

function forwardedFor(req: IncomingMessage, client: string): string {
  const prior = req.headers['x-forwarded-for'];
  return prior ? `${Array.isArray(prior) ? prior.join(', ') : prior}, ${client}` : client;
}

/** Request headers for an HTTP upstream, as a flat [name, value, ...] list. */
export function httpRequestHeaders(req: IncomingMessage, f: ForwardInfo, extra: string[] = []): string[] {
  const out: string[] = [];
  const drop = connectionTokens(req);
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    if (!isDropped(raw[i]!.toLowerCase(), drop, f.replaceTrace)) out.push(raw[i]!, raw[i + 1]!);
  }
  out.push('x-forwarded-for', forwardedFor(req, f.clientAddress));
  out.push('x-forwarded-proto', f.scheme);
  out.push('x-forwarded-host', req.headers.host ?? '');
  out.push('x-request-id', f.requestId);
  if (f.contentLength >= 0) out.push('content-length', String(f.contentLength));
  for (let i = 0; i < extra.length; i++) out.push(extra[i]!);
  return out;
}

/**
 * uwsgi vars for a request, as nginx's uwsgi_params would send them. With `joinRepeated`,
 * repeated headers become one var (", "-joined; "; " for Cookie), as nginx ≥ 1.23 does: a WSGI
 * environ is a dict and would keep only the last of repeated vars. Our own workers get them
 * as they came.
 */
export function uwsgiVars(req: IncomingMessage, f: ForwardInfo, extra: string[] = [], joinRepeated = false): UwsgiVars {
  const url = req.url ?? '/';
  const q = url.indexOf('?');
  const rawPath = q >= 0 ? url.slice(0, q) : url;
  const host = req.headers.host ?? '';
  const colon = host.lastIndexOf(':');
  const serverName = colon > 0 && !host.endsWith(']') ? host.slice(0, colon) : host;
  const vars: UwsgiVars = [
    'REQUEST_METHOD',
    req.method ?? 'GET',
    'REQUEST_URI',
    url,
    'PATH_INFO',
    decodePathBytes(rawPath),
    'QUERY_STRING',
    q >= 0 ? url.slice(q + 1) : '',
    'SERVER_PROTOCOL',
    `HTTP/${req.httpVersion}`,
    'REQUEST_SCHEME',
    f.scheme,
    'REMOTE_ADDR',
    f.clientAddress,
    'REMOTE_PORT',
    String(f.clientPort),
    'SERVER_NAME',
    serverName,
    'SERVER_PORT',
    String(f.serverPort),
  ];
  if (f.scheme === 'https') vars.push('HTTPS', 'on');
  if (f.contentLength >= 0) vars.push('CONTENT_LENGTH', String(f.contentLength));
  const drop = connectionTokens(req);
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    const lower = raw[i]!.toLowerCase();
    if (lower === 'content-type') {
      vars.push('CONTENT_TYPE', raw[i + 1]!);
      continue;
    }
    if (isDropped(lower, drop, f.replaceTrace)) continue;
    const name = headerVar(lower);
    if (joinRepeated) {
      let at = -1;
      for (let k = 0; k < vars.length; k += 2) if (vars[k] === name) at = k;
      if (at >= 0) {
        vars[at + 1] += (lower === 'cookie' ? '; ' : ', ') + raw[i + 1]!;
        continue;
      }
    }
    vars.push(name, raw[i + 1]!);
  }
  vars.push('HTTP_X_FORWARDED_FOR', forwardedFor(req, f.clientAddress));
  vars.push('HTTP_X_FORWARDED_PROTO', f.scheme);
  vars.push('HTTP_X_FORWARDED_HOST', host);
  vars.push('HTTP_X_REQUEST_ID', f.requestId);
  for (let i = 0; i < extra.length; i++) vars.push(extra[i]!);
  return vars;
}

const varNames = new Map<string, string>();
function headerVar(lower: string): string {
  let v = varNames.get(lower);
  if (v === undefined) {
    v = `HTTP_${lower.toUpperCase().replaceAll('-', '_')}`;
    if (varNames.size < 1000) varNames.set(lower, v);
  }
  return v;
}

/**
 * Percent-decode a path into its bytes, held as a latin1 string (PATH_INFO carries the decoded
 * UTF-8 bytes, as nginx sends it). Malformed escapes stay as they are.
 */
export function decodePathBytes(p: string): string {
  if (!p.includes('%')) return p;
  let out = '';
  for (let i = 0; i < p.length; i++) {
    const c = p[i]!;
    if (c === '%' && i + 2 < p.length + 0 && /^[0-9a-fA-F]{2}$/.test(p.slice(i + 1, i + 3))) {
      out += String.fromCharCode(parseInt(p.slice(i + 1, i + 3), 16));
      i += 2;
    } else out += c;
  }
  return out;
}

/** Response headers from an upstream, minus hop-by-hop ones and our internal marker. */
export function responseHeaders(raw: string[], internal: string | null): string[] {
  const out: string[] = [];
  let drop: Set<string> | null = null;
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() === 'connection') {
      drop ??= new Set();
      for (const t of raw[i + 1]!.toLowerCase().split(',')) drop.add(t.trim());
    }
  }
  for (let i = 0; i < raw.length; i += 2) {
    const lower = raw[i]!.toLowerCase();
    if (HOP_BY_HOP.has(lower) || lower === internal || (drop !== null && drop.has(lower))) continue;
    out.push(raw[i]!, raw[i + 1]!);
  }
  return out;
}
