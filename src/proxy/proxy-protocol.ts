// The PROXY protocol (HAProxy's spec, v1 text and v2 binary) on the front listener, as a cloud
// load balancer or nginx's `proxy_protocol on` sends it: one header before the first byte of the
// connection, naming the client the balancer accepted. The codec (ProxyHeaderParser) is pure and
// incremental — a header may arrive split over any number of segments; the I/O part reads it off
// a raw socket before Node's HTTP (or TLS) layer sees a byte, and closes a connection whose header
// is malformed, too large or late, logging that at a bounded rate.

import type { Server, Socket } from 'node:net';
import { isIPv4, isIPv6 } from 'node:net';
import type { Logger } from 'pino';
import { ProxyProtocolInvalid } from '../errors.ts';
import { BurstLog } from '../observability/burst.ts';

/** What the header says about the connection; `null` addresses: LOCAL / UNKNOWN / AF_UNSPEC (use the socket's). */
export interface ProxyHeader {
  version: 1 | 2;
  /** false for v2 LOCAL (a balancer's own health check) and v1 UNKNOWN: the socket's own addresses apply. */
  proxied: boolean;
  family: 'IPv4' | 'IPv6' | 'unix' | null;
  sourceAddress: string | null;
  sourcePort: number;
  destinationAddress: string | null;
  destinationPort: number;
  /** v2 PP2_TYPE_SSL with PP2_CLIENT_SSL: the client spoke TLS to the balancer, which terminated it. */
  ssl: boolean;
}

const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V1_PREFIX = Buffer.from('PROXY ', 'latin1');
/** The spec's bound for a v1 line, CRLF included. */
export const V1_MAX = 107;
/**
 * Largest v2 header accepted (16-byte head plus addresses and TLVs). The addresses take at most
 * 216 bytes (AF_UNIX); the rest is TLVs — ALPN, authority, AWS/Azure/GCP ids, SSL details — which
 * real balancers keep well under this. HAProxy's own bound is its buffer size.
 */
export const V2_MAX = 4096;

export interface ParsedHeader {
  header: ProxyHeader;
  /** Bytes after the header: the start of the client's own stream. */
  rest: Buffer;
}

/**
 * Incremental header parser: push() each chunk as it arrives; it returns null while the header is
 * incomplete, the header and the bytes after it once it is whole, and throws ProxyProtocolInvalid
 * as soon as the bytes cannot be a header (so a plain HTTP request fails at its first segment).
 */
export class ProxyHeaderParser {
  #buf: Buffer = Buffer.alloc(0);
  readonly max: number;

  constructor(max = V2_MAX) {
    this.max = max;
  }

  push(chunk: Buffer): ParsedHeader | null {
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    const b = this.#buf;
    if (b[0] === 0x0d) return this.#v2(b);
    return this.#v1(b);
  }

  #v1(b: Buffer): ParsedHeader | null {
    const n = Math.min(b.length, V1_PREFIX.length);
    if (b.compare(V1_PREFIX, 0, n, 0, n) !== 0) throw new ProxyProtocolInvalid('no PROXY protocol signature');
    const end = b.indexOf('\r\n', 0, 'latin1');
    if (end < 0 ? b.length >= V1_MAX : end + 2 > V1_MAX)
      throw new ProxyProtocolInvalid(`v1 line longer than ${V1_MAX} bytes`);
    if (end < 0) {
      // A lone CR or LF inside the line can never become the CRLF that ends it.
      if (b.indexOf(0x0a) >= 0 || b.subarray(0, b.length - 1).indexOf(0x0d) >= 0)
        throw new ProxyProtocolInvalid('v1 line with a bare CR or LF');
      return null;
    }
    const line = b.toString('latin1', V1_PREFIX.length, end);
    const rest = b.subarray(end + 2);
    const parts = line.split(' ');
    const proto = parts[0];
    if (proto === 'UNKNOWN') return { header: unspecified(1), rest };
    if (proto !== 'TCP4' && proto !== 'TCP6') throw new ProxyProtocolInvalid(`v1 protocol ${quote(proto ?? '')}`);
    if (parts.length !== 5) throw new ProxyProtocolInvalid(`v1 line needs 5 fields after PROXY, got ${parts.length}`);
    const [, src, dst, sport, dport] = parts as [string, string, string, string, string];
    const valid = proto === 'TCP4' ? isIPv4 : isIPv6;
    if (!valid(src) || !valid(dst))
      throw new ProxyProtocolInvalid(`v1 ${proto} address ${quote(valid(src) ? dst : src)}`);
    return {
      header: {
        version: 1,
        proxied: true,
        family: proto === 'TCP4' ? 'IPv4' : 'IPv6',
        sourceAddress: src,
        sourcePort: port(sport),
        destinationAddress: dst,
        destinationPort: port(dport),
        ssl: false,
      },
      rest,
    };
  }

  #v2(b: Buffer): ParsedHeader | null {
    const n = Math.min(b.length, V2_SIGNATURE.length);
    if (b.compare(V2_SIGNATURE, 0, n, 0, n) !== 0) throw new ProxyProtocolInvalid('no PROXY protocol signature');
    if (b.length < 16) return null;
    const verCmd = b[12]!;
    if (verCmd >> 4 !== 2) throw new ProxyProtocolInvalid(`v2 version ${verCmd >> 4}`);
    const command = verCmd & 0x0f;
    if (command > 1) throw new ProxyProtocolInvalid(`v2 command ${command}`);
    const famProto = b[13]!;
    const length = b.readUInt16BE(14);
    if (16 + length > this.max) throw new ProxyProtocolInvalid(`v2 header of ${16 + length} bytes (limit ${this.max})`);
    if (b.length < 16 + length) return null;
    const body = b.subarray(16, 16 + length);
    const rest = b.subarray(16 + length);
    const family = famProto >> 4;
    const transport = famProto & 0x0f;
    if (family > 3 || transport > 2) throw new ProxyProtocolInvalid(`v2 address family/protocol 0x${hex(famProto)}`);
    const need = family === 1 ? 12 : family === 2 ? 36 : family === 3 ? 216 : 0;
    if (length < need) throw new ProxyProtocolInvalid(`v2 address block of ${length} bytes, need ${need}`);
    // LOCAL: the balancer speaking for itself (health checks); the addresses, if any, are ignored.
    if (command === 0 || family === 0) return { header: unspecified(2), rest };
    const ssl = clientSsl(body.subarray(need));
    if (family === 1) {
      return {
        header: {
          version: 2,
          proxied: true,
          family: 'IPv4',
          sourceAddress: `${body[0]}.${body[1]}.${body[2]}.${body[3]}`,
          destinationAddress: `${body[4]}.${body[5]}.${body[6]}.${body[7]}`,
          sourcePort: body.readUInt16BE(8),
          destinationPort: body.readUInt16BE(10),
          ssl,
        },
        rest,
      };
    }
    if (family === 2) {
      return {
        header: {
          version: 2,
          proxied: true,
          family: 'IPv6',
          sourceAddress: ipv6(body.subarray(0, 16)),
          destinationAddress: ipv6(body.subarray(16, 32)),
          sourcePort: body.readUInt16BE(32),
          destinationPort: body.readUInt16BE(34),
          ssl,
        },
        rest,
      };
    }
    return {
      header: {
        version: 2,
        proxied: true,
        family: 'unix',
        sourceAddress: unixPath(body.subarray(0, 108)),
        destinationAddress: unixPath(body.subarray(108, 216)),
        sourcePort: 0,
        destinationPort: 0,
        ssl,
      },
      rest,
    };
  }
}

function unspecified(version: 1 | 2): ProxyHeader {
  return {
    version,
    proxied: false,
    family: null,
    sourceAddress: null,
    sourcePort: 0,
    destinationAddress: null,
    destinationPort: 0,
    ssl: false,
  };
}

const PP2_TYPE_SSL = 0x20;
const PP2_CLIENT_SSL = 0x01;

/**
 * Walk the TLVs after the addresses (type, 16-bit length, value); all but PP2_TYPE_SSL are
 * skipped. One whose length runs past the header makes it malformed, as HAProxy treats it.
 */
function clientSsl(tlvs: Buffer): boolean {
  let ssl = false;
  for (let i = 0; i < tlvs.length;) {
    if (i + 3 > tlvs.length) throw new ProxyProtocolInvalid(`v2 TLV cut at byte ${i} of ${tlvs.length}`);
    const type = tlvs[i]!;
    const len = tlvs.readUInt16BE(i + 1);
    if (i + 3 + len > tlvs.length) throw new ProxyProtocolInvalid(`v2 TLV 0x${hex(type)} of ${len} bytes past the end`);
    if (type === PP2_TYPE_SSL && len >= 1 && (tlvs[i + 3]! & PP2_CLIENT_SSL) !== 0) ssl = true;
    i += 3 + len;
  }
  return ssl;
}

function port(s: string): number {
  // The spec: decimal 0..65535 without leading zeros (HAProxy refuses them too).
  if (!/^(0|[1-9]\d{0,4})$/.test(s) || Number(s) > 65535) throw new ProxyProtocolInvalid(`v1 port ${quote(s)}`);
  return Number(s);
}

/** RFC 5952 text of 16 address bytes, as net.Socket reports remoteAddress. */
function ipv6(b: Buffer): string {
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i));
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff)
    return `::ffff:${b[12]}.${b[13]}.${b[14]}.${b[15]}`;
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j;
  }
  const text = groups.map((g) => g.toString(16));
  if (best < 0) return text.join(':');
  return `${text.slice(0, best).join(':')}::${text.slice(best + bestLen).join(':')}`;
}

function unixPath(b: Buffer): string {
  const nul = b.indexOf(0);
  return b.toString('utf8', 0, nul < 0 ? b.length : nul);
}

function quote(s: string): string {
  return JSON.stringify(s.slice(0, 40));
}

function hex(n: number): string {
  return n.toString(16).padStart(2, '0');
}

// --- on a socket -------------------------------------------------------------------------------

const HEADER = Symbol('stratum.proxyHeader');
type ProxiedSocket = Socket & { [HEADER]?: ProxyHeader };

/** The PROXY header read on this connection, or undefined (the listener does not take one). */
export function proxyHeaderOf(socket: object): ProxyHeader | undefined {
  // A TLS socket wraps the raw one the header was read from (its _parent).
  const s = socket as ProxiedSocket & { _parent?: ProxiedSocket | null };
  return s[HEADER] ?? s._parent?.[HEADER];
}

/**
 * Read the header off a fresh socket; resolves with the header once it is whole, having put the
 * bytes after it back (unshift) and the socket paused as it came, or rejects with
 * ProxyProtocolInvalid (malformed, too large, the connection closed first, or none within timeoutMs).
 */
export function readProxyHeader(socket: Socket, timeoutMs: number, max = V2_MAX): Promise<ProxyHeader> {
  return new Promise((resolve, reject) => {
    const parser = new ProxyHeaderParser(max);
    const done = (err: Error | null, header?: ProxyHeader, rest?: Buffer) => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
      socket.off('error', onError);
      if (err) return reject(err);
      socket.pause();
      if (rest && rest.length > 0) socket.unshift(rest);
      resolve(header!);
    };
    const onData = (chunk: Buffer) => {
      let got: ParsedHeader | null;
      try {
        got = parser.push(chunk);
      } catch (err) {
        return done(err as Error);
      }
      if (got) done(null, got.header, got.rest);
    };
    const onEnd = () => done(new ProxyProtocolInvalid('connection closed before a complete header'));
    const onError = (err: Error) => done(new ProxyProtocolInvalid(`connection failed: ${err.message}`));
    const timer = setTimeout(
      () => done(new ProxyProtocolInvalid(`no complete header within ${timeoutMs} ms`)),
      timeoutMs,
    );
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('close', onEnd);
    socket.once('error', onError);
  });
}

export interface ProxyProtocolOptions {
  timeoutMs: number;
  log: Logger;
  max?: number;
}

/**
 * Make `server` (an http, https or net server) take a PROXY header on every connection before
 * its own 'connection' listeners see the socket: Node's HTTP parser (or the TLS handshake) then
 * starts on the client's first byte. The server's 'connection' event is held back by wrapping its
 * emit(), so nothing about how or where it listens changes (the master's descriptor, a port, a
 * Unix socket). A refused connection is destroyed; one line per burst of them is logged (BurstLog).
 */
export function requireProxyProtocol(server: Server, opts: ProxyProtocolOptions): void {
  const emit = server.emit.bind(server) as (event: string | symbol, ...args: unknown[]) => boolean;
  const burst = new BurstLog(
    (fields, msg) => opts.log.warn(fields, msg),
    'more connections closed for a bad PROXY protocol header',
    { code: ProxyProtocolInvalid.code },
  );
  const refused = (socket: Socket, err: Error) => {
    const remote = socket.remoteAddress ?? 'unix';
    socket.destroy();
    const why = err.message.replace(/^PROXY protocol header refused: /, '');
    burst.hit(why.split(' ').slice(0, 2).join(' '), { code: ProxyProtocolInvalid.code, remote }, err.message);
  };
  server.emit = function (this: Server, event: string | symbol, ...args: unknown[]): boolean {
    if (event !== 'connection') return emit(event, ...args);
    const socket = args[0] as ProxiedSocket;
    readProxyHeader(socket, opts.timeoutMs, opts.max).then(
      (header) => {
        socket[HEADER] = header;
        if (socket.destroyed) return;
        emit('connection', socket);
        // Paused by the read (the rest was put back): flowing again as a fresh socket is, so the
        // HTTP parser reads the put-back bytes first, then the handle.
        socket.resume();
      },
      (err: Error) => refused(socket, err),
    );
    return true;
  } as Server['emit'];
}
