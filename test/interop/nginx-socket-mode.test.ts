// The pool's Unix socket must let a real nginx whose workers run as another user connect
// (uWSGI's chmod-socket): with --socket-mode 0666 nginx (user nobody) is served; with 0600 the
// same nginx is refused by the kernel (EACCES → 502), which shows the mode is what decides.
import { chmodSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { requirePeer, startNginx, type PeerProcess } from '../helpers/peers.ts';
import { makeTempDir } from '../helpers/processes.ts';
import { REPO_ROOT, startStratum, stopAllStratum } from '../helpers/stratum.ts';

afterAll(stopAllStratum);

const asRoot = process.getuid?.() === 0;

describe.skipIf(!requirePeer('nginx') || !asRoot)('pool socket mode and an nginx running as another user', () => {
  const started: PeerProcess[] = [];
  afterAll(async () => {
    for (const p of started) await p.stop();
  });

  async function serveWithMode(mode: string): Promise<number> {
    const dir = makeTempDir(`socket-mode-${mode}`);
    chmodSync(dir, 0o755); // nginx's workers must be able to reach the socket's folder
    const pool = await startStratum(['pool', '--socket', join(dir, 'pool.sock'), '--socket-mode', mode,
      '--admin', '127.0.0.1:0', '--workers', '1', '--app', join(REPO_ROOT, 'test/fixtures/apps/fastify.ts')]);
    const nginx = await startNginx({ uwsgiPass: pool.pool!, user: 'nobody nogroup' });
    started.push(nginx);
    const res = await fetch(`${nginx.address}/`);
    await res.text();
    await pool.stop();
    return res.status;
  }

  it('serves nginx workers running as nobody when the socket mode is 0666', async () => {
    expect(await serveWithMode('0666')).toBe(200);
  });

  it('refuses them (502 from nginx) when the socket mode is 0600', async () => {
    expect(await serveWithMode('0600')).toBe(502);
  });
});
