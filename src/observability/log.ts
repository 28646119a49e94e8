// One JSON logger (pino) per process: start-up, supervision events, errors and the access log all
// go to stdout as JSON lines, the shape log shippers and `jq` expect.
//
// Every process of the tree (the master, and every worker running the front) writes to the same
// stdout. A write(2) to a pipe is atomic only up to PIPE_BUF (4 KiB): larger writes from two
// processes can interleave mid-line. So lines are batched (a write per access line cost 10–24 %
// of throughput in `npm run bench`) but each write is at most 4 KiB and ends at a line's end;
// a single line longer than that goes alone. Flushed when a batch is full or every 250 ms, as
// nginx's `access_log … buffer= flush=`; exit paths flush synchronously.

import { writeSync } from 'node:fs';
import pino, { type Logger } from 'pino';
import type { LogLevel } from '../config/schema.ts';

export type { Logger };

/** The largest write that a pipe keeps whole (Linux PIPE_BUF). */
export const ATOMIC_WRITE = 4096;

/**
 * A line-batching writer to a descriptor whose every write is whole lines and at most
 * ATOMIC_WRITE bytes, each one write(2) of its own. (Not process.stdout: a stream that is still
 * writing gathers what comes next into one writev, and a writev is atomic only up to PIPE_BUF in
 * all.) A write is tried at once on the loop's thread — no thread-pool hop, which cost more than
 * the write — and a descriptor that is full and non-blocking (EAGAIN) is retried, in order.
 */
export class LineWriter {
  #fd: number;
  #pending: string[] = [];
  #pendingBytes = 0;
  #queue: Buffer[] = [];
  #retry: NodeJS.Timeout | null = null;

  constructor(fd = 1) {
    this.#fd = fd;
  }

  write(line: string): boolean {
    const n = Buffer.byteLength(line);
    if (this.#pendingBytes + n > ATOMIC_WRITE) this.flush();
    this.#pending.push(line);
    this.#pendingBytes += n;
    if (this.#pendingBytes >= ATOMIC_WRITE) this.flush();
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
    for (let spins = 0; this.#queue.length > 0 && spins < 10_000; spins++) this.#drain();
  }

  #drain(): void {
    while (this.#queue.length > 0) {
      const b = this.#queue[0]!;
      let n: number;
      try {
        n = writeSync(this.#fd, b);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EAGAIN') {
          // One retry pending at a time. A plain test, not `??=`: eslint's no-unused-private-class-members
          // does not count a compound assignment statement as a read, though the guard is one.
          if (this.#retry === null) {
            this.#retry = setTimeout(() => {
              this.#retry = null;
              this.#drain();
            }, 5);
          }
          return;
        }
        this.#queue = []; // stdout gone (EPIPE): nothing more can be said
        return;
      }
      // A short write happens only where atomicity is not at stake (a file, a terminal).
      if (n < b.length) this.#queue[0] = b.subarray(n);
      else this.#queue.shift();
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
