// Harakiri (uWSGI's per-request time limit), kept by each worker for every request it serves —
// from its own front, from our proxy over uwsgi, or from nginx on the shared socket. Two cases:
//
//   - The request is slow but the event loop is alive (awaiting a database, a sleep): at the limit
//     the worker answers 504 itself (or cuts a response already begun) and abandons the request.
//     Nothing is killed: the process is healthy and its other requests go on.
//   - The event loop is blocked (a busy loop, a synchronous call that never returns): no timer on
//     the main thread can fire. A watchdog thread sees the main thread's heartbeat stop while a
//     request is past its limit. It writes a 504 straight onto that client's socket (a small write
//     on the descriptor, which the blocked thread is not touching), leaves a note for the master,
//     and SIGKILLs its own process, as uWSGI's master kills a stuck worker. The master counts the
//     kill once (from the note) and respawns the worker.
//
// The shared memory between the threads: a heartbeat, then one record per tracked request
// (start, limit, descriptor, head-sent flag) and its "METHOD path requestId" for the note.

import { writeSync } from 'node:fs';
import { Harakiri, rawHttpAnswer, UpstreamReset } from '../errors.ts';
import { Worker } from 'node:worker_threads';

const SLOTS = 1024;
const FIELDS = 4; // start (epoch ms, 0 = free), limit ms, fd (-1 = none), head sent (0/1)
const INFO_BYTES = 200;
/** How often the main thread beats and sweeps for slow requests. */
const TICK_MS = 100;
/** The heartbeat must be this stale, beyond a request's limit, before the watchdog kills. */
const BLOCKED_MS = 400;

/** The 504 the watchdog writes for a request whose blocked loop gets its worker killed. */
export const HARAKIRI_RESPONSE = rawHttpAnswer(new Harakiri(process.pid, 0));

/** What a request gets when its worker dies under it (nginx's answer to a vanished upstream). */
export const BAD_GATEWAY = rawHttpAnswer(new UpstreamReset('worker', 'the process exited'));

/** What the watchdog leaves for the master before it kills its process (`<runDir>/harakiri-<pid>.json`). */
export interface HarakiriNote {
  pid: number;
  limitMs: number;
  blockedMs: number;
  requests: string[];
}

export function harakiriNotePath(runDir: string, pid: number): string {
  return `${runDir}/harakiri-${pid}.json`;
}

// The watchdog thread's code: plain CommonJS (an eval'd worker), no imports of ours, so that it
// runs the same from the sources and from the compiled build.
const WATCHDOG = `
const { workerData } = require('node:worker_threads');
const fs = require('node:fs');
const { sab, info, slots, fields, infoBytes, notePath, blockedMs, tickMs, response, gone } = workerData;
const f = new Float64Array(sab);
const text = new Uint8Array(info);
const decoder = new TextDecoder();
setInterval(() => {
  const now = Date.now();
  const stale = now - f[0];
  if (f[0] === 0 || stale < blockedMs) return;
  const over = [];
  for (let i = 0; i < slots; i++) {
    const at = 1 + i * fields;
    const start = f[at], limit = f[at + 1];
    if (start > 0 && limit > 0 && now - start > limit && stale > Math.min(limit, blockedMs)) over.push(i);
  }
  if (over.length === 0) return;
  const requests = [];
  let limitMs = 0;
  for (const i of over) {
    const at = 1 + i * fields;
    limitMs = Math.max(limitMs, f[at + 1]);
    const bytes = text.subarray(i * infoBytes, (i + 1) * infoBytes);
    const end = bytes.indexOf(0);
    requests.push(decoder.decode(end < 0 ? bytes : bytes.subarray(0, end)));
    const fd = f[at + 2];
    if (fd >= 0 && f[at + 3] === 0) {
      try { fs.writeSync(fd, response); } catch {}
    }
  }
  // The requests beside them, still within their limit, die with the process: they get what nginx
  // answers for a vanished upstream (502) instead of a reset.
  for (let i = 0; i < slots; i++) {
    const at = 1 + i * fields;
    if (f[at] > 0 && !over.includes(i) && f[at + 2] >= 0 && f[at + 3] === 0) {
      try { fs.writeSync(f[at + 2], gone); } catch {}
    }
  }
  try {
    fs.writeFileSync(notePath, JSON.stringify({ pid: process.pid, limitMs, blockedMs: stale, requests }));
  } catch {}
  process.kill(process.pid, 'SIGKILL');
}, tickMs);
`;

export interface Watch {
  /** The response head went out: a 504 can no longer be written in its place. */
  headSent(): void;
  /** The request is over (answered, failed or abandoned). */
  done(): void;
}

interface Tracked {
  onTimeout: () => void;
  limitMs: number;
  start: number;
}

export class HarakiriKeeper {
  readonly defaultMs: number;
  /** Requests answered 504 by the soft limit (the loop was alive; nothing killed). */
  timeouts = 0;
  #f: Float64Array;
  #info: Uint8Array;
  #free: number[] = [];
  #tracked: Array<Tracked | null> = new Array<Tracked | null>(SLOTS).fill(null);
  /** Requests over SLOTS: soft limit only. */
  #overflow = new Set<Tracked>();
  #encoder = new TextEncoder();
  #timer: NodeJS.Timeout;
  #thread: Worker | null = null;

  constructor(defaultMs: number, runDir: string | null) {
    this.defaultMs = defaultMs;
    const sab = new SharedArrayBuffer(8 * (1 + SLOTS * FIELDS));
    const info = new SharedArrayBuffer(SLOTS * INFO_BYTES);
    this.#f = new Float64Array(sab);
    this.#info = new Uint8Array(info);
    for (let i = SLOTS - 1; i >= 0; i--) this.#free.push(i);
    this.#f[0] = Date.now();
    this.#timer = setInterval(() => this.#tick(), TICK_MS);
    this.#timer.unref();
    if (runDir !== null) {
      this.#thread = new Worker(WATCHDOG, {
        eval: true,
        workerData: {
          sab,
          info,
          slots: SLOTS,
          fields: FIELDS,
          infoBytes: INFO_BYTES,
          notePath: harakiriNotePath(runDir, process.pid),
          blockedMs: BLOCKED_MS,
          tickMs: TICK_MS,
          response: HARAKIRI_RESPONSE,
          gone: BAD_GATEWAY,
        },
        // The watchdog needs no heap to speak of.
        resourceLimits: { maxOldGenerationSizeMb: 8, maxYoungGenerationSizeMb: 1 },
      });
      this.#thread.unref();
      this.#thread.on('error', () => {});
    }
  }

  /**
   * Watch one request with `limitMs` (0 = no limit): `onTimeout` runs at the limit while the loop is
   * alive; `fd` is where the watchdog writes a 504 if the loop is blocked (-1: it cannot).
   */
  watch(limitMs: number, fd: number, info: string, onTimeout: () => void): Watch {
    // Tracked even without a limit: a process that exits under its requests answers them (answerAll).
    const start = Date.now();
    const t: Tracked = { onTimeout, limitMs: limitMs > 0 ? limitMs : Infinity, start };
    const slot = this.#free.pop();
    if (slot === undefined) {
      this.#overflow.add(t);
      return { headSent() {}, done: () => void this.#overflow.delete(t) };
    }
    const at = 1 + slot * FIELDS;
    const f = this.#f;
    f[at + 1] = limitMs > 0 ? limitMs : 0;
    f[at + 2] = fd;
    f[at + 3] = 0;
    const bytes = this.#info.subarray(slot * INFO_BYTES, (slot + 1) * INFO_BYTES);
    const { written } = this.#encoder.encodeInto(info, bytes.subarray(0, INFO_BYTES - 1));
    bytes[written] = 0;
    f[at] = start; // last: the watchdog reads a record only once its start is set
    this.#tracked[slot] = t;
    let open = true;
    return {
      headSent: () => {
        if (open) f[at + 3] = 1;
      },
      done: () => {
        if (!open) return;
        open = false;
        f[at] = 0;
        this.#tracked[slot] = null;
        this.#free.push(slot);
      },
    };
  }

  #tick(): void {
    const now = Date.now();
    this.#f[0] = now;
    for (let i = 0; i < SLOTS; i++) {
      const t = this.#tracked[i];
      if (t && now - t.start >= t.limitMs) this.#expire(t);
    }
    for (const t of this.#overflow) if (now - t.start >= t.limitMs) this.#expire(t);
  }

  #expire(t: Tracked): void {
    this.timeouts++;
    t.limitMs = Infinity; // once
    t.onTimeout();
  }

  /** The process is exiting under its requests: each one still without a head gets `response` on its socket. */
  answerAll(response: string): void {
    const f = this.#f;
    for (let i = 0; i < SLOTS; i++) {
      const at = 1 + i * FIELDS;
      if (f[at]! > 0 && f[at + 2]! >= 0 && f[at + 3] === 0) {
        try {
          writeSync(f[at + 2]!, response);
        } catch {
          // The client has gone (EPIPE, EBADF): nobody is left to answer, and the process exits anyway.
        }
      }
    }
  }

  close(): void {
    clearInterval(this.#timer);
    void this.#thread?.terminate();
  }
}

/** The socket's descriptor, for the watchdog's last-resort 504 (-1 when it has none, e.g. TLS). */
export function socketFd(socket: unknown): number {
  const fd = (socket as { _handle?: { fd?: number } } | null)?._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : -1;
}
