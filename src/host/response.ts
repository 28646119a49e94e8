// The response class of every server an app writes into: the front's (`http.createServer({
// ServerResponse: HostResponse })`, where a pool route calls the app in-process) and the uwsgi
// bridge's in the workers. The app writes its head itself, so what must ride on that moment — the
// proxy's X-Request-Id and Server-Timing, the worker's timing header on our uwsgi hop, the layer
// marks, harakiri's "too late for a 504" — hooks in here, whenever and however the app produces
// it (writeHead, or an implicit head at the first write). Upstreams that relay a response through
// the front write their head through sendHead() and leave the hook unset.

import type { IncomingMessage, OutgoingHttpHeaders } from 'node:http';
import type { Socket } from 'node:net';
import type { Transform } from 'node:stream';
import { ResponseBuffer, type BufferLimits, type WriteCallback } from '../proxy/response-buffer.ts';

const { ServerResponse } = process.getBuiltinModule('node:http');

/**
 * What stratumTransform may choose: a Transform, or a writer together with the stream its output
 * comes out of — compress.ts's Compression, whose write() also flushes the encoder when the app pauses.
 */
export type BodyTransform =
  | Transform
  | { readonly stream: Transform; write(chunk: Buffer | string): boolean; end(chunk?: Buffer | string): void };

interface BodyWriter {
  write(chunk: unknown, encoding?: BufferEncoding): boolean;
  end(chunk?: unknown, encoding?: BufferEncoding): void;
}

type RawWrite = (data: Buffer | string, encoding: unknown, cb: unknown, size?: number) => boolean;
const proto = ServerResponse.prototype as unknown as { _writeRaw: RawWrite };
/** OutgoingMessage's own: to the socket when the response owns it, else to its outputData. */
const writeRaw = proto._writeRaw;
const lengthOf = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(ServerResponse.prototype), 'writableLength')!
  .get as (this: unknown) => number;

export class HostResponse<R extends IncomingMessage = IncomingMessage> extends ServerResponse<R> {
  /** Called once, just before the head goes out, to add the proxy's headers (flat pairs). */
  stratumHead: ((headers: string[]) => void) | null = null;
  /** Body bytes the app wrote, for the access log. */
  stratumBytes = 0;
  /**
   * Stratum has answered in the app's place (harakiri): what the app still writes is dropped,
   * instead of failing in its code with ERR_HTTP_HEADERS_SENT.
   */
  stratumAbandon = false;
  /** Called once when the app ends its response (whatever is still buffered for the client). */
  stratumEnd: (() => void) | null = null;
  /**
   * Response buffering for this response (set by the upstream before the app writes): what the
   * socket cannot take at once is held in a ResponseBuffer, and write() keeps returning true,
   * within these limits. null: Node's own back-pressure (write() false once the socket is full).
   */
  stratumBuffering: BufferLimits | null = null;
  /**
   * Chosen once, just before the head goes out (after stratumHead, with every header already set
   * on the response, those given to writeHead included): a transform every body byte the app
   * writes passes through on its way to the socket and the response buffer — compression, for
   * one. It may change the headers (setHeader/removeHeader: Content-Encoding, Vary, ETag); a
   * Content-Length is dropped when it returns one. null: the body goes as the app writes it.
   */
  stratumTransform: ((statusCode: number) => BodyTransform | null) | null = null;
  #buffer: ResponseBuffer | null = null;
  /** Where the app's body goes when a transform was chosen. */
  #transform: BodyWriter | null = null;
  #proxyWrites = false;

  static {
    // The bytes held in the buffer are pending bytes of this response: end() then queues its last
    // write behind them (instead of emitting 'finish' at once), and the server's 'drain' waits for them.
    Object.defineProperty(HostResponse.prototype, 'writableLength', {
      configurable: true,
      get(this: HostResponse) {
        return lengthOf.call(this) + (this.#buffer?.length ?? 0);
      },
    });
  }

  /**
   * Every byte of the response on its way to the socket (HTTP framing included) passes here. The
   * fast path is Node's own: only once the socket has refused more (its write returned false) do
   * later bytes wait in the buffer, until it is empty again.
   */
  _writeRaw(data: Buffer | string, encoding: unknown, cb: unknown, size?: number): boolean {
    const limits = this.stratumBuffering;
    const buffer = this.#buffer;
    if (limits === null || ((buffer === null || buffer.idle) && !this.#owns())) {
      return writeRaw.call(this, data, encoding, cb, size);
    }
    if (buffer === null || buffer.idle) {
      if (writeRaw.call(this, data, encoding, cb, size)) return true;
      // The socket is full: from here on, bytes wait in the buffer until it drains.
      (buffer ?? this.#startBuffer(limits)).waitForDrain();
      return true;
    }
    if (typeof encoding === 'function') return buffer.push(data, null, encoding as WriteCallback);
    return buffer.push(data, (encoding as BufferEncoding | null) ?? null, (cb as WriteCallback | null) ?? null);
  }

  /** The response is the socket's current one and may write to it directly. */
  #owns(): boolean {
    const conn = this.socket as (Socket & { _httpMessage?: unknown }) | null;
    return conn !== null && !conn.destroyed && conn.writable && conn._httpMessage === this;
  }

  #startBuffer(limits: BufferLimits): ResponseBuffer {
    const socket = this.socket!;
    const buffer = new ResponseBuffer(socket, limits, {
      // Back under the limits: the writer Node told to wait (write() false) may go on.
      onRelieved: () => {
        if (this.writableNeedDrain) this.emit('drain');
      },
      // The temp file failed with part of the response in it, or the client stopped reading for
      // sendTimeout: the response cannot be completed.
      onFailure: () => socket.destroy(),
    });
    this.#buffer = buffer;
    const done = () => {
      socket.removeListener('close', done);
      this.removeListener('finish', done);
      buffer.discard();
    };
    socket.once('close', done);
    this.once('finish', done);
    return buffer;
  }

  override writeHead(statusCode: number, ...rest: unknown[]): this {
    if (this.stratumAbandon && !this.#proxyWrites) return this;
    const hook = this.stratumHead;
    if (hook !== null && !this.headersSent) {
      this.stratumHead = null;
      const extra: string[] = [];
      hook(extra);
      for (let i = 0; i < extra.length; i += 2) this.setHeader(extra[i]!, extra[i + 1]!);
    }
    const choose = this.stratumTransform;
    if (choose !== null && !this.headersSent && !this.#proxyWrites) {
      this.stratumTransform = null;
      // The chooser sees the whole head: writeHead's own headers are set on the response first.
      // As Node reads its arguments: (code, reason, headers), or (code, headers) — and a reason
      // that is not a string (undefined, as a fetch Response's empty statusText gives) leaves
      // headers in the third place, else in the second (`obj ??= reason`).
      const reason = typeof rest[0] === 'string' ? rest[0] : undefined;
      this.#setHeaders(typeof rest[0] === 'string' ? rest[1] : (rest[1] ?? rest[0]));
      rest.length = 0;
      if (reason !== undefined) rest.push(reason);
      const t = choose(statusCode);
      if (t !== null) this.#pipeFrom(t);
    }
    return (super.writeHead as (code: number, ...r: unknown[]) => this)(statusCode, ...rest);
  }

  override write(chunk: unknown, ...rest: unknown[]): boolean {
    if (this.stratumAbandon && !this.#proxyWrites) return true;
    this.stratumBytes += byteLength(chunk);
    if (this.stratumTransform !== null && !this.headersSent) this.#implicitHeader();
    const t = this.#transform;
    if (t !== null) return t.write(chunk, typeof rest[0] === 'string' ? (rest[0] as BufferEncoding) : undefined);
    return (super.write as (c: unknown, ...r: unknown[]) => boolean)(chunk, ...rest);
  }

  override end(...args: unknown[]): this {
    if (this.stratumAbandon && !this.#proxyWrites) return this;
    const chunk = args.length > 0 && typeof args[0] !== 'function' ? args[0] : undefined;
    if (chunk !== undefined && chunk !== null) this.stratumBytes += byteLength(chunk);
    if (this.stratumTransform !== null && !this.headersSent && !this.#proxyWrites) {
      // As Node does for end(body) with no head yet: the length is the body's, unless a transform is chosen.
      (this as unknown as { _contentLength: number | null })._contentLength = byteLength(chunk);
      this.#implicitHeader();
    }
    const ended = this.stratumEnd;
    this.stratumEnd = null;
    const t = this.#transform;
    if (t !== null && !this.#proxyWrites) {
      const cb = args.find((a) => typeof a === 'function') as (() => void) | undefined;
      if (cb) this.once('finish', cb);
      if (chunk !== undefined && chunk !== null) {
        t.end(chunk, typeof args[1] === 'string' ? (args[1] as BufferEncoding) : undefined);
      } else t.end();
    } else (super.end as (...a: unknown[]) => this)(...args);
    ended?.();
    return this;
  }

  /** Node's own implicit head (writeHead with the status set), which runs the chooser. */
  #implicitHeader(): void {
    (this as unknown as { _implicitHeader(): void })._implicitHeader();
  }

  /** The transform's output becomes the body: written on as it comes, ended when it ends. */
  #pipeFrom(chosen: BodyTransform): void {
    const t = 'pipe' in chosen ? chosen : chosen.stream;
    if ('pipe' in chosen) this.#transform = chosen as unknown as BodyWriter;
    else {
      // A string with an encoding other than UTF-8 reaches a writer that takes none as bytes.
      const bytes = (c: unknown, enc?: BufferEncoding) =>
        typeof c === 'string' && enc !== undefined ? Buffer.from(c, enc) : (c as Buffer | string);
      this.#transform = {
        write: (c, enc) => chosen.write(bytes(c, enc)),
        end: (c, enc) => (c === undefined ? chosen.end() : chosen.end(bytes(c, enc))),
      };
    }
    this.removeHeader('content-length');
    (this as unknown as { _contentLength: number | null })._contentLength = null;
    const write = super.write.bind(this) as (c: Buffer) => boolean;
    const end = super.end.bind(this) as () => this;
    t.on('data', (c: Buffer) => {
      if (!write(c)) t.pause();
    });
    // The socket (or the response buffer) took what was waiting: the transform goes on.
    this.on('drain', () => t.resume());
    // Room again in the transform: the app, told to wait by write(), may go on.
    t.on('drain', () => {
      if (!this.destroyed) this.emit('drain');
    });
    t.once('end', () => {
      if (!this.destroyed) end();
    });
    // A transform fails only on a bug or a destroyed stream: the client gets a cut response.
    t.once('error', () => this.destroy());
    this.once('close', () => t.destroy());
  }

  #setHeaders(headers: unknown): void {
    if (headers === undefined || headers === null) return;
    if (Array.isArray(headers)) {
      const pairs: Array<[string, unknown]> = [];
      if (headers.length > 0 && Array.isArray(headers[0]))
        for (const h of headers as Array<[string, unknown]>) pairs.push([h[0], h[1]]);
      else for (let i = 0; i + 1 < headers.length; i += 2) pairs.push([String(headers[i]), headers[i + 1]]);
      for (const [k] of pairs) this.removeHeader(k);
      for (const [k, v] of pairs) this.appendHeader(k, v as string);
      return;
    }
    for (const [k, v] of Object.entries(headers as OutgoingHttpHeaders)) if (v !== undefined) this.setHeader(k, v);
  }

  /**
   * Stratum answers in the app's place (harakiri, a broken worker): a short error page when no head
   * has gone out yet (and the connection closes after it), else the response is cut; from here on
   * what the app still writes is dropped.
   */
  abandon(statusCode: number, text: string): void {
    if (!this.headersSent) {
      this.stratumHead = null;
      this.shouldKeepAlive = false;
      this.answer(statusCode, ['content-type', 'text/plain; charset=utf-8', 'cache-control', 'no-store'], text);
    } else this.destroy();
    this.stratumAbandon = true;
  }

  /** Stratum's own short answer (an error page), written even when the app's writes are dropped. */
  answer(statusCode: number, headers: string[], body: string | undefined): void {
    this.#proxyWrites = true;
    try {
      this.writeHead(statusCode, headers);
      this.end(body);
    } finally {
      this.#proxyWrites = false;
    }
  }
}

function byteLength(chunk: unknown): number {
  if (typeof chunk === 'string') return Buffer.byteLength(chunk);
  return (chunk as { byteLength?: number } | null)?.byteLength ?? 0;
}
