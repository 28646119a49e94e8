// Request bodies the front reads whole cost about their own size however they arrive: 100 uploads
// trickled one byte per TCP segment raise the front process's RSS by a few bytes per body byte
// (before: ~450, a Buffer per segment kept until the body ended). And a body that arrives below
// proxy.clientBodyMinRate, once its grace is over, is refused with 408 STRATUM_ERR_CLIENT_BODY_SLOW.
// The front is in the worker (topology worker, the default) or the master: its RSS is read there.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitUntil } from '../helpers/processes.ts';
import { REPO_ROOT, startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';
import { RawConn, portOf, rssOf, sleep, writeConfig } from './helpers.ts';

afterAll(stopAllStratum);

const APP = join(REPO_ROOT, 'test/hardening/fixtures/app.ts');

async function start(proxy: string): Promise<StratumProcess> {
  const { file } = writeConfig('body-memory', `
listen: 127.0.0.1:0
admin: { listen: 127.0.0.1:0 }
app: { module: ${APP} }
pool: { workers: 1 }
log: { access: false }
proxy: { ${proxy} }
`);
  return startStratum(['serve', '--config', file]);
}

/** The pid whose RSS holds the front's buffers. */
function frontPid(s: StratumProcess): number {
  return s.ready.topology === 'master' ? s.proc.pid! : s.workers[0]!;
}

const read = (p: string) => readFileSync(p, 'utf8');

describe('a body trickled one byte per segment costs about its own size', () => {
  let s: StratumProcess;
  beforeAll(async () => {
    s = await start('clientBodyMinRate: 0');
  });
  afterAll(() => s?.stop());

  it('100 uploads × 5,000 bytes, each byte its own segment', async () => {
    const UPLOADS = 100;
    const BYTES = 5000;
    const port = portOf(s.front!);
    // Warm up: the first requests load code and grow heaps that have nothing to do with bodies.
    for (let i = 0; i < 20; i++) await fetch(`${s.front}/echo`, { method: 'POST', body: 'x'.repeat(5000) });
    await sleep(200);
    const pid = frontPid(s);
    const conns = await Promise.all(Array.from({ length: UPLOADS }, () => RawConn.open(port)));
    for (const c of conns) {
      c.socket.setNoDelay(true);
      // Announces more than it sends: every byte stays buffered until we measure.
      c.write(`POST /echo HTTP/1.1\r\nHost: trickle.test\r\nContent-Length: ${BYTES + 1}\r\n\r\n`);
    }
    // The connections and their requests, before any body byte: what is left is the bodies' cost.
    await sleep(300);
    const before = rssOf(pid, read);
    for (let i = 0; i < BYTES; i++) {
      for (const c of conns) c.write('a');
      // One byte per connection per round, the round out on the wire before the next: a segment each.
      await new Promise((r) => setImmediate(r));
      if (i % 50 === 49) await sleep(1);
    }
    await sleep(300);
    const held = rssOf(pid, read);
    const perByte = (held - before) / (UPLOADS * BYTES);
    const mib = (n: number) => (n / 2 ** 20).toFixed(1);
    console.log(`front RSS ${mib(before)} → ${mib(held)} MiB for ${UPLOADS} × ${BYTES} ` +
      `trickled bytes: ${perByte.toFixed(1)} bytes of RSS per body byte (pid ${pid})`);
    for (const c of conns) c.write('a'); // complete them: each is answered whole
    const replies = await Promise.all(conns.map((c) => c.next(10_000)));
    for (const r of replies) expect(JSON.parse(r.body.toString()).bodyLength).toBe(BYTES + 1);
    for (const c of conns) c.destroy();
    expect(perByte).toBeLessThan(60);
  });
});

describe('proxy.clientBodyMinRate', () => {
  let s: StratumProcess;
  beforeAll(async () => {
    s = await start('clientBodyMinRate: 1000, clientBodyMinRateGrace: 1');
  });
  afterAll(() => s?.stop());

  it('a body trickled at ~100 bytes/s is refused with 408 once the grace is over', async () => {
    const c = await RawConn.open(portOf(s.front!));
    c.write('POST /echo HTTP/1.1\r\nHost: slow.test\r\nContent-Length: 100000\r\n\r\n');
    let answer: Awaited<ReturnType<RawConn['next']>> | null = null;
    const reply = c.next(15_000).then((r) => (answer = r));
    // ~100 bytes/s: 1 s of grace plus 1 s per 1,000 bytes is over after about 1.1 s.
    for (let i = 0; i < 60 && !answer; i++) {
      if (!c.socket.destroyed) c.write('x'.repeat(10));
      await sleep(100);
    }
    const r = await reply;
    c.destroy();
    expect(r.status).toBe(408);
    const logged = () => s.logs().find((l) => l.code === 'STRATUM_ERR_CLIENT_BODY_SLOW');
    const describe = () => 'no STRATUM_ERR_CLIENT_BODY_SLOW line';
    await waitUntil(async () => logged() !== undefined, { timeoutMs: 5000, describe });
    expect(logged()!.msg).toMatch(/below proxy.clientBodyMinRate \(1000 bytes\/s\)/);
  });

  it('a body sent at full speed, or slowly within the grace, is served', async () => {
    const fast = await fetch(`${s.front}/echo`, { method: 'POST', body: 'y'.repeat(200_000) });
    expect(fast.status).toBe(200);
    const c = await RawConn.open(portOf(s.front!));
    c.write('POST /echo HTTP/1.1\r\nHost: slow.test\r\nContent-Length: 50\r\n\r\n');
    for (let i = 0; i < 5; i++) {
      c.write('z'.repeat(10));
      await sleep(100);
    }
    const r = await c.next(5000);
    c.destroy();
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body.toString()).bodyLength).toBe(50);
  });
});
