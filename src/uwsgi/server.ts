// The server side of uwsgi, used by workers. Each uwsgi connection is bridged into a Node
// http.Server: the packet head becomes an HTTP/1.1 request head, the CONTENT_LENGTH body bytes
// pass through untouched, and the HTTP/1.x response Node writes is exactly what uwsgi sends
// back. Node's own HTTP machinery thus gives every app kind real IncomingMessage/ServerResponse
// semantics (HEAD, 204/304, Set-Cookie lists, backpressure) with no reimplementation.
//
// Keep-alive is negotiated: our proxy sends STRATUM_KEEPALIVE=1 and we answer with the
// `x-stratum-keepalive` header and HTTP/1.1 framing (Content-Length or chunked), keeping the
// connection for the next packet. Anyone else (nginx, a uwsgi client) gets plain uwsgi: one
// request, the body raw (Content-Length or until close, never chunked), then close.

import type { Socket } from 'node:net';
import type { Server as HttpServer, IncomingMessage, ServerResponse } from 'node:http';
import { ConnectionBridge } from '../host/connection.ts';
import type { HostResponse } from '../host/response.ts';
import { PacketHeadDecoder, type UwsgiVars } from './codec.ts';
import {
  type StratumError,
  UwsgiBadContentLength,
  UwsgiBadVar,
  UwsgiReadTimeout,
  UwsgiTruncatedBody,
} from '../errors.ts';

// node:http through getBuiltinModule, not an ES import: that would read every export and so load
// Node's bundled undici (~2–3 MiB per process) that nothing here uses (see src/pool/worker.ts).
const { STATUS_CODES } = process.getBuiltinModule('node:http');

export const KEEPALIVE_VAR = 'STRATUM_KEEPALIVE';
export const KEEPALIVE_HEADER = 'x-stratum-keepalive';
/** Our worker tells our proxy its layer times (ms) in this header; the proxy removes it. */
export const TIMING_HEADER = 'x-stratum-timing';
/** Our proxy tells our worker a route's own harakiri (ms); honoured on the worker's private socket only. */
export const HARAKIRI_VAR = 'STRATUM_HARAKIRI';

/** What the worker knows about one request beyond its HTTP head. */
export interface UwsgiRequestMeta {
  vars: UwsgiVars;
  /** A foreign peer (nginx, uWSGI client): plain uwsgi, close after the response. */
  foreign: boolean;
  remoteAddress: string;
  remotePort: number;
  scheme: 'http' | 'https';
  /** performance.now() when the packet head was complete. */
  receivedAt: number;
  /** The route's harakiri in ms as our proxy sent it (HARAKIRI_VAR), or -1. */
  harakiriMs: number;
}

export interface UwsgiServerOptions {
  maxVarsSize: number;
  /** A client silent this long while a packet or body is incomplete is dropped (0 = never). */
  readTimeoutMs?: number;
  onProtocolError(err: StratumError, socket: Socket): void;
}

// Hop-by-hop or framing vars that must not become request headers: nginx passes
// HTTP_TRANSFER_ENCODING although it already de-chunked the body, HTTP_CONTENT_* duplicate the
// CGI vars, Expect was already answered by the front.
const SKIPPED_HEADERS = new Set([
  'HTTP_CONTENT_LENGTH',
  'HTTP_CONTENT_TYPE',
  'HTTP_TRANSFER_ENCODING',
  'HTTP_CONNECTION',
  'HTTP_KEEP_ALIVE',
  'HTTP_EXPECT',
  'HTTP_UPGRADE',
  'HTTP_TE',
  'HTTP_PROXY_CONNECTION',
]);
const HEADER_NAME = /^[A-Z0-9_-]+$/;
const METHOD = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const BAD_VALUE = /[\0\r\n]/;
// Bytes llhttp refuses inside a request target: controls, space, DEL.
// eslint-disable-next-line no-control-regex -- matching control characters is this pattern's whole job
const BAD_TARGET_BYTES = /[\x00-\x20\x7f]/g;

const metaKey = Symbol('stratum.uwsgiMeta');

/** The meta of the request currently served on `req` (set by the bridge before the app runs). */
export function requestMeta(req: IncomingMessage): UwsgiRequestMeta | undefined {
  return (req as unknown as Record<symbol, UwsgiRequestMeta | undefined>)[metaKey];
}

/**
 * Wrap an app listener so it sees per-request uwsgi facts and answers foreign peers with
 * plain framing. Install the result as the 'request' listener of an http.Server whose responses
 * are HostResponse: on our own hop, the worker's layer times ride on the head the app produces —
 * worker = packet received → app called, app = app called → response head.
 */
export function uwsgiRequestListener(
  listener: (req: IncomingMessage, res: HostResponse) => void,
): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, response) => {
    const res = response as HostResponse;
    const bridge = req.socket as unknown as UwsgiBridge;
    const meta = bridge.metas.shift();
    if (meta) {
      (req as unknown as Record<symbol, UwsgiRequestMeta>)[metaKey] = meta;
      if (meta.foreign) {
        // nginx's uwsgi module does not decode chunked framing: raw body until close.
        res.useChunkedEncodingByDefault = false;
        res.shouldKeepAlive = false;
      } else {
        res.setHeader(KEEPALIVE_HEADER, '1');
        const receivedAt = meta.receivedAt;
        const appAt = performance.now();
        res.stratumHead = (headers) => {
          headers.push(
            TIMING_HEADER,
            `worker=${(appAt - receivedAt).toFixed(3)},app=${(performance.now() - appAt).toFixed(3)}`,
          );
        };
      }
    }
    listener(req, res);
  };
}

/** Serve one accepted uwsgi connection with `server` (an http.Server that is not listening). */
export function serveUwsgiConnection(socket: Socket, server: HttpServer, opts: UwsgiServerOptions): UwsgiBridge {
  const bridge = new UwsgiBridge(socket, opts);
  server.emit('connection', bridge);
  return bridge;
}

export class UwsgiBridge extends ConnectionBridge {
  readonly socket: Socket;
  readonly metas: UwsgiRequestMeta[] = [];
  remoteAddress: string | undefined;
  remotePort: number | undefined;
  remoteFamily = 'IPv4';
  localAddress: string | undefined;
  localPort: number | undefined;
  encrypted = false;
  #decoder: PacketHeadDecoder;
  #bodyLeft = 0;
  #bodyTotal = 0;
  #packets = 0;
  #keepAlive = false;
  #answered = false;
  #opts: UwsgiServerOptions;

  constructor(socket: Socket, opts: UwsgiServerOptions) {
    super({ allowHalfOpen: true });
    this.socket = socket;
    this.#opts = opts;
    this.#decoder = new PacketHeadDecoder(opts.maxVarsSize);
    this.remoteAddress = socket.remoteAddress ?? '127.0.0.1';
    this.remotePort = socket.remotePort ?? 0;
    socket.setNoDelay?.(true);
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('end', () => this.#onEnd());
    socket.on('error', () => this.destroy());
    socket.on('close', () => this.destroy());
    socket.on('drain', () => this.emit('drain'));
    if (opts.readTimeoutMs) socket.setTimeout(opts.readTimeoutMs, () => this.#onSilence(opts.readTimeoutMs!));
  }

  /**
   * The client sent nothing for a while. Only a sender stuck mid-packet or mid-body (or one that
   * never sent a first packet) is dropped; waiting on the app, on our own backpressure, or an idle
   * kept connection of our proxy's is normal.
   */
  #onSilence(ms: number): void {
    const waitingForInput = this.#packets === 0 || this.#decoder.pending > 0 || this.#bodyLeft > 0;
    if (!waitingForInput || this.socket.isPaused()) return;
    if (this.#packets === 0 && this.#decoder.pending === 0) {
      this.socket.destroy(); // connected and never said anything: nothing to answer
      return;
    }
    this.#fail(new UwsgiReadTimeout(ms));
  }

  address(): ReturnType<Socket['address']> {
    return this.socket.address();
  }

  override _read(): void {
    if (this.socket.isPaused()) this.socket.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.socket.destroyed) return cb();
    if (this.socket.write(chunk)) cb();
    else this.socket.once('drain', () => cb());
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, cb: (err?: Error | null) => void): void {
    if (this.socket.destroyed) return cb();
    this.socket.cork();
    let ok = true;
    for (const { chunk } of chunks) ok = this.socket.write(chunk);
    this.socket.uncork();
    if (ok) cb();
    else this.socket.once('drain', () => cb());
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.socket.end(cb);
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    // After a 400 the socket is ending on its own; destroying it could cut the answer short.
    if (!this.socket.destroyed && !this.#answered) this.socket.destroy();
    cb(err);
  }

  #onData(chunk: Buffer): void {
    let off = 0;
    try {
      while (off < chunk.length) {
        if (this.#bodyLeft > 0) {
          const n = Math.min(this.#bodyLeft, chunk.length - off);
          this.#bodyLeft -= n;
          const part = off === 0 && n === chunk.length ? chunk : chunk.subarray(off, off + n);
          off += n;
          if (!this.push(part)) this.socket.pause();
          continue;
        }
        if (this.#packets > 0 && !this.#keepAlive) return; // plain uwsgi: one request per connection
        const got = this.#decoder.push(chunk, off);
        if (got === null) return;
        off = got.rest;
        this.#startRequest(got.head.vars);
      }
    } catch (err) {
      this.#fail(err as StratumError);
    }
  }

  #onEnd(): void {
    try {
      this.#decoder.end();
      if (this.#bodyLeft > 0) throw new UwsgiTruncatedBody(this.#bodyTotal - this.#bodyLeft, this.#bodyTotal);
      this.push(null);
    } catch (err) {
      this.#fail(err as StratumError);
    }
  }

  #fail(err: StratumError): void {
    this.#opts.onProtocolError(err, this.socket);
    // Answer 400 when nothing is in flight on this connection, so nginx reports the client's
    // error instead of a gateway failure; then close this connection only.
    if (this.#bodyLeft === 0 && this.metas.length === 0 && this.#packets === 0 && this.socket.writable) {
      const body = `${err.code}\n`;
      this.#answered = true;
      this.socket.end(
        `HTTP/1.1 ${err.statusCode} ${STATUS_CODES[err.statusCode] ?? 'Bad Request'}\r\n` +
          `Content-Type: text/plain\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
      );
    } else {
      this.socket.destroy();
    }
    this.destroy();
  }

  #startRequest(vars: UwsgiVars): void {
    const receivedAt = performance.now();
    const first = this.#packets === 0;
    let method = 'GET';
    let uri: string | undefined;
    let pathInfo = '/';
    let query = '';
    let host: string | undefined;
    let serverName = '';
    let serverPort = '';
    let contentType: string | undefined;
    let contentLength = 0;
    let scheme: 'http' | 'https' = 'http';
    let keepAlive = false;
    let harakiriMs = -1;
    let remoteAddress = this.socket.remoteAddress ?? '127.0.0.1';
    let remotePort = 0;
    let headers = '';
    for (let i = 0; i < vars.length; i += 2) {
      const key = vars[i]!;
      const value = vars[i + 1]!;
      if (key.charCodeAt(0) === 72 /* H */ && key.startsWith('HTTP_')) {
        const name = headerName(key);
        if (name === null) continue;
        if (BAD_VALUE.test(value)) throw new UwsgiBadVar(0, `CR, LF or NUL inside ${key}`);
        if (key === 'HTTP_HOST') host = value;
        headers += `${name}: ${value}\r\n`;
        continue;
      }
      switch (key) {
        case 'REQUEST_METHOD':
          method = value;
          break;
        case 'REQUEST_URI':
          uri = value;
          break;
        case 'PATH_INFO':
          pathInfo = value;
          break;
        case 'QUERY_STRING':
          query = value;
          break;
        case 'CONTENT_TYPE':
          contentType = value;
          break;
        case 'CONTENT_LENGTH':
          if (value !== '') {
            if (!/^[0-9]{1,15}$/.test(value)) throw new UwsgiBadContentLength(value);
            contentLength = Number(value);
          }
          break;
        case 'REMOTE_ADDR':
          remoteAddress = value;
          break;
        case 'REMOTE_PORT':
          remotePort = Number(value) || 0;
          break;
        case 'SERVER_NAME':
          serverName = value;
          break;
        case 'SERVER_PORT':
          serverPort = value;
          break;
        case 'REQUEST_SCHEME':
          if (value === 'https') scheme = 'https';
          break;
        case 'HTTPS':
          if (value === 'on' || value === '1') scheme = 'https';
          break;
        case KEEPALIVE_VAR:
          keepAlive = first ? value === '1' : this.#keepAlive;
          break;
        case HARAKIRI_VAR:
          if (/^[0-9]{1,9}$/.test(value)) harakiriMs = Number(value);
          break;
      }
    }
    if (first) this.#keepAlive = keepAlive;
    if (!METHOD.test(method)) throw new UwsgiBadVar(0, `invalid REQUEST_METHOD ${JSON.stringify(method.slice(0, 20))}`);
    if (uri === undefined || uri === '') uri = encodePath(pathInfo) + (query ? `?${query}` : '');
    uri = uri.replace(BAD_TARGET_BYTES, (c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0').toUpperCase()}`);
    if (uri[0] !== '/' && uri !== '*' && !/^[a-z][a-z0-9+.-]*:\/\//i.test(uri)) uri = `/${uri}`;
    if (host === undefined) {
      // No HTTP_HOST: the Host line is built from SERVER_NAME/SERVER_PORT, which must not split it.
      if (BAD_VALUE.test(serverName) || BAD_VALUE.test(serverPort))
        throw new UwsgiBadVar(0, 'CR, LF or NUL inside SERVER_NAME or SERVER_PORT');
      headers += `host: ${serverName || 'localhost'}${serverPort ? `:${serverPort}` : ''}\r\n`;
    }
    if (contentType !== undefined) {
      if (BAD_VALUE.test(contentType)) throw new UwsgiBadVar(0, 'CR, LF or NUL inside CONTENT_TYPE');
      headers += `content-type: ${contentType}\r\n`;
    }
    if (contentLength > 0 || method === 'POST' || method === 'PUT' || method === 'PATCH')
      headers += `content-length: ${contentLength}\r\n`;
    if (!this.#keepAlive) headers += 'connection: close\r\n';
    this.remoteAddress = remoteAddress;
    this.remotePort = remotePort;
    this.remoteFamily = remoteAddress.includes(':') ? 'IPv6' : 'IPv4';
    this.encrypted = scheme === 'https';
    this.#packets++;
    this.metas.push({ vars, foreign: !this.#keepAlive, remoteAddress, remotePort, scheme, receivedAt, harakiriMs });
    this.#bodyLeft = contentLength;
    this.#bodyTotal = contentLength;
    if (!this.push(Buffer.from(`${method} ${uri} HTTP/1.1\r\n${headers}\r\n`, 'latin1'))) this.socket.pause();
  }
}

// HTTP_ACCEPT_ENCODING → "accept-encoding", converted once per distinct var (bounded, as
// forward.ts's headerVar is in the other direction).
const headerNames = new Map<string, string | null>();
/** The request header name for an HTTP_* var, null for one we skip; throws for a bad name. */
function headerName(key: string): string | null {
  let name = headerNames.get(key);
  if (name !== undefined) return name;
  if (SKIPPED_HEADERS.has(key)) name = null;
  else if (!HEADER_NAME.test(key))
    throw new UwsgiBadVar(0, `invalid header var name ${JSON.stringify(key.slice(0, 40))}`);
  else name = key.slice(5).replaceAll('_', '-').toLowerCase();
  if (headerNames.size < 1000) headerNames.set(key, name);
  return name;
}

/** Re-encode a decoded PATH_INFO (latin1 string of UTF-8 bytes) into a request target path. */
function encodePath(path: string): string {
  let out = '';
  for (let i = 0; i < path.length; i++) {
    const c = path.charCodeAt(i);
    if (c > 0x20 && c < 0x7f && c !== 0x25 && c !== 0x3f && c !== 0x23) out += path[i];
    else out += `%${c.toString(16).padStart(2, '0').toUpperCase()}`;
  }
  return out || '/';
}
