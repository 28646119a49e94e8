// One interface for every upstream kind (undici's dispatcher idea): the built-in pool, an
// external uwsgi server (or several), an HTTP server, a static folder. The front proxy builds a
// ProxyContext, an Upstream fills the response and records what it saw.

import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { createReadStream, createWriteStream, mkdtempSync, rmSync, type WriteStream } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { Route } from '../config/schema.ts';
import { BodySpoolFailed, BodyTooLarge, ClientClosed, type StratumError } from '../errors.ts';
import type { ForwardInfo } from './forward.ts';
import type { HostResponse } from '../host/response.ts';

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
}

/** A request body ready to send: the live stream (known length) or a spooled copy. */
export interface RequestBody {
  length: number;
  /** A fresh readable of the body (a spooled body can be opened again for a retry). */
  open(): Readable | Buffer;
  replayable: boolean;
  cleanup(): void;
}

const MEMORY_SPOOL = 1024 * 1024;

export interface BodyOptions {
  /** Read the whole body before the request goes on (nginx request buffering); chunked bodies always are. */
  buffer?: boolean;
  /** Stops a body still being read (client_body_timeout, broken chunked framing) with signal.reason. */
  signal?: AbortSignal;
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
export async function prepareBody(req: IncomingMessage, limit: number, opts: BodyOptions = {}): Promise<RequestBody | null> {
  if (!announcesBody(req)) return null;
  if (req.headers['transfer-encoding'] === undefined) {
    const length = Number(req.headers['content-length']);
    if (length > limit) throw new BodyTooLarge(limit);
    if (length === 0) return { length: 0, open: () => Buffer.alloc(0), replayable: true, cleanup() {} };
    if (!opts.buffer) return { length, open: () => req, replayable: false, cleanup() {} };
  }
  return spool(req, limit, opts.signal);
}

function spool(req: IncomingMessage, limit: number, signal: AbortSignal | undefined): Promise<RequestBody> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let size = 0;
    let file: WriteStream | null = null;
    let dir: string | null = null;
    let done = false;
    const cleanup = () => {
      if (dir) rmSync(dir, { recursive: true, force: true });
    };
    const fail = (err: StratumError) => {
      if (done) return;
      done = true;
      signal?.removeEventListener('abort', onAbort);
      req.removeListener('data', onData);
      req.pause();
      file?.destroy();
      cleanup();
      reject(err);
    };
    const onAbort = () => fail(signal!.reason as StratumError);
    if (signal?.aborted) return onAbort();
    signal?.addEventListener('abort', onAbort, { once: true });
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) return fail(new BodyTooLarge(limit));
      if (file) {
        if (!file.write(chunk)) {
          req.pause();
          file.once('drain', () => req.resume());
        }
        return;
      }
      parts.push(chunk);
      if (size > MEMORY_SPOOL) {
        dir = mkdtempSync(path.join(os.tmpdir(), 'stratum-body-'));
        file = createWriteStream(path.join(dir, 'body'));
        file.once('error', (err) => fail(new BodySpoolFailed(err.message)));
        for (const p of parts.splice(0)) file.write(p);
      }
    };
    req.on('data', onData);
    req.once('end', () => {
      if (done) return;
      done = true;
      signal?.removeEventListener('abort', onAbort);
      if (!file) {
        const buf = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
        resolve({ length: size, open: () => buf, replayable: true, cleanup() {} });
        return;
      }
      const f = file as WriteStream;
      const p = path.join(dir!, 'body');
      f.end(() => resolve({ length: size, open: () => createReadStream(p), replayable: true, cleanup }));
    });
    // The client went away (or its framing broke) before the body was complete.
    req.once('error', () => fail(signal?.aborted ? (signal.reason as StratumError) : new ClientClosed()));
  });
}

/** Write the upstream's head to the client, after the proxy's own headers are added. */
export function sendHead(ctx: ProxyContext, statusCode: number, statusMessage: string, headers: string[]): void {
  ctx.beforeHead(headers);
  ctx.res.writeHead(statusCode, statusMessage || undefined, headers);
}
