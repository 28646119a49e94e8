// The HTTP/1.x response that travels back on a uwsgi connection, parsed incrementally on the
// client side. Framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304; chunked when
// Transfer-Encoding ends in chunked (only our own workers send it, on kept connections); else
// Content-Length; else the body runs until the connection closes (uWSGI's and foreign servers'
// way). Malformed input throws a coded error; the caller closes that connection only.

import { UpstreamBadResponse, UpstreamHeadersTooLarge, UpstreamTruncated } from '../errors.ts';

export type BodyFraming = 'none' | 'length' | 'chunked' | 'close';

export interface ResponseHead {
  statusCode: number;
  statusMessage: string;
  /** Flat [name, value, name, value, ...], names as sent, order and repeats kept. */
  rawHeaders: string[];
  framing: BodyFraming;
  contentLength: number;
  /** The server will keep the connection open after this response (HTTP/1.1 without close). */
  keepAlive: boolean;
}

export interface ResponseSink {
  onHead(head: ResponseHead): void;
  onBody(chunk: Buffer): void;
  onComplete(): void;
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// Field values: visible chars, space, tab, obs-text; never CR, LF or NUL.
const BAD_VALUE = /[\0\r\n]/;

const enum_ = {
  HEAD: 0,
  BODY_LENGTH: 1,
  CHUNK_SIZE: 2,
  CHUNK_DATA: 3,
  CHUNK_DATA_END: 4,
  TRAILERS: 5,
  CLOSE: 6,
  DONE: 7,
} as const;
type State = (typeof enum_)[keyof typeof enum_];

export class ResponseParser {
  readonly maxHeaderSize: number;
  #sink: ResponseSink;
  #isHead: boolean;
  #state: State = enum_.HEAD;
  #head: Buffer | null = null;
  #remaining = 0;
  #line: Buffer | null = null;

  constructor(sink: ResponseSink, opts: { isHead: boolean; maxHeaderSize?: number }) {
    this.#sink = sink;
    this.#isHead = opts.isHead;
    this.maxHeaderSize = opts.maxHeaderSize ?? 65536;
  }

  /** Ready for the next response on the same connection. */
  reset(isHead: boolean): void {
    this.#isHead = isHead;
    this.#state = enum_.HEAD;
    this.#head = null;
    this.#remaining = 0;
    this.#line = null;
  }

  get done(): boolean {
    return this.#state === enum_.DONE;
  }

  /** True while the head has not been fully received. */
  get awaitingHead(): boolean {
    return this.#state === enum_.HEAD;
  }

  /** Feed bytes. Returns the offset of unconsumed bytes once the response is complete, else -1. */
  execute(chunk: Buffer): number {
    let off = 0;
    while (off < chunk.length) {
      switch (this.#state) {
        case enum_.HEAD: {
          off = this.#readHead(chunk, off);
          break;
        }
        case enum_.BODY_LENGTH: {
          const n = Math.min(this.#remaining, chunk.length - off);
          this.#sink.onBody(n === chunk.length ? chunk : chunk.subarray(off, off + n));
          off += n;
          this.#remaining -= n;
          if (this.#remaining === 0) this.#complete();
          break;
        }
        case enum_.CLOSE: {
          this.#sink.onBody(off === 0 ? chunk : chunk.subarray(off));
          off = chunk.length;
          break;
        }
        case enum_.CHUNK_SIZE: {
          const line = this.#readLine(chunk, off);
          if (line === null) return -1;
          off = line.next;
          const text = line.text;
          const semi = text.indexOf(';');
          const hex = (semi >= 0 ? text.slice(0, semi) : text).trim();
          if (!/^[0-9a-fA-F]{1,12}$/.test(hex))
            throw new UpstreamBadResponse(`invalid chunk size ${JSON.stringify(hex.slice(0, 20))}`);
          this.#remaining = parseInt(hex, 16);
          this.#state = this.#remaining === 0 ? enum_.TRAILERS : enum_.CHUNK_DATA;
          break;
        }
        case enum_.CHUNK_DATA: {
          const n = Math.min(this.#remaining, chunk.length - off);
          this.#sink.onBody(chunk.subarray(off, off + n));
          off += n;
          this.#remaining -= n;
          if (this.#remaining === 0) this.#state = enum_.CHUNK_DATA_END;
          break;
        }
        case enum_.CHUNK_DATA_END: {
          const line = this.#readLine(chunk, off);
          if (line === null) return -1;
          if (line.text !== '') throw new UpstreamBadResponse('missing CRLF after chunk data');
          off = line.next;
          this.#state = enum_.CHUNK_SIZE;
          break;
        }
        case enum_.TRAILERS: {
          const line = this.#readLine(chunk, off);
          if (line === null) return -1;
          off = line.next;
          if (line.text === '') this.#complete(); // trailers are dropped: nginx ignores them too
          break;
        }
        case enum_.DONE:
          return off;
      }
      if ((this.#state as State) === enum_.DONE) return off;
    }
    return this.#state === enum_.DONE ? off : -1;
  }

  /** The connection closed. Completes a close-delimited body; anything else cut short throws. */
  finish(): void {
    if (this.#state === enum_.DONE) return;
    if (this.#state === enum_.CLOSE) return this.#complete();
    if (this.#state === enum_.HEAD) throw new UpstreamTruncated('before a complete response head');
    throw new UpstreamTruncated(
      this.#state === enum_.BODY_LENGTH ? `${this.#remaining} body bytes missing` : 'inside a chunked body',
    );
  }

  #complete(): void {
    this.#state = enum_.DONE;
    this.#sink.onComplete();
  }

  #readLine(chunk: Buffer, off: number): { text: string; next: number } | null {
    const idx = chunk.indexOf(0x0a, off);
    if (idx < 0) {
      const part = chunk.subarray(off);
      this.#line = this.#line ? Buffer.concat([this.#line, part]) : Buffer.from(part);
      if (this.#line.length > 4096) throw new UpstreamBadResponse('chunk line too long');
      return null; // the partial line is kept; the caller waits for more bytes
    }
    let buf = chunk.subarray(off, idx);
    if (this.#line) {
      buf = Buffer.concat([this.#line, buf]);
      this.#line = null;
    }
    let end = buf.length;
    if (end > 0 && buf[end - 1] === 0x0d) end--;
    return { text: buf.toString('latin1', 0, end), next: idx + 1 };
  }

  #readHead(chunk: Buffer, off: number): number {
    const prev = this.#head ? this.#head.length : 0;
    const buf = this.#head ? Buffer.concat([this.#head, chunk.subarray(off)]) : chunk.subarray(off);
    const end = findHeadEnd(buf, Math.max(0, prev - 3));
    if (end < 0) {
      if (buf.length > this.maxHeaderSize) throw new UpstreamHeadersTooLarge(this.maxHeaderSize);
      this.#head = Buffer.from(buf);
      return chunk.length;
    }
    if (end > this.maxHeaderSize) throw new UpstreamHeadersTooLarge(this.maxHeaderSize);
    this.#head = null;
    this.#parseHead(buf.toString('latin1', 0, end)); // a 1xx head leaves the state at HEAD: the next one follows
    return off + end - prev; // end - prev: the bytes of this chunk that belonged to the head
  }

  #parseHead(text: string): void {
    const lines = text.split('\n');
    const status = stripCr(lines[0]!);
    const m = /^HTTP\/1\.([01]) ([1-9][0-9]{2})(?: (.*))?$/.exec(status);
    if (!m) throw new UpstreamBadResponse(`bad status line ${JSON.stringify(status.slice(0, 60))}`);
    const minor = m[1] === '1' ? 1 : 0;
    const statusCode = Number(m[2]);
    const rawHeaders: string[] = [];
    let contentLength = -1;
    let chunked = false;
    let connection = '';
    for (let i = 1; i < lines.length; i++) {
      const line = stripCr(lines[i]!);
      if (line === '') continue;
      if (line[0] === ' ' || line[0] === '\t') throw new UpstreamBadResponse('obsolete line folding');
      const colon = line.indexOf(':');
      if (colon <= 0) throw new UpstreamBadResponse(`bad header line ${JSON.stringify(line.slice(0, 60))}`);
      const name = line.slice(0, colon);
      if (!TOKEN.test(name)) throw new UpstreamBadResponse(`bad header name ${JSON.stringify(name.slice(0, 60))}`);
      const value = line.slice(colon + 1).trim();
      if (BAD_VALUE.test(value)) throw new UpstreamBadResponse(`bad header value for ${name}`);
      const lower = name.toLowerCase();
      if (lower === 'content-length') {
        if (!/^[0-9]{1,15}$/.test(value))
          throw new UpstreamBadResponse(`bad Content-Length ${JSON.stringify(value.slice(0, 30))}`);
        const n = Number(value);
        if (contentLength >= 0 && contentLength !== n)
          throw new UpstreamBadResponse('conflicting Content-Length headers');
        contentLength = n;
      } else if (lower === 'transfer-encoding') {
        chunked = /(?:^|,)\s*chunked\s*$/i.test(value);
      } else if (lower === 'connection') {
        connection += ',' + value.toLowerCase();
      }
      rawHeaders.push(name, value);
    }
    if (statusCode < 200) {
      return; // 100 Continue / 103 Early Hints: skipped, the real head follows
    }
    let framing: BodyFraming;
    if (this.#isHead || statusCode === 204 || statusCode === 304) framing = 'none';
    else if (chunked) framing = 'chunked';
    else if (contentLength >= 0) framing = contentLength === 0 ? 'none' : 'length';
    else framing = 'close';
    const keepAlive =
      framing !== 'close' &&
      (minor === 1 ? !/(^|,)\s*close\b/.test(connection) : /(^|,)\s*keep-alive\b/.test(connection));
    this.#sink.onHead({
      statusCode,
      statusMessage: m[3] ?? '',
      rawHeaders,
      framing,
      contentLength: Math.max(contentLength, 0),
      keepAlive,
    });
    if (framing === 'none') this.#complete();
    else if (framing === 'length') {
      this.#remaining = contentLength;
      this.#state = enum_.BODY_LENGTH;
    } else if (framing === 'chunked') this.#state = enum_.CHUNK_SIZE;
    else this.#state = enum_.CLOSE;
  }
}

function stripCr(s: string): string {
  return s.length > 0 && s.charCodeAt(s.length - 1) === 13 ? s.slice(0, -1) : s;
}

/** Index just past the blank line ending the head (CRLFCRLF, or bare LFLF), or -1. */
function findHeadEnd(buf: Buffer, from: number): number {
  for (let i = buf.indexOf(0x0a, from); i >= 0; i = buf.indexOf(0x0a, i + 1)) {
    if (buf[i + 1] === 0x0a) return i + 2;
    if (buf[i + 1] === 0x0d && buf[i + 2] === 0x0a) return i + 3;
  }
  return -1;
}
