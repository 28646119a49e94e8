// The uwsgi decoder under attack. Two properties, both with fast-check:
//
//  1. In-process, the pure decoder (PacketHeadDecoder + decodeVars): ≥ 100,000 generated
//     packets, each fed whole and again cut into random chunks. Either it decodes (a well-formed
//     packet round-trips its vars) or it throws a coded STRATUM_ERR_UWSGI_* error — the same
//     answer however the bytes arrive, nothing else ever thrown.
//  2. Against a RUNNING worker pool (`stratum pool --socket <tmp>/pool.sock`, 2 workers, the
//     fixture app of test/hardening/fixtures/app.ts): ≥ 100,000 generated packets over raw Unix
//     connections, 48 at a time — plain single packets and keep-alive chains of well-formed
//     packets ended by a hostile one (after a malformed packet the worker closes the
//     connection, so hostile packets each get their own). Wrong sizes, truncated vars, lengths
//     past the end, zero-length keys, invalid UTF-8, huge CONTENT_LENGTH, bodies shorter than
//     announced, CR/LF, control bytes, bit flips, random bytes (see uwsgi-fuzz.ts). Each hostile
//     packet gets a 400 or a closed connection (or, for mutations that may stay valid, anything
//     but a 5xx or a hang); each well-formed one a 200 echoing exactly its body. Meanwhile a
//     well-formed client keeps sending and every one of its requests gets its 200. At the end
//     the workers are the same processes: pids unchanged in /stats, 0 respawns, 0 exceptions.
// The long version (≥ 1,000,000 packets): `node scripts/fuzz-uwsgi.ts`.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PacketHeadDecoder, decodeVars } from '../../src/uwsgi/codec.ts';
import { StratumError } from '../../src/errors.ts';
import { makeTempDir } from '../helpers/processes.ts';
import { REPO_ROOT, startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';
import { formatTally, newTally, packetArb, playAll, sessionArb, steadyClient } from './uwsgi-fuzz.ts';

afterAll(stopAllStratum);

const SEED = Number(process.env.FUZZ_SEED ?? Date.now() % 2 ** 31);
const IN_PROCESS_PACKETS = 100_000;
const WORKER_PACKETS = 100_000;

type Decoded = { vars: string[]; end: number } | { code: string } | { more: true };

/** Feed `bytes` to a fresh decoder in the given chunks; what it made of them. */
function decode(bytes: Buffer, cuts: number[]): Decoded {
  const d = new PacketHeadDecoder(8192);
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  let start = 0;
  try {
    for (const end of [...points, bytes.length]) {
      if (end <= start && !(end === bytes.length && start === 0 && bytes.length === 0)) continue;
      const got = d.push(bytes.subarray(start, end));
      if (got) return { vars: got.head.vars, end: start + got.rest };
      start = end;
    }
    d.end();
    return { more: true };
  } catch (err) {
    if (!(err instanceof StratumError)) throw new Error(`decoder threw a non-coded error: ${(err as Error).stack}`);
    return { code: err.code };
  }
}

describe('uwsgi decoder, in-process (pure PacketHeadDecoder)', () => {
  it(`decodes or refuses with a coded error, whatever the chunking (${IN_PROCESS_PACKETS} packets)`, () => {
    fc.assert(
      fc.property(packetArb, fc.array(fc.nat(), { maxLength: 6 }), (p, cuts) => {
        const whole = decode(p.bytes, []);
        const chunked = decode(p.bytes, cuts);
        expect(chunked).toEqual(whole);
        if ('code' in whole) expect(whole.code).toMatch(/^STRATUM_ERR_UWSGI_/);
        if (p.expect === 'ok') {
          // A well-formed packet: the vars come back exactly as encoded.
          expect('vars' in whole).toBe(true);
          const size = p.bytes.readUInt16LE(1);
          expect((whole as { vars: string[] }).vars).toEqual(decodeVars(p.bytes, 4, 4 + size));
          expect((whole as { end: number }).end).toBe(4 + size);
        }
      }),
      { numRuns: IN_PROCESS_PACKETS, seed: SEED },
    );
  });
});

interface Stats {
  workers: Array<{ pid: number; exceptions: number; requests: number }>;
  respawns: number;
}

describe('uwsgi decoder, against a running worker pool', () => {
  let pool: StratumProcess;
  let socket: string;

  beforeAll(async () => {
    const dir = makeTempDir('uwsgi-fuzz');
    socket = join(dir, 'pool.sock');
    const config = join(dir, 'stratum.yaml');
    // bufferSize 8 KiB so that oversized vars blocks are part of the attack.
    writeFileSync(config, 'pool:\n  bufferSize: 8192\n  harakiri: 30\n');
    pool = await startStratum(['pool', '--config', config, '--socket', socket, '--admin', '127.0.0.1:0', '--workers', '2', '--app', join(REPO_ROOT, 'test/hardening/fixtures/app.ts')]);
  });

  const stats = async (): Promise<Stats> => (await (await fetch(`${pool.admin}/stats`)).json()) as Stats;

  it(`answers ${WORKER_PACKETS}+ generated packets with 200, 400 or a close, never crashes, keeps serving`, async () => {
    const before = await stats();
    expect(before.workers).toHaveLength(2);
    const tally = newTally();
    const steady = steadyClient(socket);
    const started = performance.now();
    // ≈ 2,360 packets per run of 1,000 connections; 48 runs ≈ 113,000 packets.
    await fc.assert(
      fc.asyncProperty(fc.array(sessionArb, { minLength: 1000, maxLength: 1000 }), async (sessions) => {
        const failed = await playAll(socket, sessions, 48, tally);
        if (failed.length > 0) throw new Error(`${failed.length} sessions failed, first: ${failed[0]!.failure!.why}`);
      }),
      { numRuns: 48, seed: SEED, endOnFailure: true },
    ).catch((err: Error) => {
      throw new Error(`${err.message}\n${formatTally(tally)}\n${tally.failures.map((f) => `${f.kind}: ${f.why}\n  ${f.hex}`).join('\n')}`);
    });
    const seconds = (performance.now() - started) / 1000;
    const meanwhile = await steady.stop();
    const after = await stats();
    console.log(`${formatTally(tally)}\n${(tally.packets / seconds).toFixed(0)} packets/s over ${seconds.toFixed(1)} s (seed ${SEED}); ` +
      `well-formed client meanwhile: ${meanwhile.sent} requests, slowest ${meanwhile.maxMs.toFixed(0)} ms`);

    expect(tally.packets).toBeGreaterThanOrEqual(WORKER_PACKETS);
    expect(tally.failures).toEqual([]);
    // The concurrent well-formed client was answered 200 throughout.
    expect(meanwhile.failures).toEqual([]);
    expect(meanwhile.sent).toBeGreaterThan(100);
    // Nothing crashed: the same two worker processes, never respawned, no exception counted.
    expect(after.workers.map((w) => w.pid).sort()).toEqual(before.workers.map((w) => w.pid).sort());
    expect(after.respawns).toBe(0);
    expect(after.workers.reduce((n, w) => n + w.exceptions, 0)).toBe(0);
    expect(pool.logs().filter((l) => l.msg === 'worker died')).toEqual([]);
    // And they still serve.
    const again = await playAll(socket, fc.sample(sessionArb, { numRuns: 50, seed: SEED + 1 }), 8, newTally());
    expect(again).toEqual([]);
  }, 120_000);
});
