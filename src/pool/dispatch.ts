// Dispatch: a request takes a slot on a worker, or waits for one in a bounded queue (uWSGI's
// `listen` backlog; undici's pool-base owns its queue the same way). Which worker a slot is on is
// the picker's business — least in-flight across processes in the master, the process itself in
// the worker topology — so the queue, its bound, its timeout and its 503 live here once, and are
// testable without forking anything.

import { ClientClosed, PoolOverloaded, PoolUnavailable, type StratumError } from '../errors.ts';

export interface SlotPicker<T> {
  /** A target with spare capacity, or null. */
  pick(): T | null;
  /** Count one more request on `t` (called whenever pick()'s answer is used). */
  take(t: T): void;
}

/** A request waiting in the queue: its promise settles when a slot is free, it times out, or it is cancelled. */
export interface Ticket<T> {
  readonly promise: Promise<T>;
  /** The client went away: leave the queue at once. */
  cancel(): void;
}

interface Waiter<T> {
  resolve(t: T): void;
  reject(err: StratumError): void;
  timer: NodeJS.Timeout | null;
}

export class Dispatcher<T> {
  #picker: SlotPicker<T>;
  #limit: number;
  #queue: Waiter<T>[] = [];
  #closed = false;
  rejected = 0;
  /** Called when a request is refused because the queue is full. */
  onRejected: (() => void) | null = null;

  constructor(picker: SlotPicker<T>, queueLimit: number) {
    this.#picker = picker;
    this.#limit = queueLimit;
  }

  get queueLength(): number {
    return this.#queue.length;
  }

  get queueLimit(): number {
    return this.#limit;
  }

  /**
   * A slot at once when one is free and nobody is waiting (most requests: no promise at all);
   * else a place in the queue; when the queue is full, PoolOverloaded (503) at once.
   */
  acquire(timeoutMs: number): T | Ticket<T> {
    if (this.#queue.length === 0) {
      const t = this.#picker.pick();
      if (t !== null) {
        this.#picker.take(t);
        return t;
      }
    }
    if (this.#closed) return settled(Promise.reject(new PoolUnavailable()));
    if (this.#queue.length >= this.#limit) {
      this.rejected++;
      this.onRejected?.();
      return settled(Promise.reject(new PoolOverloaded(this.#queue.length)));
    }
    let waiter!: Waiter<T>;
    const promise = new Promise<T>((resolve, reject) => {
      waiter = { resolve, reject, timer: null };
    });
    const leave = (err: StratumError) => {
      const i = this.#queue.indexOf(waiter);
      if (i < 0) return;
      this.#queue.splice(i, 1);
      if (waiter.timer) clearTimeout(waiter.timer);
      waiter.reject(err);
    };
    waiter.timer = setTimeout(() => leave(new PoolUnavailable()), timeoutMs);
    this.#queue.push(waiter);
    return { promise, cancel: () => leave(new ClientClosed()) };
  }

  /** A slot was freed (or a worker became ready): hand slots to waiters, in order. */
  pump(): void {
    while (this.#queue.length > 0) {
      const t = this.#picker.pick();
      if (t === null) return;
      const waiter = this.#queue.shift()!;
      if (waiter.timer) clearTimeout(waiter.timer);
      this.#picker.take(t);
      waiter.resolve(t);
    }
  }

  /** Stop: every waiter gets 503, and so does every later request that finds no free slot. */
  close(): void {
    this.#closed = true;
    for (const w of this.#queue.splice(0)) {
      if (w.timer) clearTimeout(w.timer);
      w.reject(new PoolUnavailable());
    }
  }
}

function settled<T>(promise: Promise<T>): Ticket<T> {
  promise.catch(() => {});
  return { promise, cancel() {} };
}

/** The ticket's slot: at once, or when the queue hands one over. */
export function isTicket<T>(x: T | Ticket<T>): x is Ticket<T> {
  return typeof x === 'object' && x !== null && 'cancel' in x && 'promise' in x;
}
