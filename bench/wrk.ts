// wrk as a child process and its report parsed: `wrk -t1 -c50 -dNs --latency URL`.
import { readFileSync } from 'node:fs';
import { startChild } from './procs.ts';

export interface WrkOptions {
  threads: number;
  connections: number;
  durationS: number;
  /** Temp dir for wrk's output files. */
  dir: string;
  /** Extra time allowed past the duration before wrk is killed. */
  slackMs?: number;
  /** Told wrk's pid as soon as it runs (its CPU is not the stack's). */
  onSpawn?: (pid: number) => void;
}

export interface WrkResult {
  command: string;
  requests: number;
  seconds: number;
  rps: number;
  /** Milliseconds. */
  latency: { avg: number; stdev: number; max: number; p50: number; p75: number; p90: number; p99: number };
  readBytes: number;
  errors: { connect: number; read: number; write: number; timeout: number; non2xx3xx: number };
  raw: string;
}

const TIME_UNITS: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const SIZE_UNITS: Record<string, number> = { B: 1, KB: 1024, MB: 1024 ** 2, GB: 1024 ** 3, TB: 1024 ** 4 };

function toMs(text: string): number {
  const m = /^([\d.]+)(us|ms|s|m|h)$/.exec(text.trim());
  if (!m) throw new Error(`wrk: cannot read the time "${text}"`);
  return Number(m[1]) * TIME_UNITS[m[2]!]!;
}

function toBytes(text: string): number {
  const m = /^([\d.]+)(B|KB|MB|GB|TB)$/.exec(text.trim());
  return m ? Number(m[1]) * SIZE_UNITS[m[2]!]! : Number.NaN;
}

export function parseWrk(raw: string, command = 'wrk'): WrkResult {
  const need = (re: RegExp, what: string): RegExpExecArray => {
    const m = re.exec(raw);
    if (!m) throw new Error(`wrk output has no ${what}:\n${raw}`);
    return m;
  };
  const lat = need(/^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)/m, 'Latency line');
  const pct = (p: number) => toMs(need(new RegExp(`^\\s*${p}%\\s+(\\S+)`, 'm'), `${p}% line (was --latency given?)`)[1]!);
  const total = need(/^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h), (\S+) read/m, 'summary line');
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(raw);
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(raw);
  return {
    command,
    requests: Number(total[1]),
    seconds: Number(total[2]) * TIME_UNITS[total[3]!]! / 1000,
    rps: Number(need(/^Requests\/sec:\s+([\d.]+)/m, 'Requests/sec line')[1]),
    latency: {
      avg: toMs(lat[1]!),
      stdev: toMs(lat[2]!),
      max: toMs(lat[3]!),
      p50: pct(50),
      p75: pct(75),
      p90: pct(90),
      p99: pct(99),
    },
    readBytes: toBytes(total[4]!),
    errors: {
      connect: Number(sock?.[1] ?? 0),
      read: Number(sock?.[2] ?? 0),
      write: Number(sock?.[3] ?? 0),
      timeout: Number(sock?.[4] ?? 0),
      non2xx3xx: Number(non2xx?.[1] ?? 0),
    },
    raw,
  };
}

export function errorCount(r: WrkResult): number {
  const e = r.errors;
  return e.connect + e.read + e.write + e.timeout + e.non2xx3xx;
}

let runs = 0;

/** Runs wrk against `url` to the end and returns its parsed report. */
export async function runWrk(url: string, opts: WrkOptions): Promise<WrkResult> {
  const args = [`-t${opts.threads}`, `-c${opts.connections}`, `-d${opts.durationS}s`, '--latency', url];
  const child = startChild(`wrk-${++runs}`, 'wrk', args, { dir: opts.dir });
  opts.onSpawn?.(child.pid);
  const limit = opts.durationS * 1000 + (opts.slackMs ?? 15_000);
  const timer = setTimeout(() => void child.stop('SIGKILL'), limit);
  const code = await child.exited;
  clearTimeout(timer);
  await child.stop();
  const raw = readFileSync(child.stdoutPath, 'utf8');
  if (code !== 0) throw new Error(`wrk ${args.join(' ')} exited with ${code}\n${raw}\n${child.stderr()}`);
  return parseWrk(raw, `wrk ${args.join(' ')}`);
}
