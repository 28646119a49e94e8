// metrics.enabled: false switches the Prometheus side off (for measuring its cost): /metrics
// answers 404 and requests are still served with their Server-Timing.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { makeTempDir } from '../helpers/processes.ts';
import { REPO_ROOT, startStratum, stopAllStratum } from '../helpers/stratum.ts';

afterAll(stopAllStratum);

describe('metrics switched off', () => {
  it('answers /metrics with 404 and still serves requests', async () => {
    const dir = makeTempDir('metrics-off');
    const config = join(dir, 'stratum.yaml');
    writeFileSync(config, `app: { module: ${join(REPO_ROOT, 'test/fixtures/apps/fastify.ts')} }\nmetrics: { enabled: false }\npool: { workers: 1 }\n`);
    const s = await startStratum(['serve', '--config', config, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0']);
    const res = await fetch(`${s.front}/`);
    expect(res.status).toBe(200);
    expect(res.headers.get('server-timing')).toMatch(/app;dur=/);
    expect((await fetch(`${s.admin}/metrics`)).status).toBe(404);
    expect((await fetch(`${s.admin}/stats`)).status).toBe(200);
    expect(await s.stop()).toBe(0);
  });
});
