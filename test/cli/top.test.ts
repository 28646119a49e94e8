// `stratum top --once` prints the pool's stats as uwsgitop does: one row per worker.
import { spawnSync } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { startStratum, STRATUM_BIN, type StratumProcess } from '../helpers/stratum.ts';

const FIXTURE = new URL('../fixtures/apps/fastify.ts', import.meta.url).pathname;

describe('stratum top', () => {
  let s: StratumProcess;
  afterAll(async () => {
    await s?.stop();
  });

  it('prints one row per worker with its pid and state', async () => {
    s = await startStratum([
      'serve',
      '--listen',
      '127.0.0.1:0',
      '--admin',
      '127.0.0.1:0',
      '--workers',
      '2',
      '--app',
      FIXTURE,
    ]);
    const admin = new URL(s.admin).host;
    const out = spawnSync(process.execPath, [STRATUM_BIN, 'top', '--admin', admin, '--once'], {
      encoding: 'utf8',
      timeout: 15_000,
    });
    expect(out.status).toBe(0);
    for (const pid of s.workers) expect(out.stdout).toMatch(new RegExp(`^\\d+\\s+${pid}\\s+(idle|BUSY)`, 'm'));
    expect(out.stdout).toContain('queue 0/1024');
  });

  it('exits 1 with one line when the admin listener is unreachable', () => {
    const out = spawnSync(process.execPath, [STRATUM_BIN, 'top', '--admin', '127.0.0.1:1', '--once'], {
      encoding: 'utf8',
      timeout: 15_000,
    });
    expect(out.status).toBe(1);
    expect(out.stderr.trim().split('\n')).toHaveLength(1);
  });
});
