// Child processes of the benchmark (nginx, uWSGI, node servers, stratum, wrk), their temp dirs,
// and resident memory read from /proc. Every child is the leader of its own process group
// (detached), so the whole tree (nginx's worker, uWSGI's and cluster's workers) is reached through
// the group id; every group still alive is killed, and every temp dir removed, when the benchmark
// exits — normally, on an error, or on Ctrl-C / SIGTERM / SIGHUP.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

export interface Child {
  name: string;
  proc: ChildProcess;
  pid: number;
  stdoutPath: string;
  stderrPath: string;
  exited: Promise<number | null>;
  alive(): boolean;
  stdout(): string;
  stderr(): string;
  /** `signal` to the leader (or to the group with `group`), SIGKILL to the group after `graceMs`. */
  stop(signal?: NodeJS.Signals, graceMs?: number, group?: boolean): Promise<number | null>;
}

const children = new Set<Child>();
const tempDirs = new Set<string>();

export function makeTempDir(tag: string): string {
  const dir = mkdtempSync(join(tmpdir(), `stratum-bench-${tag}-`));
  tempDirs.add(dir);
  return dir;
}

export function removeTempDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  tempDirs.delete(dir);
}

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // ESRCH: nothing left in the group
  }
}

function readTail(path: string, max = 4000): string {
  try {
    const text = readFileSync(path, 'utf8');
    return text.length > max ? `…${text.slice(-max)}` : text;
  } catch {
    return '';
  }
}

/** Starts `command` detached, stdout and stderr to files in `dir`. */
export function startChild(name: string, command: string, args: string[], opts: { dir: string; env?: NodeJS.ProcessEnv; cwd?: string }): Child {
  const stdoutPath = join(opts.dir, `${name}.stdout`);
  const stderrPath = join(opts.dir, `${name}.stderr`);
  const out = openSync(stdoutPath, 'w');
  const err = openSync(stderrPath, 'w');
  let proc: ChildProcess;
  try {
    proc = spawn(command, args, { stdio: ['ignore', out, err], detached: true, env: opts.env ?? process.env, cwd: opts.cwd });
  } finally {
    closeSync(out);
    closeSync(err);
  }
  let exitCode: number | null | undefined;
  const exited = new Promise<number | null>((resolve) => {
    proc.once('error', (e) => {
      exitCode = null;
      resolve(null);
      console.error(`spawn ${command}: ${e.message}`);
    });
    proc.once('exit', (code) => {
      exitCode = code;
      resolve(code);
    });
  });
  const child: Child = {
    name,
    proc,
    pid: proc.pid ?? -1,
    stdoutPath,
    stderrPath,
    exited,
    alive: () => exitCode === undefined,
    stdout: () => readTail(stdoutPath),
    stderr: () => readTail(stderrPath),
    async stop(signal = 'SIGTERM', graceMs = 5000, group = false) {
      if (child.pid > 0 && exitCode === undefined) {
        if (group || signal === 'SIGKILL') killGroup(child.pid, signal);
        else proc.kill(signal);
        const timer = setTimeout(() => killGroup(child.pid, 'SIGKILL'), graceMs);
        await exited;
        clearTimeout(timer);
      }
      // Whatever the leader left behind in its group (an orphaned worker) goes too.
      if (child.pid > 0) killGroup(child.pid, 'SIGKILL');
      children.delete(child);
      return exitCode ?? null;
    },
  };
  if (child.pid > 0) children.add(child);
  exited.then(() => {
    if (child.pid > 0) killGroup(child.pid, 'SIGKILL');
  }).catch(() => {});
  return child;
}

export function describeChild(child: Child): string {
  return `--- ${child.name} stdout ---\n${child.stdout()}\n--- ${child.name} stderr ---\n${child.stderr()}`;
}

function cleanupSync(): void {
  for (const child of children) killGroup(child.pid, 'SIGKILL');
  children.clear();
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}

/** Kill every child and remove every temp dir on exit, error, Ctrl-C, SIGTERM, SIGHUP. */
export function installCleanup(): void {
  process.once('exit', cleanupSync);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      process.stderr.write(`\n${signal}: stopping every benchmark process\n`);
      cleanupSync();
      process.exit(128 + (signal === 'SIGINT' ? 2 : signal === 'SIGTERM' ? 15 : 1));
    });
  }
  process.on('uncaughtException', (err) => {
    process.stderr.write(`${err.stack ?? err}\n`);
    cleanupSync();
    process.exit(1);
  });
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export async function waitUntil(check: () => boolean | Promise<boolean>, timeoutMs: number, describe: () => string, intervalMs = 50): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(describe());
    await sleep(intervalMs);
  }
}

/** Waits for a line of `child`'s stdout that matches `re`; fails when the child exits first. */
export async function waitForLine(child: Child, re: RegExp, timeoutMs = 30_000): Promise<string> {
  let found: string | undefined;
  await waitUntil(() => {
    if (existsSync(child.stdoutPath)) {
      // Only the start of the file is read: the ready line comes before any access log.
      const head = readFileSync(child.stdoutPath, 'utf8').slice(0, 1 << 20);
      found = head.split('\n').find((line) => re.test(line));
    }
    if (found === undefined && !child.alive()) throw new Error(`${child.name} exited before it was ready\n${describeChild(child)}`);
    return found !== undefined;
  }, timeoutMs, () => `${child.name} printed no line matching ${re} within ${timeoutMs} ms\n${describeChild(child)}`);
  return found!;
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(port));
    });
  });
}

export function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

// ---- /proc ----

/**
 * Every process's /proc/<pid>/stat fields after "pid (comm) " — state ppid pgrp session tty tpgid
 * flags minflt cminflt majflt cmajflt utime stime … (comm may hold spaces and parentheses, so the
 * split starts after the last ')').
 */
function statFields(): Map<number, string[]> {
  const map = new Map<number, string[]>();
  for (const entry of readdirSync('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid)) continue;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      map.set(pid, stat.slice(stat.lastIndexOf(')') + 2).split(' '));
    } catch {
      // exited meanwhile
    }
  }
  return map;
}

/** pid → parent pid of every process on the machine. */
function parentMap(): Map<number, number> {
  const map = new Map<number, number>();
  for (const [pid, fields] of statFields()) map.set(pid, Number(fields[1]));
  return map;
}

/** `roots` and all their descendants that are alive now. */
export function processTree(roots: number[]): number[] {
  const parents = parentMap();
  const kids = new Map<number, number[]>();
  for (const [pid, ppid] of parents) {
    const list = kids.get(ppid);
    if (list) list.push(pid);
    else kids.set(ppid, [pid]);
  }
  const out: number[] = [];
  const stack = roots.filter((p) => parents.has(p));
  while (stack.length > 0) {
    const pid = stack.pop()!;
    out.push(pid);
    stack.push(...(kids.get(pid) ?? []));
  }
  return out;
}

export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const [p, ppid] of parentMap()) if (ppid === pid) out.push(p);
  return out.sort((a, b) => a - b);
}

/** VmRSS of `pid` in KiB; 0 when it is gone. */
export function rssKiB(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

export function processName(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '?';
  }
}

/**
 * Samples the summed VmRSS of the process trees under `roots()` every `intervalMs`; keeps the
 * peak of the sum and the peak of each pid.
 */
export class RssSampler {
  peakTotalKiB = 0;
  readonly peakByPid = new Map<number, number>();
  samples = 0;
  #timer: NodeJS.Timeout | null = null;
  #roots: () => number[];
  #intervalMs: number;

  constructor(roots: () => number[], intervalMs = 200) {
    this.#roots = roots;
    this.#intervalMs = intervalMs;
  }

  sample(): number {
    let total = 0;
    for (const pid of processTree(this.#roots())) {
      const kib = rssKiB(pid);
      total += kib;
      if (kib > (this.peakByPid.get(pid) ?? 0)) this.peakByPid.set(pid, kib);
    }
    if (total > this.peakTotalKiB) this.peakTotalKiB = total;
    this.samples++;
    return total;
  }

  start(): void {
    this.sample();
    this.#timer = setInterval(() => this.sample(), this.#intervalMs);
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    this.sample();
  }
}

// ---- CPU time ----

/** Clock ticks per second of /proc/<pid>/stat's utime and stime (USER_HZ: 100 on Linux). */
const CLK_TCK = 100;

/** pid → utime + stime in seconds, for every process on the machine. */
export function cpuSnapshot(): Map<number, number> {
  const map = new Map<number, number>();
  for (const [pid, fields] of statFields()) map.set(pid, (Number(fields[11]) + Number(fields[12])) / CLK_TCK);
  return map;
}

/** Machine-wide busy CPU seconds (all CPUs: user, nice, system, irq, softirq, steal) from /proc/stat. */
export function machineBusySeconds(): number {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
  const [user, nice, system, _idle, _iowait, irq, softirq, steal] = line.trim().split(/\s+/).slice(1).map(Number);
  return (user! + nice! + system! + irq! + softirq! + (steal ?? 0)) / CLK_TCK;
}

/** CPU seconds of this process plus its children that have exited and been reaped (wrk). */
export function selfAndReapedSeconds(): number {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / CLK_TCK;
}

export interface CpuMark {
  pids: Map<number, number>;
  machine: number;
  self: number;
}

export function cpuMark(): CpuMark {
  return { machine: machineBusySeconds(), self: selfAndReapedSeconds(), pids: cpuSnapshot() };
}

/**
 * CPU seconds between two marks: `mine` = spent by `pids` (the stack); `others` = the whole
 * machine's busy time less the stack's and less this process's own and its reaped children's
 * (wrk: it exits, and is reaped, before the second mark), so short-lived processes of anyone
 * else count too. `ignore` (helpers such as the OTLP sink) count in neither.
 */
export function cpuBetween(before: CpuMark, after: CpuMark, pids: Set<number>, ignore: Set<number>): { mine: number; others: number } {
  let mine = 0;
  let ignored = 0;
  for (const [pid, t1] of after.pids) {
    const d = t1 - (before.pids.get(pid) ?? 0);
    if (ignore.has(pid)) ignored += d;
    else if (pids.has(pid)) mine += d;
  }
  const others = after.machine - before.machine - mine - ignored - (after.self - before.self);
  return { mine, others: Math.max(0, others) };
}

/** The options of a benchmark run apart from the main harness (bench/tls.ts, bench/compression.ts). */
export function standaloneOptions(): { duration: number; warmup: number; connections: number; json?: string } {
  const { values } = parseArgs({
    options: {
      duration: { type: 'string', default: '5' },
      warmup: { type: 'string', default: '2' },
      connections: { type: 'string', default: '50' },
      json: { type: 'string' },
    },
  });
  return {
    duration: Number(values.duration),
    warmup: Number(values.warmup),
    connections: Number(values.connections),
    json: values.json,
  };
}
