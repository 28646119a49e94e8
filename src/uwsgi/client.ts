// The client side of uwsgi, used by the proxy: send a packet and its body, read the HTTP/1.x
// response back. One UwsgiClient per server address. With `negotiate`, it offers keep-alive
// (STRATUM_KEEPALIVE=1); only a server that answers with the x-stratum-keepalive header (our own
// workers) gets its connection kept — nginx-era peers such as uWSGI see plain uwsgi and close.
//
// Hot path: a connection carries its listeners, its response parser and its read timeout for
// its whole life (undici's client does the same); an exchange only takes the connection's
// current slot. Nothing is attached, detached or re-armed per request.

import net from 'node:net';
import type { Readable } from 'node:stream';
import { encodePacket, type UwsgiVars } from './codec.ts';
import { ResponseParser, type ResponseHead, type ResponseSink } from './response.ts';
import { KEEPALIVE_HEADER, KEEPALIVE_VAR } from './server.ts';
import {
  type StratumError,
  UNREACHABLE_CODES,
  UpstreamReset,
  UpstreamTimeout,
  UpstreamUnreachable,
} from '../errors.ts';
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

export class UwsgiClient {
  readonly address: Address;
  readonly label: string;
  #opts: UwsgiClientOptions;
  #idle: Connection[] = [];
  #closed = false;

  constructor(address: Address, opts: UwsgiClientOptions) {
    this.address = address;
    this.label = addressLabel(address);
    this.#opts = opts;
  }

  get idleConnections(): number {
    return this.#idle.length;
  }

  get options(): UwsgiClientOptions {
    return this.#opts;
  }

  /**
   * Send one request. A kept connection that dies before answering is not retried here: the
   * server may have seen the request. Only a refused connection (UpstreamUnreachable: nothing
   * was sent) is safe for the caller to retry elsewhere, as nginx's proxy_next_upstream does.
   * `vars` is consumed (the keep-alive offer is appended to it).
   */
  request(
    vars: UwsgiVars,
    body: Readable | Buffer | null,
    handler: ExchangeHandler,
    opts: { isHead: boolean; readTimeoutMs?: number },
  ): Exchange {
    if (this.#opts.negotiate) vars.push(KEEPALIVE_VAR, '1');
    const ex = new Exchange(
      this,
      encodePacket(vars),
      body,
      handler,
      opts.isHead,
      opts.readTimeoutMs ?? this.#opts.readTimeoutMs,
    );
    let conn: Connection | undefined;
    while ((conn = this.#idle.pop()) !== undefined) {
      if (!conn.socket.destroyed && conn.socket.writable) break;
    }
    if (conn) conn.start(ex, true);
    else {
      const socket =
        this.address.kind === 'unix'
          ? net.connect({ path: this.address.path })
          : net.connect({ host: this.address.host, port: this.address.port });
      socket.setNoDelay(true);
      new Connection(this, socket, this.#opts.maxHeaderSize).start(ex, false);
    }
    return ex;
  }

  /** @internal The exchange on `conn` completed cleanly: park the connection for reuse. */
  park(conn: Connection): void {
    if (this.#closed || this.#idle.length >= (this.#opts.maxIdle ?? 256) || conn.socket.destroyed)
      conn.socket.destroy();
    else {
      if (conn.socket.isPaused()) conn.socket.resume(); // an idle connection must see a close or stray bytes
      this.#idle.push(conn);
    }
  }

  /** @internal An idle connection closed, erred or spoke out of turn. */
  forget(conn: Connection): void {
    const i = this.#idle.indexOf(conn);
    if (i >= 0) this.#idle.splice(i, 1);
  }

  close(): void {
    this.#closed = true;
    for (const c of this.#idle.splice(0)) c.socket.destroy();
  }
}

/** One connection to the server, with its listeners and parser attached once. */
class Connection implements ResponseSink {
  readonly socket: net.Socket;
  #client: UwsgiClient;
  #parser: ResponseParser;
  #ex: Exchange | null = null;
  #timeoutMs = -1;

  constructor(client: UwsgiClient, socket: net.Socket, maxHeaderSize: number | undefined) {
    this.#client = client;
    this.socket = socket;
    this.#parser = new ResponseParser(this, { isHead: false, maxHeaderSize });
    socket.on('data', (chunk: Buffer) => {
      const ex = this.#ex;
      if (ex) ex.onData(chunk, this.#parser);
      else this.#drop(); // an idle kept connection that receives anything is out of step
    });
    socket.on('end', () => {
      const ex = this.#ex;
      if (ex) ex.onEnd(this.#parser);
      else this.#drop();
    });
    socket.on('timeout', () => this.#ex?.onTimeout(socket.connecting));
    socket.on('error', (err: NodeJS.ErrnoException) => {
      const ex = this.#ex;
      if (ex) ex.onSocketError(err);
      else this.#drop();
    });
    socket.on('close', () => {
      const ex = this.#ex;
      if (ex) ex.onSocketError(Object.assign(new Error('connection closed'), { code: 'ECONNRESET' }));
      else this.#client.forget(this);
    });
  }

  start(ex: Exchange, reused: boolean): void {
    this.#ex = ex;
    this.#parser.reset(ex.isHead);
    ex.attach(this);
    if (reused) {
      this.#setTimeout(ex.readTimeoutMs); // parked connections are flowing (UwsgiClient.park)
      ex.onConnected(true);
    } else {
      this.#setTimeout(this.#client.options.connectTimeoutMs);
      this.socket.once('connect', () => {
        this.#setTimeout(ex.readTimeoutMs);
        ex.onConnected(false);
      });
    }
  }

  /** The exchange ended; keep the connection only if the response and the request both ended cleanly. */
  finish(keep: boolean): void {
    this.#ex = null;
    if (keep) this.#client.park(this);
    else this.socket.destroy();
  }

  // ResponseSink: forwarded to the current exchange.
  onHead(head: ResponseHead): void {
    this.#ex?.onHead(head);
  }

  onBody(chunk: Buffer): void {
    this.#ex?.onBody(chunk);
  }

  onComplete(): void {
    this.#ex?.onParsed();
  }

  #setTimeout(ms: number): void {
    // Armed once; an idle connection's timeout fires into no exchange and is ignored, and the
    // next write re-arms it.
    if (ms !== this.#timeoutMs) {
      this.#timeoutMs = ms;
      this.socket.setTimeout(ms);
    }
  }

  #drop(): void {
    this.#client.forget(this);
    this.socket.destroy();
  }
}

export class Exchange {
  readonly isHead: boolean;
  readonly readTimeoutMs: number;
  #client: UwsgiClient;
  #packet: Buffer;
  #body: Readable | Buffer | null;
  #handler: ExchangeHandler;
  #conn: Connection | null = null;
  #head: ResponseHead | null = null;
  #sentAll = false;
  #finished = false;
  #gotBytes = false;
  #keep = false;
  // The parser completes inside execute(); completion waits until we know whether bytes follow.
  #executing = false;
  #completePending = false;

  constructor(
    client: UwsgiClient,
    packet: Buffer,
    body: Readable | Buffer | null,
    handler: ExchangeHandler,
    isHead: boolean,
    readTimeoutMs: number,
  ) {
    this.#client = client;
    this.#packet = packet;
    this.#body = body;
    this.#handler = handler;
    this.isHead = isHead;
    this.readTimeoutMs = readTimeoutMs;
  }

  pause(): void {
    this.#conn?.socket.pause();
  }

  resume(): void {
    this.#conn?.socket.resume();
  }

  /** The client went away: drop the upstream connection. */
  abort(): void {
    if (this.#finished) return;
    this.#finished = true;
    if (this.#body && !Buffer.isBuffer(this.#body)) this.#body.unpipe?.();
    this.#conn?.finish(false);
  }

  /** @internal */
  attach(conn: Connection): void {
    this.#conn = conn;
  }

  /** @internal */
  onConnected(reused: boolean): void {
    if (this.#finished) return;
    this.#handler.onConnect(reused);
    this.#send(this.#conn!.socket);
  }

  /** @internal */
  onData(chunk: Buffer, parser: ResponseParser): void {
    if (this.#finished) return;
    this.#gotBytes = true;
    let rest: number;
    this.#executing = true;
    try {
      rest = parser.execute(chunk);
    } catch (err) {
      this.#executing = false;
      this.#fail(err as StratumError);
      return;
    }
    this.#executing = false;
    if (rest >= 0 && rest < chunk.length) this.#keep = false; // bytes past the response: out of step
    if (this.#completePending) {
      this.#completePending = false;
      this.#complete(); // decides keep vs destroy only now, with #keep final
    }
  }

  /** @internal */
  onEnd(parser: ResponseParser): void {
    try {
      parser.finish();
    } catch (err) {
      this.#fail(err as StratumError);
    }
  }

  /** @internal */
  onTimeout(connecting: boolean): void {
    const phase = connecting ? 'connect' : this.#head ? 'read' : 'response head';
    this.#fail(
      new UpstreamTimeout(
        this.#client.label,
        phase,
        connecting ? this.#client.options.connectTimeoutMs : this.readTimeoutMs,
      ),
    );
  }

  /** @internal */
  onHead(head: ResponseHead): void {
    this.#head = head;
    this.#keep = head.keepAlive && hasKeepaliveMarker(head.rawHeaders);
    this.#handler.onHead(head);
  }

  /** @internal */
  onBody(chunk: Buffer): void {
    if (!this.#handler.onBody(chunk)) this.#conn?.socket.pause();
  }

  /** @internal The parser saw the end of the response. */
  onParsed(): void {
    if (this.#executing) this.#completePending = true;
    else this.#complete();
  }

  /** @internal */
  onSocketError(err: NodeJS.ErrnoException): void {
    if (this.#finished) return;
    const cause = err.code ?? err.message;
    if (!this.#gotBytes && UNREACHABLE_CODES.has(err.code ?? '')) {
      this.#fail(new UpstreamUnreachable(this.#client.label, cause)); // refused at connect: nothing was sent
    } else if (!this.#head) {
      this.#fail(new UpstreamReset(this.#client.label, `${cause} before the response head`));
    } else {
      this.#fail(new UpstreamReset(this.#client.label, `${cause} inside the response body`));
    }
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
    this.#conn!.finish(this.#keep && this.#sentAll);
    this.#handler.onComplete();
  }

  #fail(err: StratumError): void {
    if (this.#finished) return;
    this.#finished = true;
    this.#conn?.finish(false);
    this.#handler.onError(err);
  }
}

function hasKeepaliveMarker(raw: string[]): boolean {
  for (let i = 0; i < raw.length; i += 2)
    if (raw[i]!.length === KEEPALIVE_HEADER.length && raw[i]!.toLowerCase() === KEEPALIVE_HEADER) return true;
  return false;
}
