// Harakiri in split mode: requests reaching `stratum pool` on its shared socket from a remote
// `stratum proxy` (kept connections, not "foreign") are watched by the pool's workers too.
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { waitUntil } from '../helpers/processes.ts';
import { REPO_ROOT, startStratum, stopAllStratum } from '../helpers/stratum.ts';

afterAll(stopAllStratum);

const FIXTURE = join(REPO_ROOT, 'test/fixtures/apps/pool-app.ts');

describe('harakiri behind a remote stratum proxy', () => {
  it('kills the stuck worker of a stratum pool reached through stratum proxy', async () => {
    const pool = await startStratum([
      'pool',
      '--socket',
      '127.0.0.1:0',
      '--admin',
      '127.0.0.1:0',
      '--workers',
      '1',
      '--harakiri',
      '1',
      '--app',
      FIXTURE,
    ]);
    const address = pool.pool!.replace(/^tcp:/, '');
    const proxy = await startStratum([
      'proxy',
      '--listen',
      '127.0.0.1:0',
      '--admin',
      '127.0.0.1:0',
      '--route',
      `/=uwsgi://${address}`,
    ]);
    const before = pool.workers[0];
    const t0 = Date.now();
    const res = await fetch(`${proxy.front}/block?ms=10000`);
    await res.text();
    const took = Date.now() - t0;
    // The pool's worker is blocked: its watchdog answers 504 on the uwsgi connection and kills it.
    expect(res.status).toBe(504);
    expect(took).toBeLessThan(2_500);
    type Stats = { harakiriKills: number; workers: Array<{ pid: number }> };
    const read = async () => (await (await fetch(`${pool.admin}/stats`)).json()) as Stats;
    // The master counts the kill when it reads the watchdog's note of the dead worker, a moment after the 504.
    await waitUntil(async () => (await read()).harakiriKills > 0, {
      timeoutMs: 5000,
      describe: () => 'the kill counted by the pool master',
    });
    const stats = await read();
    expect(stats.harakiriKills).toBe(1);
    expect(stats.workers.map((w) => w.pid)).not.toContain(before);
    const after = await fetch(`${proxy.front}/pid`);
    expect(after.status, `${await after.text()}\n${proxy.stdoutLines.slice(-5).join('\n')}`).toBe(200);
    await proxy.stop();
    await pool.stop();
  }, 30_000);
});
