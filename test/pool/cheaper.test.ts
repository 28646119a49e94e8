// The cheaper subsystem (uWSGI's adaptive worker count): the pool starts at `min`, grows while
// every worker is busy, and shrinks back after an idle spell — with real processes.
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startStratum, type StratumProcess } from '../helpers/stratum.ts';

const FIXTURE = new URL('../fixtures/apps/fastify.ts', import.meta.url).pathname;

async function stats(s: StratumProcess): Promise<{ workers: Array<{ pid: number; state: string }> }> {
  return (await fetch(`${s.admin}/stats`)).json() as never;
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe('cheaper: adaptive worker count', () => {
  let s: StratumProcess;
  afterAll(async () => {
    await s?.stop();
  });

  it('starts at min, adds workers while all are busy, retires them after an idle spell', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'stratum-cheaper-'));
    const config = path.join(dir, 'stratum.yaml');
    writeFileSync(
      config,
      `app: { module: ${FIXTURE} }\n` +
        'pool: { workers: 3, maxInflight: 2, cheaper: { enabled: true, min: 1, max: 3 } }\nlog: { access: false }\n',
    );
    s = await startStratum(['serve', '--config', config, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0']);
    expect((await stats(s)).workers).toHaveLength(1);

    // Keep the pool saturated for a bounded time: 6 slow requests at a time, 8 s at most.
    let load = true;
    const loops = Array.from({ length: 6 }, async () => {
      const until = Date.now() + 8_000;
      while (load && Date.now() < until) await (await fetch(`${s.front}/slow?ms=200`)).text();
    });
    await waitFor('the pool to grow to 3 workers', async () => (await stats(s)).workers.length === 3, 8_000);
    load = false;
    await Promise.all(loops);

    // Idle: one worker is retired per idle spell (10 s), down to min.
    await waitFor('the pool to shrink below 3 workers', async () => (await stats(s)).workers.length < 3, 15_000);
    expect((await fetch(`${s.front}/`)).status).toBe(200);
  }, 45_000);
});
