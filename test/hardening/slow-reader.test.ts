// A slow reader must not cost a worker (issue 15, item 3), against a real `stratum serve`, in the
// topology STRATUM_TOPOLOGY names (the vitest projects run both):
//  - a client reading a 16 MiB download at ~4 MiB/s (far more than the socket buffers hold, for
//    longer than harakiri) gets all of it; the worker is not killed or timed out, and the requests
//    beside it on the same worker all succeed: response buffering takes what the app writes at once
//    (memory, then a temp file), so the app and its harakiri end when it has produced the response;
//  - a never-ending event stream still delivers its first events at once (write-behind, not
//    store-and-forward);
//  - a harakiri kill, with requests in flight on the killed worker, counts once.
import http from 'node:http';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { waitUntil } from '../helpers/processes.ts';
import { REPO_ROOT, startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';
import { metric, sleep, writeConfig } from './helpers.ts';

afterAll(stopAllStratum);

const APP = join(REPO_ROOT, 'test/hardening/fixtures/slow-reader-app.ts');
const MiB = 1024 * 1024;

async function serve(name: string, extra: string): Promise<StratumProcess> {
  const { file } = writeConfig(
    name,
    `
listen: 127.0.0.1:0
admin: { listen: 127.0.0.1:0 }
app: { module: ${APP} }
log: { access: false }
${extra}
`,
  );
  return startStratum(['serve', '--config', file]);
}

interface Download {
  status: number;
  bytes: number;
  /** Bytes that differ from the pattern the app writes (byte i = i % 251). */
  wrong: number;
  complete: boolean;
  ms: number;
}

/** GET `path`, reading at about `rate` bytes a second (pausing after every chunk). */
function slowDownload(base: string, path: string, rate: number): Promise<Download> {
  const url = new URL(path, base);
  const t0 = performance.now();
  return new Promise((resolve) => {
    let bytes = 0;
    let wrong = 0;
    let status = 0;
    const done = (complete: boolean) => resolve({ status, bytes, wrong, complete, ms: performance.now() - t0 });
    const target = { host: url.hostname, port: url.port, path: url.pathname + url.search, agent: false };
    const req = http.get(target, (res) => {
      status = res.statusCode ?? 0;
      res.on('data', (c: Buffer) => {
        for (let i = 0; i < c.length; i++) if (c[i] !== (bytes + i) % 251) wrong++;
        bytes += c.length;
        res.pause();
        setTimeout(() => res.resume(), (c.length / rate) * 1000);
      });
      res.on('end', () => done(res.complete));
      res.on('error', () => done(false));
    });
    req.setTimeout(60_000, () => req.destroy());
    req.on('error', () => done(false));
  });
}

/** One GET on a connection of its own: its status, 0 when it got no answer. */
function statusOf(base: string, path: string): Promise<number> {
  const url = new URL(path, base);
  return new Promise((resolve) => {
    const target = { host: url.hostname, port: url.port, path: url.pathname + url.search, agent: false };
    const req = http.get(target, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
      res.on('error', () => resolve(0));
    });
    req.setTimeout(20_000, () => req.destroy());
    req.on('error', () => resolve(0));
  });
}

describe('a slow reader', () => {
  it('reading a large download slower than harakiri gets all of it; its worker is not killed', async () => {
    // One worker: the download and the requests beside it share it.
    const s = await serve('slow-reader', 'pool: { workers: 1, harakiri: 1 }');
    try {
      const workers = s.workers;
      const tempBefore = await metric(s.admin, 'stratum_response_buffer_temp_bytes_total');
      const download = slowDownload(s.front!, '/download?mb=16', 4 * MiB);
      // Requests on the same worker while the download is being read: 8 at a time, for 3 s.
      const others: number[] = [];
      const until = Date.now() + 3_000;
      await Promise.all(
        Array.from({ length: 8 }, async () => {
          while (Date.now() < until) others.push(await statusOf(s.front!, '/slow?ms=200'));
        }),
      );
      const d = await download;
      console.log(
        `slow reader (${process.env.STRATUM_TOPOLOGY ?? 'worker'}): ${d.bytes} bytes in ${Math.round(d.ms)} ms, ` +
          `${others.length} requests beside it`,
      );
      expect(d.status).toBe(200);
      expect(d.complete).toBe(true);
      expect(d.bytes).toBe(16 * MiB);
      expect(d.wrong).toBe(0);
      // It really was read for longer than harakiri.
      expect(d.ms).toBeGreaterThan(1_500);
      expect(others.length).toBeGreaterThan(8);
      expect(others.filter((st) => st !== 200)).toEqual([]);
      expect(await metric(s.admin, 'stratum_harakiri_kills_total')).toBe(0);
      expect(await metric(s.admin, 'stratum_harakiri_timeouts_total')).toBe(0);
      expect(await metric(s.admin, 'stratum_worker_respawns_total')).toBe(0);
      // What the socket could not take went through the temp file.
      expect(await metric(s.admin, 'stratum_response_buffer_temp_bytes_total')).toBeGreaterThan(tempBefore);
      const stats = (await (await fetch(`${s.admin}/stats`)).json()) as { workers: Array<{ pid: number }> };
      expect(stats.workers.map((w) => w.pid)).toEqual(workers);
    } finally {
      await s.stop();
    }
  }, 60_000);

  it('an event stream that never ends delivers its first events at once', async () => {
    const s = await serve('sse', 'pool: { workers: 1 }');
    try {
      const url = new URL('/sse', s.front!);
      const events = await new Promise<string[]>((resolve, reject) => {
        const req = http.get({ host: url.hostname, port: url.port, path: url.pathname, agent: false }, (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => {
            text += c;
            const got = text.split('\n\n').filter((e) => e.startsWith('id: '));
            if (got.length >= 3) {
              req.destroy();
              resolve(got);
            }
          });
        });
        // Generous: an event comes every 200 ms; a buffer that held them back would never deliver.
        req.setTimeout(10_000, () => req.destroy(new Error('no events within 10 s')));
        req.on('error', reject);
      });
      expect(events.slice(0, 3).map((e) => e.split('\n')[0])).toEqual(['id: 0', 'id: 1', 'id: 2']);
      expect(events[0]).toContain('data: event 0');
      // The stream was not counted as anything gone wrong.
      expect(await metric(s.admin, 'stratum_harakiri_timeouts_total')).toBe(0);
    } finally {
      await s.stop();
    }
  });
});

describe('a harakiri kill', () => {
  it('counts once, with other requests in flight on the killed worker', async () => {
    const s = await serve('kill-once', 'pool: { workers: 1, harakiri: 1 }');
    try {
      // Six requests in flight on the one worker, then one that blocks its event loop: the watchdog
      // kills the worker once, whichever of them are past their limit then (504 each, all in that
      // one kill); the others die with it and get 502, as from a vanished upstream — none a reset.
      const beside = Array.from({ length: 6 }, () => statusOf(s.front!, '/slow?ms=900'));
      await sleep(300);
      const blocked = statusOf(s.front!, '/block?ms=5000');
      const statuses = await Promise.all([...beside, blocked]);
      console.log(`kill-once (${process.env.STRATUM_TOPOLOGY ?? 'worker'}): ${statuses.join(' ')}`);
      expect(statuses.filter((st) => st !== 502 && st !== 504)).toEqual([]);
      expect(statuses).toContain(504);
      await waitUntil(async () => (await metric(s.admin, 'stratum_worker_respawns_total')) >= 1, {
        timeoutMs: 10_000,
        describe: () => 'the killed worker replaced',
      });
      // Past the master's own last-resort check (harakiri + 5 s without a status report).
      await sleep(6_500);
      expect(await metric(s.admin, 'stratum_harakiri_kills_total')).toBe(1);
      expect(await metric(s.admin, 'stratum_worker_respawns_total')).toBe(1);
      const stats = (await (await fetch(`${s.admin}/stats`)).json()) as { harakiriKills: number };
      expect(stats.harakiriKills).toBe(1);
      expect(s.logs().filter((l) => String(l.msg).startsWith('harakiri:'))).toHaveLength(1);
    } finally {
      await s.stop();
    }
  }, 60_000);
});
