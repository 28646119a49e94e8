// The front's connection cap (nginx's worker_connections): a process that runs the front holds
// at most proxy.maxConnections client connections. Past it, a new connection is refused at once —
// a plain-HTTP listener answers a short 503 (Retry-After: 1, Connection: close), a TLS one closes
// it — counted, and logged once per burst. Without it, a flood of idle connections reaches the
// open-file limit, and then libuv accepts and closes every new connection with nothing said
// (its EMFILE trick), the admin's /livez included when it shares the process.
//
// Node's own server.maxConnections does the refusing, but closes the socket with no answer
// (measured: the client reads 0 bytes and sees the close ~3 ms after connecting) and logs nothing;
// this answers first and keeps the cost on the accepting path to one comparison.

import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { ConnectionLimitReached, rawHttpAnswer } from '../errors.ts';
import { BurstLog } from '../observability/burst.ts';
import { fdLimit } from '../pool/rlimit.ts';

/** One listener's connections, as the metrics, the status reports and the dashboard carry them. */
export interface ConnectionCounts {
  listener: string;
  open: number;
  limit: number;
  refused: number;
}

/** The open-file soft limit assumed when it cannot be read (not Linux): the usual default. */
const ASSUMED_FD_LIMIT = 1024;

/**
 * proxy.maxConnections' default from the process's open-file soft limit:
 *   reserve = max(128, soft / 10)            stdio, IPC, listeners, log files, the admin and its
 *                                            clients, spool files, refused connections lingering
 *   default = max(16, (soft - reserve) / 2)  each client connection may hold one more descriptor:
 *                                            its upstream connection, a static file or a spool file
 * e.g. soft 1024 → 448; 20,000 → 9,000; 65,536 → 29,491; 1,048,576 → 471,859.
 */
export function defaultMaxConnections(soft: number): number {
  const fds = Number.isFinite(soft) ? soft : 1_048_576;
  const reserve = Math.max(128, Math.ceil(fds / 10));
  return Math.max(16, Math.floor((fds - reserve) / 2));
}

/** The cap for this process: the configured one, or the default for its open-file limit. */
export function maxConnections(configured: number | null | undefined): number {
  if (configured != null) return configured;
  return defaultMaxConnections(fdLimit()?.soft ?? ASSUMED_FD_LIMIT);
}

/**
 * Refused connections kept open at once to deliver their 503, a sixteenth of the cap (at least
 * 32: within the reserve); past it, further ones are closed unanswered. Measured at a cap of
 * 9,000 with 200 clients arriving at once: with 32, 36 of them got a bare close.
 */
const lingerMax = (limit: number) => Math.max(32, Math.ceil(limit / 16));
/** How long a refused connection may stay for its client to read the 503 and close. */
const LINGER_MS = 1000;

export class ConnectionCap {
  readonly limit: number;
  readonly listener: string;
  /** Connections refused since start. */
  refused = 0;
  #lingering = 0;
  #lingerMax: number;
  #answer: string;
  #log: BurstLog;

  constructor(limit: number, listener: string, log: Logger) {
    this.limit = limit;
    this.listener = listener;
    this.#lingerMax = lingerMax(limit);
    this.#answer = rawHttpAnswer(new ConnectionLimitReached(listener, limit));
    this.#log = new BurstLog(
      (fields, msg) => log.warn(fields, msg),
      `more connections refused at proxy.maxConnections (${limit})`,
      { code: ConnectionLimitReached.code, listener, limit },
    );
  }

  /** Refuse `socket` (the cap is reached): answer or close it now, count it, log the burst. */
  refuse(socket: Socket, plainHttp: boolean): void {
    this.refused++;
    this.#log.hit(
      'refused',
      { code: ConnectionLimitReached.code, listener: this.listener, limit: this.limit, remote: socket.remoteAddress },
      new ConnectionLimitReached(this.listener, this.limit).message,
    );
    if (!plainHttp || this.#lingering >= this.#lingerMax) return void socket.destroy();
    this.#lingering++;
    socket.once('close', () => this.#lingering--);
    // Half-close after the answer: the client reads it and closes; one that does not is cut
    // after LINGER_MS (the http server destroys a socket whose timeout nobody handles).
    socket.end(this.#answer);
    socket.setTimeout(LINGER_MS);
  }

  counts(open: number): ConnectionCounts {
    return { listener: this.listener, open, limit: this.limit, refused: this.refused };
  }
}

/** Several processes' counts (the workers' fronts) as one row per listener: open, limit and refused summed. */
export function sumConnections(rows: Iterable<ConnectionCounts | undefined>): ConnectionCounts[] {
  const by = new Map<string, ConnectionCounts>();
  for (const r of rows) {
    if (!r) continue;
    const s = by.get(r.listener);
    if (!s) by.set(r.listener, { ...r });
    else {
      s.open += r.open;
      s.limit += r.limit;
      s.refused += r.refused;
    }
  }
  return [...by.values()];
}
