// Real nginx (`include uwsgi_params; uwsgi_pass unix:…`) in front of `stratum pool`: the pool must
// speak plain uwsgi to a foreign client — one request per connection, no chunked framing.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { httpCases } from '../cases.ts';
import { requirePeer, startNginx, type PeerProcess } from '../helpers/peers.ts';
import { makeTempDir } from '../helpers/processes.ts';
import { rawRequest } from '../helpers/http.ts';
import { REPO_ROOT, startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';

afterAll(stopAllStratum);

describe.skipIf(!requirePeer('nginx'))('nginx uwsgi_pass → stratum pool', () => {
  for (const kind of ['fastify', 'listener', 'fetch'] as const) {
    describe(`${kind} app`, () => {
      let pool: StratumProcess;
      let nginx: PeerProcess;
      beforeAll(async () => {
        const dir = makeTempDir(`pool-${kind}`);
        pool = await startStratum([
          'pool',
          '--socket', join(dir, 'pool.sock'),
          // nginx's workers are another user on a real machine: the socket must let them in
          '--socket-mode', '0666',
          '--admin', '127.0.0.1:0',
          '--workers', '2',
          '--app', join(REPO_ROOT, 'test/fixtures/apps', `${kind}.ts`),
        ]);
        nginx = await startNginx({ uwsgiPass: pool.pool! });
      });
      afterAll(async () => {
        await nginx?.stop();
        if (pool) expect(await pool.stop(), 'exit code after SIGTERM').toBe(0);
      });

      it('the pool announces its Unix socket and no front', () => {
        expect(pool.pool).toMatch(/^unix:\/.*pool\.sock$/);
        expect(pool.front).toBeUndefined();
      });

      httpCases(`${kind} via nginx`, () => nginx.address, { kind, via: 'nginx' });

      it('nginx logged no upstream error', async () => {
        // Let nginx flush what the cases above made it log.
        await rawRequest(nginx.address, { path: '/' });
        const errors = nginx.log().split('\n').filter((l) => /\[(error|crit|alert|emerg)\]/.test(l));
        // /fail is the app's own 500, not an upstream error; everything else must be clean.
        expect(errors).toEqual([]);
      });
    });
  }
});
