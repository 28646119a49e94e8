// An async (req, res) app whose promise rejects answers 500 and the worker keeps serving: the
// rejection is counted as an exception, never a crash or a hung request.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { makeTempDir } from '../helpers/processes.ts';
import { startStratum, stopAllStratum } from '../helpers/stratum.ts';

afterAll(stopAllStratum);

describe('an async request listener that rejects', () => {
  it('answers 500, counts the exception, and keeps the worker', async () => {
    const dir = makeTempDir('async-listener');
    const app = join(dir, 'app.mjs');
    writeFileSync(
      app,
      `export default async function app(req, res) {
  if (req.url === '/boom') throw new Error('async boom');
  res.end('ok');
}
`,
    );
    const s = await startStratum([
      'serve',
      '--listen',
      '127.0.0.1:0',
      '--admin',
      '127.0.0.1:0',
      '--workers',
      '1',
      '--app',
      app,
    ]);
    const boom = await fetch(`${s.front}/boom`);
    expect(boom.status).toBe(500);
    const ok = await fetch(`${s.front}/`);
    expect(await ok.text()).toBe('ok');
    await new Promise((r) => setTimeout(r, 700)); // the worker reports its counters every 500 ms
    const stats = (await (await fetch(`${s.admin}/stats`)).json()) as {
      workers: Array<{ pid: number; exceptions: number }>;
      respawns: number;
    };
    expect(stats.workers[0]!.pid).toBe(s.workers[0]);
    expect(stats.workers[0]!.exceptions).toBe(1);
    expect(stats.respawns).toBe(0);
    expect(await s.stop()).toBe(0);
  });
});
