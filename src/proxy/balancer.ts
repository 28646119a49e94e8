// Upstream groups, as nginx's `upstream {}`: which server of a group takes a request (smooth
// weighted round-robin, least connections, consistent hash), each server's state (active
// requests, passive health as max_fails/fail_timeout, the active checks' verdict), and the
// retry loop of proxy_next_upstream. Transport-free: the HTTP and uwsgi upstreams give it one
// `attempt` per try, so both kinds balance and retry the same way.

import { crc32 } from 'node:zlib';
import type { IncomingMessage } from 'node:http';
import { StratumError, UpstreamNextServer, UpstreamUnreachable } from '../errors.ts';
import type { ProxyContext, RequestBody } from './upstream.ts';

export type BalancePolicy = 'round-robin' | 'least-conn' | 'hash';

export interface GroupOptions {
  policy: BalancePolicy;
  /** `client` (the client address), `uri`, `header:NAME` or `cookie:NAME`. */
  hashKey: string;
  /** Failures within failTimeoutMs that take a server out for failTimeoutMs; 0 = never out. */
  maxFails: number;
  failTimeoutMs: number;
  /** Most servers one request is tried on; 0 = each server once. */
  tries: number;
  /** No further try once this long has passed since the first; 0 = no bound. */
  tryTimeoutMs: number;
}

export interface PeerSpec<T> {
  label: string;
  weight: number;
  backup: boolean;
  target: T;
}

/** What metrics, /stats and the dashboard show of one server. */
export interface PeerHealth {
  target: string;
  up: boolean;
  /** Requests in flight to it now. */
  active: number;
  /** Failed attempts since start (connect errors, resets, timeouts, 502/503 answers). */
  fails: number;
}

export class Peer<T> {
  readonly label: string;
  readonly weight: number;
  readonly backup: boolean;
  readonly target: T;
  active = 0;
  /** Failures counted in the current failTimeout window, and when that window began. */
  windowFails = 0;
  windowStart = 0;
  /** Taken out by passive health until then (Date.now() ms). */
  downUntil = 0;
  /** The active checks' verdict (true until a check says otherwise). */
  checkedUp = true;
  totalFails = 0;
  /** Smooth weighted round-robin state (nginx's current_weight). */
  current = 0;

  constructor(spec: PeerSpec<T>) {
    this.label = spec.label;
    this.weight = spec.weight;
    this.backup = spec.backup;
    this.target = spec.target;
  }

  up(now: number): boolean {
    return this.checkedUp && this.downUntil <= now;
  }
}

/** Virtual nodes per unit of weight on the hash ring (nginx's `hash … consistent` uses 160). */
const RING_POINTS = 160;

export class Balancer<T> {
  readonly peers: readonly Peer<T>[];
  readonly options: GroupOptions;
  #primaries: Peer<T>[];
  #backups: Peer<T>[];
  #ring: Array<{ hash: number; peer: Peer<T> }> = [];
  #now: () => number;

  /**
   * `start`: how many round-robin turns to skip first. Each process that runs the front balances
   * on its own; all starting at the first server, N workers each serving a few requests would send
   * them all there (6 of 6 were seen so). Random by default, so the processes start spread.
   */
  constructor(specs: PeerSpec<T>[], options: GroupOptions, now: () => number = Date.now, start?: number) {
    this.peers = specs.map((s) => new Peer(s));
    this.options = options;
    this.#now = now;
    this.#primaries = this.peers.filter((p) => !p.backup);
    this.#backups = this.peers.filter((p) => p.backup);
    // A group of backups only: they are its primaries.
    if (this.#primaries.length === 0) [this.#primaries, this.#backups] = [this.#backups, []];
    if (options.policy === 'hash') {
      for (const peer of this.#primaries) {
        for (let i = 0; i < RING_POINTS * peer.weight; i++)
          this.#ring.push({ hash: crc32(`${peer.label}-${i}`), peer });
      }
      this.#ring.sort((a, b) => a.hash - b.hash);
    }
    const turns = start ?? Math.floor(Math.random() * this.#primaries.reduce((n, p) => n + p.weight, 0));
    for (let i = 0; i < turns; i++) smoothPick(this.#primaries, () => true);
  }

  get size(): number {
    return this.peers.length;
  }

  /**
   * The server for the next try: a primary that is up and not yet tried, by the policy; else a
   * backup the same way. When every server is down and none was tried yet, the one whose
   * passive timeout ends first (a blip that took them all out should not refuse all traffic;
   * nginx with a single server ignores max_fails for the same reason). Null: nothing left.
   */
  pick(key: string | null, tried: ReadonlySet<Peer<T>>): Peer<T> | null {
    const now = this.#now();
    const usable = (p: Peer<T>) => !tried.has(p) && p.up(now);
    const peer =
      this.#choose(this.#primaries, usable, key, true) ??
      (this.#backups.length > 0 ? this.#choose(this.#backups, usable, key, false) : null);
    if (peer || tried.size > 0) return peer;
    let best: Peer<T> | null = null;
    for (const p of this.peers) {
      if (!p.checkedUp && this.peers.some((q) => q.checkedUp)) continue;
      if (!best || p.downUntil < best.downUntil) best = p;
    }
    return best;
  }

  /** Whether a further pick could find a server (for the retry decision, before a response is relayed). */
  hasUntried(tried: ReadonlySet<Peer<T>>): boolean {
    const now = this.#now();
    return this.peers.some((p) => !tried.has(p) && p.up(now));
  }

  #choose(peers: Peer<T>[], usable: (p: Peer<T>) => boolean, key: string | null, primary: boolean): Peer<T> | null {
    switch (this.options.policy) {
      case 'hash':
        if (primary && key !== null) return this.#hash(key, usable);
        return smoothPick(peers, usable);
      case 'least-conn':
        return leastConn(peers, usable);
      default:
        return smoothPick(peers, usable);
    }
  }

  /** The first usable server clockwise from the key's point on the ring. */
  #hash(key: string, usable: (p: Peer<T>) => boolean): Peer<T> | null {
    const ring = this.#ring;
    if (ring.length === 0) return null;
    const h = crc32(key);
    let lo = 0;
    let hi = ring.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (ring[mid]!.hash < h) lo = mid + 1;
      else hi = mid;
    }
    const seen = new Set<Peer<T>>();
    for (let k = 0; k < ring.length && seen.size < this.#primaries.length; k++) {
      const p = ring[(lo + k) % ring.length]!.peer;
      if (seen.has(p)) continue;
      seen.add(p);
      if (usable(p)) return p;
    }
    return null;
  }

  /** An attempt on `peer` failed: passive health, nginx's max_fails within fail_timeout. */
  failure(peer: Peer<T>): void {
    peer.totalFails++;
    const { maxFails, failTimeoutMs } = this.options;
    if (maxFails === 0) return;
    const now = this.#now();
    if (now - peer.windowStart > failTimeoutMs) {
      peer.windowStart = now;
      peer.windowFails = 0;
    }
    if (++peer.windowFails >= maxFails) {
      peer.downUntil = now + failTimeoutMs;
      peer.windowFails = 0;
    }
  }

  success(peer: Peer<T>): void {
    peer.windowFails = 0;
  }

  health(): PeerHealth[] {
    const now = this.#now();
    return this.peers.map((p) => ({ target: p.label, up: p.up(now), active: p.active, fails: p.totalFails }));
  }
}

/**
 * nginx's smooth weighted round-robin: every usable server gains its weight, the richest is
 * taken and pays the total back. Weights 5,1,1 give a a b a c a a, never a burst of one server.
 */
function smoothPick<T>(peers: readonly Peer<T>[], usable: (p: Peer<T>) => boolean): Peer<T> | null {
  let best: Peer<T> | null = null;
  let total = 0;
  for (const p of peers) {
    if (!usable(p)) continue;
    p.current += p.weight;
    total += p.weight;
    if (!best || p.current > best.current) best = p;
  }
  if (best) best.current -= total;
  return best;
}

/**
 * nginx's least_conn: the fewest active requests per unit of weight; ties share the traffic by
 * smooth round-robin among them, so an idle group still rotates.
 */
function leastConn<T>(peers: readonly Peer<T>[], usable: (p: Peer<T>) => boolean): Peer<T> | null {
  let least: Peer<T> | null = null;
  const tied: Peer<T>[] = [];
  for (const p of peers) {
    if (!usable(p)) continue;
    const cmp = least === null ? -1 : p.active * least.weight - least.active * p.weight;
    if (cmp < 0) {
      least = p;
      tied.length = 0;
      tied.push(p);
    } else if (cmp === 0) tied.push(p);
  }
  if (tied.length <= 1) return least;
  const set = new Set(tied);
  return smoothPick(peers, (p) => set.has(p));
}

/** Methods safe to send twice (RFC 9110 §9.2.2), as nginx's non_idempotent rule. */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'PUT', 'DELETE', 'OPTIONS', 'TRACE']);

/** The hash key of a request by `hashKey`; null when the request has none (then round-robin). */
export function hashKeyOf(hashKey: string, req: IncomingMessage, clientAddress: string): string | null {
  if (hashKey === 'client') return clientAddress;
  if (hashKey === 'uri') return req.url ?? '/';
  if (hashKey.startsWith('header:')) {
    const v = req.headers[hashKey.slice(7).toLowerCase()];
    return v === undefined ? null : String(v);
  }
  if (hashKey.startsWith('cookie:')) {
    const name = hashKey.slice(7);
    const cookie = req.headers.cookie;
    if (!cookie) return null;
    for (const part of cookie.split(';')) {
      const eq = part.indexOf('=');
      if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
    }
    return null;
  }
  return null;
}

/** What one try is told: whether a 502/503 answer may be dropped for the next server. */
export interface Attempt {
  /** Called with the response status before its head goes out; true: drop it, the next server is tried. */
  nextOnStatus(status: number): boolean;
}

/** errors that mean the request may not have reached the server at all. */
const CONNECT_FAILED = 'STRATUM_ERR_UPSTREAM_UNREACHABLE';

/**
 * Serve ctx from the group, as nginx's proxy_next_upstream: a try that fails before anything
 * reached the client goes on to the next server when
 * - the connection was never made (refused, unreachable, connect timeout): any method, nothing
 *   was sent;
 * - the server reset or closed before its response head, or answered 502/503: idempotent methods
 *   only (a POST may have done its work);
 * and the body can be sent again (none, in memory or spooled to a file), tries remain (`tries`)
 * and `tryTimeout` has not passed. Every failed try counts against that server's passive health.
 */
export async function serveFromGroup<T>(
  group: Balancer<T>,
  label: string,
  ctx: ProxyContext,
  body: RequestBody | null,
  attempt: (target: T, ctx: ProxyContext, body: RequestBody | null, hooks: Attempt) => Promise<void>,
): Promise<void> {
  const { options } = group;
  const key = options.policy === 'hash' ? hashKeyOf(options.hashKey, ctx.req, ctx.forward.clientAddress) : null;
  const idempotent = IDEMPOTENT.has(ctx.req.method ?? 'GET');
  const replayable = body === null || body.replayable;
  const maxTries = options.tries === 0 ? group.size : Math.min(options.tries, group.size);
  const started = Date.now();
  const tried = new Set<Peer<T>>();
  let last: StratumError | null = null;
  const more = () =>
    replayable &&
    tried.size < maxTries &&
    (options.tryTimeoutMs === 0 || Date.now() - started < options.tryTimeoutMs) &&
    group.hasUntried(tried);
  for (;;) {
    const peer = group.pick(key, tried);
    if (!peer) throw last ?? new UpstreamUnreachable(label, 'no live server in the group');
    tried.add(peer);
    ctx.upstreamLabel = peer.label;
    ctx.timings.connectAt = 0;
    ctx.timings.headAt = 0;
    let status = 0;
    const hooks: Attempt = {
      nextOnStatus(s) {
        status = s;
        return (s === 502 || s === 503) && idempotent && more();
      },
    };
    peer.active++;
    try {
      await attempt(peer.target, ctx, body, hooks);
      if (status === 502 || status === 503) group.failure(peer);
      else group.success(peer);
      return;
    } catch (err) {
      const e = err instanceof StratumError ? err : new UpstreamUnreachable(peer.label, String(err));
      last = e;
      // The client left, or sent what cannot be forwarded: not the server's fault.
      if (e.statusCode < 500) throw e;
      group.failure(peer);
      if (e instanceof UpstreamNextServer) continue;
      if (ctx.res.headersSent || ctx.res.destroyed || ctx.bytesOut > 0 || !more()) throw e;
      const neverSent =
        e.code === CONNECT_FAILED || (e.code === 'STRATUM_ERR_UPSTREAM_TIMEOUT' && !ctx.timings.connectAt);
      const beforeHead =
        ctx.timings.headAt === 0 &&
        (e.code === 'STRATUM_ERR_UPSTREAM_RESET' || e.code === 'STRATUM_ERR_UPSTREAM_TRUNCATED');
      if (!(neverSent || (idempotent && beforeHead))) throw e;
    } finally {
      peer.active--;
    }
  }
}
