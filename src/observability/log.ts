// One JSON logger (pino) per process: start-up, supervision events, errors and the access log all
// go to stdout as JSON lines, the shape log shippers and `jq` expect.
//
// Every process of the tree (the master, and every worker running the front) writes to the same
// stdout. A write(2) to a pipe is atomic only up to PIPE_BUF (4 KiB): larger writes from two
// processes can interleave mid-line. So lines are batched (a write per access line cost 10–24 %
// of throughput in `npm run bench`) but each write is at most 4 KiB and ends at a line's end;
// a single line longer than that goes alone. Flushed when a batch is full or every 250 ms, as
// nginx's `access_log … buffer= flush=`; exit paths flush synchronously.

import { fstatSync, write, writeSync } from 'node:fs';
import pino, { type Logger } from 'pino';
import type { LogLevel } from '../config/schema.ts';

export type { Logger };

/** The largest write that a pipe keeps whole (Linux PIPE_BUF). */
export const ATOMIC_WRITE = 4096;

/**
 * A line-batching writer to a descriptor whose every write is whole lines, each one write(2) of
 * its own, in order, one at a time (fs.write: a synchronous write blocks the event loop while
 * another process holds the file: the access log then cost 35 µs a request against 16, `npm run
 * bench`, default vs no-access-log). Not process.stdout: a stream that is still writing gathers
 * what comes next into one writev. To a pipe or socket a batch is at most ATOMIC_WRITE bytes, the
 * most a pipe keeps whole; to a regular file, whose writes the kernel serializes whole, 32 KiB.
 */
export class LineWriter {
  #fd: number;
  #pending: string[] = [];
  #pendingBytes = 0;
  #queue: Buffer[] = [];
  /** A write is under way (one at a time, so batches stay in order). */
  #writing = false;
  #idle: Array<() => void> = [];

  #batch: number;

  constructor(fd = 1) {
    this.#fd = fd;
    let file = false;
    try {
      file = fstatSync(fd).isFile();
    } catch {
      // no descriptor to look at: keep to the pipe-safe size
    }
    this.#batch = file ? 32 * 1024 : ATOMIC_WRITE;
  }

  write(line: string): boolean {
    const n = Buffer.byteLength(line);
    if (this.#pendingBytes + n > this.#batch) this.flush();
    this.#pending.push(line);
    this.#pendingBytes += n;
    if (this.#pendingBytes >= this.#batch) this.flush();
    return true;
  }

  /** Send what is batched. */
  flush(): void {
    if (this.#pendingBytes === 0) return;
    this.#queue.push(Buffer.from(this.#pending.length === 1 ? this.#pending[0]! : this.#pending.join('')));
    this.#pending = [];
    this.#pendingBytes = 0;
    this.#drain();
  }

  /** Exit paths: everything out now, waiting on a full descriptor if need be. */
  flushSync(): void {
    this.flush();
    this.#drainSync();
  }

  #drain(): void {
    if (this.#writing) return;
    const b = this.#queue[0];
    if (b === undefined) {
      for (const w of this.#idle.splice(0)) w();
      return;
    }
    this.#writing = true;
    write(this.#fd, b, 0, b.length, null, (err, n) => {
      this.#writing = false;
      if (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') {
          this.#queue = []; // stdout gone (EPIPE): nothing more can be said
          return;
        }
        // A full non-blocking descriptor: the same whole batch again, a moment later.
        setTimeout(() => this.#drain(), 5).unref();
        return;
      }
      // A short write happens only where atomicity is not at stake (a file, a terminal).
      if (n < b.length) this.#queue[0] = b.subarray(n);
      else this.#queue.shift();
      this.#drain();
    });
  }

  /** Everything batched so far has been written. */
  drained(): Promise<void> {
    this.flush();
    if (!this.#writing && this.#queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  /**
   * Exit paths: what is queued, written now — all but a batch whose write is already under way
   * (written twice otherwise; a graceful exit awaits drained() first, so none is).
   */
  #drainSync(): void {
    if (this.#writing) this.#queue.shift();
    for (let spins = 0; this.#queue.length > 0 && spins < 10_000; spins++) {
      const b = this.#queue[0]!;
      try {
        const n = writeSync(this.#fd, b);
        if (n < b.length) this.#queue[0] = b.subarray(n);
        else this.#queue.shift();
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') return;
      }
    }
  }
}

export function createLogger(level: LogLevel): Logger {
  const dest = new LineWriter(1);
  const timer = setInterval(() => dest.flush(), 250);
  timer.unref();
  process.once('exit', () => dest.flushSync());
  const log = pino(
    {
      level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    dest,
  );
  // pino's flush() asks its destination to flush: the ready line goes out at once.
  (log as unknown as { flush(): void }).flush = () => dest.flush();
  drains.set(log, dest);
  return log;
}

const drains = new WeakMap<Logger, LineWriter>();

/** Resolves once every line the logger was given is written (before a graceful exit). */
export function logDrained(log: Logger): Promise<void> {
  return drains.get(log)?.drained() ?? Promise.resolve();
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
