// The long uwsgi fuzz run: starts `stratum pool` with the listener fixture app on a temp Unix
// socket, plays generated sessions (test/hardening/uwsgi-fuzz.ts: well-formed, truncated,
// oversized, zero-length keys, lengths past the end, invalid UTF-8, huge CONTENT_LENGTH, short
// bodies, CR/LF, bit flips, random bytes) over raw connections while a well-formed client keeps
// asking, then checks that no worker died, respawned or threw.
//
//   node scripts/fuzz-uwsgi.ts [--packets 1000000] [--concurrency 48] [--seed N] [--workers 2]
//
// Bounded: it stops at --packets (default 1,000,000) or --max-seconds (default 900), whichever
// comes first, and exits 1 on any failure.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import fc from 'fast-check';
import { makeTempDir } from '../test/helpers/processes.ts';
import { REPO_ROOT, startStratum, stopAllStratum } from '../test/helpers/stratum.ts';
import { formatTally, newTally, playAll, sessionArb, steadyClient } from '../test/hardening/uwsgi-fuzz.ts';

const { values } = parseArgs({
  options: {
    packets: { type: 'string', default: '1000000' },
    concurrency: { type: 'string', default: '48' },
    seed: { type: 'string' },
    workers: { type: 'string', default: '2' },
    'max-seconds': { type: 'string', default: '900' },
  },
});
const target = Number(values.packets);
const concurrency = Number(values.concurrency);
const seed = values.seed !== undefined ? Number(values.seed) : Date.now() % 2 ** 31;
const maxMs = Number(values['max-seconds']) * 1000;

interface Stats {
  workers: Array<{ pid: number; exceptions: number; requests: number }>;
  respawns: number;
}

async function stats(admin: string): Promise<Stats> {
  const r = await fetch(`${admin}/stats`);
  return (await r.json()) as Stats;
}

const dir = makeTempDir('fuzz');
const socket = join(dir, 'pool.sock');
const config = join(dir, 'stratum.yaml');
writeFileSync(config, 'pool:\n  bufferSize: 8192\n  harakiri: 30\n');
const pool = await startStratum([
  'pool',
  '--config',
  config,
  '--socket',
  socket,
  '--admin',
  '127.0.0.1:0',
  '--workers',
  values.workers!,
  '--app',
  join(REPO_ROOT, 'test/hardening/fixtures/app.ts'),
]);
const before = await stats(pool.admin);
console.log(
  `stratum pool on ${socket}, workers ${before.workers.map((w) => w.pid).join(', ')}; seed ${seed}, ` +
    `target ${target} packets, ${concurrency} connections at a time`,
);

const tally = newTally();
const steady = steadyClient(socket);
const started = performance.now();
let batchNo = 0;
let failed = 0;
while (tally.packets < target && performance.now() - started < maxMs) {
  // One batch of sessions per fast-check draw, each from its own derived seed (reproducible).
  const sessions = fc.sample(fc.array(sessionArb, { minLength: 2000, maxLength: 2000 }), {
    numRuns: 1,
    seed: seed + batchNo,
  })[0]!;
  batchNo++;
  failed += (await playAll(socket, sessions, concurrency, tally)).length;
  const s = (performance.now() - started) / 1000;
  if (batchNo % 10 === 0)
    console.log(
      `  ${tally.packets} packets, ${tally.sessions} connections, ` +
        `${(tally.packets / s).toFixed(0)} packets/s, ${failed} failures`,
    );
}
const seconds = (performance.now() - started) / 1000;
const steadyResult = await steady.stop();
const after = await stats(pool.admin);
const logs = pool.logs();
const died = logs.filter((l) => l.msg === 'worker died').length;
const samePids =
  JSON.stringify(before.workers.map((w) => w.pid).sort()) === JSON.stringify(after.workers.map((w) => w.pid).sort());
const exceptions = after.workers.reduce((n, w) => n + w.exceptions, 0);
await pool.stop();
await stopAllStratum();

console.log(formatTally(tally));
console.log(
  `\n${tally.packets} packets in ${seconds.toFixed(1)} s (${(tally.packets / seconds).toFixed(0)}/s), seed ${seed}`,
);
console.log(
  `well-formed client meanwhile: ${steadyResult.sent} requests, ${steadyResult.failures.length} failed, ` +
    `slowest ${steadyResult.maxMs.toFixed(1)} ms`,
);
console.log(
  `workers: pids unchanged ${samePids}, respawns ${after.respawns}, 'worker died' lines ${died}, ` +
    `app exceptions ${exceptions}`,
);
for (const f of tally.failures) console.log(`FAILED ${f.kind}: ${f.why}\n  ${f.hex}`);
const ok =
  failed === 0 &&
  steadyResult.failures.length === 0 &&
  samePids &&
  after.respawns === 0 &&
  died === 0 &&
  exceptions === 0;
console.log(ok ? 'PASS' : 'FAIL');
process.exit(ok ? 0 : 1);
