// The response class of every server an app writes into: the front's (`http.createServer({
// ServerResponse: HostResponse })`, where a pool route calls the app in-process) and the uwsgi
// bridge's in the workers. The app writes its head itself, so what must ride on that moment — the
// proxy's X-Request-Id and Server-Timing, the worker's timing header on our uwsgi hop, the layer
// marks, harakiri's "too late for a 504" — hooks in here, whenever and however the app produces
// it (writeHead, or an implicit head at the first write). Upstreams that relay a response through
// the front write their head through sendHead() and leave the hook unset.

import type { IncomingMessage } from 'node:http';

const { ServerResponse } = process.getBuiltinModule('node:http');

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
  #proxyWrites = false;

  override writeHead(statusCode: number, ...rest: unknown[]): this {
    if (this.stratumAbandon && !this.#proxyWrites) return this;
    const hook = this.stratumHead;
    if (hook !== null && !this.headersSent) {
      this.stratumHead = null;
      const extra: string[] = [];
      hook(extra);
      for (let i = 0; i < extra.length; i += 2) this.setHeader(extra[i]!, extra[i + 1]!);
    }
    return (super.writeHead as (code: number, ...r: unknown[]) => this)(statusCode, ...rest);
  }

  override write(chunk: unknown, ...rest: unknown[]): boolean {
    if (this.stratumAbandon && !this.#proxyWrites) return true;
    this.stratumBytes += byteLength(chunk);
    return (super.write as (c: unknown, ...r: unknown[]) => boolean)(chunk, ...rest);
  }

  override end(...args: unknown[]): this {
    if (this.stratumAbandon && !this.#proxyWrites) return this;
    if (args.length > 0 && typeof args[0] !== 'function') this.stratumBytes += byteLength(args[0]);
    const ended = this.stratumEnd;
    this.stratumEnd = null;
    const out = (super.end as (...a: unknown[]) => this)(...args);
    ended?.();
    return out;
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
