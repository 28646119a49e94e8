// The master's listening sockets: bound once, held for the pool's whole life, and passed to every
// worker at fork (uWSGI's pre-fork model: the master binds, the workers accept). A dead or
// recycled worker never takes a listener down, so nothing is refused while it is replaced.
//
// The master binds without accepting, with Node's own net._createServerHandle (what the cluster
// module's primary uses). libuv defers a failed TCP bind (EADDRINUSE) to listen(), which the
// master never calls: the error is caught here by reading the bound address back — a socket
// whose bind failed reports port 0 — instead of letting the workers' listen() auto-bind the
// socket to 0.0.0.0 on a random port.

import { existsSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import util from 'node:util';
import type { Address } from '../config/schema.ts';
import { AddressInUse } from '../errors.ts';

export interface BoundSocket {
  fd: number;
  close(): void;
  getsockname?(out: Record<string, unknown>): number;
}

type CreateHandle = (
  address: string,
  port: number,
  addressType: number,
  fd?: number,
  flags?: number,
) => BoundSocket | number;

function where(a: Address): string {
  return a.kind === 'unix' ? a.path : `${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
}

/** Bind `a` (without listening); throws AddressInUse or a system error naming the address. */
export function bindSocket(a: Address): BoundSocket {
  const create = (net as unknown as { _createServerHandle: CreateHandle })._createServerHandle;
  const h = a.kind === 'unix' ? create(a.path, -1, -1) : create(a.host, a.port, net.isIPv6(a.host) ? 6 : 4);
  if (typeof h === 'number') {
    const code = util.getSystemErrorName(h);
    if (code === 'EADDRINUSE') throw new AddressInUse(where(a));
    throw Object.assign(new Error(`listen ${code}: ${where(a)}`), { code, syscall: 'listen' });
  }
  if (a.kind === 'tcp') {
    const out: Record<string, unknown> = {};
    h.getsockname?.(out);
    if (!out.port) {
      // The deferred EADDRINUSE: the socket is not bound at all.
      h.close();
      throw new AddressInUse(where(a));
    }
  }
  return h;
}

/** `tcp:HOST:PORT` (the port the OS picked for :0) or `unix:/path`. */
export function socketLabel(h: BoundSocket, a: Address): string {
  if (a.kind === 'unix') return `unix:${a.path}`;
  return `tcp:${where({ ...a, port: boundPort(h, a) })}`;
}

/** The bound port (the one the OS picked when `a` asked for 0). */
export function boundPort(h: BoundSocket, a: Address & { kind: 'tcp' }): number {
  const out: Record<string, unknown> = {};
  h.getsockname?.(out);
  return (out.port as number | undefined) ?? a.port;
}

/** A socket file nobody listens on (a previous run's) is removed; a live one is left alone. */
export async function removeStaleSocket(p: string): Promise<void> {
  if (!existsSync(p)) return;
  const live = await new Promise<boolean>((resolve) => {
    const c = net.connect({ path: p });
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (live) throw new AddressInUse(p);
  unlinkSync(p);
}

/**
 * Listen and accept in this process on a descriptor the master bound and passed down at fork.
 * listen({ fd }) would route through the cluster primary; _listen2 (what the cluster module
 * itself calls for an exclusive listen) opens the descriptor here, for TCP and Unix alike.
 */
export function listenOnFd(server: net.Server, fd: number, backlog: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.once('listening', () => {
      server.off('error', reject);
      resolve();
    });
    (server as unknown as { _listen2(a: null, p: null, t: null, backlog: number, fd: number): void })._listen2(
      null,
      null,
      null,
      backlog,
      fd,
    );
  });
}
