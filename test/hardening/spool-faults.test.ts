// A temp dir that cannot take a request body (full, out of inodes, read-only, gone, or no
// descriptor left) fails that request with 507 STRATUM_ERR_BODY_SPOOL_UNAVAILABLE; nothing reaches
// the process as an uncaught exception, everything else keeps serving, and the next body after
// the fault is gone is spooled again. Each failure is counted (stratum_body_spool_failures_total by
// errno) and logged once per burst: a burst's first failure, then one summary line per 10 s.
//
// Two layers: prepareBody in this process with each fs step made to fail in turn (mkdtemp, open,
// write, the read back), then a real `stratum serve` whose TMPDIR is a small tmpfs that we fill,
// exhaust of inodes and remount read-only (mounting needs root: elsewhere these are skipped, with
// the reason printed; under CI as root they must run).
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import fsp from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { prepareBody } from '../../src/proxy/upstream.ts';
import { StratumError } from '../../src/errors.ts';
import { makeTempDir, waitUntil } from '../helpers/processes.ts';
import { REPO_ROOT, startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';
import { metric, sleep, writeConfig } from './helpers.ts';
import { BURST_WINDOW_MS } from '../../src/observability/burst.ts';

afterAll(stopAllStratum);

const MiB = 1024 * 1024;
const BODY = Buffer.alloc(3 * MiB, 0x61);

// --- in-process: each fs step of the spool fails in turn ----------------------------------------

/** A server that spools every body with prepareBody and answers its length, or the coded error. */
async function spoolServer(): Promise<{ url: string; close(): void }> {
  const server = http.createServer((req, res) => {
    prepareBody(req, 100 * MiB, { buffer: true }).then(async (body) => {
      let n = 0;
      const src = body!.open();
      if (Buffer.isBuffer(src)) n = src.length;
      else for await (const c of src as Readable) n += (c as Buffer).length;
      body!.cleanup();
      res.end(`ok ${n}`);
    }).catch((err: unknown) => {
      const e = err as StratumError;
      res.writeHead(e instanceof StratumError ? e.statusCode : 599, { connection: 'close' });
      res.end(e instanceof StratumError ? e.code : String(err));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`,
    close: () => {
      server.close();
      server.closeAllConnections();
    },
  };
}

async function post(url: string, body: typeof BODY, chunked = false): Promise<{ status: number; text: string }> {
  const init: RequestInit & { duplex?: 'half' } = { method: 'POST', body };
  if (chunked) {
    init.body = new ReadableStream({ start(c) { c.enqueue(body); c.close(); } });
    init.duplex = 'half';
  }
  const r = await fetch(url, init);
  return { status: r.status, text: await r.text() };
}

describe('prepareBody: every temp-file step can fail without an uncaught exception', () => {
  let server: Awaited<ReturnType<typeof spoolServer>>;
  const tmpdir = process.env.TMPDIR;
  beforeAll(async () => {
    server = await spoolServer();
  });
  afterAll(() => server.close());
  afterEach(() => {
    vi.restoreAllMocks();
    if (tmpdir === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = tmpdir;
  });

  const refused = { status: 507, text: 'STRATUM_ERR_BODY_SPOOL_UNAVAILABLE' };

  it('spools a 3 MiB body (Content-Length and chunked) when the temp dir works', async () => {
    expect(await post(server.url, BODY)).toEqual({ status: 200, text: `ok ${BODY.length}` });
    expect(await post(server.url, BODY, true)).toEqual({ status: 200, text: `ok ${BODY.length}` });
  });

  it('mkdtemp: the temp dir was removed (ENOENT)', async () => {
    const gone = makeTempDir('spool-gone');
    rmSync(gone, { recursive: true });
    process.env.TMPDIR = gone;
    expect(await post(server.url, BODY)).toEqual(refused);
    expect(await post(server.url, BODY, true)).toEqual(refused);
  });

  it('mkdtemp: the temp dir is under a regular file (ENOTDIR)', async () => {
    const dir = makeTempDir('spool-notdir');
    writeFileSync(join(dir, 'file'), '');
    process.env.TMPDIR = join(dir, 'file', 'tmp');
    expect(await post(server.url, BODY)).toEqual(refused);
  });

  it('open: no descriptor left (EMFILE)', async () => {
    vi.spyOn(fsp, 'open').mockRejectedValue(Object.assign(new Error('too many open files'), { code: 'EMFILE' }));
    expect(await post(server.url, BODY)).toEqual(refused);
  });

  it('write: the disk fills up mid-body (ENOSPC), on the first write and on a later one', async () => {
    const probe = await fsp.open(join(makeTempDir('spool-probe'), 'f'), 'w');
    const proto = Object.getPrototypeOf(probe) as { write: (...a: unknown[]) => Promise<unknown> };
    await probe.close();
    const real = proto.write;
    for (const failAt of [1, 2]) {
      let calls = 0;
      vi.spyOn(proto, 'write').mockImplementation(function (this: unknown, ...args: unknown[]) {
        const full = Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
        if (++calls >= failAt) return Promise.reject(full);
        return real.apply(this, args);
      });
      // Chunked: arrives in pieces, so the file sees more than one write.
      expect(await post(server.url, BODY, true)).toEqual(refused);
      vi.restoreAllMocks();
    }
  });

  it('after the faults, the next body is spooled again', async () => {
    expect(await post(server.url, BODY)).toEqual({ status: 200, text: `ok ${BODY.length}` });
  });
});

// --- a running stratum whose TMPDIR is a small tmpfs ---------------------------------------------

/** Why tmpfs cannot be mounted here, or undefined. Under CI as root, a mount that fails is an error. */
function mountSkipReason(dir: string, options: string): string | undefined {
  if (process.getuid?.() !== 0) return 'mounting a tmpfs needs root';
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', options, 'tmpfs', dir], { stdio: 'pipe' });
    return undefined;
  } catch (err) {
    const why = `mount -t tmpfs failed: ${String((err as { stderr?: Buffer }).stderr ?? err).trim()}`;
    if (process.env.CI) throw new Error(`CI runs as root and needs tmpfs: ${why}`, { cause: err });
    return why;
  }
}

const APP = join(REPO_ROOT, 'test/hardening/fixtures/app.ts');
/** Processes running the front, each with its own burst log: both workers, or the master. */
const fronts = process.env.STRATUM_TOPOLOGY === 'master' ? 1 : 2;

/** The log lines about bodies that could not be spooled: bursts' first failures and their summaries. */
function spoolLines(s: StratumProcess): Record<string, unknown>[] {
  return s.logs().filter((l) => l.code === 'STRATUM_ERR_BODY_SPOOL_UNAVAILABLE');
}

/** Posts `n` 3 MiB bodies at once to /echo; the status of each. */
async function uploads(front: string, n: number): Promise<number[]> {
  return Promise.all(Array.from({ length: n }, async () => {
    const r = await fetch(`${front}/echo`, { method: 'POST', body: BODY });
    const text = await r.text();
    if (r.status === 200) expect(JSON.parse(text).bodyLength).toBe(BODY.length);
    return r.status;
  }));
}

/** GET / answers 200 `n` times in a row, while `during` runs. */
async function servesWhile<T>(front: string, during: Promise<T>): Promise<{ value: T; gets: number[] }> {
  const gets: number[] = [];
  let settled = false;
  const loop = (async () => {
    for (let i = 0; i < 200 && !settled; i++) gets.push((await fetch(`${front}/`)).status);
  })();
  const value = await during.finally(() => {
    settled = true;
  });
  await loop;
  return { value, gets };
}

describe('stratum serve with a temp dir that cannot take bodies', () => {
  let mnt: string;
  let skip: string | undefined;
  let s: StratumProcess;
  let front: string;
  let startedAt = 0;
  const count = (statuses: number[]) =>
    statuses.reduce<Record<number, number>>((m, x) => ((m[x] = (m[x] ?? 0) + 1), m), {});

  beforeAll(async () => {
    mnt = join(makeTempDir('spool-tmpfs'), 'tmp');
    mkdirSync(mnt);
    skip = mountSkipReason(mnt, 'size=16m,nr_inodes=4096');
    if (skip) return void console.warn(`skipping the tmpfs spool faults: ${skip}`);
    const { file } = writeConfig('spool-faults', `
listen: 127.0.0.1:0
admin: { listen: 127.0.0.1:0 }
app: { module: ${APP} }
pool: { workers: 2 }
log: { access: false }
`);
    s = await startStratum(['serve', '--config', file], { env: { TMPDIR: mnt } });
    startedAt = performance.now();
    front = s.front!;
  });
  afterAll(async () => {
    await s?.stop();
    if (!skip) execFileSync('umount', ['-l', mnt]);
  });

  it('40 concurrent 3 MiB uploads on a 16 MiB temp disk: each answered 200 or 507, GET / 200 throughout', async (t) => {
    if (skip) return t.skip(skip);
    const { value, gets } = await servesWhile(front, uploads(front, 40));
    const seen = `${JSON.stringify(count(value))}; GET / meanwhile ${JSON.stringify(count(gets))}`;
    console.log(`40 × 3 MiB on 16 MiB tmpfs: ${seen}`);
    expect(value.every((x) => x === 200 || x === 507)).toBe(true);
    expect(value).toContain(507);
    expect(gets.every((x) => x === 200)).toBe(true);
  });

  it('a full disk (ENOSPC on write): 40 uploads 507, counted, a bounded number of log lines; recovered after', async (t) => {
    if (skip) return t.skip(skip);
    // Fill what is left; the spool files of the uploads above were unlinked and are gone.
    try {
      writeFileSync(join(mnt, 'filler'), Buffer.alloc(16 * MiB));
    } catch (err) {
      expect((err as NodeJS.ErrnoException).code).toBe('ENOSPC');
    }
    const counted = () => metric(s.admin, 'stratum_body_spool_failures_total', { errno: 'ENOSPC' });
    const countedBefore = await counted();
    const linesBefore = spoolLines(s).length;
    const started = performance.now();
    const { value, gets } = await servesWhile(front, uploads(front, 40));
    const burstMs = performance.now() - started;
    expect(value).toEqual(Array(40).fill(507));
    expect(gets.every((x) => x === 200)).toBe(true);
    expect(await counted()).toBe(countedBefore + 40);
    // One line per front process when a burst starts, then at most one summary per 10 s window
    // (log batches go out every 250 ms: wait past that before counting).
    await sleep(600);
    const lines = spoolLines(s).length - linesBefore;
    const bound = fronts * (Math.ceil(burstMs / BURST_WINDOW_MS) + 1);
    console.log(`40 spool failures in ${burstMs.toFixed(0)} ms: ${lines} log lines (bound ${bound})`);
    expect(lines).toBeLessThanOrEqual(bound);
    rmSync(join(mnt, 'filler'));
    expect(await uploads(front, 4)).toEqual([200, 200, 200, 200]);
  });

  it('out of inodes (ENOSPC on mkdtemp): every upload 507, recovered once inodes return', async (t) => {
    if (skip) return t.skip(skip);
    const fillers = join(mnt, 'inodes');
    mkdirSync(fillers);
    let made = 0;
    try {
      for (; made < 10_000; made++) writeFileSync(join(fillers, String(made)), '');
    } catch (err) {
      expect((err as NodeJS.ErrnoException).code).toBe('ENOSPC');
    }
    expect(made).toBeLessThan(10_000);
    const { value, gets } = await servesWhile(front, uploads(front, 8));
    expect(value).toEqual(Array(8).fill(507));
    expect(gets.every((x) => x === 200)).toBe(true);
    rmSync(fillers, { recursive: true });
    expect(await uploads(front, 4)).toEqual([200, 200, 200, 200]);
  });

  it('a read-only temp dir (EROFS): every upload 507, recovered once it is writable again', async (t) => {
    if (skip) return t.skip(skip);
    execFileSync('mount', ['-o', 'remount,ro', mnt]);
    let value: number[];
    let gets: number[];
    try {
      ({ value, gets } = await servesWhile(front, uploads(front, 8)));
    } finally {
      execFileSync('mount', ['-o', 'remount,rw', mnt]);
    }
    expect(value).toEqual(Array(8).fill(507));
    expect(gets.every((x) => x === 200)).toBe(true);
    expect(await uploads(front, 4)).toEqual([200, 200, 200, 200]);
  });

  it('the service is still up: no worker died; every failure counted by errno and logged once per burst', async (t) => {
    if (skip) return t.skip(skip);
    expect(s.proc.exitCode).toBe(null);
    const stats = await (await fetch(`${s.admin}/stats`)).json() as { workers: Array<{ pid: number }> };
    expect(stats.workers.map((w) => w.pid).sort()).toEqual([...s.workers].sort());
    expect(s.logs().filter((l) => /worker .*(died|exited)/.test(String(l.msg)))).toEqual([]);
    // Counted by errno in /metrics, whichever process ran the front.
    const failures = await metric(s.admin, 'stratum_body_spool_failures_total');
    expect(failures).toBeGreaterThanOrEqual(57); // some of the first 40, then 40 + 8 + 8
    expect(await metric(s.admin, 'stratum_body_spool_failures_total', { errno: 'EROFS' })).toBe(8);
    // Logged once per burst: each line is a burst's first failure (its errno in the message) or a
    // summary of the ones after it (count and errnos); once the last window has closed, together
    // they account for every failure counted, with far fewer lines than failures.
    const logged = () => {
      let n = 0;
      const errnos = new Set<string>();
      for (const l of spoolLines(s)) {
        if (typeof l.count === 'number') {
          n += l.count;
          for (const k of Object.keys(l.kinds as object)) errnos.add(k);
        } else {
          n++;
          errnos.add(String(l.msg).match(/\((E[A-Z]+)\)/)?.[1] ?? '?');
        }
      }
      return { n, errnos, lines: spoolLines(s).length };
    };
    await waitUntil(async () => logged().n === failures, {
      timeoutMs: BURST_WINDOW_MS + 5000,
      describe: () => `log lines account for ${JSON.stringify(logged().n)} of ${failures} spool failures`,
    });
    const { errnos, lines } = logged();
    console.log(`${failures} spool failures, ${lines} log lines`);
    expect(errnos).toEqual(new Set(['ENOSPC', 'EROFS']));
    // Per process, two lines are at least a window apart.
    const bound = fronts * (Math.floor((performance.now() - startedAt) / BURST_WINDOW_MS) + 1);
    expect(lines).toBeLessThanOrEqual(bound);
    // The 507s in the request metrics, whichever process ran the front.
    const labels = { http_response_status_code: '507' };
    expect(await metric(s.admin, 'http_server_request_duration_seconds_count', labels)).toBeGreaterThanOrEqual(24);
  });
});
