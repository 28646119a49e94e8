// HTTP upstreams (nginx's proxy_pass): kept connections through a keep-alive agent, bodies
// streamed both ways with backpressure, connect / header / total times recorded as nginx's
// $upstream_connect_time, $upstream_header_time and $upstream_response_time.

import http from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
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

  /**
   * An Upgrade request (WebSocket): forward the head, and once the upstream answers 101, splice
   * the two sockets together. Anything else the upstream answers goes back as a response.
   */
  upgrade(ctx: ProxyContext, clientSocket: Duplex, head: Buffer): void {
    const { req } = ctx;
    const headers = httpRequestHeaders(req, { ...ctx.forward, contentLength: -1 }, ctx.extraHeaders);
    // Hop-by-hop headers were dropped; an upgrade needs exactly these two back.
    headers.push('connection', 'upgrade', 'upgrade', String(req.headers.upgrade ?? 'websocket'));
    const upstream = http.request({
      host: this.#url.hostname,
      port: this.#url.port || 80,
      method: req.method,
      path: req.url ?? '/',
      headers,
      setHost: false,
    });
    const fail = (status: number, text: string) => {
      if (clientSocket.writable) clientSocket.end(`HTTP/1.1 ${status} ${text}\r\nContent-Type: text/plain\r\nContent-Length: ${text.length + 1}\r\nConnection: close\r\n\r\n${text}\n`);
      else clientSocket.destroy();
    };
    upstream.setTimeout(this.#connectTimeoutMs, () => upstream.destroy(new UpstreamTimeout(this.label, 'upgrade', this.#connectTimeoutMs)));
    upstream.once('error', (err: NodeJS.ErrnoException) => {
      ctx.error = err instanceof StratumError ? err : new UpstreamUnreachable(this.label, err.code ?? err.message);
      fail(ctx.error.statusCode, http.STATUS_CODES[ctx.error.statusCode] ?? 'Bad Gateway');
    });
    upstream.once('response', (res) => {
      // No upgrade: relay the answer and close.
      let text = `HTTP/1.1 ${res.statusCode} ${res.statusMessage}\r\n`;
      const raw = responseHeaders(res.rawHeaders, null);
      for (let i = 0; i < raw.length; i += 2) text += `${raw[i]}: ${raw[i + 1]}\r\n`;
      clientSocket.write(`${text}connection: close\r\n\r\n`);
      res.pipe(clientSocket);
    });
    upstream.once('upgrade', (res, upSocket: Socket, upHead: Buffer) => {
      upstream.setTimeout(0);
      let text = `HTTP/1.1 101 ${res.statusMessage || 'Switching Protocols'}\r\n`;
      for (let i = 0; i < res.rawHeaders.length; i += 2) text += `${res.rawHeaders[i]}: ${res.rawHeaders[i + 1]}\r\n`;
      clientSocket.write(`${text}\r\n`);
      if (upHead.length > 0) clientSocket.write(upHead);
      if (head.length > 0) upSocket.write(head);
      upSocket.pipe(clientSocket).pipe(upSocket);
      const close = () => {
        upSocket.destroy();
        clientSocket.destroy();
      };
      upSocket.once('error', close).once('close', close);
      clientSocket.once('error', close).once('close', close);
    });
    upstream.end();
  }

  close(): void {
    this.#agent.destroy();
  }
}
