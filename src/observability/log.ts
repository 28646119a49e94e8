// One JSON logger (pino) for the master: start-up, supervision events, errors and the access log
// all go to stdout as JSON lines, the shape log shippers and `jq` expect.
//
// Lines are batched (sonic-boom, flushed at 32 KiB or every 250 ms, as nginx's
// `access_log … buffer=32k flush=…`): a write per access line cost 10–24 % of the master's
// throughput in `npm run bench`, and each flush is an fs.write on libuv's thread pool — a thread
// hand-off both ways — so fewer, larger flushes cost less (4 KiB batches were ~1,700 flushes/s
// at bench load). Exit paths flush synchronously.

import pino, { type Logger } from 'pino';
import type { LogLevel } from '../config/schema.ts';

export type { Logger };

export function createLogger(level: LogLevel): Logger {
  const dest = pino.destination({ dest: 1, minLength: 32 * 1024, maxWrite: 128 * 1024, sync: false });
  const timer = setInterval(() => dest.flush(), 250);
  timer.unref();
  process.once('exit', () => {
    try {
      dest.flushSync();
    } catch {
      // stdout already gone: nothing more can be said
    }
  });
  return pino({
    level,
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  }, dest);
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
