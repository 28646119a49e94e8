// What the front proxy changes on the way through, for every upstream kind: hop-by-hop headers
// are dropped (RFC 9110 §7.6.1, plus any named in Connection), X-Forwarded-For/-Proto/-Host and
// X-Request-Id are added, and for uwsgi targets the request becomes CGI-style vars exactly as
// nginx's `include uwsgi_params` builds them.

import type { IncomingMessage } from 'node:http';
import { BlockList, isIPv4, isIPv6, type Socket } from 'node:net';
import type { StratumConfig } from '../config/schema.ts';
import type { UwsgiVars } from '../uwsgi/codec.ts';
import { proxyHeaderOf } from './proxy-protocol.ts';

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
  /** The real client: the peer, or the right-most untrusted X-Forwarded-For entry behind trusted proxies. */
  clientAddress: string;
  clientPort: number;
  /** The client's scheme: the connection's, or X-Forwarded-Proto's from a trusted peer. */
  scheme: 'http' | 'https';
  serverPort: number;
  /** Who sent us the request: the socket's peer, or the PROXY header's source ('' for a Unix socket). */
  peerAddress: string;
  /** The X-Forwarded-* values passed on: appended to (For) and kept (Proto, Host) from a trusted peer. */
  forwardedFor: string;
  forwardedProto: string;
  forwardedHost: string;
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

/** Request headers for an HTTP upstream, as a flat [name, value, ...] list. */
export function httpRequestHeaders(req: IncomingMessage, f: ForwardInfo, extra: string[] = []): string[] {
  const out: string[] = [];
  const drop = connectionTokens(req);
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    if (!isDropped(raw[i]!.toLowerCase(), drop, f.replaceTrace)) out.push(raw[i]!, raw[i + 1]!);
  }
  out.push('x-forwarded-for', f.forwardedFor);
  out.push('x-forwarded-proto', f.forwardedProto);
  out.push('x-forwarded-host', f.forwardedHost);
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
  // uWSGI's wsgi.url_scheme comes from HTTPS (on/1), as nginx's uwsgi_params sends it.
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
  vars.push('HTTP_X_FORWARDED_FOR', f.forwardedFor);
  vars.push('HTTP_X_FORWARDED_PROTO', f.forwardedProto);
  vars.push('HTTP_X_FORWARDED_HOST', f.forwardedHost);
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

// --- the real client (trusted proxies) ---------------------------------------------------------

/** proxy.trustedProxies compiled: CIDRs (IPv4, IPv6; an IPv4-mapped peer matches IPv4 ones) and `unix:`. */
export interface Trust {
  /** IPv4 networks as [network, mask], compared as integers: BlockList.check costs ~1 µs a call. */
  v4: Array<[number, number]>;
  v6: BlockList;
  hasV6: boolean;
  unix: boolean;
  /** Nothing is trusted: every peer is the client (the common case, kept cheap). */
  none: boolean;
}

/** `10.0.0.0/8`, `192.0.2.7`, `fd00::/8`, `::1` or `unix:`; null when it is none of those. */
export function parseTrustedProxy(
  spec: string,
): { kind: 'unix' } | { kind: 'ipv4' | 'ipv6'; net: string; prefix: number } | null {
  const s = spec.trim();
  if (s === 'unix:') return { kind: 'unix' };
  const slash = s.indexOf('/');
  const net = slash < 0 ? s : s.slice(0, slash);
  const kind = isIPv4(net) ? 'ipv4' : isIPv6(net) ? 'ipv6' : null;
  if (kind === null) return null;
  const max = kind === 'ipv4' ? 32 : 128;
  if (slash < 0) return { kind, net, prefix: max };
  const p = s.slice(slash + 1);
  if (!/^\d{1,3}$/.test(p) || Number(p) > max) return null;
  return { kind, net, prefix: Number(p) };
}

export function compileTrust(specs: readonly string[]): Trust {
  const trust: Trust = { v4: [], v6: new BlockList(), hasV6: false, unix: false, none: specs.length === 0 };
  for (const spec of specs) {
    const t = parseTrustedProxy(spec);
    if (t === null) throw new TypeError(`not a CIDR: ${spec}`); // the schema refused it already
    if (t.kind === 'unix') trust.unix = true;
    else if (t.kind === 'ipv4') {
      const mask = t.prefix === 0 ? 0 : (0xffffffff << (32 - t.prefix)) >>> 0;
      trust.v4.push([(ipv4Number(t.net) & mask) >>> 0, mask]);
    } else {
      trust.v6.addSubnet(t.net, t.prefix, 'ipv6');
      trust.hasV6 = true;
    }
  }
  return trust;
}

/** A dotted quad as an unsigned 32-bit number (the address is known to be valid IPv4). */
function ipv4Number(a: string): number {
  let n = 0;
  let part = 0;
  for (let i = 0; i < a.length; i++) {
    const c = a.charCodeAt(i);
    if (c === 46 /* . */) {
      n = n * 256 + part;
      part = 0;
    } else part = part * 10 + (c - 48);
  }
  return n * 256 + part;
}

export function isTrusted(trust: Trust, address: string): boolean {
  if (trust.none) return false;
  if (address === '') return trust.unix;
  let v4 = address;
  if (address.includes(':')) {
    // A dual-stack listener's IPv4 client is ::ffff:a.b.c.d.
    if (!address.startsWith('::ffff:') || !isIPv4(address.slice(7)))
      return trust.hasV6 && trust.v6.check(address, 'ipv6');
    v4 = address.slice(7);
  }
  const n = ipv4Number(v4);
  for (const [net, mask] of trust.v4) if ((n & mask) >>> 0 === net) return true;
  return false;
}

const compiled = new WeakMap<object, Trust>();
function trustOf(proxy: StratumConfig['proxy']): Trust {
  let t = compiled.get(proxy);
  if (t === undefined) compiled.set(proxy, (t = compileTrust(proxy.trustedProxies)));
  return t;
}

/**
 * One X-Forwarded-For entry as an address: bare IPv4/IPv6, or with a port (`192.0.2.1:4711`,
 * `[2001:db8::1]:4711`, as some balancers write it); null for anything else (`unknown`, garbage).
 */
export function forwardedAddress(entry: string): string | null {
  const e = entry.trim();
  if (isIPv4(e) || isIPv6(e)) return e;
  if (e.startsWith('[')) {
    const close = e.indexOf(']');
    const inner = close > 0 ? e.slice(1, close) : '';
    return isIPv6(inner) && /^(:\d{1,5})?$/.test(e.slice(close + 1)) ? inner : null;
  }
  const colon = e.indexOf(':');
  if (colon > 0 && e.indexOf(':', colon + 1) < 0 && /^\d{1,5}$/.test(e.slice(colon + 1))) {
    const v4 = e.slice(0, colon);
    return isIPv4(v4) ? v4 : null;
  }
  return null;
}

/**
 * The real client of a request from `peer`: the peer itself unless it is trusted; behind trusted
 * proxies the right-most X-Forwarded-For entry that is not trusted (nginx's
 * `real_ip_recursive on`). The walk stops at an entry that is not an address, keeping the last good
 * one; when every entry is trusted, the left-most is the client.
 */
export function realClient(trust: Trust, peer: string, xff: string | undefined): string {
  if (!isTrusted(trust, peer) || !xff) return peer;
  let client = peer;
  let end = xff.length;
  while (end > 0) {
    const start = xff.lastIndexOf(',', end - 1);
    const addr = forwardedAddress(xff.slice(start + 1, end));
    if (addr === null) break;
    client = addr;
    if (!isTrusted(trust, addr)) break;
    end = start < 0 ? 0 : start;
  }
  return client;
}

/** The first of a possibly comma-joined header value, as Express reads X-Forwarded-Proto/-Host. */
function firstValue(v: string): string {
  const comma = v.indexOf(',');
  return (comma < 0 ? v : v.slice(0, comma)).trim();
}

function oneHeader(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v.join(', ') : v;
}

const PEER = Symbol('stratum.peer');
interface Peer {
  address: string;
  port: number;
  https: boolean;
  /** The socket's own remote end (no PROXY header said otherwise). */
  own: boolean;
  /** Whether `trustedBy` trusts the peer: decided once per connection (and again after a reload). */
  trustedBy: Trust | null;
  trusted: boolean;
}
type PeerSocket = Socket & { encrypted?: boolean; [PEER]?: Peer };

/**
 * Who is at the other end of this connection: the socket's peer, or the PROXY header's source
 * (the listener takes the PROXY protocol, so its peers are the balancers that write it). Read once
 * per connection, before presentClient() may have dressed the socket as the real client.
 */
function peerOf(socket: PeerSocket): Peer {
  let p = socket[PEER];
  if (p !== undefined) return p;
  const pp = proxyHeaderOf(socket);
  const https = socket.encrypted === true || pp?.ssl === true;
  const own = !pp?.proxied;
  p = {
    address: own ? (socket.remoteAddress ?? '') : pp!.family === 'unix' ? '' : pp!.sourceAddress!,
    port: own ? (socket.remotePort ?? 0) : pp!.sourcePort,
    https,
    own,
    trustedBy: null,
    trusted: false,
  };
  socket[PEER] = p;
  return p;
}

/** What the front passes on about a request (X-Forwarded-*, REMOTE_ADDR, the scheme). */
export function forwardInfo(
  req: IncomingMessage,
  socket: Socket,
  requestId: string,
  proxy: StratumConfig['proxy'],
): ForwardInfo {
  const peer = peerOf(socket as PeerSocket);
  const trust = trustOf(proxy);
  const own = peer.https ? 'https' : 'http';
  const host = req.headers.host ?? '';
  const f: ForwardInfo = {
    requestId,
    clientAddress: peer.address,
    clientPort: peer.port,
    scheme: own,
    serverPort: socket.localPort ?? 0,
    peerAddress: peer.address,
    forwardedFor: peer.address,
    forwardedProto: own,
    forwardedHost: host,
    contentLength: -1,
    replaceTrace: false,
  };
  if (peer.trustedBy !== trust) {
    peer.trusted = isTrusted(trust, peer.address);
    peer.trustedBy = trust;
  }
  if (!peer.trusted) return f;
  const xff = oneHeader(req.headers['x-forwarded-for']);
  const xfp = oneHeader(req.headers['x-forwarded-proto']);
  const xfh = oneHeader(req.headers['x-forwarded-host']);
  if (xff) {
    f.forwardedFor = `${xff}, ${peer.address}`;
    const client = realClient(trust, peer.address, xff);
    if (client !== peer.address) [f.clientAddress, f.clientPort] = [client, 0];
  }
  if (xfp) {
    f.forwardedProto = xfp;
    const p = firstValue(xfp).toLowerCase();
    if (p === 'https' || p === 'http') f.scheme = p;
  }
  if (xfh) f.forwardedHost = xfh;
  return f;
}

const CLIENT = Symbol('stratum.client');
interface Presented {
  remoteAddress: string | undefined;
  remotePort: number | undefined;
  remoteFamily: string | undefined;
  encrypted: boolean;
}
type DressedSocket = PeerSocket & { [CLIENT]?: Presented };

/**
 * An app in this process reads the client from its request's socket (Express's req.ip, Fastify's
 * request.ip and protocol, a fetch handler's info): the socket is dressed as the real client for
 * the request in flight. Requests on a connection are served one at a time, so this holds for the
 * request's whole life. The first time, the four properties become getters of a per-socket slot
 * (defining properties on every request cost ~14 µs); after that each request only fills the slot.
 */
export function presentClient(socket: Socket, f: ForwardInfo): void {
  const s = socket as DressedSocket;
  let c = s[CLIENT];
  if (c === undefined) {
    const peer = peerOf(s);
    const same = peer.own && f.clientAddress === peer.address && f.clientPort === peer.port;
    if (same && f.scheme === (s.encrypted === true ? 'https' : 'http')) return;
    c = s[CLIENT] = { remoteAddress: undefined, remotePort: undefined, remoteFamily: undefined, encrypted: false };
    try {
      for (const key of ['remoteAddress', 'remotePort', 'remoteFamily', 'encrypted'] as const) {
        Object.defineProperty(s, key, {
          get(this: DressedSocket) {
            return this[CLIENT]![key];
          },
          configurable: true,
          enumerable: false,
        });
      }
    } catch {
      // A socket that refuses own properties: the app sees the peer.
    }
  }
  const unix = f.clientAddress === '';
  c.remoteAddress = unix ? undefined : f.clientAddress;
  c.remotePort = unix ? undefined : f.clientPort;
  c.remoteFamily = unix ? undefined : f.clientAddress.includes(':') ? 'IPv6' : 'IPv4';
  c.encrypted = f.scheme === 'https';
}
