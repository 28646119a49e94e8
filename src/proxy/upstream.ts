// One interface for every upstream kind (undici's dispatcher idea): the built-in pool, an
// external uwsgi server (or several), an HTTP server, a static folder. The front proxy builds a
// ProxyContext, an Upstream fills the response and records what it saw.

import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import fsp, { type FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { Route } from '../config/schema.ts';
import { BodySpoolUnavailable, BodyTooLarge, ClientBodyTooSlow, ClientClosed, StratumError } from '../errors.ts';
import type { ForwardInfo } from './forward.ts';
import type { HostResponse } from '../host/response.ts';
import { isTicket, type Ticket } from '../pool/dispatch.ts';

export interface UpstreamTimings {
  /** performance.now() marks; 0 when not reached. */
  dispatchAt: number;
  /** A worker slot / connection was obtained and the request started on the wire. */
  connectAt: number;
  headAt: number;
  endAt: number;
  /** Layer durations reported by our own worker (ms), when the upstream is ours. */
  worker: { worker: number; app: number } | null;
}

export interface ProxyContext {
  req: IncomingMessage;
  res: HostResponse;
  route: Route;
  routeLabel: string;
  forward: ForwardInfo;
  startAt: number;
  readTimeoutMs: number;
  harakiriMs: number;
  timings: UpstreamTimings;
  /** Which server answered (label) and, for the pool, the worker pid. */
  upstreamLabel: string;
  upstreamKind: Upstream['kind'];
  workerPid: number;
  /** The trace context to send upstream (our CLIENT span), when tracing: each upstream carries it its own way. */
  traceparent: string | null;
  /** Called just before the response head goes to the client: last chance to add headers. */
  beforeHead(headers: string[]): void;
  bytesOut: number;
  error: StratumError | null;
  /** Set by an upstream while it serves: the client's connection closed before the response ended. */
  onClientGone: (() => void) | null;
}

/** What an upgrade request (WebSocket) carries to an upstream that can take it. */
export interface UpgradeContext {
  req: IncomingMessage;
  routeLabel: string;
  forward: ForwardInfo;
  error: StratumError | null;
}

export interface Upstream {
  readonly kind: 'pool' | 'uwsgi' | 'http' | 'static';
  readonly label: string;
  /** Serve ctx; resolves once the response is complete; rejects with a coded error. */
  handle(ctx: ProxyContext, body: RequestBody | null): Promise<void>;
  /** Take an upgrade (absent: the proxy answers 501, as nginx's uwsgi_pass cannot upgrade). */
  upgrade?(ctx: UpgradeContext, socket: Duplex, head: Buffer): void;
  close(): void;
  /**
   * Out of the route table after a reload: stop what runs on its own (health checks) and let kept
   * connections go once the requests still on them are done. Absent: nothing to stop.
   */
  retire?(): void;
}

/** A request body ready to send: the live stream (known length) or a spooled copy. */
export interface RequestBody {
  length: number;
  /** A fresh readable of the body (a spooled body can be opened again for a retry). */
  open(): Readable | Buffer;
  replayable: boolean;
  cleanup(): void;
}

/** Bodies up to this size stay in memory (one buffer), larger ones go to a temp file. */
const MEMORY_SPOOL = 1024 * 1024;
/** A body's buffer starts this small and doubles as it fills (up to its length, or MEMORY_SPOOL). */
const FIRST_BUFFER = 16 * 1024;
/** Once a body goes to its file, it is gathered in a buffer this size between two writes. */
const FILE_BUFFER = 64 * 1024;

export interface BodyOptions {
  /** Read the whole body before the request goes on (nginx request buffering); chunked bodies always are. */
  buffer?: boolean;
  /** Stops a body still being read (client_body_timeout, broken chunked framing) with signal.reason. */
  signal?: AbortSignal;
  /**
   * Least average rate (bytes/s) of a body being read, after `minRateGraceMs`: a body is allowed
   * grace + size / minRate to arrive (Apache mod_reqtimeout's MinRate). 0 or absent: no floor.
   */
  minRate?: number;
  minRateGraceMs?: number;
}

/** The request announces a body (Content-Length, even 0, or Transfer-Encoding). */
export function announcesBody(req: IncomingMessage): boolean {
  return req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
}

/**
 * Prepare the client's body. Content-Length bodies are checked against the limit before a byte
 * is read; then, with `buffer`, read whole like chunked bodies, else streamed straight through.
 * Chunked bodies are always spooled — uwsgi needs CONTENT_LENGTH before the first body byte, as
 * nginx's client_body_buffer_size/client_body_temp do — in memory up to 1 MiB, then to a file.
 */
export async function prepareBody(
  req: IncomingMessage,
  limit: number,
  opts: BodyOptions = {},
): Promise<RequestBody | null> {
  if (!announcesBody(req)) return null;
  let length = -1;
  if (req.headers['transfer-encoding'] === undefined) {
    length = Number(req.headers['content-length']);
    if (length > limit) throw new BodyTooLarge(limit);
    if (length === 0) return { length: 0, open: () => Buffer.alloc(0), replayable: true, cleanup() {} };
    if (!opts.buffer) return { length, open: () => req, replayable: false, cleanup() {} };
  }
  return spool(req, limit, length, opts);
}

/**
 * Read a body whole. Its bytes are copied into one buffer as they come (nginx's
 * client_body_buffer_size), never kept as the parser's chunks: a body sent a byte per TCP segment
 * costs its own size, not a Buffer object per byte. The buffer doubles as it fills, up to the
 * Content-Length (or MEMORY_SPOOL); past MEMORY_SPOOL the body goes to a temp file, FILE_BUFFER at a time.
 */
function spool(req: IncomingMessage, limit: number, announced: number, opts: BodyOptions): Promise<RequestBody> {
  const { signal } = opts;
  return new Promise((resolve, reject) => {
    // Grown as bytes come, never sized by what the client announces: a Content-Length costs nothing
    // until the bytes are there (nginx allocates client_body_buffer_size, not the length).
    const most = announced > 0 ? Math.min(announced, MEMORY_SPOOL) : MEMORY_SPOOL;
    let buf = Buffer.allocUnsafe(Math.min(most, FIRST_BUFFER));
    let used = 0;
    let size = 0;
    let file: SpoolFile | null = null;
    /** Bytes that arrived while the buffer was being written out (the client is paused then). */
    const pending: Buffer[] = [];
    let writing = false;
    let ended = false;
    let done = false;
    const startAt = performance.now();
    const minRate = opts.minRate ?? 0;
    const graceMs = opts.minRateGraceMs ?? 0;
    const fail = (err: StratumError) => {
      if (done) return;
      done = true;
      signal?.removeEventListener('abort', onAbort);
      req.removeListener('data', onData);
      req.pause();
      file?.close();
      reject(err);
    };
    const spoolFailed = (err: unknown) => fail(spoolError(err));
    const onAbort = () => fail(signal!.reason as StratumError);
    if (signal?.aborted) return onAbort();
    signal?.addEventListener('abort', onAbort, { once: true });
    const finish = () => {
      if (done) return;
      done = true;
      signal?.removeEventListener('abort', onAbort);
      if (!file) {
        // A chunked body's doubling can leave up to half its buffer unused: keep only what it holds.
        const held = buf.subarray(0, used);
        const body = used * 4 < buf.length * 3 ? Buffer.from(held) : held;
        resolve({ length: size, open: () => body, replayable: true, cleanup() {} });
        return;
      }
      const f = file;
      resolve({ length: size, open: () => f.open(), replayable: true, cleanup: () => f.close() });
    };
    /** Copy what fits of `chunk` into the buffer; the rest, if the buffer is full. */
    const take = (chunk: Buffer): Buffer | null => {
      let room = buf.length - used;
      if (chunk.length > room && !file && buf.length < most) {
        let cap = buf.length * 2;
        while (cap < used + chunk.length) cap *= 2;
        const bigger = Buffer.allocUnsafe(Math.min(cap, most));
        buf.copy(bigger, 0, 0, used);
        buf = bigger;
        room = buf.length - used;
      }
      const n = Math.min(room, chunk.length);
      chunk.copy(buf, used, 0, n);
      used += n;
      return n < chunk.length ? chunk.subarray(n) : null;
    };
    // The buffer is full (or the body ended in file mode): write it out, the client paused meanwhile.
    const flush = async () => {
      writing = true;
      req.pause();
      try {
        if (!file) {
          const f = await SpoolFile.create();
          if (done) return f.close(); // failed (client gone, timeout) while it was being opened
          file = f;
        }
        for (;;) {
          await file.append(buf.subarray(0, used));
          if (done) return;
          if (buf.length !== FILE_BUFFER) buf = Buffer.allocUnsafe(FILE_BUFFER); // the 1 MiB one is done with
          used = 0;
          let rest: Buffer | null = null;
          while (pending.length > 0 && rest === null) rest = take(pending.shift()!);
          if (rest !== null) pending.unshift(rest);
          else if (!(ended && used > 0)) break;
        }
      } finally {
        writing = false;
      }
      if (ended) return finish();
      req.resume();
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) return fail(new BodyTooLarge(limit));
      if (minRate > 0) {
        const ms = performance.now() - startAt;
        if (ms > graceMs + (size / minRate) * 1000) {
          return fail(new ClientBodyTooSlow(Math.round((size * 1000) / ms), minRate));
        }
      }
      if (writing) return void pending.push(chunk);
      const rest = take(chunk);
      if (rest === null) return;
      pending.push(rest);
      flush().catch(spoolFailed);
    };
    req.on('data', onData);
    req.once('end', () => {
      ended = true;
      if (writing) return; // flush finishes
      if (file && used > 0) flush().catch(spoolFailed);
      else finish();
    });
    // The client went away (or its framing broke) before the body was complete.
    req.once('error', () => fail(signal?.aborted ? (signal.reason as StratumError) : new ClientClosed()));
  });
}

/** Any failure of the temp file (mkdtemp, open, write, close) as the request's coded answer. */
function spoolError(err: unknown): StratumError {
  if (err instanceof StratumError) return err;
  const e = err as NodeJS.ErrnoException;
  return new BodySpoolUnavailable(e?.code ?? 'EIO', String(e?.message ?? err));
}

/**
 * A spooled body's temp file, unlinked as soon as it is open (as nginx's client_body_temp files
 * are): only the descriptor names it, so a tmp cleaner cannot take it from under a request, and a
 * crash leaves nothing behind. Read back with positional reads, once per (re)send.
 */
class SpoolFile {
  #fh: FileHandle;
  #size = 0;
  #closed = false;

  private constructor(fh: FileHandle) {
    this.#fh = fh;
  }

  static async create(): Promise<SpoolFile> {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'stratum-body-'));
    try {
      return new SpoolFile(await fsp.open(path.join(dir, 'body'), 'w+', 0o600));
    } finally {
      await fsp.rm(dir, { recursive: true, force: true }).catch(() => {});
    }
  }

  async append(buf: Buffer): Promise<void> {
    for (let off = 0; off < buf.length;) {
      const { bytesWritten } = await this.#fh.write(buf, off, buf.length - off, this.#size);
      off += bytesWritten;
      this.#size += bytesWritten;
    }
  }

  open(): Readable {
    const stream = this.#fh.createReadStream({ start: 0, end: Math.max(0, this.#size - 1), autoClose: false });
    // Whoever reads it sees a read error as the stream's error; none may reach the process.
    stream.on('error', () => {});
    return stream;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#fh.close().catch(() => {});
  }
}

/** Write the upstream's head to the client, after the proxy's own headers are added. */
export function sendHead(ctx: ProxyContext, statusCode: number, statusMessage: string, headers: string[]): void {
  ctx.beforeHead(headers);
  ctx.res.writeHead(statusCode, statusMessage || undefined, headers);
}

/**
 * A slot for ctx: at once, or once the queue hands one over. While it waits, a client that goes
 * away leaves the queue at once (both pool upstreams queue the same way).
 */
export function slotFor<T>(got: T | Ticket<T>, ctx: ProxyContext): T | Promise<T> {
  if (!isTicket(got)) return got;
  ctx.onClientGone = () => got.cancel();
  return got.promise.then((slot) => {
    ctx.onClientGone = null;
    return slot;
  });
}
