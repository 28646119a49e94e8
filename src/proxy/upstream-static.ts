// A static folder (nginx's `root` + `index` + `try_files $uri $uri/ /index.html`): GET and HEAD;
// strong ETag and Last-Modified with 304 (If-None-Match first, If-Modified-Since only without it);
// byte ranges, one (206) or several (multipart/byteranges), 416 when none fits, If-Range by ETag
// or date; Cache-Control per route; Content-Type from mime-db (the `mime` package); a precompressed
// FILE.br / .zst / .gz sibling when the client accepts it, else compression on the fly.
//
// No way out of the root: the path is percent-decoded once, any "..", ".", "\\", NUL or leftover
// "%" segment is refused (so "%2e%2e" and "%252e" both fail), and the real path (symlinks
// resolved) must stay inside the real root unless the route allows symlinks that leave it.

import { randomBytes } from 'node:crypto';
import { promises as fsp, type Stats } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { Readable, type Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import mime from 'mime';
import type { Route, StratumConfig } from '../config/schema.ts';
import { RouteNotFound, StaticForbidden } from '../errors.ts';
import {
  compressible,
  compressibleType,
  compressionSettings,
  createEncoder,
  preferences,
  varyWithAcceptEncoding,
  weakenEtag,
  type CompressionSettings,
  type Encoding,
} from './compress.ts';
import { sendHead, type ProxyContext, type Upstream } from './upstream.ts';

type StaticOptions = Route['static'];

/** What a route without a `static` block does (routes built in code, older worker configs). */
const DEFAULTS: StaticOptions = {
  index: 'index.html',
  fallback: null,
  cacheControl: null,
  precompressed: true,
  allowSymlinksOutside: false,
};

/** A precompressed sibling is FILE + this. */
const SIBLING: Record<Encoding, string> = { br: '.br', zstd: '.zst', gzip: '.gz' };
/** Offered from disk whatever node:zlib can do: serving a file needs no encoder. */
const SIBLING_ORDER: readonly Encoding[] = ['br', 'zstd', 'gzip'];

/**
 * More ranges than this (after overlapping ones are merged) and the Range header is ignored: the
 * whole file is sent. nginx's max_ranges is unbounded by default; Apache's MaxRanges is 200. A
 * request of thousands of tiny ranges would cost a part head each (CVE-2011-3192).
 */
const MAX_RANGES = 200;

interface Found {
  /** The path as asked for (inside the root), which names the type and the siblings. */
  file: string;
  real: string;
}

interface Representation {
  real: string;
  fh: FileHandle;
  stat: Stats;
  /** A precompressed sibling's encoding; null: the file itself. */
  encoding: Encoding | null;
}

export class StaticUpstream implements Upstream {
  readonly kind = 'static' as const;
  readonly label: string;
  #root: string;
  #realRoot: Promise<string>;
  #config: StratumConfig | null;

  /** `config`: where proxy.compression comes from; null = no compression on the fly. */
  constructor(root: string, config: StratumConfig | null = null) {
    this.#root = path.resolve(root);
    this.label = `static:${this.#root}`;
    this.#realRoot = fsp.realpath(this.#root);
    this.#config = config;
  }

  async handle(ctx: ProxyContext): Promise<void> {
    const { req, res } = ctx;
    ctx.timings.connectAt = performance.now();
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('Method Not Allowed\n');
      ctx.timings.headAt = ctx.timings.endAt = performance.now();
      return;
    }
    const opts = ctx.route.static ?? DEFAULTS;
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const raw = q >= 0 ? url.slice(0, q) : url;
    const prefix = ctx.route.path === '/' ? '' : ctx.route.path.replace(/\/$/, '');
    // Routes match the normalised path: a raw one that does not start with the prefix ("//static/x",
    // "/%73tatic/x") cannot be cut at the prefix's length, and is no canonical file name either.
    if (!raw.startsWith(prefix)) throw new StaticForbidden(raw);
    let rel = raw.slice(prefix.length);
    try {
      rel = decodeURIComponent(rel);
    } catch {
      throw new StaticForbidden(rel);
    }
    // One decoding pass only: a "%" still there afterwards is a double-encoding attempt.
    const segments = rel.split('/');
    if (rel.includes('\0') || rel.includes('\\') || segments.some((s) => s === '..' || s === '.' || s.includes('%')))
      throw new StaticForbidden(rel);
    let found = await this.#lookup(rel, opts);
    if (found === 'directory') {
      // nginx answers a directory named without its slash with 301 to the slashed name, so that the
      // index page's relative links resolve inside it. Leading slashes collapse: "//host/" is a
      // protocol-relative URL, which would send the client to another site.
      const location = `/${raw.replace(/^\/+/, '')}/${q >= 0 ? url.slice(q) : ''}`;
      ctx.timings.headAt = performance.now();
      sendHead(ctx, 301, 'Moved Permanently', [
        'location',
        location,
        'content-type',
        'text/plain',
        'content-length',
        '0',
      ]);
      res.end();
      ctx.timings.endAt = performance.now();
      return;
    }
    if (found === null && opts.fallback !== null) {
      const fallback = await this.#lookup(`/${opts.fallback.replace(/^\/+/, '')}`, opts);
      if (fallback !== 'directory') found = fallback;
    }
    if (found === null) throw new RouteNotFound(req.headers.host ?? '', url);
    await this.#serve(ctx, found, opts);
  }

  close(): void {}

  /**
   * The file for `rel` (a directory's index), 'directory' for a directory named without its slash,
   * null when there is none. Throws StaticForbidden when its real path leaves the root.
   */
  async #lookup(rel: string, opts: StaticOptions): Promise<Found | 'directory' | null> {
    const file = path.join(this.#root, rel);
    const real = await this.#realInside(file, opts, true);
    if (real === null) return null;
    const stat = await fsp.stat(real).catch(() => null);
    if (stat === null) return null;
    if (stat.isDirectory()) {
      if (!rel.endsWith('/')) return 'directory';
      if (opts.index === null) return null;
      return this.#lookup(`${rel.endsWith('/') ? rel : `${rel}/`}${opts.index}`, opts);
    }
    return stat.isFile() ? { file, real } : null;
  }

  /** The real path of `file` when it exists; one outside the root is refused (`strict`) or skipped. */
  async #realInside(file: string, opts: StaticOptions, strict: boolean): Promise<string | null> {
    let real: string;
    try {
      real = await fsp.realpath(file);
    } catch {
      return null; // ENOENT, ENOTDIR, ELOOP, EACCES: no file to serve here
    }
    if (!opts.allowSymlinksOutside) {
      const root = await this.#realRoot;
      if (real !== root && !real.startsWith(root + path.sep)) {
        if (strict) throw new StaticForbidden(path.relative(this.#root, file));
        return null;
      }
    }
    return real;
  }

  /** Open a sibling FILE.br (…) for the first encoding the client accepts that has one. */
  async #sibling(found: Found, opts: StaticOptions, accepted: readonly Encoding[]): Promise<Representation | null> {
    for (const encoding of accepted) {
      const real = await this.#realInside(found.file + SIBLING[encoding], opts, false);
      if (real === null) continue;
      const rep = await open(real, encoding);
      if (rep !== null) return rep;
    }
    return null;
  }

  async #serve(ctx: ProxyContext, found: Found, opts: StaticOptions): Promise<void> {
    const { req } = ctx;
    const type = contentType(found.file);
    const settings = this.#config === null ? null : compressionSettings(this.#config, ctx.route);
    const acceptEncoding = header(req.headers['accept-encoding']);
    const accepted = opts.precompressed ? preferences(acceptEncoding, settings?.encodings ?? SIBLING_ORDER) : [];
    let rep = accepted.length > 0 ? await this.#sibling(found, opts, accepted) : null;
    rep ??= await open(found.real, null);
    if (rep === null) throw new RouteNotFound(req.headers.host ?? '', req.url ?? '/');
    try {
      await this.#answer(ctx, rep, type, settings, opts, acceptEncoding);
    } finally {
      await rep.fh.close().catch(() => {});
    }
  }

  async #answer(
    ctx: ProxyContext,
    rep: Representation,
    type: string,
    settings: CompressionSettings | null,
    opts: StaticOptions,
    acceptEncoding: string | undefined,
  ): Promise<void> {
    const { req, res } = ctx;
    const { stat } = rep;
    const size = stat.size;
    const mtimeSec = Math.floor(stat.mtimeMs / 1000);
    // nginx's form (size and mtime in hex), strong: the bytes are the file's; a sibling's names its encoding.
    const tag = `${size.toString(16)}-${Math.floor(stat.mtimeMs).toString(16)}`;
    const etag = `"${tag}${rep.encoding === null ? '' : `-${rep.encoding}`}"`;
    const lastModified = new Date(mtimeSec * 1000).toUTCString();
    const isGet = req.method === 'GET';

    // Encoded on the fly: the file itself, of a listed type, long enough, for a client that asks.
    const varies = rep.encoding !== null || (settings !== null && compressibleType(type, settings));
    const onTheFly =
      rep.encoding === null && settings !== null && isGet
        ? compressible(
            req.method,
            {
              statusCode: 200,
              contentType: type,
              contentEncoding: undefined,
              contentLength: String(size),
              contentRange: undefined,
              cacheControl: opts.cacheControl ?? undefined,
            },
            settings,
          )
          ? (preferences(acceptEncoding, settings.encodings)[0] ?? null)
          : null
        : null;

    const head = ['content-type', type, 'last-modified', lastModified, 'etag', onTheFly ? weakenEtag(etag) : etag];
    if (opts.cacheControl !== null) head.push('cache-control', opts.cacheControl);
    if (varies) head.push('vary', varyWithAcceptEncoding(undefined));
    if (rep.encoding !== null) head.push('content-encoding', rep.encoding);
    ctx.timings.headAt = performance.now();

    // Conditionals, RFC 9110 §13.2.2: If-None-Match (weak comparison), else If-Modified-Since.
    const inm = header(req.headers['if-none-match']);
    const ims = header(req.headers['if-modified-since']);
    if (inm !== undefined ? noneMatch(inm, etag) : ims !== undefined && notModifiedSince(ims, mtimeSec)) {
      sendHead(ctx, 304, 'Not Modified', head);
      res.end();
      ctx.timings.endAt = performance.now();
      return;
    }

    // Ranges: GET only (RFC 9110 §14.2), of the representation as stored (a sibling's encoded bytes).
    const range = header(req.headers.range);
    const ifRange = header(req.headers['if-range']);
    if (isGet && range !== undefined && (ifRange === undefined || ifRangeHolds(ifRange, etag, mtimeSec))) {
      const ranges = parseRange(range, size);
      if (ranges === 'unsatisfiable') {
        const body = 'Range Not Satisfiable\n';
        sendHead(ctx, 416, 'Range Not Satisfiable', [
          'content-range',
          `bytes */${size}`,
          'content-type',
          'text/plain',
          'content-length',
          String(body.length),
          'etag',
          etag,
          'last-modified',
          lastModified,
        ]);
        res.end(body);
        ctx.bytesOut += body.length;
        ctx.timings.endAt = performance.now();
        return;
      }
      if (ranges !== null) {
        await (ranges.length === 1 ? sendRange(ctx, rep, head, ranges[0]!) : sendRanges(ctx, rep, head, type, ranges));
        ctx.timings.endAt = performance.now();
        return;
      }
    }

    if (onTheFly === null) head.push('accept-ranges', 'bytes', 'content-length', String(size));
    else head.push('content-encoding', onTheFly);
    sendHead(ctx, 200, 'OK', head);
    if (!isGet || size === 0) {
      res.end();
      ctx.timings.endAt = performance.now();
      return;
    }
    const encoder = onTheFly === null || settings === null ? null : createEncoder(onTheFly, settings, size);
    await stream(ctx, rep.fh.createReadStream({ start: 0, end: size - 1, autoClose: false }), encoder);
    ctx.timings.endAt = performance.now();
  }
}

async function open(real: string, encoding: Encoding | null): Promise<Representation | null> {
  const fh = await fsp.open(real, 'r').catch(() => null);
  if (fh === null) return null;
  const stat = await fh.stat().catch(() => null);
  if (stat === null || !stat.isFile()) {
    await fh.close().catch(() => {});
    return null;
  }
  return { real, fh, stat, encoding };
}

/** Body bytes to the client, through `encoder` when set, counted as they go; a client gone ends it. */
async function stream(ctx: ProxyContext, source: Readable, encoder: Transform | null): Promise<void> {
  const last = encoder ?? source;
  last.on('data', (c: Buffer) => {
    ctx.bytesOut += c.length;
  });
  try {
    await (encoder === null ? pipeline(source, ctx.res) : pipeline(source, encoder, ctx.res));
  } catch {
    // The client went away, or the file could not be read past its head: the response is cut.
    ctx.res.destroy();
  }
}

type Range = [start: number, end: number];

function sendRange(ctx: ProxyContext, rep: Representation, head: string[], [start, end]: Range): Promise<void> {
  head.push('content-range', `bytes ${start}-${end}/${rep.stat.size}`, 'content-length', String(end - start + 1));
  sendHead(ctx, 206, 'Partial Content', head);
  return stream(ctx, rep.fh.createReadStream({ start, end, autoClose: false }), null);
}

/** Several ranges as multipart/byteranges (RFC 9110 §14.6), its length known before the first byte. */
function sendRanges(ctx: ProxyContext, rep: Representation, head: string[], type: string, ranges: Range[]) {
  const boundary = randomBytes(12).toString('hex');
  const size = rep.stat.size;
  const partHead = ([s, e]: Range) =>
    `\r\n--${boundary}\r\ncontent-type: ${type}\r\ncontent-range: bytes ${s}-${e}/${size}\r\n\r\n`;
  const tail = `\r\n--${boundary}--\r\n`;
  let length = Buffer.byteLength(tail);
  for (const r of ranges) length += Buffer.byteLength(partHead(r)) + r[1] - r[0] + 1;
  // The parts carry the type; a Content-Encoding (a sibling's) stays on the whole, as the parts are its bytes.
  const i = head.indexOf('content-type');
  head[i + 1] = `multipart/byteranges; boundary=${boundary}`;
  head.push('content-length', String(length));
  sendHead(ctx, 206, 'Partial Content', head);
  async function* parts() {
    for (const r of ranges) {
      yield Buffer.from(partHead(r));
      yield* rep.fh.createReadStream({ start: r[0], end: r[1], autoClose: false });
    }
    yield Buffer.from(tail);
  }
  return stream(ctx, Readable.from(parts(), { objectMode: false }), null);
}

/**
 * The ranges of a `bytes=` Range header within `size` bytes, sorted, overlapping and adjacent ones
 * merged; 'unsatisfiable' when none starts inside the file (416); null when the header is not a
 * valid bytes range set, or holds too many: then it is ignored and the whole file sent (RFC 9110 §14.2).
 */
export function parseRange(value: string, size: number): Range[] | 'unsatisfiable' | null {
  const m = /^\s*bytes\s*=(.*)$/i.exec(value);
  if (!m) return null;
  const out: Range[] = [];
  let specs = 0;
  for (const part of m[1]!.split(',')) {
    const spec = part.trim();
    if (spec === '') continue;
    const r = /^(\d*)\s*-\s*(\d*)$/.exec(spec);
    if (!r || (r[1] === '' && r[2] === '')) return null;
    if (++specs > MAX_RANGES * 4) return null;
    const first = r[1] === '' ? null : Number(r[1]);
    const last = r[2] === '' ? null : Number(r[2]);
    if ((first !== null && !Number.isSafeInteger(first)) || (last !== null && !Number.isSafeInteger(last))) {
      return null;
    }
    if (first === null) {
      // A suffix: the last N bytes.
      if (last! > 0 && size > 0) out.push([Math.max(0, size - last!), size - 1]);
      continue;
    }
    if (last !== null && last < first) return null;
    if (first >= size) continue;
    out.push([first, last === null ? size - 1 : Math.min(last, size - 1)]);
  }
  if (specs === 0) return null;
  if (out.length === 0) return 'unsatisfiable';
  out.sort((a, b) => a[0] - b[0]);
  const merged: Range[] = [out[0]!];
  for (const r of out.slice(1)) {
    const prev = merged[merged.length - 1]!;
    if (r[0] <= prev[1] + 1) prev[1] = Math.max(prev[1], r[1]);
    else merged.push(r);
  }
  return merged.length > MAX_RANGES ? null : merged;
}

/** If-None-Match against our ETag, weak comparison (RFC 9110 §13.1.2): W/ is ignored, `*` matches. */
function noneMatch(inm: string, etag: string): boolean {
  const ours = etag.replace(/^W\//, '');
  return inm.split(',').some((t) => {
    const tag = t.trim();
    return tag === '*' || tag.replace(/^W\//, '') === ours;
  });
}

/** Not modified: the file's mtime (whole seconds) is not after the date the client has. */
function notModifiedSince(ims: string, mtimeSec: number): boolean {
  const t = Date.parse(ims);
  return Number.isFinite(t) && mtimeSec * 1000 <= t;
}

/**
 * If-Range (RFC 9110 §13.1.5): an entity tag must equal ours by strong comparison (a weak one never
 * does); a date must equal our Last-Modified exactly. Otherwise the whole file is sent.
 */
function ifRangeHolds(ifRange: string, etag: string, mtimeSec: number): boolean {
  const v = ifRange.trim();
  if (v.startsWith('"') || v.startsWith('W/')) return v === etag && !etag.startsWith('W/');
  const t = Date.parse(v);
  return Number.isFinite(t) && t === mtimeSec * 1000;
}

/** Content-Type from mime-db; text types are sent as UTF-8 (nginx `charset utf-8`). */
function contentType(file: string): string {
  const type = mime.getType(file) ?? 'application/octet-stream';
  return type.startsWith('text/') ? `${type}; charset=utf-8` : type;
}

function header(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v.join(', ') : v;
}
