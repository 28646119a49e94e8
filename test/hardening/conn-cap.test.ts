// The front's connection cap (proxy.maxConnections, nginx's worker_connections), against a real
// `stratum serve` in both topologies: with the cap's worth of idle connections held open, a new
// client gets 503 at once (not a hang, not a silent reset), the refusal is counted in /metrics and
// logged once per burst, the admin's /livez answers meanwhile, and once connections close new
// clients are served again. Also: the default cap from the open-file limit, the burst log, and
// the soft limit raised with prlimit.
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import tls from 'node:tls';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BurstLog } from '../../src/observability/burst.ts';
import { createLogger } from '../../src/observability/log.ts';
import { fdLimit, raiseFdLimit } from '../../src/pool/rlimit.ts';
import { defaultMaxConnections, sumConnections } from '../../src/proxy/conn-cap.ts';
import { makeCert } from '../edge/certs.ts';
import { waitUntil } from '../helpers/processes.ts';
import { REPO_ROOT, startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';
import { metric, openIdleConnections, portOf, RawConn, sleep, writeConfig } from './helpers.ts';

afterAll(stopAllStratum);

const APP = join(REPO_ROOT, 'test/hardening/fixtures/app.ts');
const CAP = 50;
const LIMIT_CODE = 'STRATUM_ERR_CONNECTION_LIMIT';

const until = (probe: () => boolean | Promise<boolean>, timeoutMs: number, what: string) =>
  waitUntil(async () => probe(), { timeoutMs, describe: () => `timed out waiting for ${what}` });

/** A new client's first answer: its status (null: closed with none) and how long it took. */
async function newClient(port: number): Promise<{ status: number | null; closed: boolean; ms: number; raw: string }> {
  const started = performance.now();
  const c = await RawConn.open(port);
  try {
    c.write('GET / HTTP/1.1\r\nHost: t\r\n\r\n');
    const r = await c.next(5000);
    const closed = r.closed || (await Promise.race([c.closed.then(() => true), sleep(2000).then(() => false)]));
    return { status: r.status, closed, ms: performance.now() - started, raw: c.raw };
  } finally {
    c.destroy();
  }
}

// STRATUM_TOPOLOGY (set per vitest project) picks the topology: this file runs in both.
const topology = process.env.STRATUM_TOPOLOGY === 'master' ? 'master' : 'worker';

describe(`proxy.maxConnections (${topology} topology)`, () => {
  let s: StratumProcess;
  let port: number;
  let held: RawConn[] = [];

  afterAll(async () => {
    for (const c of held) c.destroy();
    await s?.stop();
  });

  it(`at ${CAP} idle connections a new client gets 503 at once; /livez answers; served again after`, async () => {
    // One worker: in the worker topology the cap is per worker, so all of it is on that one.
    const { file } = writeConfig(
      `conn-cap-${topology}`,
      `
listen: 127.0.0.1:0
admin: { listen: 127.0.0.1:0 }
app: { module: ${APP} }
pool: { workers: 1 }
proxy: { maxConnections: ${CAP}, keepAliveTimeout: 300 }
log: { access: false }
`,
    );
    s = await startStratum(['serve', '--config', file]);
    port = portOf(s.front!);
    held = await openIdleConnections(port, CAP, '/', 25);
    await until(
      async () => (await metric(s.admin, 'stratum_connections')) === CAP,
      5000,
      'all held connections counted',
    );
    expect(await metric(s.admin, 'stratum_connections_limit')).toBe(CAP);
    expect(await metric(s.admin, 'stratum_connections_refused_total')).toBe(0);

    const refused = await newClient(port);
    console.log(`${topology}: refused at the cap in ${refused.ms.toFixed(1)} ms: ${JSON.stringify(refused.raw)}`);
    expect(refused.status).toBe(503);
    expect(refused.raw).toMatch(/\r\nConnection: close\r\n/i);
    expect(refused.raw).toMatch(/\r\nRetry-After: 1\r\n/i);
    expect(refused.closed).toBe(true);

    // The admin is another listener in the master: its health endpoints answer at the front's cap.
    expect((await fetch(`${s.admin}/livez`)).status).toBe(200);
    expect((await fetch(`${s.admin}/readyz`)).status).toBe(200);

    // A burst of refusals: each counted, the log gets one line for the lot (a summary follows in 10 s).
    const more = await Promise.all(Array.from({ length: 20 }, () => newClient(port)));
    expect(more.map((r) => r.status)).toEqual(Array(20).fill(503));
    expect(await metric(s.admin, 'stratum_connections_refused_total', { listener: '127.0.0.1:0' })).toBe(21);
    // Log lines are written in batches (every 250 ms): wait for the first, then for a later batch.
    await until(() => s.logs().some((l) => l.code === LIMIT_CODE), 5000, 'the refusal logged');
    await sleep(600);
    const lines = s.logs().filter((l) => l.code === LIMIT_CODE);
    expect(lines.length).toBe(1);
    expect(lines[0]!.level).toBe('warn');

    // The held connections still work (they are the ones the cap protects).
    held[0]!.write('GET / HTTP/1.1\r\nHost: t\r\n\r\n');
    expect((await held[0]!.next(5000)).status).toBe(200);

    // The dashboard's feed carries the count and the cap (from the worker's reports, 500 ms apart).
    await until(
      async () => {
        const { ticks } = (await (await fetch(`${s.admin}/live/history`)).json()) as {
          ticks: Array<{ connections?: Array<{ open: number; limit: number; refused: number }> }>;
        };
        const c = ticks.at(-1)?.connections?.[0];
        return c?.limit === CAP && c.open === CAP && c.refused === 21;
      },
      5000,
      '/live ticks show the connections at the cap',
    );

    for (const c of held.splice(0, 10)) c.destroy();
    await until(async () => (await newClient(port)).status === 200, 5000, 'a new client served after closes');
    const served = await newClient(port);
    expect(served.status).toBe(200);
    expect(served.raw).not.toMatch(/\r\nConnection: close\r\n/i);
  });
});

/** A TLS connection that has done its handshake and one request, then idles; or the error that ended it. */
function tlsClient(port: number, ca: string): Promise<tls.TLSSocket | Error> {
  return new Promise((resolve) => {
    const c = tls.connect({ host: '127.0.0.1', port, ca, servername: 'localhost' }, () => {
      c.write('GET / HTTP/1.1\r\nHost: localhost\r\n\r\n');
    });
    c.once('data', () => resolve(c));
    c.once('error', (err) => resolve(err));
    c.once('close', () => resolve(new Error('closed')));
  });
}

describe(`proxy.maxConnections on a TLS listener (${topology} topology)`, () => {
  it('past the cap a new connection is closed before its handshake, counted; the held ones go on', async () => {
    const { dir, file } = writeConfig('conn-cap-tls', '');
    const cert = makeCert(dir, 'localhost', ['localhost']);
    writeFileSync(
      file,
      `
listen: 127.0.0.1:0
admin: { listen: 127.0.0.1:0 }
app: { module: ${APP} }
pool: { workers: 1 }
tls: { cert: ${cert.cert}, key: ${cert.key} }
proxy: { maxConnections: 5, keepAliveTimeout: 300 }
log: { access: false }
`,
    );
    const s = await startStratum(['serve', '--config', file]);
    const port = portOf(s.front!);
    const ca = readFileSync(cert.cert, 'latin1');
    const held: tls.TLSSocket[] = [];
    try {
      for (let i = 0; i < 5; i++) {
        const c = await tlsClient(port, ca);
        if (c instanceof Error) throw c;
        held.push(c);
      }
      const refused = await tlsClient(port, ca);
      console.log(`TLS at the cap: ${String(refused)}`);
      expect(refused).toBeInstanceOf(Error);
      expect(await metric(s.admin, 'stratum_connections_refused_total')).toBe(1);
      expect((await fetch(`${s.admin}/livez`)).status).toBe(200);
      held.shift()!.destroy();
      const served = async () => {
        const c = await tlsClient(port, ca);
        if (c instanceof Error) return false;
        held.push(c);
        return true;
      };
      await until(served, 5000, 'a TLS client served after a close');
    } finally {
      for (const c of held) c.destroy();
      await s.stop();
    }
  });
});

describe('the default cap follows the open-file limit', () => {
  it('defaultMaxConnections: (soft - max(128, soft/10)) / 2, at least 16', () => {
    expect(defaultMaxConnections(1024)).toBe(448);
    expect(defaultMaxConnections(20_000)).toBe(9000);
    expect(defaultMaxConnections(65_536)).toBe(29_491);
    expect(defaultMaxConnections(64)).toBe(16);
    expect(defaultMaxConnections(Infinity)).toBe(defaultMaxConnections(1_048_576));
  });

  it('sums the workers per listener', () => {
    const row = (open: number, refused: number) => ({ listener: 'l', open, limit: 10, refused });
    expect(sumConnections([row(3, 1), undefined, row(4, 2)])).toEqual([
      { listener: 'l', open: 7, limit: 20, refused: 3 },
    ]);
  });

  it('a worker without proxy.maxConnections gets the default for its own limit; the master logs the limit', async () => {
    const { file } = writeConfig(
      'conn-cap-default',
      `
listen: 127.0.0.1:0
admin: { listen: 127.0.0.1:0 }
app: { module: ${APP} }
pool: { workers: 2 }
log: { access: false }
`,
    );
    const s = await startStratum(['serve', '--config', file]);
    try {
      // Each process running the front has its own cap: the two workers, or the master.
      const expected =
        topology === 'worker'
          ? s.workers.reduce((n, pid) => n + defaultMaxConnections(fdLimit(pid)!.soft), 0)
          : defaultMaxConnections(fdLimit(s.proc.pid!)!.soft);
      await until(async () => (await metric(s.admin, 'stratum_connections_limit')) > 0, 5000, 'limit gauge');
      expect(await metric(s.admin, 'stratum_connections_limit')).toBe(expected);
      const line = s.logs().find((l) => typeof l.fdSoft === 'number');
      expect(line, 'the master logs its open-file limit at start').toBeDefined();
      expect(line!.fdSoft).toBe(fdLimit(s.proc.pid!)!.soft);
    } finally {
      await s.stop();
    }
  });
});

describe('BurstLog', () => {
  it('logs the first event, then one summary per window with the count and kinds', async () => {
    const lines: Array<{ fields: Record<string, unknown>; msg: string }> = [];
    const log = new BurstLog((fields, msg) => lines.push({ fields, msg }), 'summary', { code: 'X' }, 200);
    for (let i = 0; i < 40; i++) log.hit(i % 4 === 0 ? 'EROFS' : 'ENOSPC', { i }, `event ${i}`);
    expect(lines).toEqual([{ fields: { i: 0 }, msg: 'event 0' }]);
    await until(() => lines.length === 2, 2000, 'the summary line');
    expect(lines[1]).toEqual({
      fields: { code: 'X', count: 39, kinds: { ENOSPC: 30, EROFS: 9 }, windowSeconds: 0.2 },
      msg: 'summary',
    });
    // Quiet for a whole window after the summary: the next event is logged at once again.
    await sleep(500);
    log.hit('ENOSPC', { i: 40 }, 'event 40');
    expect(lines.length).toBe(3);
    expect(lines[2]!.msg).toBe('event 40');
  });
});

describe('raiseFdLimit', () => {
  const prlimit = spawnSync('prlimit', ['--version']).status === 0;
  it('raises a process soft open-file limit to its hard limit with prlimit', async (t) => {
    if (!prlimit) {
      if (process.env.CI) throw new Error('prlimit (util-linux) is missing');
      return t.skip('prlimit (util-linux) is not installed');
    }
    const hard = fdLimit()!.hard;
    const child = spawn('bash', ['-c', 'ulimit -Sn 256 && exec sleep 30'], { stdio: 'ignore' });
    try {
      await until(
        () => fdLimit(child.pid!)?.soft === 256 && /sleep/.test(readFileSync(`/proc/${child.pid}/cmdline`, 'latin1')),
        5000,
        'child started',
      );
      const log = createLogger('fatal');
      const after = raiseFdLimit(log, child.pid!);
      expect(after).toEqual({ soft: hard, hard });
      expect(fdLimit(child.pid!)).toEqual({ soft: hard, hard });
    } finally {
      child.kill('SIGKILL');
    }
  });
});
