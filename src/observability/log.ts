// One JSON logger (pino) for the master: start-up, supervision events, errors and the access log
// all go to stdout as JSON lines, the shape log shippers and `jq` expect.

import pino, { type Logger } from 'pino';
import type { LogLevel } from '../config/schema.ts';

export type { Logger };

export function createLogger(level: LogLevel): Logger {
  return pino({
    level,
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  });
}
