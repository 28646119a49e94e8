// The client side of uwsgi, used by the proxy: send a packet and its body, read the HTTP/1.x
// response back. One UwsgiClient per server address. With `negotiate`, it offers keep-alive
// (STRATUM_KEEPALIVE=1); only a server that answers with the x-stratum-keepalive header (our own
// workers) gets its connection kept — nginx-era peers such as uWSGI see plain uwsgi and close.

import net from 'node:net';
import type { Readable } from 'node:stream';
import { encodePacket, type UwsgiVars } from './codec.ts';
import { ResponseParser, type ResponseHead } from './response.ts';
import { KEEPALIVE_HEADER, KEEPALIVE_VAR } from './server.ts';
import { StratumError, UpstreamReset, UpstreamTimeout, UpstreamUnreachable } from '../errors.ts';
import type { Address } from '../config/schema.ts';

export interface ExchangeHandler {
  /** The connection is ready (new or reused) and the packet is being written. */
  onConnect(reused: boolean): void;
  onHead(head: ResponseHead): void;
  /** Return false to apply backpressure; call exchange.resume() to continue. */
  onBody(chunk: Buffer): boolean;
  onComplete(): void;
  onError(err: StratumError): void;
}

export interface UwsgiClientOptions {
  negotiate: boolean;
  connectTimeoutMs: number;
  readTimeoutMs: number;
  maxHeaderSize?: number;
  /** Kept connections beyond this many idle ones are closed. */
  maxIdle?: number;
}

export function addressLabel(a: Address): string {
  return a.kind === 'unix' ? `unix:${a.path}` : `${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
}

const IDLE_EVENTS = ['close', 'error', 'data', 'end'] as const;
const idleDrop = new WeakMap<net.Socket, () => void>();

export class UwsgiClient {
  readonly address: Address;
  readonly label: string;
  #opts: UwsgiClientOptions;
  #idle: net.Socket[] = [];
  #closed = false;

  constructor(address: Address, opts: UwsgiClientOptions) {
    this.address = address;
    this.label = addressLabel(address);
    this.#opts = opts;
  }

  get idleConnections(): number {
    return this.#idle.length;
  }

  /**
   * Send one request. A kept connection that dies before answering is not retried here: the
   * server may have seen the request. Only a refused connection (UpstreamUnreachable: nothing
   * was sent) is safe for the caller to retry elsewhere, as nginx's proxy_next_upstream does.
   */
  request(vars: UwsgiVars, body: Readable | Buffer | null, handler: ExchangeHandler, opts: { isHead: boolean; readTimeoutMs?: number }): Exchange {
    const packet = encodePacket(this.#opts.negotiate ? [...vars, KEEPALIVE_VAR, '1'] : vars);
    const ex = new Exchange(this, packet, body, handler, opts.isHead, opts.readTimeoutMs ?? this.#opts.readTimeoutMs);
    ex.start();
    return ex;
  }

  /** @internal */
  acquire(): { socket: net.Socket; reused: boolean } {
    while (this.#idle.length > 0) {
      const s = this.#idle.pop()!;
      const drop = idleDrop.get(s);
      if (drop) {
        for (const ev of IDLE_EVENTS) s.off(ev, drop);
        idleDrop.delete(s);
      }
      if (!s.destroyed && s.writable) return { socket: s, reused: true };
    }
    const socket = this.address.kind === 'unix'
      ? net.connect({ path: this.address.path })
      : net.connect({ host: this.address.host, port: this.address.port });
    socket.setNoDelay(true);
    return { socket, reused: false };
  }

  /** @internal The exchange has removed its own listeners; park the socket for reuse. */
  release(socket: net.Socket): void {
    if (this.#closed || this.#idle.length >= (this.#opts.maxIdle ?? 256) || socket.destroyed) {
      socket.destroy();
      return;
    }
    socket.setTimeout(0);
    // An idle kept connection that closes, errs, or receives anything is out of step: drop it.
    const drop = () => {
      const i = this.#idle.indexOf(socket);
      if (i >= 0) this.#idle.splice(i, 1);
      socket.destroy();
    };
    idleDrop.set(socket, drop);
    for (const ev of IDLE_EVENTS) socket.on(ev, drop);
    this.#idle.push(socket);
  }

  close(): void {
    this.#closed = true;
    for (const s of this.#idle.splice(0)) s.destroy();
  }

  get options(): UwsgiClientOptions {
    return this.#opts;
  }
}

const EXCHANGE_EVENTS = ['data', 'end', 'timeout', 'error', 'close'] as const;

export class Exchange {
  #client: UwsgiClient;
  #packet: Buffer;
  #body: Readable | Buffer | null;
  #handler: ExchangeHandler;
  #isHead: boolean;
  #readTimeoutMs: number;
  #socket: net.Socket | null = null;
  #parser!: ResponseParser;
  #head: ResponseHead | null = null;
  #sentAll = false;
  #finished = false;
  #gotBytes = false;
  #keep = false;
  // The parser completes inside execute(); completion waits until we know whether bytes follow.
  #executing = false;
  #completePending = false;
  #listeners: Record<(typeof EXCHANGE_EVENTS)[number], ((...a: never[]) => void) | null> = { data: null, end: null, timeout: null, error: null, close: null };

  constructor(client: UwsgiClient, packet: Buffer, body: Readable | Buffer | null, handler: ExchangeHandler, isHead: boolean, readTimeoutMs: number) {
    this.#client = client;
    this.#packet = packet;
    this.#body = body;
    this.#handler = handler;
    this.#isHead = isHead;
    this.#readTimeoutMs = readTimeoutMs;
  }

  start(): void {
    const { socket, reused } = this.#client.acquire();
    this.#socket = socket;
    this.#gotBytes = false;
    this.#parser = new ResponseParser(
      {
        onHead: (head) => {
          this.#head = head;
          this.#keep = head.keepAlive && hasKeepaliveMarker(head.rawHeaders);
          this.#handler.onHead(head);
        },
        onBody: (chunk) => {
          if (!this.#handler.onBody(chunk)) socket.pause();
        },
        onComplete: () => {
          if (this.#executing) this.#completePending = true;
          else this.#complete();
        },
      },
      { isHead: this.#isHead, maxHeaderSize: this.#client.options.maxHeaderSize },
    );
    const connectTimeout = this.#client.options.connectTimeoutMs;
    const onConnect = () => {
      socket.setTimeout(this.#readTimeoutMs);
      this.#handler.onConnect(reused);
      this.#send(socket);
    };
    const l = this.#listeners;
    l.data = (chunk: Buffer) => {
      this.#gotBytes = true;
      let rest: number;
      this.#executing = true;
      try {
        rest = this.#parser.execute(chunk);
      } catch (err) {
        this.#fail(err as StratumError);
        return;
      } finally {
        this.#executing = false;
      }
      if (rest >= 0 && rest < chunk.length) this.#keep = false; // bytes past the response: out of step
      if (this.#completePending) {
        this.#completePending = false;
        this.#complete(); // decides keep vs destroy only now, with #keep final
      }
    };
    l.end = () => {
      try {
        this.#parser.finish();
      } catch (err) {
        this.#fail(err as StratumError);
      }
    };
    l.timeout = () => {
      const phase = socket.connecting ? 'connect' : this.#head ? 'read' : 'response head';
      this.#fail(new UpstreamTimeout(this.#client.label, phase, socket.connecting ? connectTimeout : this.#readTimeoutMs));
    };
    l.error = (err: NodeJS.ErrnoException) => this.#onSocketError(err);
    l.close = () => {
      if (!this.#finished) this.#onSocketError(Object.assign(new Error('connection closed'), { code: 'ECONNRESET' }));
    };
    for (const ev of EXCHANGE_EVENTS) socket.on(ev, l[ev] as (...a: unknown[]) => void);
    if (reused) {
      socket.resume();
      onConnect();
    }
    else {
      socket.setTimeout(connectTimeout);
      socket.once('connect', onConnect);
    }
  }

  pause(): void {
    this.#socket?.pause();
  }

  resume(): void {
    this.#socket?.resume();
  }

  /** The client went away: drop the upstream connection. */
  abort(): void {
    if (this.#finished) return;
    this.#finished = true;
    if (this.#body && !Buffer.isBuffer(this.#body)) this.#body.unpipe?.();
    this.#socket?.destroy();
  }

  #send(socket: net.Socket): void {
    const body = this.#body;
    if (body === null || Buffer.isBuffer(body)) {
      if (body && body.length > 0) {
        socket.cork();
        socket.write(this.#packet);
        socket.write(body);
        socket.uncork();
      } else socket.write(this.#packet);
      this.#sentAll = true;
      return;
    }
    socket.write(this.#packet);
    body.on('data', (chunk: Buffer) => {
      if (!socket.write(chunk)) {
        body.pause();
        socket.once('drain', () => body.resume());
      }
    });
    body.once('end', () => {
      this.#sentAll = true;
    });
    body.once('error', () => this.abort());
    body.resume();
  }

  #complete(): void {
    if (this.#finished) return;
    this.#finished = true;
    const socket = this.#socket!;
    this.#detach(socket);
    if (this.#keep && this.#sentAll) this.#client.release(socket);
    else socket.destroy();
    this.#handler.onComplete();
  }

  #detach(socket: net.Socket): void {
    for (const ev of EXCHANGE_EVENTS) socket.off(ev, this.#listeners[ev] as (...a: unknown[]) => void);
  }

  #onSocketError(err: NodeJS.ErrnoException): void {
    if (this.#finished) return;
    const cause = err.code ?? err.message;
    if (!this.#gotBytes && (err.code === 'ECONNREFUSED' || err.code === 'ENOENT' || err.code === 'EHOSTUNREACH' || err.code === 'ENETUNREACH' || err.code === 'EACCES' || err.code === 'EAI_AGAIN' || err.code === 'ENOTFOUND')) {
      this.#fail(new UpstreamUnreachable(this.#client.label, cause)); // refused at connect: nothing was sent
    } else if (!this.#head) {
      this.#fail(new UpstreamReset(this.#client.label, `${cause} before the response head`));
    } else {
      this.#fail(new UpstreamReset(this.#client.label, `${cause} inside the response body`));
    }
  }

  #fail(err: StratumError): void {
    if (this.#finished) return;
    this.#finished = true;
    this.#socket?.destroy();
    this.#handler.onError(err);
  }
}

function hasKeepaliveMarker(raw: string[]): boolean {
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.length === KEEPALIVE_HEADER.length && raw[i]!.toLowerCase() === KEEPALIVE_HEADER) return true;
  return false;
}
