// The access log under load, read back whole (issue 12 §4): every process of the tree writes JSON
// lines to the same stdout, and a line must never be cut or merged with another process's. A
// write(2) to a pipe is atomic only up to PIPE_BUF (4 KiB), so stdout here is a real pipe (a FIFO),
// as under a log shipper or a container runtime. It cannot be the helpers' stdio: Node gives a child
// a Unix socketpair there, which keeps a 32 KiB write whole and would hide the very interleaving
// this test is for. And the reader lags (see lagging()): a pipe splits a write only when it is full.
// With log.ts's batches raised to 32 KiB (ATOMIC_WRITE) this test failed every run: 40–60 broken lines.
//
// A fixed number of requests, with URLs of varied length so lines are ~300–600 bytes and a batch
// holds several; then every stdout byte is split into lines and each one parsed, the access lines
// counted against what was sent (each URL exactly once) and their writers checked: both workers
// (the front runs in each) or, in the master topology, the master alone.
import { execFileSync } from 'node:child_process';
import { closeSync, constants, openSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { describeOutput, isRunning, makeTempDir, spawnTracked, type Tracked } from '../helpers/processes.ts';
import { REPO_ROOT, STRATUM_BIN, stopAllStratum } from '../helpers/stratum.ts';

const MASTER = process.env.STRATUM_TOPOLOGY === 'master';
const FIXTURE = join(REPO_ROOT, 'test/fixtures/apps/fastify.ts');
const REQUESTS = 20_000;
const CONCURRENCY = 50;
/** Each lane closes its connection after this many requests: new connections keep both workers accepting. */
const PER_CONNECTION = 100;
const READY_TIMEOUT_MS = 20_000;
const LAG_PAUSE_MS = 150;
const LAG_READ_MS = 20;

afterAll(stopAllStratum);

interface Served {
  t: Tracked;
  /** Reads in bursts, like a log shipper that falls behind, until the returned function is called. */
  lag(): () => void;
  /** Every byte written to stdout so far. */
  chunks: Buffer[];
  /** Resolves once every writer has closed stdout (the whole tree has exited). */
  eof: Promise<void>;
  ready: Record<string, unknown>;
}

/** `stratum serve` with stdout on a FIFO; resolves at its ready line. */
async function serveOnFifo(args: string[]): Promise<Served> {
  const dir = makeTempDir('access-log');
  const fifo = join(dir, 'stdout');
  execFileSync('mkfifo', [fifo]);
  // The read end first, non-blocking (so this open does not wait for a writer); then the write end
  // opens at once, and goes to the child only: our copy is closed so EOF means the tree is gone.
  const readFd = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
  const writeFd = openSync(fifo, constants.O_WRONLY);
  const t = spawnTracked(process.execPath, [STRATUM_BIN, ...args], {
    cwd: REPO_ROOT,
    stdio: ['ignore', writeFd, 'pipe'],
  });
  closeSync(writeFd);
  const reader = new net.Socket({ fd: readFd, readable: true, writable: false });
  const chunks: Buffer[] = [];
  reader.on('data', (c: Buffer) => chunks.push(c));
  const eof = new Promise<void>((resolve, reject) => {
    reader.once('end', () => resolve());
    reader.once('error', reject);
  });

  const started = Date.now();
  for (;;) {
    const text = Buffer.concat(chunks).toString('utf8');
    const line = text.split('\n').find((l) => l.includes('"msg":"stratum ready"'));
    if (line) return { t, chunks, eof, lag: () => lagging(reader), ready: JSON.parse(line) as Record<string, unknown> };
    if (!isRunning(t) || Date.now() - started > READY_TIMEOUT_MS) {
      await t.stop('SIGKILL', 0);
      reader.destroy();
      throw new Error(`stratum printed no ready line\n${text.slice(-4000)}\n${describeOutput(t)}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * Stops reading for LAG_PAUSE_MS, reads for LAG_READ_MS, and again: the 64 KiB pipe fills and the
 * writers wait for room. Only then can a write be split (a pipe takes a write of ≤ 4 KiB whole or
 * not at all); a reader that keeps up would let even 32 KiB writes through whole.
 */
function lagging(reader: net.Socket): () => void {
  let timer: NodeJS.Timeout | null = null;
  const pause = () => {
    reader.pause();
    timer = setTimeout(read, LAG_PAUSE_MS);
  };
  const read = () => {
    reader.resume();
    timer = setTimeout(pause, LAG_READ_MS);
  };
  pause();
  return () => {
    if (timer) clearTimeout(timer);
    reader.resume();
  };
}

/** A URL unique to request `n`, 30–330 bytes long, so access lines vary around 300–600 bytes. */
function urlFor(n: number): string {
  return `/?n=${n}&pad=${'p'.repeat((n * 37) % 300)}`;
}

/** REQUESTS requests over CONCURRENCY keep-alive lanes; resolves with how many were sent, rejects on any failure. */
async function load(front: string): Promise<number> {
  const { hostname, port } = new URL(front);
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
  let next = 0;
  let sent = 0;
  const one = (n: number, close: boolean) =>
    new Promise<void>((resolve, reject) => {
      const req = http.get(
        {
          host: hostname,
          port,
          path: urlFor(n),
          agent,
          headers: { 'user-agent': `load/${n % 3}`, ...(close ? { connection: 'close' } : {}) },
        },
        (res) => {
          res.resume();
          const failed = () => new Error(`${urlFor(n)}: ${res.statusCode}`);
          res.once('end', () => (res.statusCode === 200 ? resolve() : reject(failed())));
          res.once('error', reject);
        },
      );
      req.setTimeout(30_000, () => req.destroy(new Error(`${urlFor(n)}: no answer within 30 s`)));
      req.once('error', reject);
      sent++;
    });
  const lane = async () => {
    for (let i = 1; next < REQUESTS; i++) await one(next++, i % PER_CONNECTION === 0);
  };
  try {
    await Promise.all(Array.from({ length: CONCURRENCY }, lane));
  } finally {
    agent.destroy();
  }
  return sent;
}

describe('access log under load, stdout a pipe shared by every process', () => {
  it('writes one whole JSON line per request, never cut or merged, from the processes running the front', async () => {
    const s = await serveOnFifo(['serve', '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--workers', '2',
      '--app', FIXTURE]);
    const workers = (s.ready.workers as number[] | undefined) ?? [];
    expect(workers).toHaveLength(2);
    let sent: number;
    const keepUp = s.lag();
    try {
      sent = await load(String(s.ready.front));
    } finally {
      keepUp();
      expect(await s.t.stop('SIGTERM', 10_000), `exit code after SIGTERM\n${describeOutput(s.t)}`).toBe(0);
    }
    const ended = await Promise.race([s.eof.then(() => true), new Promise((r) => setTimeout(r, 5000, false))]);
    expect(ended, 'stdout closed by every process of the tree').toBe(true);
    expect(sent).toBe(REQUESTS);

    const out = Buffer.concat(s.chunks).toString('utf8');
    expect(out.endsWith('\n'), 'stdout ends with a whole line').toBe(true);
    const lines = out.slice(0, -1).split('\n');
    const broken: string[] = [];
    const access: Record<string, unknown>[] = [];
    for (const line of lines) {
      let entry: unknown;
      try {
        entry = JSON.parse(line);
      } catch {
        broken.push(line);
        continue;
      }
      if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) broken.push(line);
      else if ((entry as Record<string, unknown>).type === 'access') access.push(entry as Record<string, unknown>);
    }
    expect(broken.length, `lines that are not one JSON object, e.g.\n${broken.slice(0, 2).join('\n')}`).toBe(0);

    expect(access.length, 'access lines').toBe(REQUESTS);
    const lengths = access.map((a) => Buffer.byteLength(JSON.stringify(a)));
    // Batches of several lines, each near the 4 KiB limit: a line of this size is what makes one cross it.
    expect(Math.min(...lengths)).toBeGreaterThan(250);
    expect(Math.max(...lengths)).toBeLessThan(1000);
    const paths = new Set(access.map((a) => a.path));
    expect(paths.size, 'distinct request paths logged').toBe(REQUESTS);
    for (let n = 0; n < REQUESTS; n += 997) expect(paths.has(urlFor(n)), urlFor(n)).toBe(true);
    expect(access.every((a) => a.status === 200)).toBe(true);
    // The client, Host, user agent and bytes sent (the head included, so more than the body's bytes).
    const { host } = new URL(String(s.ready.front));
    const odd = access.filter(
      (a) =>
        a.client !== '127.0.0.1' ||
        a.scheme !== 'http' ||
        a.host !== host ||
        !/^load\/[0-2]$/.test(String(a.userAgent)) ||
        !((a.bytesSent as number) > (a.bytes as number) && (a.bytes as number) > 0),
    );
    expect(odd.length, `access lines without the client fields, e.g. ${JSON.stringify(odd[0])}`).toBe(0);

    const writers = new Set(access.map((a) => a.pid));
    if (MASTER) expect([...writers]).toEqual([s.t.proc.pid]);
    else expect([...writers].sort()).toEqual([...workers].sort());
  });
});
