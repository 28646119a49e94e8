// The app host: load the user's module and turn whatever it exports into one Node
// (req, res) listener — the single core shape every worker serves (Hono's adapter idea).
// Kinds, recognised from the export:
//   - a Fastify instance (or a function of no arguments returning one, possibly async)
//   - a Node request listener `(req, res)` — Express, Koa's callback(), plain handlers
//   - a fetch handler: `{ fetch(request, info) }` (Hono, itty, ...) or `(request) => Response`;
//     `info` carries the peer address (see FetchConnInfo)

import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { AppKindUnknown, AppLoadFailed } from '../errors.ts';
import { fetchListener, type FetchConnInfo, type FetchHandler } from './fetch.ts';

export type AppKind = 'fastify' | 'listener' | 'fetch';
export type RequestListener = (req: IncomingMessage, res: ServerResponse) => void;

export interface LoadedApp {
  kind: AppKind;
  listener: RequestListener;
  /** Close the app (Fastify's onClose hooks) when the worker drains. */
  close(): Promise<void>;
}

interface FastifyLike {
  ready(): PromiseLike<unknown>;
  routing: RequestListener;
  close(): PromiseLike<unknown>;
}

function isFastify(x: unknown): x is FastifyLike {
  return (
    (typeof x === 'object' || typeof x === 'function') && x !== null &&
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
    throw new AppLoadFailed(modulePath, (err as Error).message.split('\n')[0]!);
  }
  let exported = mod[exportName];
  if (exported === undefined && exportName === 'default' && typeof mod.fetch === 'function') exported = mod;
  if (exported === undefined) throw new AppKindUnknown(modulePath, `nothing named ${exportName}`);
  return adapt(exported, modulePath);
}

export async function adapt(exported: unknown, where: string): Promise<LoadedApp> {
  if (isFastify(exported)) {
    await exported.ready();
    const app = exported;
    return { kind: 'fastify', listener: app.routing, close: async () => void (await app.close()) };
  }
  if (typeof exported === 'object' && exported !== null && typeof (exported as FetchHandler).fetch === 'function') {
    const handler = exported as FetchHandler;
    return { kind: 'fetch', listener: fetchListener((r, info) => handler.fetch(r, info)), close: async () => {} };
  }
  if (typeof exported === 'function') {
    const fn = exported as (...args: unknown[]) => unknown;
    if (fn.length >= 2) return { kind: 'listener', listener: fn as RequestListener, close: async () => {} };
    if (fn.length === 1) return { kind: 'fetch', listener: fetchListener(fn as (r: Request, info: FetchConnInfo) => Promise<Response>), close: async () => {} };
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
