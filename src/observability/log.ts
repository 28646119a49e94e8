// One JSON logger (pino) per process: start-up, supervision events, errors and the access log all
// go to stdout as JSON lines, the shape log shippers and `jq` expect.
//
// Every process of the tree (the master, and every worker running the front) writes to the same
// stdout. A write(2) to a pipe is atomic only up to PIPE_BUF (4 KiB): larger writes from two
// processes can interleave mid-line. So lines are batched (a write per access line cost 10–24 %
// of throughput in `npm run bench`) but each write is at most 4 KiB and ends at a line's end;
// a single line longer than that goes alone. Flushed when a batch is full or every 250 ms, as
// nginx's `access_log … buffer= flush=`; exit paths flush synchronously.

import { write, writeSync } from 'node:fs';
import pino, { type Logger } from 'pino';
import type { LogLevel } from '../config/schema.ts';

export type { Logger };

/** The largest write that a pipe keeps whole (Linux PIPE_BUF). */
export const ATOMIC_WRITE = 4096;

/** A line-batching writer to a descriptor whose every write is whole lines and at most ATOMIC_WRITE bytes. */
export class LineWriter {
  #fd: number;
  #pending: Buffer[] = [];
  #pendingBytes = 0;
  #queue: Buffer[] = [];
  #writing = false;

  constructor(fd: number) {
    this.#fd = fd;
  }

  write(line: string): boolean {
    const b = Buffer.from(line);
    if (this.#pendingBytes + b.length > ATOMIC_WRITE) this.#cut();
    this.#pending.push(b);
    this.#pendingBytes += b.length;
    if (this.#pendingBytes >= ATOMIC_WRITE) this.#cut();
    return true;
  }

  /** Send what is batched (async, in order). */
  flush(): void {
    this.#cut();
  }

  /** Write everything now (exit paths). */
  flushSync(): void {
    this.#cut();
    for (const b of this.#queue.splice(0)) writeFully(this.#fd, b);
  }

  #cut(): void {
    if (this.#pendingBytes === 0) return;
    this.#queue.push(this.#pending.length === 1 ? this.#pending[0]! : Buffer.concat(this.#pending, this.#pendingBytes));
    this.#pending = [];
    this.#pendingBytes = 0;
    this.#next();
  }

  #next(): void {
    if (this.#writing) return;
    const b = this.#queue.shift();
    if (!b) return;
    this.#writing = true;
    write(this.#fd, b, 0, b.length, null, (err, n) => {
      this.#writing = false;
      if (err && (err as NodeJS.ErrnoException).code === 'EAGAIN') this.#queue.unshift(b);
      else if (!err && n < b.length) this.#queue.unshift(b.subarray(n)); // not a pipe (a file or tty): no atomicity to keep
      if (err && (err as NodeJS.ErrnoException).code === 'EAGAIN') setTimeout(() => this.#next(), 1).unref();
      else this.#next();
    });
  }
}

function writeFully(fd: number, b: Buffer): void {
  for (let off = 0; off < b.length;) {
    try {
      off += writeSync(fd, b, off);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') return; // stdout gone: nothing more can be said
    }
  }
}

export function createLogger(level: LogLevel): Logger {
  const dest = new LineWriter(1);
  const timer = setInterval(() => dest.flush(), 250);
  timer.unref();
  process.once('exit', () => dest.flushSync());
  const log = pino({
    level,
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  }, dest);
  // pino's flush() asks its destination to flush: the ready line goes out at once.
  (log as unknown as { flush(): void }).flush = () => dest.flush();
  return log;
}

/**
 * A writer straight to the logger's destination, for the one line written per request (the access
 * log): built by hand it costs a few µs where pino's generic serializer cost about 10 µs of the
 * master's ~90 µs per request (`npm run bench`). Null when info lines are not logged.
 */
export function infoLineWriter(log: Logger): ((line: string) => void) | null {
  if (!log.isLevelEnabled('info')) return null;
  const stream = (log as unknown as Record<symbol, { write(s: string): unknown }>)[pino.symbols.streamSym];
  return (line) => void stream.write(line);
}
