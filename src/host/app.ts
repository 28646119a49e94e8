// The app host: load the user's module and turn whatever it exports into one Node
// (req, res) listener — the single core shape every worker serves (Hono's adapter idea).
// Kinds, recognised from the export:
//   - a Fastify instance (or a function of no arguments returning one, possibly async)
//   - a Node request listener `(req, res)` — Express, Koa's callback(), plain handlers
//   - a fetch handler: `{ fetch(request, info) }` (Hono, itty, ...) or `(request) => Response`;
//     `info` carries the peer address (see FetchConnInfo)
// WebSocket (and any other) upgrades reach an app that can take them: a Fastify app through its own
// server's 'upgrade' listeners (@fastify/websocket), any other kind through an `upgrade(req, socket,
// head)` export — the shape `ws`'s `WebSocketServer({ noServer: true }).handleUpgrade` wants — or an
// `upgrade` method beside `fetch`.

import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { AppKindUnknown, appImportError, rawHttpAnswer, UpgradeUnsupported } from '../errors.ts';
import { fetchListener, type FetchConnInfo, type FetchHandler } from './fetch.ts';

export type AppKind = 'fastify' | 'listener' | 'fetch';
export type RequestListener = (req: IncomingMessage, res: ServerResponse) => void;
export type UpgradeHandler = (req: IncomingMessage, socket: Duplex, head: Buffer) => void;

export interface LoadedApp {
  kind: AppKind;
  listener: RequestListener;
  /** Takes upgrade requests (WebSocket); null when the app has no way to. */
  upgrade: UpgradeHandler | null;
  /** Close the app (Fastify's onClose hooks) when the worker drains. */
  close(): Promise<void>;
}

interface FastifyLike {
  ready(): PromiseLike<unknown>;
  routing: RequestListener;
  close(): PromiseLike<unknown>;
  server?: { listenerCount(event: string): number; emit(event: string, ...args: unknown[]): boolean };
}

function isFastify(x: unknown): x is FastifyLike {
  return (
    (typeof x === 'object' || typeof x === 'function') &&
    x !== null &&
    typeof (x as FastifyLike).ready === 'function' &&
    typeof (x as FastifyLike).routing === 'function' &&
    typeof (x as { register?: unknown }).register === 'function'
  );
}

export async function loadApp(modulePath: string, exportName = 'default'): Promise<LoadedApp> {
  let mod: Record<string, unknown>;
  try {
    // Each worker is a fresh process (a reload forks new ones), so its ESM cache never holds an old
    // version of the app. No cache-busting query: it would defeat Node's compile cache, whose
    // entries are keyed by URL — a TypeScript app would then load the type stripper (~20 MiB) in
    // every worker, and leave one more cache file behind at every start.
    mod = (await import(pathToFileURL(resolve(modulePath)).href)) as Record<string, unknown>;
  } catch (err) {
    throw appImportError(modulePath, err); // TypeScript that type stripping refuses names its file:line
  }
  let exported = mod[exportName];
  if (exported === undefined && exportName === 'default' && typeof mod.fetch === 'function') exported = mod;
  if (exported === undefined) throw new AppKindUnknown(modulePath, `nothing named ${exportName}`);
  const app = await adapt(exported, modulePath);
  if (!app.upgrade && typeof mod.upgrade === 'function') app.upgrade = mod.upgrade as UpgradeHandler;
  return app;
}

export async function adapt(exported: unknown, where: string): Promise<LoadedApp> {
  if (isFastify(exported)) {
    await exported.ready();
    const app = exported;
    // @fastify/websocket listens for upgrades on the app's own (never listening) server.
    const server = app.server;
    const upgrade: UpgradeHandler | null = server
      ? (req, socket, head) => {
          if (server.listenerCount('upgrade') > 0) server.emit('upgrade', req, socket, head);
          else refuseUpgrade(socket);
        }
      : null;
    return { kind: 'fastify', listener: app.routing, upgrade, close: async () => void (await app.close()) };
  }
  if (typeof exported === 'object' && exported !== null && typeof (exported as FetchHandler).fetch === 'function') {
    const handler = exported as FetchHandler & { upgrade?: UpgradeHandler };
    const upgrade = typeof handler.upgrade === 'function' ? handler.upgrade.bind(handler) : null;
    return {
      kind: 'fetch',
      listener: fetchListener((r, info) => handler.fetch(r, info)),
      upgrade,
      close: async () => {},
    };
  }
  if (typeof exported === 'function') {
    const fn = exported as (...args: unknown[]) => unknown;
    if (fn.length >= 2)
      return { kind: 'listener', listener: fn as RequestListener, upgrade: null, close: async () => {} };
    if (fn.length === 1) {
      const listener = fetchListener(fn as (r: Request, info: FetchConnInfo) => Promise<Response>);
      return { kind: 'fetch', listener, upgrade: null, close: async () => {} };
    }
    // No declared parameters: a factory.
    const made = await fn();
    if (made !== undefined && made !== exported) return adapt(made, where);
  }
  throw new AppKindUnknown(where, describe(exported));
}

function describe(x: unknown): string {
  if (typeof x === 'function') return `a function of ${x.length} parameters`;
  if (x === null) return 'null';
  if (typeof x === 'object') return `an object with keys ${Object.keys(x).slice(0, 5).join(', ') || '(none)'}`;
  return typeof x;
}

/** An upgrade nobody takes: 501, as for a route whose target cannot upgrade. */
export function refuseUpgrade(socket: Duplex, where = 'the app'): void {
  socket.end(rawHttpAnswer(new UpgradeUnsupported(where)));
}

/**
 * The app's listener, made safe to call for every request: a listener that throws, or an async
 * one whose promise rejects, answers 500 (or cuts a response already begun) and is reported —
 * it never takes the process's other requests down.
 */
export function guardedListener(listener: RequestListener, onError: (err: unknown) => void): RequestListener {
  const failed = (res: ServerResponse, err: unknown) => {
    onError(err);
    if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' }).end('Internal Server Error\n');
    else res.destroy();
  };
  return (req, res) => {
    try {
      const result: unknown = (listener as (q: typeof req, r: typeof res) => unknown)(req, res);
      if (result && typeof (result as Promise<unknown>).then === 'function')
        (result as Promise<unknown>).then(undefined, (err: unknown) => failed(res, err));
    } catch (err) {
      failed(res, err);
    }
  };
}
