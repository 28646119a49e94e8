// Response compression (nginx's gzip module, plus brotli and zstd): which encoding a client
// accepts (Accept-Encoding with q-values), whether a response may be encoded at all, how its head
// changes, and a streaming encoder, so memory stays flat whatever the body's size.
//
// Three ways in, all deciding alike:
// - compressResponse(): a relayed response whose head is a list of flat pairs (the HTTP upstream).
// - compressServerResponse(): a ServerResponse whose headers are set on it (an app's, at writeHead time).
// - negotiate() / compressible() / encodedHeaders() / createEncoder(): the parts, for a caller that
//   owns its own file (static files choose between a precompressed sibling and encoding on the fly).

import type { IncomingMessage, OutgoingHttpHeader, ServerResponse } from 'node:http';
import zlib from 'node:zlib';
import type { Transform } from 'node:stream';
import type { Route, StratumConfig } from '../config/schema.ts';
import type { HostResponse } from '../host/response.ts';

export type Encoding = 'br' | 'zstd' | 'gzip';

/** zstd came to node:zlib in 23.8 / 22.15; on a Node without it, it is never offered. */
export const HAS_ZSTD = typeof (zlib as { createZstdCompress?: unknown }).createZstdCompress === 'function';

/** What one route does, resolved from proxy.compression and the route's `compression` switch. */
export interface CompressionSettings {
  /** Encodings offered, in the server's order of preference (a tie of q-values goes to the first). */
  encodings: readonly Encoding[];
  gzipLevel: number;
  brotliQuality: number;
  zstdLevel: number;
  /** Smallest Content-Length encoded; a response of unknown length always is. */
  minLength: number;
  /** Media types (no parameters) encoded; a `*` matches any run of characters ("text/*", "application/*+json"). */
  types: readonly string[];
}

/** The head of a response, as the decision needs it (names lower-case, values as sent). */
export interface ResponseFacts {
  statusCode: number;
  contentType: string | undefined;
  contentEncoding: string | undefined;
  contentLength: string | undefined;
  contentRange: string | undefined;
  cacheControl: string | undefined;
}

// --- configuration -----------------------------------------------------------------------------

const byRoute = new WeakMap<object, CompressionSettings | null>();
const typeMatchers = new WeakMap<readonly string[], (type: string) => boolean>();

/**
 * The settings of `route`, or null when compression is off there (the route's `compression: false`,
 * or proxy.compression.enabled false without the route's `compression: true`). Cached per route.
 */
export function compressionSettings(config: StratumConfig, route: Route): CompressionSettings | null {
  const cached = byRoute.get(route);
  if (cached !== undefined) return cached;
  const c = config.proxy.compression;
  const on = route.compression ?? c.enabled;
  const encodings = c.encodings.filter((e) => e !== 'zstd' || HAS_ZSTD);
  const settings: CompressionSettings | null =
    on && encodings.length > 0
      ? {
          encodings,
          gzipLevel: c.gzipLevel,
          brotliQuality: c.brotliQuality,
          zstdLevel: c.zstdLevel,
          minLength: c.minLength,
          types: c.types,
        }
      : null;
  byRoute.set(route, settings);
  return settings;
}

/**
 * Resolve and keep `route`'s settings, for compressionFor() at request time. buildRoutes() calls it
 * for every route (each front process builds its own table, and again on a reload's new routes).
 */
export function registerCompression(config: StratumConfig, route: Route): void {
  compressionSettings(config, route);
}

/** The settings registerCompression() resolved for this route (its config object); null: off or unknown. */
export function compressionFor(route: Route): CompressionSettings | null {
  return byRoute.get(route) ?? null;
}

// --- negotiation -------------------------------------------------------------------------------

/**
 * The encodings of `offered` this Accept-Encoding accepts, best first (RFC 9110 §12.5.3): by
 * q-value, a tie in the server's order; `*` stands for every encoding not named; q=0 refuses.
 * Empty: the client asked for none of them (or sent no Accept-Encoding: identity only).
 */
export function preferences(acceptEncoding: string | undefined, offered: readonly Encoding[]): Encoding[] {
  if (!acceptEncoding) return [];
  const q = new Map<string, number>();
  let star = -1;
  for (const part of acceptEncoding.split(',')) {
    const semi = part.indexOf(';');
    const name = (semi < 0 ? part : part.slice(0, semi)).trim().toLowerCase();
    if (name === '') continue;
    let weight = 1;
    if (semi >= 0) {
      const m = /(?:^|;)\s*q\s*=\s*([0-9.]+)/i.exec(part.slice(semi));
      weight = m ? Number(m[1]) : 1;
      if (!Number.isFinite(weight) || weight < 0 || weight > 1) weight = 0;
    }
    // x-gzip is gzip's old name (RFC 9110 §8.4.1.3), still accepted.
    const key = name === 'x-gzip' ? 'gzip' : name;
    if (key === '*') star = weight;
    else q.set(key, Math.max(weight, q.get(key) ?? 0));
  }
  const ranked: Array<[Encoding, number, number]> = [];
  offered.forEach((e, i) => {
    const w = q.get(e) ?? (star >= 0 ? star : 0);
    if (w > 0) ranked.push([e, w, i]);
  });
  ranked.sort((a, b) => b[1] - a[1] || a[2] - b[2]);
  return ranked.map((r) => r[0]);
}

/** The best of preferences(): the encoding to answer with, or null for identity. */
export function negotiate(acceptEncoding: string | undefined, offered: readonly Encoding[]): Encoding | null {
  return preferences(acceptEncoding, offered)[0] ?? null;
}

// --- the decision ------------------------------------------------------------------------------

function typeMatcher(types: readonly string[]): (type: string) => boolean {
  let m = typeMatchers.get(types);
  if (m) return m;
  const exact = new Set<string>();
  const globs: RegExp[] = [];
  for (const t of types) {
    const lower = t.toLowerCase();
    if (!lower.includes('*')) exact.add(lower);
    else
      globs.push(
        new RegExp(
          `^${lower
            .split('*')
            .map((s) => s.replace(/[.+?^${}()|[\]\\/]/g, '\\$&'))
            .join('.*')}$`,
        ),
      );
  }
  m = (type) => exact.has(type) || globs.some((g) => g.test(type));
  typeMatchers.set(types, m);
  return m;
}

/** The media type of a Content-Type value, lower-case and without parameters. */
function mediaType(contentType: string): string {
  const semi = contentType.indexOf(';');
  return (semi < 0 ? contentType : contentType.slice(0, semi)).trim().toLowerCase();
}

/** Whether a body of this Content-Type is worth encoding under `settings` (its type is listed). */
export function compressibleType(contentType: string | undefined, settings: CompressionSettings): boolean {
  if (!contentType) return false;
  const type = mediaType(contentType);
  // An event stream is read as it comes: an encoder would hold its events back until its buffer fills.
  if (type === 'text/event-stream') return false;
  return typeMatcher(settings.types)(type);
}

/**
 * Whether the response may be encoded, whoever the client is: then it varies by Accept-Encoding.
 * Never a HEAD (its head must match a GET that might not be encoded either way), a 1xx/204/304,
 * a 206 or anything with a Content-Range (ranges are of the identity), a body that is already
 * encoded, one marked `Cache-Control: no-transform`, one shorter than minLength, or of a type not listed.
 */
export function compressible(method: string | undefined, r: ResponseFacts, settings: CompressionSettings): boolean {
  if (method === 'HEAD') return false;
  const s = r.statusCode;
  if (s < 200 || s === 204 || s === 206 || s === 304) return false;
  if (r.contentRange !== undefined) return false;
  if (r.contentEncoding !== undefined && r.contentEncoding.trim().toLowerCase() !== 'identity') return false;
  if (r.cacheControl !== undefined && /(?:^|,)\s*no-transform\s*(?:,|$)/i.test(r.cacheControl)) return false;
  if (r.contentLength !== undefined) {
    const n = Number(r.contentLength);
    if (!Number.isFinite(n) || n < settings.minLength) return false;
  }
  return compressibleType(r.contentType, settings);
}

// --- headers -----------------------------------------------------------------------------------

/** A Vary value that also names Accept-Encoding (unchanged when it does, or is `*`). */
export function varyWithAcceptEncoding(vary: string | undefined): string {
  if (vary === undefined || vary.trim() === '') return 'Accept-Encoding';
  if (/(?:^|,)\s*(?:accept-encoding|\*)\s*(?:,|$)/i.test(vary)) return vary;
  return `${vary}, Accept-Encoding`;
}

/**
 * An encoded body is another representation: a strong ETag would promise byte equality with the
 * identity one (and let If-Range splice the two), so it is weakened, as nginx's gzip does.
 */
export function weakenEtag(etag: string): string {
  return etag.startsWith('"') ? `W/${etag}` : etag;
}

/** Names dropped from an encoded response's head: the length and ranges are the identity's. */
const DROPPED = new Set(['content-length', 'accept-ranges', 'content-md5']);

/**
 * The flat header pairs of a response once encoded with `encoding` (null: not encoded, only the
 * Vary added): Content-Length, Accept-Ranges and Content-MD5 go, Content-Encoding comes, Vary
 * gains Accept-Encoding, a strong ETag turns weak. A new list; `headers` is not changed.
 */
export function encodedHeaders(headers: readonly string[], encoding: Encoding | null): string[] {
  const out: string[] = [];
  let vary: string | undefined;
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i]!;
    const value = headers[i + 1]!;
    const lower = name.toLowerCase();
    if (lower === 'vary') {
      vary = vary === undefined ? value : `${vary}, ${value}`;
      continue;
    }
    if (encoding !== null) {
      if (DROPPED.has(lower)) continue;
      if (lower === 'etag') {
        out.push(name, weakenEtag(value));
        continue;
      }
    }
    out.push(name, value);
  }
  out.push('vary', varyWithAcceptEncoding(vary));
  if (encoding !== null) out.push('content-encoding', encoding);
  return out;
}

/** The first value of `name` (lower-case) in flat pairs. */
function flatGet(headers: readonly string[], name: string): string | undefined {
  for (let i = 0; i < headers.length; i += 2) {
    if (headers[i]!.toLowerCase() === name) return headers[i + 1];
  }
  return undefined;
}

function factsOfFlat(statusCode: number, headers: readonly string[]): ResponseFacts {
  return {
    statusCode,
    contentType: flatGet(headers, 'content-type'),
    contentEncoding: flatGet(headers, 'content-encoding'),
    contentLength: flatGet(headers, 'content-length'),
    contentRange: flatGet(headers, 'content-range'),
    cacheControl: flatGet(headers, 'cache-control'),
  };
}

// --- the encoder -------------------------------------------------------------------------------

/** A zlib stream: a Transform that can also flush what it holds without ending. */
export type Encoder = Transform & { flush(kind?: number, callback?: () => void): void };

/** A streaming encoder; `sizeHint` (the identity length, when known) lets brotli size its window. */
export function createEncoder(encoding: Encoding, settings: CompressionSettings, sizeHint?: number): Encoder {
  const C = zlib.constants;
  switch (encoding) {
    case 'gzip':
      return zlib.createGzip({ level: settings.gzipLevel });
    case 'br': {
      const params: Record<number, number> = {
        [C.BROTLI_PARAM_QUALITY]: settings.brotliQuality,
        [C.BROTLI_PARAM_MODE]: C.BROTLI_MODE_TEXT,
      };
      if (sizeHint !== undefined && sizeHint > 0) params[C.BROTLI_PARAM_SIZE_HINT] = sizeHint;
      return zlib.createBrotliCompress({ params });
    }
    case 'zstd': {
      // A pledged size lets zstd size its tables to the body (measured on a 20 KB JSON: 182 µs of
      // CPU a response instead of 224). It is only given for a known length, and the encoder is
      // only ended once that many bytes went in: a body cut short destroys it instead.
      const params = { [C.ZSTD_c_compressionLevel]: settings.zstdLevel };
      if (sizeHint !== undefined && sizeHint > 0) return zlib.createZstdCompress({ params, pledgedSrcSize: sizeHint });
      return zlib.createZstdCompress({ params });
    }
  }
}

/** The flush that ends a block without ending the stream (the decoder can then show all so far). */
function flushKind(encoding: Encoding): number {
  const C = zlib.constants;
  if (encoding === 'br') return C.BROTLI_OPERATION_FLUSH;
  if (encoding === 'zstd') return C.ZSTD_e_flush;
  return C.Z_SYNC_FLUSH;
}

/**
 * A response being encoded on its way to the client. Write the identity body with write() (false:
 * wait for 'drain' on `stream`) and end(); the encoded bytes flow to the response by themselves.
 * What write() gets is flushed to the client once the writer pauses (the event loop turns
 * once with no further write), so a body that trickles (a long poll, a progress feed) is not held
 * back in the encoder's buffer, while one that streams in bulk is still encoded in large blocks.
 */
export class Compression {
  readonly encoding: Encoding;
  /** The zlib stream, piped into the response: write to it directly to skip the idle flush. */
  readonly stream: Encoder;
  /** Encoded bytes sent so far (what goes on the wire), counted once it is piped (compressResponse, pipeTo). */
  bytesOut = 0;
  #flushScheduled = false;
  #ended = false;

  constructor(encoding: Encoding, stream: Encoder) {
    this.encoding = encoding;
    this.stream = stream;
  }

  write(chunk: Buffer | string): boolean {
    const ok = this.stream.write(chunk);
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      setImmediate(this.#flush);
    }
    return ok;
  }

  /** 'drain' of the encoder's input: write() returned false, and it can take more now. */
  once(event: 'drain', listener: () => void): this {
    this.stream.once(event, listener);
    return this;
  }

  end(chunk?: Buffer | string): void {
    this.#ended = true;
    if (chunk !== undefined) this.stream.end(chunk);
    else this.stream.end();
  }

  #flush = (): void => {
    this.#flushScheduled = false;
    if (!this.#ended && !this.stream.destroyed) this.stream.flush(flushKind(this.encoding));
  };
}

/** Pipe an encoder into `res`; a response that closes early stops the encoder. */
function attach(res: ServerResponse, c: Compression): void {
  const enc = c.stream;
  // Counted and piped in the same turn: a 'data' listener alone would let the stream flow unread.
  enc.on('data', (chunk: Buffer) => {
    c.bytesOut += chunk.length;
  });
  enc.pipe(res);
  // zlib fails only on a bug or a destroyed stream; the client then gets a cut response, not a crash.
  enc.on('error', () => res.destroy());
  res.once('close', () => enc.destroy());
}

// --- the two ways in ---------------------------------------------------------------------------

export interface CompressedHead {
  /** The head to write instead of the one given. */
  headers: string[];
  /** Where to write the identity body instead of `res`; null: write the body to `res` unchanged. */
  compression: Compression | null;
}

/**
 * A relayed response with flat header pairs, at the moment its head is written. null: leave it as
 * it is (not compressible, or settings null). Else write `headers` instead (the Vary at least is
 * new), and when `compression` is set, write the body to it (not to `res`) and end it: it is
 * already piped into `res`.
 */
export function compressResponse(
  req: IncomingMessage,
  res: ServerResponse,
  statusCode: number,
  headers: readonly string[],
  settings: CompressionSettings | null,
): CompressedHead | null {
  if (settings === null) return null;
  const facts = factsOfFlat(statusCode, headers);
  if (!compressible(req.method, facts, settings)) return null;
  const encoding = negotiate(header(req, 'accept-encoding'), settings.encodings);
  const out = encodedHeaders(headers, encoding);
  if (encoding === null) return { headers: out, compression: null };
  const length = facts.contentLength === undefined ? undefined : Number(facts.contentLength);
  const compression = new Compression(encoding, createEncoder(encoding, settings, length));
  attach(res, compression);
  return { headers: out, compression };
}

/**
 * Offer compression to a response relayed or produced through HostResponse (an in-process app, a
 * pool worker's or an external uwsgi server's answer): the choice is made when its head goes out,
 * from the route's settings, the client's Accept-Encoding and the response's own headers.
 */
export function offerCompression(ctx: { req: IncomingMessage; res: HostResponse; route: Route }): void {
  const settings = compressionFor(ctx.route);
  if (settings === null) return;
  const { req, res } = ctx;
  res.stratumTransform = (statusCode) => compressServerResponse(req, res, statusCode, settings);
}

/**
 * For a ServerResponse whose headers are set on it (setHeader), just before its head goes out —
 * from a subclass's writeHead, after the headers given to writeHead itself are set on it. Changes
 * the response's headers in place (see encodedHeaders). null: nothing to encode (the Vary may
 * still have been added); else the Compression to send the body through. It is not piped: a
 * subclass that routes its own write() into it pipes its output to the parent class's write
 * (`compression.stream.on('data', …)`), or calls pipeTo().
 */
export function compressServerResponse(
  req: IncomingMessage,
  res: ServerResponse,
  statusCode: number,
  settings: CompressionSettings | null,
): Compression | null {
  if (settings === null) return null;
  const get = (name: string): string | undefined => joined(res.getHeader(name));
  const facts: ResponseFacts = {
    statusCode,
    contentType: get('content-type'),
    contentEncoding: get('content-encoding'),
    contentLength: get('content-length'),
    contentRange: get('content-range'),
    cacheControl: get('cache-control'),
  };
  if (!compressible(req.method, facts, settings)) return null;
  res.setHeader('vary', varyWithAcceptEncoding(get('vary')));
  const encoding = negotiate(header(req, 'accept-encoding'), settings.encodings);
  if (encoding === null) return null;
  for (const name of DROPPED) res.removeHeader(name);
  const etag = get('etag');
  if (etag !== undefined) res.setHeader('etag', weakenEtag(etag));
  res.setHeader('content-encoding', encoding);
  const length = facts.contentLength === undefined ? undefined : Number(facts.contentLength);
  return new Compression(encoding, createEncoder(encoding, settings, length));
}

/** Pipe a Compression made by compressServerResponse into a response, as compressResponse does. */
export function pipeTo(compression: Compression, res: ServerResponse): void {
  attach(res, compression);
}

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v.join(', ') : v;
}

function joined(v: OutgoingHttpHeader | undefined): string | undefined {
  if (v === undefined) return undefined;
  return Array.isArray(v) ? v.join(', ') : String(v);
}
