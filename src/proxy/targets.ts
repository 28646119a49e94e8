// The route table with an upstream for every route: which upstream serves each target kind. The
// `pool` target is given by the topology — the app in this process (worker topology,
// upstream-app.ts) or the workers over uwsgi (master topology, upstream-pool.ts) — so the front
// never knows which one it has.
//
// Only the upstream kinds the routes name are loaded: a process keeps every module it ever
// imported, and the HTTP upstream's (with undici) alone is ~7 MiB resident (npm run bench, idle
// RSS) — a cost the default config (one pool route) has no use for.

import type { StratumConfig } from '../config/schema.ts';
import { ConfigInvalid } from '../errors.ts';
import { registerCompression } from './compress.ts';
import type { PeerHealth } from './balancer.ts';
import { RouteTable, type RouteEntry } from './routes.ts';
import type { Upstream } from './upstream.ts';

/** The upstream of `pool` (app undefined: the default app) or `pool:NAME`, when there are several apps. */
export type PoolResolver = (app: string | undefined) => Upstream | null;

export async function buildRoutes(
  config: StratumConfig,
  pool: Upstream | PoolResolver | null,
): Promise<RouteTable<Upstream>> {
  const kinds = new Set(config.routes.map((route) => route.targets[0]!.kind));
  const uwsgi = kinds.has('uwsgi') ? await import('./upstream-uwsgi.ts') : null;
  const http = kinds.has('http') ? await import('./upstream-http.ts') : null;
  const files = kinds.has('static') ? await import('./upstream-static.ts') : null;
  const entries: RouteEntry<Upstream>[] = config.routes.map((route, index) => {
    const t = route.targets[0]!;
    registerCompression(config, route); // read back per request by compressionFor(ctx.route)
    let upstream: Upstream;
    switch (t.kind) {
      case 'pool': {
        const p = typeof pool === 'function' ? pool(t.app) : pool;
        if (!p) throw new ConfigInvalid(`routes.${index}.target`, `"${t.raw}" needs stratum serve and that app`);
        upstream = p;
        break;
      }
      case 'uwsgi':
        upstream = new uwsgi!.ExternalUwsgiUpstream(route.targets, config, route);
        break;
      case 'http':
        upstream = new http!.HttpUpstream(route.targets, route, config);
        break;
      case 'static':
        upstream = new files!.StaticUpstream(t.root, config);
        break;
    }
    return { route, index, upstream, label: `${route.host ?? ''}${route.path}` };
  });
  return new RouteTable(entries);
}

/** State of each server of the routes' upstream groups (uwsgi and http), for metrics and the dashboard. */
export function upstreamHealth(routes: RouteTable<Upstream>): () => PeerHealth[] {
  const groups = routes.entries
    .map((e) => e.upstream)
    .filter(
      (u): u is Upstream & { health(): PeerHealth[] } => (u.kind === 'uwsgi' || u.kind === 'http') && 'health' in u,
    );
  return () => groups.flatMap((u) => u.health());
}
