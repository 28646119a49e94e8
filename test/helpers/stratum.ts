// Starts the real service (`node bin/stratum.js …`) and waits for its ready log line.
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describeOutput, isRunning, killLeftovers, spawnTracked } from './processes.ts';

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const STRATUM_BIN = fileURLToPath(new URL('../../bin/stratum.js', import.meta.url));

export interface StartOptions {
  /** How long to wait for `"msg":"stratum ready"`; 20 s by default. */
  readyTimeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

export interface StratumProcess {
  /** "http://127.0.0.1:PORT"; undefined in pool mode. */
  front: string | undefined;
  admin: string;
  /** "unix:/path" or "tcp:HOST:PORT"; undefined in proxy mode. */
  pool: string | undefined;
  workers: number[];
  proc: ChildProcess;
  stdoutLines: string[];
  stderr(): string;
  /** The ready line itself, parsed. */
  ready: Record<string, unknown>;
  /** Every stdout line that parses as JSON (pino), in order. */
  logs(): Record<string, unknown>[];
  /** SIGTERM, SIGKILL after 10 s; the exit code (null when it had to be killed). */
  stop(): Promise<number | null>;
}

const READY_MSG = 'stratum ready';

function parseLine(line: string): Record<string, unknown> | undefined {
  if (!line.startsWith('{')) return undefined;
  try {
    const value: unknown = JSON.parse(line);
    return value && typeof value === 'object' ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

export async function startStratum(args: string[], opts: StartOptions = {}): Promise<StratumProcess> {
  const t = spawnTracked(process.execPath, [STRATUM_BIN, ...args], {
    cwd: opts.cwd ?? REPO_ROOT,
    env: { ...process.env, ...opts.env },
  });
  const timeoutMs = opts.readyTimeoutMs ?? 20_000;
  const started = Date.now();
  const command = `node bin/stratum.js ${args.join(' ')}`;

  // Poll the captured lines rather than hooking the stream: the line may arrive in any chunk.
  let ready: Record<string, unknown> | undefined;
  let scanned = 0;
  while (!ready) {
    for (; scanned < t.stdoutLines.length && !ready; scanned++) {
      const entry = parseLine(t.stdoutLines[scanned]!);
      if (entry?.msg === READY_MSG) ready = entry;
    }
    if (ready) break;
    if (!isRunning(t)) {
      await t.exited;
      throw new Error(`${command} exited before it was ready\n${describeOutput(t)}`);
    }
    if (Date.now() - started > timeoutMs) {
      await t.stop('SIGKILL', 0);
      throw new Error(`${command} printed no "${READY_MSG}" line within ${timeoutMs} ms\n${describeOutput(t)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }

  const str = (v: unknown) => (typeof v === 'string' ? v : undefined);
  const admin = str(ready.admin);
  if (!admin) {
    await t.stop('SIGKILL', 0);
    throw new Error(`${command}: ready line has no "admin" field: ${JSON.stringify(ready)}`);
  }
  return {
    front: str(ready.front),
    admin,
    pool: str(ready.pool),
    workers: Array.isArray(ready.workers) ? ready.workers.filter((w): w is number => typeof w === 'number') : [],
    proc: t.proc,
    stdoutLines: t.stdoutLines,
    stderr: t.stderr,
    ready,
    logs: () => t.stdoutLines.map(parseLine).filter((e): e is Record<string, unknown> => e !== undefined),
    stop: () => t.stop('SIGTERM', 10_000),
  };
}

/** Kills every stratum (and peer) process a test left running; call from afterAll. */
export const stopAllStratum = killLeftovers;
