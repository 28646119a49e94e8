// HTTP/2 to clients on the TLS listener (ALPN h2; http/1.1 stays the HTTP/1 server's). The whole
// request path — routes, limits, body buffering, every upstream, the in-process app, metrics,
// Server-Timing, tracing — is written against Node's IncomingMessage and ServerResponse, and the
// apps (Express above all) rely on their exact prototypes, which http2's compatibility objects do
// not have. So each h2 stream is bridged into the front's own HTTP/1 server as a one-request
// connection (the way a worker bridges a uwsgi request, src/uwsgi/server.ts): the stream's head
// becomes an HTTP/1.1 head (pseudo-headers to a request line and Host, cookies joined, no
// connection-specific headers), its DATA the body (chunked when no length was given), and the
// HTTP/1.1 answer the front writes is turned back into an h2 response: lower-case names, no
// hop-by-hop headers, 1xx as informational headers, chunked trailers as h2 trailers. Flow control
// follows the stream both ways; a reset stream destroys its bridge, so the front sees the client go.
//
// Floods: nghttp2 (1.70 in Node 24) ends the session on a CONTINUATION flood (the header list
// passes maxHeaderListSize) and on SETTINGS and PING floods (its bound on queued ACKs). Rapid reset
// (CVE-2023-44487) it does not stop — 20,000 HEADERS+RST_STREAM pairs on one connection went
// through, 1,200 of them reaching the app — so the budget is ours: a session whose client cancels
// streams faster than RESET_RATE a second, past a burst of RESET_BURST, gets GOAWAY
// (ENHANCE_YOUR_CALM) and is closed. test/edge/h2.test.ts sends each flood.

import type { IncomingHttpHeaders, ServerHttp2Session, ServerHttp2Stream } from 'node:http2';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { ConnectionBridge } from '../host/connection.ts';

const http2 = process.getBuiltinModule('node:http2');

export interface H2Settings {
  maxConcurrentStreams: number;
  maxHeaderListSize: number;
  /** Per-stream receive window (client uploads). */
  initialWindowSize: number;
  /** Whole-session receive window. */
  sessionWindowSize: number;
  /** An idle session is closed (GOAWAY) after this long; 0 = never. */
  idleTimeoutMs: number;
}

/** Request headers that describe the connection, not the message: never carried across (RFC 9113 §8.2.2). */
const REQUEST_DROP = new Set([
  'host',
  'cookie',
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'upgrade',
  'te',
  'expect',
  'http2-settings',
]);
/** Response headers an h2 response may not carry. */
const RESPONSE_DROP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade']);
const BAD_VALUE = /[\0\r\n]/;
/** Streams a client may cancel at once, then per second, before its session is closed. */
const RESET_BURST = 200;
const RESET_RATE = 50;
const resetBudget = new WeakMap<ServerHttp2Session, { tokens: number; at: number }>();
/** Streams the front reset itself (a response cut short): not the client's cancel. */
const ourResets = new WeakSet<ServerHttp2Stream>();

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

/**
 * h2c with prior knowledge on a plain listener: reads a connection's first bytes and tells
 * whether they are the HTTP/2 connection preface; the bytes are put back (unshift) and the socket
 * left paused for whichever server takes it. A connection that sends nothing within timeoutMs is
 * closed (the HTTP/1 header timeout would have answered it 408).
 */
export function sniffPreface(socket: Socket, timeoutMs: number, then: (h2: boolean) => void): void {
  let got: Buffer | null = null;
  const done = (h2: boolean | null) => {
    clearTimeout(timer);
    socket.off('data', onData);
    socket.off('close', onClose);
    if (h2 === null) return;
    socket.pause();
    if (got) socket.unshift(got);
    then(h2);
    // HTTP/1's parser reads the put-back bytes first, then the handle; an h2 session took them itself.
    if (!h2) socket.resume();
  };
  const onData = (chunk: Buffer) => {
    got = got ? Buffer.concat([got, chunk]) : chunk;
    const n = Math.min(got.length, PREFACE.length);
    const same = got.subarray(0, n).equals(PREFACE.subarray(0, n));
    if (same && got.length < PREFACE.length) return; // the preface so far: wait for the rest
    done(same);
  };
  const onClose = () => done(null);
  const timer = setTimeout(() => {
    done(null);
    socket.destroy();
  }, timeoutMs);
  socket.on('data', onData);
  socket.once('close', onClose);
}

/** The front's HTTP/1 server and h2 sessions on the same listener (ALPN h2, or h2c's preface). */
export class H2Front {
  /** Hands a stream's bridge to the front's HTTP/1 server as a connection of its own. */
  readonly #serve: (bridge: Duplex) => void;
  readonly #server: ReturnType<typeof http2.createServer>;
  readonly #sessions = new Set<ServerHttp2Session>();
  readonly #settings: H2Settings;
  readonly #log: Logger;
  #closing = false;
  /** Streams bridged since start, and sessions closed for cancelling too many (rapid reset). */
  streams = 0;
  resetCloses = 0;

  constructor(serve: (bridge: Duplex) => void, settings: H2Settings, log: Logger) {
    this.#serve = serve;
    this.#settings = settings;
    this.#log = log;
    // Never listens: sessions come from the TLS listener's handshakes (accept()).
    this.#server = http2.createServer({
      settings: {
        maxConcurrentStreams: settings.maxConcurrentStreams,
        maxHeaderListSize: settings.maxHeaderListSize,
        initialWindowSize: settings.initialWindowSize,
        enablePush: false,
      },
      maxHeaderListPairs: 256,
      maxSettings: 32,
      maxOutstandingPings: 10,
      maxSessionInvalidFrames: 100,
      maxSessionRejectedStreams: 100,
      // What one session may hold in nghttp2's buffers before new streams are refused (MiB).
      maxSessionMemory: 32,
    });
    this.#server.on('session', (s: ServerHttp2Session) => this.#session(s));
    this.#server.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders, _f: number, raw: string[]) =>
      this.#bridge(stream, headers, raw),
    );
  }

  /** A TLS connection that chose h2, or a plain one that began with the h2 preface. */
  accept(socket: Socket): void {
    if (this.#closing) return void socket.destroy();
    this.#server.emit('connection', socket);
  }

  get sessions(): number {
    return this.#sessions.size;
  }

  /** GOAWAY to every session: the streams in flight finish, no new ones start (a drain). */
  drain(): void {
    this.#closing = true;
    for (const s of this.#sessions) if (!s.closed) s.close();
  }

  close(): void {
    this.drain();
    for (const s of this.#sessions) s.destroy();
  }

  #session(session: ServerHttp2Session): void {
    this.#sessions.add(session);
    session.once('close', () => this.#sessions.delete(session));
    session.on('error', () => {}); // the socket's errors end it; nothing to answer
    session.on('goaway', () => {});
    session.on('frameError', () => {});
    const socket = session.socket;
    socket.once('close', () => {
      if (!session.destroyed) session.destroy();
    });
    if (this.#settings.sessionWindowSize > 65_535) {
      session.once('connect', () => session.setLocalWindowSize(this.#settings.sessionWindowSize));
    }
    if (this.#settings.idleTimeoutMs > 0) session.setTimeout(this.#settings.idleTimeoutMs, () => session.close());
  }

  /** The client cancelled a stream before its answer was complete: past the budget, its session goes. */
  #cancelled(session: ServerHttp2Session | undefined): void {
    if (!session || session.destroyed) return;
    const now = performance.now();
    const b = resetBudget.get(session) ?? { tokens: RESET_BURST, at: now };
    b.tokens = Math.min(RESET_BURST, b.tokens + ((now - b.at) / 1000) * RESET_RATE) - 1;
    b.at = now;
    resetBudget.set(session, b);
    if (b.tokens >= 0) return;
    this.resetCloses++;
    this.#log.warn(
      { remote: session.socket?.remoteAddress, code: 'ENHANCE_YOUR_CALM' },
      `HTTP/2 session closed: its client cancelled more than ${RESET_BURST} streams (+${RESET_RATE}/s) (rapid reset)`,
    );
    session.destroy(undefined, http2.constants.NGHTTP2_ENHANCE_YOUR_CALM); // GOAWAY with that code
  }

  #bridge(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, raw: string[]): void {
    // Read now: a closed stream no longer names its session.
    const session = stream.session as ServerHttp2Session | undefined;
    if (stream.destroyed || stream.closed) return this.#cancelled(session);
    this.streams++;
    stream.on('error', () => {});
    stream.once('close', () => {
      if (stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR && !ourResets.has(stream)) this.#cancelled(session);
    });
    const method = String(headers[':method'] ?? 'GET');
    const path = String(headers[':path'] ?? '');
    const authority = headers[':authority'] ?? headers.host;
    if (method === 'CONNECT' || path === '' || path.includes(' ')) {
      // Extended CONNECT (WebSocket over h2, RFC 8441) is not offered; a plain CONNECT has no route.
      return void respondPlain(stream, method === 'CONNECT' ? 501 : 400);
    }
    let head = `${method} ${path} HTTP/1.1\r\n`;
    if (authority !== undefined) head += `host: ${String(authority)}\r\n`;
    const cookies: string[] = [];
    let length: string | undefined;
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i]!;
      const value = raw[i + 1]!;
      if (name.charCodeAt(0) === 58 /* : */) continue;
      if (BAD_VALUE.test(value) || BAD_VALUE.test(name)) return void respondPlain(stream, 400);
      if (name === 'cookie') cookies.push(value);
      else if (name === 'content-length') length = value;
      if (REQUEST_DROP.has(name) || name === 'content-length') continue;
      head += `${name}: ${value}\r\n`;
    }
    // RFC 9113 §8.2.3: h2 may split cookies into several fields; HTTP/1.1 has one.
    if (cookies.length > 0) head += `cookie: ${cookies.join('; ')}\r\n`;
    const hasBody = !stream.endAfterHeaders;
    const chunked = hasBody && length === undefined;
    if (length !== undefined) head += `content-length: ${length}\r\n`;
    else if (chunked) head += 'transfer-encoding: chunked\r\n';
    // One request per bridge: the front closes it after the answer.
    head += 'connection: close\r\n\r\n';

    const bridge = new StreamBridge(stream, method === 'HEAD');
    bridge.push(head, 'latin1');
    if (hasBody) {
      stream.on('data', (chunk: Buffer) => {
        const more = chunked
          ? bridge.push(`${chunk.length.toString(16)}\r\n`) && bridge.push(chunk) && bridge.push('\r\n')
          : bridge.push(chunk);
        if (!more) stream.pause();
      });
      stream.once('end', () => {
        if (chunked) bridge.push('0\r\n\r\n');
      });
    }
    this.#serve(bridge);
  }
}

/** A short plain answer of the bridge's own (nothing reached the front). */
function respondPlain(stream: ServerHttp2Stream, status: number): void {
  if (stream.headersSent || stream.destroyed) return;
  const body = `${process.getBuiltinModule('node:http').STATUS_CODES[status] ?? 'Error'}\n`;
  stream.respond({
    ':status': status,
    'content-type': 'text/plain; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
  });
  stream.end(body);
}

const Framing = { None: 0, Length: 1, Chunked: 2, Close: 3 } as const;
type Framing = (typeof Framing)[keyof typeof Framing];

/**
 * One h2 stream as the connection the HTTP/1 server reads a request from and writes its answer
 * to. What it writes is parsed (Node's own serialisation of the front's response) into h2 frames.
 */
class StreamBridge extends ConnectionBridge {
  readonly stream: ServerHttp2Stream;
  remoteAddress: string | undefined;
  remotePort: number | undefined;
  remoteFamily: string | undefined;
  localAddress: string | undefined;
  localPort: number | undefined;
  readonly encrypted: boolean;
  readonly alpnProtocol = 'h2-stream';
  /** The TCP connection under the session's TLS: where a PROXY protocol header was read (forward.ts). */
  readonly _parent: unknown;
  #isHead: boolean;
  #buf: Buffer | null = null;
  #framing: Framing | null = null;
  #remaining = 0;
  /** Inside a chunk (bytes left of it), or -1 between chunks. */
  #chunkLeft = -1;
  #trailers: Array<[string, string]> = [];
  #inTrailers = false;
  #done = false;

  constructor(stream: ServerHttp2Stream, isHead: boolean) {
    super({ allowHalfOpen: true });
    this.stream = stream;
    this.#isHead = isHead;
    const socket = stream.session?.socket;
    this.remoteAddress = socket?.remoteAddress;
    this.remotePort = socket?.remotePort;
    this.remoteFamily = socket?.remoteFamily;
    this.localAddress = socket?.localAddress;
    this.localPort = socket?.localPort;
    this.encrypted = (socket as { encrypted?: boolean } | undefined)?.encrypted === true;
    this._parent = (socket as { _parent?: unknown } | undefined)?._parent ?? socket;
    // The client reset the stream, or the session went: the front sees its client go.
    stream.once('close', () => {
      if (!this.#done) this.destroy();
    });
  }

  address(): { address: string; family: string; port: number } | Record<string, never> {
    return this.localAddress ? { address: this.localAddress, family: 'IPv4', port: this.localPort ?? 0 } : {};
  }

  override _read(): void {
    if (this.stream.isPaused()) this.stream.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    let flushed: boolean;
    try {
      flushed = this.#parse(chunk);
    } catch (err) {
      return cb(err as Error);
    }
    if (flushed || this.stream.destroyed) cb();
    else this.stream.once('drain', () => cb());
  }

  override _final(cb: (err?: Error | null) => void): void {
    // The front closed its side: a body delimited by the close ends here.
    if (!this.#done && this.#framing === Framing.Close) this.#finish();
    cb();
    // Closed once 'finish' has run its callbacks: destroying here would fail them (ERR_STREAM_DESTROYED).
    this.once('finish', () => this.destroy());
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (!this.#done && !this.stream.destroyed) {
      // The front cut the response (an upstream broke mid-body): the client must not take it as whole.
      ourResets.add(this.stream);
      this.stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
    }
    cb(err);
  }

  /** Feeds the front's output; false when the stream's buffer is full (wait for 'drain'). */
  #parse(input: Buffer): boolean {
    let data = this.#buf ? Buffer.concat([this.#buf, input]) : input;
    this.#buf = null;
    let ok = true;
    while (data.length > 0 && !this.#done) {
      if (this.#framing === null || this.#inTrailers) {
        const end = data.indexOf('\r\n\r\n');
        if (end === -1) {
          if (this.#inTrailers && data.length >= 2 && data[0] === 13 && data[1] === 10) {
            this.#finish(); // no trailers: the last chunk's empty line
            break;
          }
          this.#buf = data;
          break;
        }
        const text = data.subarray(0, end).toString('latin1');
        data = data.subarray(end + 4);
        if (this.#inTrailers) {
          for (const line of text.split('\r\n')) {
            const colon = line.indexOf(':');
            if (colon > 0) this.#trailers.push([line.slice(0, colon).toLowerCase(), line.slice(colon + 1).trim()]);
          }
          this.#finish();
          break;
        }
        this.#head(text);
        continue;
      }
      if (this.#framing === Framing.Length) {
        const part = data.length > this.#remaining ? data.subarray(0, this.#remaining) : data;
        this.#remaining -= part.length;
        data = data.subarray(part.length);
        ok = this.stream.write(part) && ok;
        if (this.#remaining === 0) this.#finish();
        continue;
      }
      if (this.#framing === Framing.Close) {
        ok = this.stream.write(data) && ok;
        break;
      }
      // Chunked.
      if (this.#chunkLeft > 0) {
        const part = data.length > this.#chunkLeft ? data.subarray(0, this.#chunkLeft) : data;
        this.#chunkLeft -= part.length;
        data = data.subarray(part.length);
        ok = this.stream.write(part) && ok;
        continue;
      }
      const eol = data.indexOf('\r\n', this.#chunkLeft === 0 ? 2 : 0);
      if (eol === -1) {
        this.#buf = data;
        break;
      }
      const line = data.subarray(this.#chunkLeft === 0 ? 2 : 0, eol).toString('latin1');
      data = data.subarray(eol + 2);
      const size = parseInt(line, 16);
      if (!Number.isFinite(size) || size < 0) throw new Error(`bad chunk size line ${JSON.stringify(line)}`);
      if (size === 0) {
        this.#inTrailers = true;
        continue;
      }
      this.#chunkLeft = size;
    }
    return ok;
  }

  #head(text: string): void {
    const lines = text.split('\r\n');
    const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(lines[0]!)?.[1]);
    if (!(status >= 100)) throw new Error(`bad status line ${JSON.stringify(lines[0])}`);
    const out: Record<string, string | string[]> = {};
    let connection = '';
    let framing: Framing = Framing.Close;
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i]!;
      const colon = line.indexOf(':');
      if (colon <= 0) continue;
      const name = line.slice(0, colon).toLowerCase();
      const value = line.slice(colon + 1).trim();
      if (name === 'connection') connection = value.toLowerCase();
      if (name === 'transfer-encoding' && /chunked\s*$/i.test(value)) framing = Framing.Chunked;
      if (name === 'content-length' && framing !== Framing.Chunked) {
        framing = Framing.Length;
        this.#remaining = Number(value);
      }
      if (RESPONSE_DROP.has(name)) continue;
      const had = out[name];
      if (had === undefined) out[name] = value;
      else if (Array.isArray(had)) had.push(value);
      else out[name] = [had, value];
    }
    for (const token of connection.split(',')) delete out[token.trim()];
    for (const [k, v] of Object.entries(out)) {
      // Repeated fields other than set-cookie fold into one list (RFC 9110 §5.3).
      if (Array.isArray(v) && k !== 'set-cookie') out[k] = v.join(', ');
    }
    if (status < 200) {
      if (status !== 101 && !this.stream.headersSent) this.stream.additionalHeaders({ ...out, ':status': status });
      return; // the final head follows
    }
    if (this.#isHead || status === 204 || status === 304) framing = Framing.None;
    this.#framing = framing;
    const empty = framing === Framing.None || (framing === Framing.Length && this.#remaining === 0);
    if (this.stream.destroyed) return;
    this.stream.respond(
      { ...out, ':status': status },
      { endStream: empty, waitForTrailers: framing === Framing.Chunked },
    );
    if (framing === Framing.Chunked) {
      this.stream.once('wantTrailers', () => {
        const t: Record<string, string> = {};
        for (const [k, v] of this.#trailers) if (!RESPONSE_DROP.has(k)) t[k] = k in t ? `${t[k]}, ${v}` : v;
        this.stream.sendTrailers(t);
      });
    }
    if (empty) this.#done = true;
  }

  #finish(): void {
    if (this.#done) return;
    this.#done = true;
    if (!this.stream.destroyed) this.stream.end();
  }
}
