// HTTP upstreams (nginx's proxy_pass): kept connections through a keep-alive agent, bodies
// streamed both ways with backpressure, connect / header / total times recorded as nginx's
// $upstream_connect_time, $upstream_header_time and $upstream_response_time.

import http from 'node:http';
import type { Socket } from 'node:net';
import type { StratumConfig } from '../config/schema.ts';
import { StratumError, UpstreamBadResponse, UpstreamReset, UpstreamTimeout, UpstreamTruncated, UpstreamUnreachable } from '../errors.ts';
import { httpRequestHeaders, responseHeaders } from './forward.ts';
import { sendHead, type ProxyContext, type RequestBody, type Upstream } from './upstream.ts';

const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOENT', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ENOTFOUND', 'EACCES']);

export class HttpUpstream implements Upstream {
  readonly kind = 'http' as const;
  readonly label: string;
  #url: URL;
  #agent: http.Agent;
  #connectTimeoutMs: number;

  constructor(url: URL, config: StratumConfig) {
    this.#url = url;
    this.label = url.host;
    this.#connectTimeoutMs = config.proxy.connectTimeout * 1000;
    this.#agent = new http.Agent({ keepAlive: true, maxSockets: 1024, maxFreeSockets: 256, scheduling: 'lifo' });
  }

  handle(ctx: ProxyContext, body: RequestBody | null): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const { req, res } = ctx;
      const base = this.#url.pathname === '/' ? '' : this.#url.pathname.replace(/\/$/, '');
      let settled = false;
      const fail = (err: StratumError) => {
        if (settled) return;
        settled = true;
        ctx.timings.endAt = performance.now();
        upstream.destroy();
        reject(err);
      };
      const upstream = http.request({
        agent: this.#agent,
        host: this.#url.hostname,
        port: this.#url.port || 80,
        method: req.method,
        path: base + (req.url ?? '/'),
        headers: httpRequestHeaders(req, { ...ctx.forward, contentLength: body ? body.length : -1 }, ctx.extraHeaders),
        setHost: false,
      });
      let connectTimer: NodeJS.Timeout | null = null;
      let upstreamSocket: Socket | null = null;
      upstream.once('socket', (socket: Socket) => {
        upstreamSocket = socket;
        const connected = () => {
          if (connectTimer) clearTimeout(connectTimer);
          ctx.timings.connectAt = performance.now();
          socket.setTimeout(ctx.readTimeoutMs);
        };
        if (socket.connecting) {
          connectTimer = setTimeout(() => fail(new UpstreamTimeout(this.label, 'connect', this.#connectTimeoutMs)), this.#connectTimeoutMs);
          socket.once('connect', connected);
        } else connected();
      });
      upstream.on('timeout', () => fail(new UpstreamTimeout(this.label, ctx.timings.headAt ? 'read' : 'response head', ctx.readTimeoutMs)));
      upstream.setTimeout(ctx.readTimeoutMs);
      upstream.on('error', (err: NodeJS.ErrnoException & { reason?: string }) => {
        if (connectTimer) clearTimeout(connectTimer);
        const code = err.code ?? err.message;
        const where = ctx.timings.headAt ? ' inside the response body' : ' before the response head';
        if (!ctx.timings.connectAt && UNREACHABLE.has(err.code ?? '')) fail(new UpstreamUnreachable(this.label, code));
        // Node's parser refused the response (garbage status line, bad header, bad framing).
        else if (err.code?.startsWith('HPE_')) fail(new UpstreamBadResponse(`${err.code} (${err.reason ?? err.message})`));
        else if (err.code === 'ECONNRESET' && upstreamSocket?.readableEnded) fail(new UpstreamTruncated(`closed${where}`));
        else fail(new UpstreamReset(this.label, `${code}${where}`));
      });
      upstream.on('response', (up) => {
        ctx.timings.headAt = performance.now();
        if (res.destroyed) return fail(new UpstreamReset(this.label, 'client went away'));
        try {
          sendHead(ctx, up.statusCode ?? 502, up.statusMessage ?? '', responseHeaders(up.rawHeaders, null));
        } catch (err) {
          return fail(new UpstreamBadResponse(`head not forwardable: ${(err as Error).message}`));
        }
        up.on('data', (chunk: Buffer) => {
          ctx.bytesOut += chunk.length;
          if (!res.write(chunk)) {
            up.pause();
            res.once('drain', () => up.resume());
          }
        });
        up.once('end', () => {
          if (settled) return;
          settled = true;
          ctx.timings.endAt = performance.now();
          res.end();
          resolve();
        });
        // Cut short: a clean close is a truncated response, anything else a reset.
        const cut = () => fail(upstreamSocket?.readableEnded
          ? new UpstreamTruncated(`${up.headers['content-length'] ? 'Content-Length' : 'chunked'} body ended early`)
          : new UpstreamReset(this.label, 'connection lost inside the response body'));
        up.once('aborted', cut);
        up.once('error', cut);
      });
      res.once('close', () => {
        if (!settled && !res.writableFinished) {
          settled = true;
          upstream.destroy();
          resolve();
        }
      });
      const b = body?.open();
      if (!b) upstream.end();
      else if (Buffer.isBuffer(b)) upstream.end(b);
      else b.pipe(upstream);
    });
  }

  close(): void {
    this.#agent.destroy();
  }
}
