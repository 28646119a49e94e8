import { describe, expect, it } from 'vitest';
import { buildRoutes } from './targets.ts';
import { loadConfig } from '../config/load.ts';
import type { Upstream } from './upstream.ts';

// serve runs a pool whatever the routes say (nginx or a remote proxy may use its socket), so the
// route table must build when no route names the pool.
const pool = { kind: 'pool', label: 'pool' } as Upstream;

describe('buildRoutes', () => {
  it('builds a serve config whose only route is an HTTP upstream', async () => {
    const config = loadConfig({
      mode: 'serve',
      env: {},
      flags: { app: 'examples/hello/app.ts', route: ['/=http://127.0.0.1:9'] },
    });
    const table = await buildRoutes(config, pool);
    expect(table.match('example.com', '/x')?.upstream.kind).toBe('http');
  });

  it('builds a serve config with a static route and no pool route', async () => {
    const config = loadConfig({
      mode: 'serve',
      env: {},
      flags: { app: 'examples/hello/app.ts', route: ['/=static:/tmp'] },
    });
    expect((await buildRoutes(config, pool)).match(undefined, '/')?.upstream.kind).toBe('static');
  });

  it('refuses a pool route when there is no pool, with a coded config error', async () => {
    const config = loadConfig({ mode: 'serve', env: {}, flags: { app: 'examples/hello/app.ts', route: ['/=pool'] } });
    await expect(buildRoutes(config, null)).rejects.toMatchObject({ code: 'STRATUM_ERR_CONFIG' });
  });
});
