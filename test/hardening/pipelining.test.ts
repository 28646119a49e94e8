// One connection's pipelined requests are served one at a time, as nginx does: a client cannot
// fan one connection out over the whole pool, and what it pipelined goes no further once it is gone.
import net from 'node:net';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { REPO_ROOT, startStratum, stopAllStratum } from '../helpers/stratum.ts';

afterAll(stopAllStratum);

const FIXTURE = join(REPO_ROOT, 'test/fixtures/apps/pool-app.ts');
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

describe('pipelined requests on one connection', () => {
  it('are handled one at a time, in order, each seeing no other request of that connection', async () => {
    const s = await startStratum(['serve', '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--workers', '1', '--app', FIXTURE]);
    try {
      const url = new URL(s.front!);
      const n = 5;
      const body = await new Promise<string>((resolve, reject) => {
        const c = net.connect({ host: url.hostname, port: Number(url.port) }, () => {
          let out = '';
          for (let i = 0; i < n; i++) out += `GET /concurrent?ms=100&i=${i} HTTP/1.1\r\nHost: x\r\n${i === n - 1 ? 'Connection: close\r\n' : ''}\r\n`;
          c.write(out);
        });
        let data = '';
        c.setTimeout(15_000, () => c.destroy(new Error('timeout')));
        c.on('data', (d: Buffer) => (data += d.toString()));
        c.on('error', reject);
        c.on('close', () => resolve(data));
      });
      const answers = [...body.matchAll(/\{"seen":(\d+),"pid":\d+\}/g)].map((m) => Number(m[1]));
      expect(answers).toEqual(new Array(n).fill(1));
    } finally {
      expect(await s.stop()).toBe(0);
    }
  });

  it('go no further once the client has gone', async () => {
    const s = await startStratum(['serve', '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--workers', '1', '--app', FIXTURE]);
    try {
      const url = new URL(s.front!);
      const c = net.connect({ host: url.hostname, port: Number(url.port) });
      await new Promise<void>((r) => c.once('connect', () => r()));
      let out = '';
      for (let i = 0; i < 3_000; i++) out += `GET /concurrent?ms=200 HTTP/1.1\r\nHost: x\r\n\r\n`;
      c.write(out);
      await sleep(500);
      c.destroy();
      await sleep(1_000);
      const started = (await (await fetch(`${s.front}/started`)).json()) as { started: number };
      // The first one or two ran; the other 2,998 were dropped with the connection.
      expect(started.started).toBeLessThanOrEqual(4);
      // And other clients were never queued behind them.
      const t0 = performance.now();
      expect((await fetch(`${s.front}/pid`)).status).toBe(200);
      expect(performance.now() - t0).toBeLessThan(1_000);
    } finally {
      expect(await s.stop()).toBe(0);
    }
  });
});
