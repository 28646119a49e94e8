// Response buffering (nginx's proxy_buffering / uwsgi_buffering): what the app (or a worker, over
// uwsgi) writes is taken at once, so the app, its slot under pool.maxInflight and its harakiri are
// released as soon as it has produced the response; the client then reads it from here at its own
// pace. A write-behind buffer, not store-and-forward: bytes go to the socket as soon as it takes
// them (an SSE stream that never ends still delivers each event at once), and only what the socket
// has not taken yet waits here — in memory up to `memory`, then in a temp file up to `maxTempFile`.
// Past both the writer is told to wait (write() returns false, 'drain' later), as nginx falls back
// to reading its upstream at the client's pace once proxy_max_temp_file_size is reached.
//
// The temp file is made as the request body's spool makes it (src/proxy/upstream.ts): in the OS
// temp dir, unlinked as soon as it is open, written and read back by position. Its failure never
// throws: if it cannot be opened the bytes stay in memory and the writer is slowed down instead; if
// a write fails once bytes are in it, the response cannot be completed and the connection is cut.
//
// This class works on the bytes as they go on the wire (HTTP framing included). HostResponse
// (src/host/response.ts) puts one in front of the client socket only when the socket is full.

import fsp, { type FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

export interface BufferLimits {
  /** Bytes held in memory before the temp file is used. */
  memory: number;
  /** Bytes the temp file may hold (0: no temp file; past the memory limit the writer waits). */
  maxTempFile: number;
  /** Where the temp file goes; the OS temp dir by default (the request body spool's). */
  tempDir?: string;
  /**
   * Seconds the client may take nothing while bytes wait for it (nginx `send_timeout`); then the
   * connection is closed and what is held dropped. A reader that stops cannot pin memory and a temp
   * file forever. 0 or absent: no limit.
   */
  sendTimeout?: number;
}

/** proxy.buffering as the config has it. */
export interface BufferingConfig extends BufferLimits {
  enabled: boolean;
}

/** A response's buffering: the route's `buffering` (true/false) if set, else proxy.buffering.enabled. */
export function bufferingFor(
  route: { buffering?: boolean | null } | null | undefined,
  config: BufferingConfig | null,
): BufferLimits | null {
  if (config === null) return null;
  return (route?.buffering ?? config.enabled) ? config : null;
}

/** Where the buffered bytes go: the client's socket. */
export interface BufferSink {
  readonly destroyed: boolean;
  write(data: Buffer | string, encoding?: BufferEncoding | null, cb?: WriteCallback | null): boolean;
  once(event: 'drain', listener: () => void): unknown;
  removeListener(event: 'drain', listener: () => void): unknown;
}

export type WriteCallback = (err?: Error | null) => void;

/** What every response buffer of this process has done, for the metrics. */
export const responseBufferStats = {
  /** Bytes written to temp files. */
  tempFileBytes: 0,
  /** Temp files that could not be opened or written. */
  tempFileFailures: 0,
};

export interface BufferEvents {
  /** Back under the limits after push() returned false: the writer may go on. */
  onRelieved(): void;
  /** The temp file failed with bytes in it, or the client took nothing for sendTimeout: give up on the response. */
  onFailure(err: Error): void;
}

interface Segment {
  data: Buffer | string;
  encoding: BufferEncoding | null;
  len: number;
  cb: WriteCallback | null;
}

/** A span of the temp file, in write order; `cb` runs once its last byte is on the socket. */
interface FileSpan {
  len: number;
  cb: WriteCallback | null;
}

const READ_SIZE = 64 * 1024;
/** Writes to the temp file are gathered up to this size. */
const WRITE_SIZE = 256 * 1024;

export class ResponseBuffer {
  readonly limits: BufferLimits;
  #sink: BufferSink;
  #events: BufferEvents;
  // Memory segments come first in stream order, then the file's spans: once a byte has gone to the
  // file, every later one follows it there until the file is read out.
  #mem: Array<Segment | undefined> = [];
  #memHead = 0;
  #memBytes = 0;
  #spans: FileSpan[] = [];
  #spanHead = 0;
  /** Bytes of the head span already on the socket. */
  #spanSent = 0;
  /** Bytes in the file not yet on the socket (written or waiting to be). */
  #fileBytes = 0;
  /** Bytes waiting to be written to the file (held in memory meanwhile). */
  #toWrite: Buffer[] = [];
  #toWriteBytes = 0;
  #file: FileHandle | null = null;
  #fileUsable: boolean;
  #writing = false;
  #reading = false;
  #writeAt = 0;
  #readAt = 0;
  /** Bytes durably written to the file (readable up to here). */
  #written = 0;
  #waitingDrain = false;
  #pumping = false;
  #over = false;
  #dead = false;
  #stall: NodeJS.Timeout | null = null;
  #onDrain = () => {
    this.#waitingDrain = false;
    if (this.#stall !== null) clearTimeout(this.#stall);
    this.#stall = null;
    this.#pump();
  };

  constructor(sink: BufferSink, limits: BufferLimits, events: BufferEvents) {
    this.#sink = sink;
    this.limits = limits;
    this.#events = events;
    this.#fileUsable = limits.maxTempFile > 0;
  }

  /** Bytes held here, not yet handed to the socket. */
  get length(): number {
    return this.#memBytes + this.#fileBytes;
  }

  /** Nothing held and the socket not known to be full: writes may go straight to it. */
  get idle(): boolean {
    return !this.#waitingDrain && this.#memBytes === 0 && this.#fileBytes === 0 && this.#memHead >= this.#mem.length;
  }

  /** Bytes in the temp file (for tests and stats). */
  get fileLength(): number {
    return this.#fileBytes;
  }

  /** The socket refused more (its write returned false): hold everything until it drains. */
  waitForDrain(): void {
    if (this.#waitingDrain || this.#dead) return;
    this.#waitingDrain = true;
    this.#sink.once('drain', this.#onDrain);
    const secs = this.limits.sendTimeout ?? 0;
    if (secs > 0) {
      this.#stall = setTimeout(() => {
        this.#fail(Object.assign(new Error(`the client took nothing for ${secs} s`), { code: 'ETIMEDOUT' }));
      }, secs * 1000);
      this.#stall.unref();
    }
  }

  /** Queue bytes for the socket. False: over the limits, the writer should wait for onRelieved. */
  push(data: Buffer | string, encoding: BufferEncoding | null, cb: WriteCallback | null): boolean {
    if (this.#dead) return false;
    const len = typeof data === 'string' ? Buffer.byteLength(data, encoding ?? 'utf8') : data.length;
    const toFile =
      this.#spanHead < this.#spans.length || (this.#fileUsable && this.#memBytes + len > this.limits.memory);
    if (toFile && len > 0) {
      const buf = typeof data === 'string' ? Buffer.from(data, encoding ?? 'utf8') : data;
      this.#spans.push({ len, cb });
      this.#fileBytes += len;
      this.#toWrite.push(buf);
      this.#toWriteBytes += len;
      this.#writeFile();
    } else if (toFile) {
      this.#spans.push({ len: 0, cb }); // a callback marker (the end of the response) in its place
    } else {
      this.#mem.push({ data, encoding, len, cb });
      this.#memBytes += len;
    }
    this.#pump();
    const ok = this.#underLimits();
    if (!ok) this.#over = true;
    return ok;
  }

  /** The response is over or the client gone: drop what is held, close the file. */
  discard(): void {
    if (this.#dead) return;
    this.#dead = true;
    this.#sink.removeListener('drain', this.#onDrain);
    if (this.#stall !== null) clearTimeout(this.#stall);
    this.#stall = null;
    this.#mem = [];
    this.#spans = [];
    this.#toWrite = [];
    this.#memBytes = this.#fileBytes = this.#toWriteBytes = 0;
    this.#closeFile();
  }

  #underLimits(): boolean {
    // Bytes on their way to the file are held in memory meanwhile: a disk slower than the app
    // slows the app down too.
    const { memory, maxTempFile } = this.limits;
    return this.#memBytes <= memory && this.#toWriteBytes <= memory && this.#fileBytes <= maxTempFile;
  }

  #pump(): void {
    if (this.#dead) return;
    if (!this.#pumping && !this.#waitingDrain) this.#toSink();
    if (this.#over && this.#underLimits()) {
      this.#over = false;
      this.#events.onRelieved();
    }
  }

  #toSink(): void {
    this.#pumping = true;
    try {
      const sink = this.#sink;
      while (this.#memHead < this.#mem.length) {
        if (sink.destroyed) return;
        const seg = this.#mem[this.#memHead]!;
        this.#mem[this.#memHead++] = undefined;
        this.#memBytes -= seg.len;
        if (!sink.write(seg.data, seg.encoding, seg.cb)) {
          this.waitForDrain();
          break;
        }
      }
      if (this.#memHead >= this.#mem.length && this.#memHead > 0) {
        this.#mem = [];
        this.#memHead = 0;
      }
      if (!this.#waitingDrain && this.#memHead >= this.#mem.length) this.#readFile();
    } finally {
      this.#pumping = false;
    }
  }

  /** The file's next bytes to the socket, once they are written; zero-length spans are callbacks. */
  #readFile(): void {
    if (this.#reading || this.#dead) return;
    while (this.#spanHead < this.#spans.length && this.#spans[this.#spanHead]!.len === this.#spanSent) {
      const span = this.#spans[this.#spanHead++]!;
      this.#spanSent = 0;
      // Everything before it is on the socket: a marker's callback (the end) goes with an empty write.
      if (span.cb && !this.#sink.destroyed) this.#sink.write('', null, span.cb);
    }
    if (this.#spanHead >= this.#spans.length) {
      this.#spans = [];
      this.#spanHead = 0;
      if (this.#fileBytes === 0 && !this.#writing) this.#writeAt = this.#readAt = this.#written = 0; // reuse the file
      return;
    }
    const readable = this.#written - this.#readAt;
    if (readable <= 0 || this.#file === null) return; // #writeFile calls back once bytes are in
    const n = Math.min(readable, READ_SIZE);
    const buf = Buffer.allocUnsafe(n);
    const fh = this.#file;
    this.#reading = true;
    fh.read(buf, 0, n, this.#readAt).then(
      ({ bytesRead }) => {
        this.#reading = false;
        if (this.#dead) return;
        if (bytesRead <= 0) return this.#fail(Object.assign(new Error('temp file read short'), { code: 'EIO' }));
        this.#readAt += bytesRead;
        this.#fileBytes -= bytesRead;
        this.#toSocket(buf.subarray(0, bytesRead));
      },
      (err: Error) => {
        this.#reading = false;
        this.#fail(err);
      },
    );
  }

  /** Bytes read back from the file: onto the socket, with the callbacks of the spans they end. */
  #toSocket(chunk: Buffer): void {
    let left = chunk.length;
    const cbs: WriteCallback[] = [];
    while (left > 0 && this.#spanHead < this.#spans.length) {
      const span = this.#spans[this.#spanHead]!;
      const take = Math.min(left, span.len - this.#spanSent);
      this.#spanSent += take;
      left -= take;
      if (this.#spanSent === span.len) {
        if (span.cb) cbs.push(span.cb);
        this.#spanHead++;
        this.#spanSent = 0;
      }
    }
    if (this.#sink.destroyed) return;
    const cb = cbs.length === 0 ? null : (err?: Error | null) => cbs.forEach((f) => f(err));
    if (!this.#sink.write(chunk, null, cb)) this.waitForDrain();
    this.#pump();
  }

  /** Gathered bytes to the file, one write at a time, in order. */
  #writeFile(): void {
    if (this.#writing || this.#dead || this.#toWriteBytes === 0) return;
    this.#writing = true;
    void this.#writeLoop();
  }

  async #writeLoop(): Promise<void> {
    try {
      if (this.#file === null) {
        const fh = await openTempFile(this.limits.tempDir ?? os.tmpdir());
        if (this.#dead) return void fh.close().catch(() => {});
        this.#file = fh;
      }
      while (this.#toWriteBytes > 0 && !this.#dead) {
        const parts: Buffer[] = [];
        let size = 0;
        while (this.#toWrite.length > 0 && size < WRITE_SIZE) {
          const b = this.#toWrite.shift()!;
          parts.push(b);
          size += b.length;
        }
        const buf = parts.length === 1 ? parts[0]! : Buffer.concat(parts, size);
        for (let off = 0; off < buf.length;) {
          const { bytesWritten } = await this.#file.write(buf, off, buf.length - off, this.#writeAt);
          if (this.#dead) return;
          off += bytesWritten;
          this.#writeAt += bytesWritten;
          this.#written = this.#writeAt;
        }
        this.#toWriteBytes -= size;
        responseBufferStats.tempFileBytes += size;
        this.#pump(); // the reader may be waiting for these bytes
      }
    } catch (err) {
      this.#onFileError(err as Error);
    } finally {
      this.#writing = false;
    }
    if (!this.#dead) this.#pump();
  }

  #onFileError(err: Error): void {
    responseBufferStats.tempFileFailures++;
    if (this.#dead) return;
    if (this.#written === 0 && this.#readAt === 0) {
      // Nothing of the response is in the file yet: keep it in memory instead, and from now on
      // slow the writer down past the memory limit (back-pressure) rather than try the disk again.
      this.#fileUsable = false;
      this.#closeFile();
      const spans = this.#spans.slice(this.#spanHead);
      const bufs = this.#toWrite;
      this.#spans = [];
      this.#spanHead = 0;
      this.#toWrite = [];
      this.#toWriteBytes = 0;
      this.#fileBytes = 0;
      const all = bufs.length === 1 ? bufs[0]! : Buffer.concat(bufs);
      let at = 0;
      for (const s of spans) {
        this.#mem.push({ data: all.subarray(at, at + s.len), encoding: null, len: s.len, cb: s.cb });
        this.#memBytes += s.len;
        at += s.len;
      }
      if (!this.#underLimits()) this.#over = true;
      return;
    }
    this.#fail(err);
  }

  #fail(err: Error): void {
    if (this.#dead) return;
    this.discard();
    this.#events.onFailure(err);
  }

  #closeFile(): void {
    const fh = this.#file;
    this.#file = null;
    fh?.close().catch(() => {});
  }
}

/** A temp file only its descriptor names (unlinked at once, as nginx's proxy_temp files are). */
async function openTempFile(dir: string): Promise<FileHandle> {
  const tmp = await fsp.mkdtemp(path.join(dir, 'stratum-response-'));
  try {
    return await fsp.open(path.join(tmp, 'body'), 'w+', 0o600);
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true }).catch(() => {});
  }
}
