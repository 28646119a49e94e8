// Overload, against a real `stratum serve`:
//  - 2,000 idle keep-alive client connections held at once (the long version, 10,000:
//    `node scripts/idle-connections.ts`): the master's resident memory grows by a bounded
//    amount per connection (< 64 KiB), and requests keep succeeding meanwhile, on new
//    connections and on the held ones.
//  - A saturated pool (1 worker, maxInflight 1, listen queue 2): what does not fit gets 503 +
//    Retry-After at once — it never waits — and the service recovers by itself once the load drops.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { waitUntil } from '../helpers/processes.ts';
import { REPO_ROOT, startStratum, stopAllStratum } from '../helpers/stratum.ts';
import { header, metric, openIdleConnections, portOf, RawConn, rssOf, sleep, writeConfig } from './helpers.ts';

afterAll(stopAllStratum);

const APP = join(REPO_ROOT, 'test/hardening/fixtures/app.ts');
const IDLE = 2000;

describe('idle keep-alive connections', () => {
  it(`holds ${IDLE} idle connections with bounded memory, and keeps serving`, async () => {
    const { file } = writeConfig('idle', `
listen: 127.0.0.1:0
admin: { listen: 127.0.0.1:0 }
app: { module: ${APP} }
pool: { workers: 1 }
proxy: { keepAliveTimeout: 300 }
log: { access: false }
`);
    const s = await startStratum(['serve', '--config', file]);
    const port = portOf(s.front!);
    const master = s.proc.pid!;
    const rss = () => rssOf(master, (p) => readFileSync(p, 'utf8'));
    // Warm up (JIT, pools, the worker connections), then measure.
    await openIdleConnections(port, 200).then((cs) => cs.forEach((c) => c.destroy()));
    await sleep(1500);
    const before = rss();
    const held = await openIdleConnections(port, IDLE);
    await sleep(1500);
    const after = rss();
    const perConn = (after - before) / IDLE;
    console.log(`${IDLE} idle connections: master RSS ${(before / 2 ** 20).toFixed(1)} → ${(after / 2 ** 20).toFixed(1)} MiB, ${(perConn / 1024).toFixed(1)} KiB per connection`);
    expect(perConn).toBeLessThan(64 * 1024);

    // Still serving: new connections, and the held ones (keep-alive), all 200.
    const fresh = await Promise.all(Array.from({ length: 50 }, () => fetch(`${s.front}/`).then((r) => r.status)));
    expect(fresh).toEqual(Array(50).fill(200));
    for (const c of held.filter((_, i) => i % 200 === 0)) {
      c.write('GET / HTTP/1.1\r\nHost: idle.test\r\n\r\n');
      expect((await c.next(5000)).status).toBe(200);
    }
    for (const c of held) expect(c.socket.destroyed).toBe(false);
    for (const c of held) c.destroy();
    await s.stop();
  }, 90_000);
});

describe('saturated pool', () => {
  it('answers what does not fit with 503 at once, and recovers by itself', async () => {
    const { file } = writeConfig('saturated', `
listen: 127.0.0.1:0
admin: { listen: 127.0.0.1:0 }
app: { module: ${APP} }
pool: { workers: 1, maxInflight: 1, listen: 2 }
log: { access: false }
`);
    const s = await startStratum(['serve', '--config', file]);
    const port = portOf(s.front!);
    const rejectedBefore = await metric(s.admin, 'stratum_queue_rejections_total');

    // 30 at once, each holding the worker 400 ms: 1 runs, 2 wait, 27 are turned away.
    const conns = await Promise.all(Array.from({ length: 30 }, () => RawConn.open(port)));
    const t0 = performance.now();
    const replies = await Promise.all(conns.map(async (c) => {
      c.write('GET /slow?ms=400 HTTP/1.1\r\nHost: busy.test\r\n\r\n');
      const r = await c.next(10_000);
      c.destroy();
      return { status: r.status, ms: performance.now() - t0, retryAfter: header(r, 'retry-after') };
    }));
    const ok = replies.filter((r) => r.status === 200);
    const busy = replies.filter((r) => r.status === 503);
    expect(ok).toHaveLength(3);
    expect(busy).toHaveLength(27);
    for (const r of busy) {
      expect(r.ms).toBeLessThan(300); // never queued behind the slow ones
      expect(r.retryAfter).toBe('1');
    }
    expect(Math.max(...ok.map((r) => r.ms))).toBeGreaterThan(1100); // the three ran one after another
    expect((await metric(s.admin, 'stratum_queue_rejections_total')) - rejectedBefore).toBe(27);
    console.log(`saturated pool, 30 at once: 3 × 200 (last after ${Math.max(...ok.map((r) => r.ms)).toFixed(0)} ms), 27 × 503 + Retry-After within ${Math.max(...busy.map((r) => r.ms)).toFixed(0)} ms`);

    // Sustained overload for 2 s: 12 clients in a loop; every answer is a 200 or a quick 503.
    const deadline = performance.now() + 2000;
    const seen: Array<{ status: number; ms: number }> = [];
    await Promise.all(Array.from({ length: 12 }, async () => {
      while (performance.now() < deadline) {
        const t = performance.now();
        const r = await fetch(`${s.front}/slow?ms=100`);
        await r.arrayBuffer();
        seen.push({ status: r.status, ms: performance.now() - t });
        if (r.status === 503) await sleep(50);
      }
    }));
    expect(seen.filter((r) => r.status !== 200 && r.status !== 503)).toEqual([]);
    expect(seen.filter((r) => r.status === 503 && r.ms > 300)).toEqual([]);
    expect(seen.some((r) => r.status === 200)).toBe(true);
    expect(seen.some((r) => r.status === 503)).toBe(true);
    const n503 = seen.filter((r) => r.status === 503);
    console.log(`sustained overload 2 s, 12 clients: ${seen.length - n503.length} × 200, ${n503.length} × 503 (slowest 503 ${Math.max(...n503.map((r) => r.ms)).toFixed(0)} ms)`);

    // Load drops: no restart, no intervention — everything is served again.
    const after: number[] = [];
    for (let i = 0; i < 20; i++) after.push((await fetch(`${s.front}/`)).status);
    expect(after).toEqual(Array(20).fill(200));
    console.log('load dropped: next 20 requests all 200, 0 respawns, no intervention');
    type Stats = { respawns: number; queue: number; workers: Array<{ inflight: number }> };
    const stats = async () => (await (await fetch(`${s.admin}/stats`)).json()) as Stats;
    expect((await stats()).respawns).toBe(0);
    // In the worker topology the queue and in-flight counts are the worker's own, reported every 500 ms: both drop to 0.
    await waitUntil(async () => { const st = await stats(); return st.queue === 0 && st.workers[0]!.inflight === 0; }, { timeoutMs: 3000, describe: () => 'the worker still has requests queued or in flight' });
    await s.stop();
  }, 60_000);
});
