// The package's programmatic API (`import { start, defineConfig } from 'stratum'`): the config
// typings, a defineConfig() helper in the style of Vite's, and start(), which runs a Stratum (front
// proxy + worker pool + your app, or a pool or proxy alone) as a child process and hands back its
// addresses and a stop(). A child process, not this one: the master forks its workers with the
// cluster module and installs its own signal handlers, which an embedding program must not share.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { resolveRelativePaths } from './config/load.ts';
import type { StratumConfigInput } from './config/schema.ts';

export type { Address, LogLevel, Route, StratumConfig, StratumConfigInput, Target } from './config/schema.ts';
export {
  ConfigInvalid, errorEntry, errorTable, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, StratumError,
  type ErrorEntry,
} from './errors.ts';

/**
 * Types a configuration as it is written (the YAML's fields, with their defaults optional) and
 * returns it unchanged: `start(defineConfig({ app: { module: './app.ts' } }))`. docs/config.md
 * lists every field.
 */
export function defineConfig(config: StratumConfigInput): StratumConfigInput {
  return config;
}

export type StartOptions = {
  /** serve (the default): proxy + pool + app; pool: the worker pool alone; proxy: the front alone. */
  mode?: 'serve' | 'pool' | 'proxy';
  /** Relative paths in the config (app.module, static: routes) resolve against it; process.cwd() by default. */
  cwd?: string;
  /** Extra environment for the child (STRATUM_* variables override the config, as on the command line). */
  env?: NodeJS.ProcessEnv;
  /** Each log line the child prints (pino JSON on stdout); dropped when absent. */
  onLog?: (line: string) => void;
  /** How long to wait for the "stratum ready" line; 30 s by default. */
  readyTimeoutMs?: number;
};

export type RunningStratum = {
  /** "http://HOST:PORT" of the front proxy; undefined in pool mode. */
  front: string | undefined;
  admin: string;
  /** "unix:/path" or "tcp:HOST:PORT" of the worker pool; undefined in proxy mode. */
  pool: string | undefined;
  /** Worker pids, in pool and serve modes. */
  workers: number[];
  /** The master's pid. */
  pid: number;
  /** Drains (SIGTERM, pool.gracefulTimeout) and resolves with the exit code; SIGKILL after `killAfterMs`. */
  stop(killAfterMs?: number): Promise<number | null>;
  /** Settles when the child has exited, whoever stopped it. */
  exited: Promise<number | null>;
};

const READY_MSG = 'stratum ready';

/** The command that runs the CLI beside this module: the compiled build, or the sources in a checkout. */
function cliEntry(): string {
  const compiled = import.meta.url.endsWith('.js');
  return fileURLToPath(new URL(compiled ? '../bin/stratum-dist.js' : '../bin/stratum.js', import.meta.url));
}

/**
 * Starts a Stratum with this configuration and resolves once it is ready (listening, workers up),
 * or rejects with the one-line error the CLI printed (a ConfigInvalid's path in it) and its exit code.
 */
export async function start(config: StratumConfigInput, opts: StartOptions = {}): Promise<RunningStratum> {
  const cwd = opts.cwd ?? process.cwd();
  const dir = mkdtempSync(join(tmpdir(), 'stratum-start-'));
  // JSON is YAML: the child's loader validates it like any config file, paths already absolute.
  const file = join(dir, 'stratum.yaml');
  writeFileSync(file, JSON.stringify(resolveRelativePaths(config, cwd)));
  const child = spawn(process.execPath, [cliEntry(), opts.mode ?? 'serve', '--config', file], {
    cwd,
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    stderr = (stderr + chunk).slice(-8192);
  });
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => {
      rmSync(dir, { recursive: true, force: true });
      resolve(code);
    });
  });

  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`stratum printed no "${READY_MSG}" line within ${opts.readyTimeoutMs ?? 30_000} ms`));
    }, opts.readyTimeoutMs ?? 30_000);
    let found = false;
    createInterface({ input: child.stdout }).on('line', (line) => {
      opts.onLog?.(line);
      if (found || !line.includes(READY_MSG)) return;
      try {
        const entry = JSON.parse(line) as Record<string, unknown>;
        if (entry.msg !== READY_MSG) return;
        found = true;
        clearTimeout(timer);
        resolve(entry);
      } catch {
        // Not a log line of ours (an app's own console output): keep reading.
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      const line = stderr.trim().split('\n').at(-1) ?? '';
      const message = line || `stratum exited with code ${code} before it was ready`;
      reject(Object.assign(new Error(message), { exitCode: code }));
    });
  });

  const str = (v: unknown) => (typeof v === 'string' ? v : undefined);
  return {
    front: str(ready.front),
    admin: str(ready.admin) ?? '',
    pool: str(ready.pool),
    workers: Array.isArray(ready.workers) ? (ready.workers as number[]) : [],
    pid: child.pid!,
    exited,
    async stop(killAfterMs = 60_000) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), killAfterMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}
