// `npm run bench`: Stratum side by side with the stacks it replaces, on this machine.
//
// Each stack (bench/stacks.ts) is started alone, checked to answer GET / with the same bytes,
// sampled idle, warmed up with wrk, then loaded with `wrk -t1 -c50 -d<N>s --latency` while the
// summed VmRSS of its processes is sampled every 200 ms; then it is stopped and the next one
// starts. The table gives req/s, p50, p99, peak RSS, and each row's ratio to "Stratum default".
//
//   npm run bench                                   every stack, 8 s each
//   npm run bench -- --only stratum-default,nginx-uwsgi-flask --duration 15
//   npm run bench -- --json results.json
//   npm run bench -- --soak [--soak-seconds 300]    Stratum default under load, RSS every 10 s
//   npm run bench -- --only stratum-default --cpu-prof DIR   CPU profiles of master and workers
//   npm run bench -- --list
import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { cpuBetween, cpuMark, installCleanup, makeTempDir, processName, processTree, removeTempDir, rssKiB, RssSampler, sleep, waitUntil } from './procs.ts';
import { APP_PROCESSES, EXPECTED_BODY, STACKS, type RunningStack, type StackDef } from './stacks.ts';
import { errorCount, runWrk, type WrkResult } from './wrk.ts';

const HELP = `usage: node bench/run.ts [options]

  --duration N        seconds of each measured wrk run (default 8)
  --warmup N          seconds of wrk warm-up before it, discarded (default 3; 30 with --soak)
  --connections N     wrk -c (default 50)
  --threads N         wrk -t (default 1)
  --only a,b          run only these stacks (see --list)
  --json FILE         also write the results as JSON
  --soak              run Stratum default under load for --soak-seconds (default 300),
                      sampling master and worker RSS every 10 s
  --soak-seconds N    length of the soak
  --cpu-prof DIR      profile the Stratum processes (master and workers) into DIR
                      (NODE_OPTIONS="--cpu-prof --cpu-prof-dir=DIR"; written at their exit);
                      summarise with: node bench/prof-summary.ts DIR/*.cpuprofile
  --wait-idle N       before each stack, wait up to N seconds (default 30) for the rest of
                      the machine to use < 0.15 CPU; the table shows what others used anyway
  --retry-busy N      measure a row again, up to N times (default 2), when other processes
                      used >= 0.15 CPU during its run; the least disturbed run is kept
  --list              list the stacks and exit
`;

const { values: opts } = parseArgs({
  options: {
    duration: { type: 'string', default: '8' },
    warmup: { type: 'string' },
    connections: { type: 'string', default: '50' },
    threads: { type: 'string', default: '1' },
    only: { type: 'string' },
    json: { type: 'string' },
    soak: { type: 'boolean', default: false },
    'soak-seconds': { type: 'string', default: '300' },
    'cpu-prof': { type: 'string' },
    'wait-idle': { type: 'string', default: '30' },
    'retry-busy': { type: 'string', default: '2' },
    list: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
  allowPositionals: false,
});

function positiveInt(name: string, text: string, min = 1): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min) {
    console.error(`bench: --${name} must be an integer >= ${min}, got "${text}"`);
    process.exit(2);
  }
  return n;
}

if (opts.help) {
  process.stdout.write(HELP);
  process.exit(0);
}
if (opts.list) {
  for (const s of STACKS) console.log(`${s.name.padEnd(22)} ${s.title}\n${' '.repeat(23)}${s.notes}`);
  process.exit(0);
}

const DURATION = positiveInt('duration', opts.duration);
// A soak's start sample must find the heaps grown to their working size: a longer warm-up.
const WARMUP = positiveInt('warmup', opts.warmup ?? (opts.soak ? '30' : '3'), 0);
const CONNECTIONS = positiveInt('connections', opts.connections);
const THREADS = positiveInt('threads', opts.threads);
const SOAK_SECONDS = positiveInt('soak-seconds', opts['soak-seconds'], 10);
const CPU_PROF = opts['cpu-prof'] ? resolve(opts['cpu-prof']) : undefined;
const WAIT_IDLE = positiveInt('wait-idle', opts['wait-idle'], 0);
const RETRY_BUSY = positiveInt('retry-busy', opts['retry-busy'], 0);
/** Other processes using less CPU than this (in cores) count as a quiet machine. */
const BUSY_CORES = 0.15;

let selected: StackDef[] = STACKS;
if (opts.only) {
  const names = opts.only.split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = names.filter((n) => !STACKS.some((s) => s.name === n));
  if (unknown.length > 0) {
    console.error(`bench: unknown stack ${unknown.join(', ')}; known: ${STACKS.map((s) => s.name).join(', ')}`);
    process.exit(2);
  }
  selected = STACKS.filter((s) => names.includes(s.name));
}

installCleanup();

// ---- machine ----

/** What `cmd args` prints on stdout and stderr (nginx -v and wrk -v print on stderr). */
function cmdOutput(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 5000 });
  if (r.error) return 'not installed';
  return `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
}

function describeMachine() {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? os.cpus()[0]?.model ?? 'unknown';
  const mhz = /^cpu MHz\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim();
  return {
    date: new Date().toISOString(),
    nproc: os.availableParallelism(),
    cpuModel: mhz ? `${model} (${Math.round(Number(mhz))} MHz)` : model,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    wrk: cmdOutput('wrk', ['-v']).split('\n')[0]!.replace(/ Copyright.*/, ''),
    nginx: cmdOutput('nginx', ['-v']).replace('nginx version: ', ''),
    uwsgi: cmdOutput('uwsgi', ['--version']),
    python: cmdOutput('python3', ['--version']),
  };
}

// ---- checks ----

interface Probe {
  status: number;
  body: string;
  headerBytes: number;
  bodyBytes: number;
  head: string;
}

/** One raw HTTP/1.1 GET, to check the answer and count the bytes each stack puts on the wire. */
function probe(url: string, timeoutMs = 2000): Promise<Probe> {
  const u = new URL(url);
  return new Promise((resolvePromise, reject) => {
    const socket = net.connect({ host: u.hostname, port: Number(u.port) });
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => socket.destroy(new Error(`no answer from ${url} within ${timeoutMs} ms`)), timeoutMs);
    socket.on('connect', () => socket.write(`GET ${u.pathname} HTTP/1.1\r\nHost: ${u.host}\r\nUser-Agent: stratum-bench\r\n\r\n`));
    socket.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = buf.subarray(0, end).toString('latin1');
      const len = /\r\ncontent-length:\s*(\d+)/i.exec(head);
      if (!len) {
        clearTimeout(timer);
        socket.destroy();
        return reject(new Error(`${url}: answer without Content-Length:\n${head}`));
      }
      const bodyBytes = Number(len[1]);
      if (buf.length < end + 4 + bodyBytes) return;
      clearTimeout(timer);
      socket.destroy();
      resolvePromise({
        status: Number(head.split(' ')[1]),
        body: buf.subarray(end + 4, end + 4 + bodyBytes).toString('utf8'),
        headerBytes: end + 4,
        bodyBytes,
        head,
      });
    });
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

async function waitServing(url: string): Promise<Probe> {
  let last: Probe | Error | undefined;
  await waitUntil(async () => {
    try {
      last = await probe(url);
      return last.status === 200 && last.body === EXPECTED_BODY;
    } catch (err) {
      last = err as Error;
      return false;
    }
  }, 30_000, () => `${url} did not answer 200 ${EXPECTED_BODY}; last: ${last instanceof Error ? last.message : JSON.stringify(last)}`, 100);
  return last as Probe;
}

// ---- one stack ----

const MiB = 1024;
const mib = (kib: number) => Math.round((kib / MiB) * 10) / 10;

interface RoleRss {
  master: number;
  workers: number[];
}

interface RowResult {
  name: string;
  title: string;
  notes: string;
  ok: boolean;
  error?: string;
  rps?: number;
  p50Ms?: number;
  p99Ms?: number;
  errors?: number;
  wrk?: Omit<WrkResult, 'raw'>;
  warmupRps?: number;
  processes?: Array<{ pid: number; name: string }>;
  idleRssMiB?: number;
  peakRssMiB?: number;
  /** Stratum rows: per role. */
  idleRoleRssMiB?: RoleRss;
  peakRoleRssMiB?: RoleRss;
  responseBytes?: { header: number; body: number };
  responseHead?: string;
  counters?: Record<string, number>;
  /** CPU over the measured run: the stack's processes, and every other process but wrk's. */
  cpu?: { stackCores: number; usPerRequest: number; otherCores: number; roles?: { master: number; workers: number[] } };
  /** Every measured run of the row (more than one when the machine was busy). */
  attempts?: Array<{ rps: number; p99Ms: number; otherCores: number }>;
  /** CPU the rest of the machine used just before the stack started (cores). */
  busyBeforeCores?: number;
  cpuProfiles?: Array<{ file: string; role: string }>;
  /** Seconds from the stack's start to its warm-up: prof-summary.ts --skip. */
  profileSkipS?: number;
  rpsRatio?: number;
  p99Ratio?: number;
}

function roleRss(running: RunningStack, pick: (pid: number) => number): RoleRss | undefined {
  const roles = running.roles?.();
  if (!roles) return undefined;
  return { master: mib(pick(roles.master[0]!)), workers: (roles.workers ?? []).map((p) => mib(pick(p))) };
}

function diffCounters(before: Record<string, number>, after: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(after)) out[k] = v - (before[k] ?? 0);
  return out;
}

function log(msg: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

async function benchStack(def: StackDef): Promise<RowResult> {
  const row: RowResult = { name: def.name, title: def.title, notes: def.notes, ok: false };
  const dir = makeTempDir(def.name);
  let running: RunningStack | undefined;
  const profStart = Date.now();
  try {
    row.busyBeforeCores = await waitIdle(def.name);
    log(`${def.name}: starting`);
    running = await def.start({ dir, cpuProfDir: def.stratum ? CPU_PROF : undefined });
    const answer = await waitServing(running.url);
    row.responseBytes = { header: answer.headerBytes, body: answer.bodyBytes };
    row.responseHead = answer.head;
    await sleep(1000); // let start-up settle before the idle sample
    const pids = processTree(running.roots());
    row.processes = pids.map((pid) => ({ pid, name: processName(pid) }));
    row.idleRssMiB = mib(pids.reduce((sum, pid) => sum + rssKiB(pid), 0));
    row.idleRoleRssMiB = roleRss(running, rssKiB);

    const stack = running;
    const sampler = new RssSampler(() => stack.roots(), 200);
    sampler.start();
    try {
      const wrkOpts = { threads: THREADS, connections: CONNECTIONS, dir };
      row.profileSkipS = Math.floor((Date.now() - profStart) / 1000);
      if (WARMUP > 0) {
        log(`${def.name}: warm-up ${WARMUP}s`);
        row.warmupRps = (await runWrk(running.url, { ...wrkOpts, durationS: WARMUP })).rps;
      }
      // A run during which other processes took CPU is measured again (after waiting for a
      // quiet machine), up to --retry-busy times; the least disturbed run is kept.
      row.attempts = [];
      for (let attempt = 0; attempt <= RETRY_BUSY; attempt++) {
        if (attempt > 0) {
          log(`${def.name}: other processes used ${row.cpu!.otherCores.toFixed(2)} CPU during the run; measuring again`);
          await waitIdle(def.name);
        }
        const before = (await running.counters?.()) ?? {};
        log(`${def.name}: wrk ${DURATION}s at ${running.url}`);
        const notStack = new Set<number>([process.pid, ...(running.auxiliary?.() ?? [])]);
        const cpu0 = cpuMark();
        const t0 = performance.now();
        const result = await runWrk(running.url, { ...wrkOpts, durationS: DURATION, onSpawn: (pid) => notStack.add(pid) });
        const cpu1 = cpuMark();
        const elapsed = (performance.now() - t0) / 1000;
        const after = (await running.counters?.()) ?? {};
        const used = cpuBetween(cpu0, cpu1, new Set(processTree(running.roots())), notStack);
        const roles = running.roles?.();
        const coresOf = (pid: number) => ((cpu1.pids.get(pid) ?? 0) - (cpu0.pids.get(pid) ?? 0)) / elapsed;
        const cpu = {
          stackCores: used.mine / elapsed,
          usPerRequest: (used.mine / Math.max(result.requests, 1)) * 1e6,
          otherCores: used.others / elapsed,
          roles: roles ? { master: coresOf(roles.master[0]!), workers: roles.workers.map(coresOf) } : undefined,
        };
        row.attempts.push({ rps: result.rps, p99Ms: result.latency.p99, otherCores: cpu.otherCores });
        if (row.cpu && row.cpu.otherCores <= cpu.otherCores) continue;
        row.cpu = cpu;
        if (running.counters) row.counters = diffCounters(before, after);
        const { raw: _raw, ...wrk } = result;
        row.wrk = wrk;
        row.rps = result.rps;
        row.p50Ms = result.latency.p50;
        row.p99Ms = result.latency.p99;
        row.errors = errorCount(result);
        if (cpu.otherCores < BUSY_CORES) break;
      }
    } finally {
      sampler.stop();
    }
    row.peakRssMiB = mib(sampler.peakTotalKiB);
    row.peakRoleRssMiB = roleRss(running, (pid) => sampler.peakByPid.get(pid) ?? 0);
    // Still serving the same answer after the load?
    const again = await probe(running.url);
    if (again.status !== 200 || again.body !== EXPECTED_BODY) throw new Error(`after the run GET / answered ${again.status} ${again.body}`);
    row.ok = true;
    log(`${def.name}: ${Math.round(row.rps!)} req/s, p99 ${row.p99Ms} ms, peak RSS ${row.peakRssMiB} MiB`);
  } catch (err) {
    row.error = (err as Error).message;
    log(`${def.name}: FAILED: ${row.error}`);
  } finally {
    const roles = running?.roles?.();
    await running?.stop().catch((err: Error) => log(`${def.name}: stop: ${err.message}`));
    removeTempDir(dir);
    if (CPU_PROF && def.stratum) row.cpuProfiles = listProfiles(profStart, roles);
  }
  return row;
}

/** CPU (in cores) the rest of the machine uses over one second. */
async function foreignLoad(): Promise<number> {
  const a = cpuMark();
  const t0 = performance.now();
  await sleep(1000);
  const b = cpuMark();
  return cpuBetween(a, b, new Set(), new Set([process.pid])).others / ((performance.now() - t0) / 1000);
}

/** Waits (up to --wait-idle seconds) for the machine to be quiet; returns the last load seen. */
async function waitIdle(name: string): Promise<number> {
  const deadline = Date.now() + WAIT_IDLE * 1000;
  let load = await foreignLoad();
  let told = false;
  while (load >= BUSY_CORES && Date.now() < deadline) {
    if (!told) log(`${name}: other processes use ${load.toFixed(2)} CPU; waiting up to ${WAIT_IDLE} s for a quiet machine`);
    told = true;
    load = await foreignLoad();
  }
  if (load >= BUSY_CORES && WAIT_IDLE > 0) log(`${name}: machine still busy (${load.toFixed(2)} CPU used by others); measuring anyway`);
  return load;
}

function listProfiles(since: number, roles: Record<string, number[]> | undefined): Array<{ file: string; role: string }> {
  const out: Array<{ file: string; role: string }> = [];
  for (const f of readdirSync(CPU_PROF!)) {
    if (!f.endsWith('.cpuprofile')) continue;
    const path = resolve(CPU_PROF!, f);
    if (statSync(path).mtimeMs < since) continue;
    const pid = Number(f.split('.')[3]);
    const role = roles?.master?.includes(pid) ? 'master' : roles?.workers?.includes(pid) ? 'worker' : 'process';
    out.push({ file: path, role });
  }
  return out;
}

// ---- output ----

function fmt(n: number | undefined, digits = 0): string {
  if (n === undefined || Number.isNaN(n)) return '-';
  return n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function table(rows: RowResult[]): string {
  const header = ['stack', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'idle RSS', 'peak RSS', 'procs', 'CPU', 'µs/req', 'others', 'resp B', 'req/s ×def', 'p99 ×def'];
  const lines = rows.map((r) => r.ok
    ? [
      r.name,
      fmt(r.rps),
      fmt(r.p50Ms, 2),
      fmt(r.p99Ms, 2),
      fmt(r.errors),
      `${fmt(r.idleRssMiB, 1)} MiB`,
      `${fmt(r.peakRssMiB, 1)} MiB`,
      fmt(r.processes?.length),
      fmt(r.cpu?.stackCores, 2),
      fmt(r.cpu?.usPerRequest, 1),
      fmt(r.cpu?.otherCores, 2),
      fmt((r.responseBytes?.header ?? 0) + (r.responseBytes?.body ?? 0)),
      r.rpsRatio === undefined ? '-' : `${r.rpsRatio.toFixed(2)}×`,
      r.p99Ratio === undefined ? '-' : `${r.p99Ratio.toFixed(2)}×`,
    ]
    : [r.name, `FAILED: ${(r.error ?? '').split('\n')[0]!.slice(0, 100)}`]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.filter((l) => l.length > 2).map((l) => (l[i] ?? '').length)));
  const render = (cells: string[]) => cells.length === 2 && cells[1]!.startsWith('FAILED')
    ? `${cells[0]!.padEnd(widths[0]!)}  ${cells[1]}`
    : cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [render(header), widths.map((w) => '-'.repeat(w)).join('  '), ...lines.map(render)].join('\n');
}

interface Target {
  what: string;
  goal: string;
  value: string;
  pass: boolean | null;
}

function targets(rows: RowResult[]): Target[] {
  const by = (name: string) => rows.find((r) => r.name === name && r.ok);
  const def = by('stratum-default');
  const out: Target[] = [];
  const ratio = (what: string, a: RowResult | undefined, b: RowResult | undefined, min: number) => {
    if (!a || !b) return out.push({ what, goal: `≥ ${min}×`, value: 'not measured', pass: null });
    const r = a.rps! / b.rps!;
    out.push({ what, goal: `≥ ${min}×`, value: `${r.toFixed(2)}× (${fmt(a.rps)} / ${fmt(b.rps)})`, pass: r >= min });
  };
  // Issue 12's targets: one hop must beat the stack it replaces and nginx → Node.
  ratio('Stratum default vs nginx → uWSGI → Flask, req/s', def, by('nginx-uwsgi-flask'), 3.0);
  ratio('Stratum default vs nginx → Node keep-alive, req/s', def, by('nginx-node'), 1.2);
  ratio('Stratum default vs Fastify cluster alone, req/s', def, by('fastify'), 0.6);
  ratio('Stratum tracing 100% vs nginx → uWSGI → Flask, req/s', by('stratum-tracing'), by('nginx-uwsgi-flask'), 1.5);
  ratio('Stratum master topology vs nginx → uWSGI → Flask, req/s', by('stratum-master'), by('nginx-uwsgi-flask'), 1.2);
  const nginxNode = by('nginx-node');
  if (def && nginxNode) {
    out.push({ what: 'Stratum default p99 vs nginx → Node p99', goal: '≤', value: `${fmt(def.p99Ms, 2)} ms vs ${fmt(nginxNode.p99Ms, 2)} ms`, pass: def.p99Ms! <= nginxNode.p99Ms! });
  } else out.push({ what: 'Stratum default p99 vs nginx → Node p99', goal: '≤', value: 'not measured', pass: null });
  const tracing10 = by('stratum-tracing-10');
  if (def && tracing10) {
    const cost = (1 - tracing10.rps! / def.rps!) * 100;
    out.push({ what: 'tracing at sampleRatio 0.1 cost vs tracing off (default), req/s', goal: '≤ 10%', value: `${cost.toFixed(1)}% (${fmt(tracing10.rps)} / ${fmt(def.rps)})`, pass: cost <= 10 });
  } else out.push({ what: 'tracing at sampleRatio 0.1 cost vs tracing off, req/s', goal: '≤ 10%', value: 'not measured', pass: null });
  const off = by('stratum-all-off');
  const noLog = by('stratum-no-access-log');
  const metricsOnly = by('stratum-metrics-only');
  if (metricsOnly && off) {
    const cost = (1 - metricsOnly.rps! / off.rps!) * 100;
    out.push({ what: 'metrics-only cost vs all instrumentation off, req/s', goal: '≤ 10%', value: `${cost.toFixed(1)}% (${fmt(metricsOnly.rps)} / ${fmt(off.rps)})`, pass: cost <= 10 });
  } else out.push({ what: 'metrics-only cost vs all instrumentation off, req/s', goal: '≤ 10%', value: 'not measured', pass: null });
  const versus = (a: RowResult, b: RowResult) => {
    const d = (a.rps! / b.rps! - 1) * 100;
    const c = a.cpu && b.cpu ? `, CPU per request ${fmt(a.cpu.usPerRequest, 1)} vs ${fmt(b.cpu.usPerRequest, 1)} µs` : '';
    return `req/s ${d >= 0 ? '+' : ''}${d.toFixed(1)}%${c}`;
  };
  if (noLog && metricsOnly) out.push({ what: 'Server-Timing on (access log off) vs metrics only', goal: '(info)', value: versus(noLog, metricsOnly), pass: null });
  if (def && noLog) out.push({ what: 'access log on (the default) vs off', goal: '(info)', value: versus(def, noLog), pass: null });
  if (def && off) out.push({ what: 'default instrumentation (access log + Server-Timing) vs all-off', goal: '(info)', value: versus(def, off), pass: null });
  const idle = def?.idleRoleRssMiB;
  if (idle) {
    out.push({ what: 'idle RSS, Stratum master', goal: '≤ 80 MiB', value: `${fmt(idle.master, 1)} MiB`, pass: idle.master <= 80 });
    const w = Math.max(...idle.workers);
    out.push({ what: 'idle RSS, Stratum worker (largest)', goal: '≤ 60 MiB', value: `${fmt(w, 1)} MiB (${idle.workers.map((x) => fmt(x, 1)).join(', ')})`, pass: w <= 60 });
  }
  return out;
}

function renderTargets(list: Target[]): string {
  return list.map((t) => `  ${t.pass === null ? ' -  ' : t.pass ? 'PASS' : 'FAIL'}  ${t.what}: ${t.value}  [target ${t.goal}]`).join('\n');
}

// ---- soak ----

interface SoakSample {
  t: number;
  master: number;
  workers: Record<string, number>;
  total: number;
}

async function soak(machine: ReturnType<typeof describeMachine>) {
  const def = STACKS.find((s) => s.name === 'stratum-default')!;
  const dir = makeTempDir('soak');
  let running: RunningStack | undefined;
  try {
    log(`soak: starting ${def.name}`);
    running = await def.start({ dir, cpuProfDir: CPU_PROF });
    await waitServing(running.url);
    await sleep(1000);
    const stack = running;
    const sampleOnce = (t: number): SoakSample => {
      const roles = stack.roles!();
      const master = mib(rssKiB(roles.master[0]!));
      const workers: Record<string, number> = {};
      for (const pid of roles.workers) workers[pid] = mib(rssKiB(pid));
      const total = Math.round((master + Object.values(workers).reduce((a, b) => a + b, 0)) * 10) / 10;
      return { t, master, workers, total };
    };
    const idle = sampleOnce(0);
    if (WARMUP > 0) {
      log(`soak: warm-up ${WARMUP}s`);
      await runWrk(running.url, { threads: THREADS, connections: CONNECTIONS, dir, durationS: WARMUP });
    }
    log(`soak: wrk ${SOAK_SECONDS}s, RSS every 10 s`);
    const started = Date.now();
    const samples: SoakSample[] = [sampleOnce(0)];
    const timer = setInterval(() => {
      const s = sampleOnce(Math.round((Date.now() - started) / 1000));
      samples.push(s);
      log(`soak: t=${s.t}s master ${s.master} MiB, workers ${Object.values(s.workers).join(' / ')} MiB`);
    }, 10_000);
    let result: WrkResult;
    try {
      result = await runWrk(running.url, { threads: THREADS, connections: CONNECTIONS, dir, durationS: SOAK_SECONDS });
    } finally {
      clearInterval(timer);
    }
    samples.push(sampleOnce(Math.round((Date.now() - started) / 1000)));
    const series = (pick: (s: SoakSample) => number | undefined) => {
      const v = samples.map(pick).filter((x): x is number => x !== undefined);
      const start = v[0]!;
      const end = v[v.length - 1]!;
      const max = Math.max(...v);
      // A sawtooth (heap growing until a major GC) is not a leak: compare the means of the
      // first and last thirds of the samples too.
      const third = Math.max(1, Math.floor(v.length / 3));
      const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
      const trendPct = Math.round(((mean(v.slice(-third)) - mean(v.slice(0, third))) / mean(v.slice(0, third))) * 1000) / 10;
      return { start, end, max, growthPct: Math.round(((max - start) / start) * 1000) / 10, trendPct, within10pct: max <= start * 1.1 && end <= start * 1.1 };
    };
    const workerPids = Object.keys(samples[0]!.workers);
    const respawned = samples.some((s) => Object.keys(s.workers).join() !== workerPids.join());
    const summary = {
      master: series((s) => s.master),
      workers: Object.fromEntries(workerPids.map((pid) => [pid, series((s) => s.workers[pid])])),
      total: series((s) => s.total),
    };
    const report = {
      machine,
      stack: def.name,
      seconds: SOAK_SECONDS,
      idle,
      rps: result.rps,
      p50Ms: result.latency.p50,
      p99Ms: result.latency.p99,
      errors: errorCount(result),
      requests: result.requests,
      respawned,
      summary,
      withinTenPercent: summary.master.within10pct && Object.values(summary.workers).every((w) => w.within10pct),
      samples,
    };
    const line = (name: string, s: ReturnType<typeof series>) =>
      `  ${name.padEnd(14)} start ${fmt(s.start, 1).padStart(6)} MiB  end ${fmt(s.end, 1).padStart(6)} MiB  max ${fmt(s.max, 1).padStart(6)} MiB  max/start ${fmt(s.growthPct, 1).padStart(5)}%  last/first third ${s.trendPct >= 0 ? '+' : ''}${fmt(s.trendPct, 1)}%  ${s.within10pct ? 'within 10%' : 'GREW > 10%'}`;
    console.log(`\nStratum soak: ${def.name}, ${SOAK_SECONDS} s of wrk -t${THREADS} -c${CONNECTIONS}, RSS every 10 s after a ${WARMUP} s warm-up`);
    console.log(`${machine.date} · ${machine.nproc} CPUs · ${machine.cpuModel} · node ${machine.node}`);
    console.log(`  ${fmt(result.rps)} req/s, p50 ${fmt(result.latency.p50, 2)} ms, p99 ${fmt(result.latency.p99, 2)} ms, ${fmt(result.requests)} requests, ${errorCount(result)} errors${respawned ? ', WORKERS RESPAWNED' : ''}`);
    console.log(`  idle before load: master ${idle.master} MiB, workers ${Object.values(idle.workers).join(' / ')} MiB`);
    console.log(line('master', summary.master));
    for (const [pid, s] of Object.entries(summary.workers)) console.log(line(`worker ${pid}`, s));
    console.log(line('total', summary.total));
    console.log(`  ${report.withinTenPercent ? 'RSS stayed within 10% of its start' : 'RSS did NOT stay within 10% of its start'}`);
    if (opts.json) {
      writeFileSync(opts.json, `${JSON.stringify(report, null, 2)}\n`);
      console.log(`\nwrote ${opts.json}`);
    }
  } finally {
    const roles = running?.roles?.();
    const since = Date.now() - (SOAK_SECONDS + 120) * 1000;
    await running?.stop();
    removeTempDir(dir);
    if (CPU_PROF) for (const p of listProfiles(since, roles)) console.log(`  cpu profile (${p.role}): ${p.file}`);
  }
}

// ---- main ----

async function main(): Promise<void> {
  if (CPU_PROF) mkdirSync(CPU_PROF, { recursive: true });
  const machine = describeMachine();
  if (opts.soak) {
    await soak(machine);
    return;
  }
  if (CPU_PROF && !selected.some((s) => s.stratum)) log('--cpu-prof profiles only the Stratum rows, and none is selected');
  const rows: RowResult[] = [];
  for (const def of selected) rows.push(await benchStack(def));
  const base = rows.find((r) => r.name === 'stratum-default' && r.ok);
  for (const r of rows) {
    if (!base || !r.ok) continue;
    r.rpsRatio = r.rps! / base.rps!;
    r.p99Ratio = r.p99Ms! / base.p99Ms!;
  }
  const goals = targets(rows);

  const out: string[] = [];
  out.push('');
  out.push(`Stratum benchmark — ${machine.date}`);
  out.push(`machine: ${machine.nproc} CPUs (nproc) · ${machine.cpuModel} · ${machine.memoryGiB} GiB · ${machine.kernel}`);
  out.push(`software: node ${machine.node} · nginx ${machine.nginx} · uWSGI ${machine.uwsgi} · ${machine.python} · ${machine.wrk}`);
  out.push(`load: wrk -t${THREADS} -c${CONNECTIONS} -d${DURATION}s --latency after a ${WARMUP} s warm-up, GET / → ${EXPECTED_BODY}; ${APP_PROCESSES} app processes everywhere; wrk shares the machine`);
  out.push('RSS: summed VmRSS of every serving process (peak sampled every 200 ms over warm-up and run; idle 1 s after start)');
  out.push('');
  out.push(table(rows));
  out.push('');
  out.push('×def = ratio to "stratum-default" (req/s: higher is better; p99: lower is better). resp B = bytes of one response, head + body.');
  out.push('CPU = cores the stack\'s processes used during the run; µs/req = their CPU time per request; others = cores used meanwhile');
  out.push('by every other process except wrk (should be ~0: anything more means a busy machine and lower, noisier numbers).');
  for (const r of rows) {
    if (!r.ok) continue;
    const extra: string[] = [];
    if (r.cpu?.roles) extra.push(`CPU during the run: master ${r.cpu.roles.master.toFixed(2)} cores, workers ${r.cpu.roles.workers.map((w) => w.toFixed(2)).join(' / ')} cores (1 core = one process's ceiling)`);
    if (r.idleRoleRssMiB) extra.push(`idle master ${fmt(r.idleRoleRssMiB.master, 1)} MiB, workers ${r.idleRoleRssMiB.workers.map((w) => fmt(w, 1)).join(' / ')} MiB; peak master ${fmt(r.peakRoleRssMiB?.master, 1)} MiB, workers ${r.peakRoleRssMiB?.workers.map((w) => fmt(w, 1)).join(' / ')} MiB`);
    if ((r.attempts?.length ?? 0) > 1) {
      extra.push(`measured ${r.attempts!.length} times, the machine being busy (${r.attempts!.map((a) => `${fmt(a.rps)} req/s with others at ${a.otherCores.toFixed(2)} CPU`).join('; ')}); kept the quietest`);
    }
    const c = r.counters;
    if (c?.['layer.queue.count']) {
      const mean = (layer: string) => `${layer} ${fmt(((c[`layer.${layer}.sum`] ?? 0) / (c[`layer.${layer}.count`] || 1)) * 1000, 3)} ms`;
      extra.push(`Stratum's layers, mean per request over the run (stratum_layer_duration_seconds): ${['proxy', 'queue', 'worker', 'app'].map(mean).join(' · ')}`);
    }
    if (c && c['otlp.requests'] !== undefined) {
      const spans = c['otlp.spans'] ?? 0;
      extra.push(`OTLP sink during the run: ${fmt(spans)} spans in ${fmt(c['otlp.requests'])} exports (${(spans / (r.wrk?.requests || 1)).toFixed(2)} spans per request served)`);
    }
    out.push(`  ${r.name}: ${r.notes}${extra.length ? `\n    ${extra.join('\n    ')}` : ''}`);
  }
  for (const r of rows) if (!r.ok) out.push(`  ${r.name}: FAILED\n${r.error}`);
  out.push('');
  out.push('targets:');
  out.push(renderTargets(goals));
  for (const r of rows) {
    if (!r.cpuProfiles?.length) continue;
    out.push('');
    out.push(`cpu profiles of ${r.name}:`);
    for (const p of r.cpuProfiles) out.push(`  ${p.role}: ${p.file}`);
    out.push(`summarise from the warm-up on: node bench/prof-summary.ts --skip ${r.profileSkipS ?? 0} ${r.cpuProfiles.map((p) => p.file).join(' ')}`);
  }
  console.log(out.join('\n'));
  if (opts.json) {
    const doc = {
      machine,
      settings: { duration: DURATION, warmup: WARMUP, connections: CONNECTIONS, threads: THREADS, appProcesses: APP_PROCESSES, body: EXPECTED_BODY },
      rows,
      targets: goals,
    };
    writeFileSync(opts.json, `${JSON.stringify(doc, null, 2)}\n`);
    console.log(`\nwrote ${opts.json}`);
  }
}

await main();
