// The `pool` target in the master topology: the front runs in the master, isolated from app code,
// and hands each request over uwsgi (kept connections) to a worker the pool picks — least in
// flight, or a place in the bounded listen queue. This is also how `stratum proxy` would reach a
// pool, only with a pool it supervises itself. The front knows the pool only by this interface.

import { HARAKIRI_VAR } from '../uwsgi/server.ts';
import type { StratumError } from '../errors.ts';
import type { Ticket } from '../pool/dispatch.ts';
import type { UwsgiClient } from '../uwsgi/client.ts';
import { offerCompression } from './compress.ts';
import { bufferingFor, type BufferingConfig } from './response-buffer.ts';
import { uwsgiExchange } from './upstream-uwsgi.ts';
import { slotFor, type ProxyContext, type RequestBody, type Upstream } from './upstream.ts';

/** A slot on one worker, as the front sees it. */
export interface WorkerSlot {
  readonly id: number;
  readonly pid: number;
  readonly client: UwsgiClient;
}

/** What the front needs of a worker pool (the Supervisor provides it). */
export interface WorkerDispatch {
  acquire(timeoutMs: number): WorkerSlot | Ticket<WorkerSlot>;
  release(slot: WorkerSlot): void;
  /** The worker refused or dropped a connection: keep requests off it until it is known alive. */
  suspect(slot: WorkerSlot): void;
  /** How many workers a refused request may try before it fails. */
  readonly size: number;
  /** The pool's config (the Supervisor's): its proxy.buffering applies to the pool's answers. */
  readonly config?: { proxy: { buffering: BufferingConfig } };
}

export class PoolUpstream implements Upstream {
  readonly kind = 'pool' as const;
  readonly label = 'pool';
  #pool: WorkerDispatch;
  #queueTimeoutMs: number;
  #buffering: BufferingConfig | null;

  /** `buffering`: proxy.buffering (the pool's own config by default), so a worker's answer is read at once. */
  constructor(pool: WorkerDispatch, queueTimeoutMs: number, buffering?: BufferingConfig | null) {
    this.#pool = pool;
    this.#queueTimeoutMs = queueTimeoutMs;
    this.#buffering = buffering !== undefined ? buffering : (pool.config?.proxy.buffering ?? null);
  }

  async handle(ctx: ProxyContext, body: RequestBody | null): Promise<void> {
    // The worker's answer is read as fast as it comes (the client's response takes it at once, up
    // to the buffer's limits): the worker's socket never waits on a slow client, and the slot is
    // released when the worker is done.
    ctx.res.stratumBuffering = bufferingFor(ctx.route, this.#buffering);
    // Encoded here, at the front, never on the worker's uwsgi bridge (it would be encoded twice).
    offerCompression(ctx);
    for (let attempt = 1; ; attempt++) {
      const got = this.#pool.acquire(this.#queueTimeoutMs);
      const queued = slotFor(got, ctx);
      const slot: WorkerSlot = queued instanceof Promise ? await queued : queued;
      ctx.workerPid = slot.pid;
      ctx.upstreamLabel = `worker ${slot.id}`;
      try {
        // The worker keeps harakiri; a route's own limit travels with the request.
        await uwsgiExchange(slot.client, ctx, body, {
          joinRepeated: false,
          extraVars: [HARAKIRI_VAR, String(ctx.harakiriMs)],
        });
        return;
      } catch (err) {
        const code = (err as StratumError).code;
        // A worker that refuses or drops connections may have died (kill -9, OOM) before the
        // master saw it exit: keep new requests off it until it is known to be alive.
        if (code === 'STRATUM_ERR_UPSTREAM_UNREACHABLE' || code === 'STRATUM_ERR_UPSTREAM_RESET')
          this.#pool.suspect(slot);
        // A request that never reached a worker (refused before anything was sent) goes to
        // another one; one that did reach it fails with it, as uWSGI's would.
        const neverSent = code === 'STRATUM_ERR_UPSTREAM_UNREACHABLE' && !ctx.res.headersSent;
        if (!neverSent || attempt > this.#pool.size) throw err;
      } finally {
        this.#pool.release(slot);
      }
    }
  }

  close(): void {}
}
