// What the package tests share: commands run as a user types them (npm, npx, a Node that is not
// the one running the tests), and a served stratum's ready line.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { homedir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { describeOutput, isRunning, spawnTracked, type Tracked } from '../helpers/processes.ts';

export type Run = { code: number | null; stdout: string; stderr: string; ms: number };

/** Runs a command to its end (bounded by timeoutMs), output captured. */
export function run(
  command: string,
  args: string[],
  opts: { cwd: string; env?: NodeJS.ProcessEnv; timeoutMs?: number },
): Promise<Run> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const env = opts.env ?? process.env;
    const child = spawn(command, args, { cwd: opts.cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${command} ${args.join(' ')} ran past ${opts.timeoutMs} ms\n${stdout}\n${stderr}`));
    }, opts.timeoutMs ?? 120_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, ms: Date.now() - started });
    });
  });
}

export function nodeVersion(node: string): string {
  return spawnSync(node, ['--version'], { encoding: 'utf8' }).stdout.trim().replace(/^v/, '');
}

const major = (version: string) => Number(version.split('.')[0]);

/** Directories of PATH that hold a `node` other than `keep` (this repo's node_modules/.bin, a Node 24 cache...). */
function pathWithout(pathVar: string, keepDir: string): string[] {
  return pathVar
    .split(delimiter)
    .filter((d) => d !== '' && (d === keepDir || !existsSync(join(d, 'node'))));
}

/**
 * A Node older than 24, the way a user's machine has one: the first `node` on PATH that is older
 * (outside any node_modules/.bin and Node 24 cache), else Node 20 installed from the npm registry
 * into ~/.cache/stratum-node20 the way .ci/run once got Node 24 (`npm install node@20`).
 */
export async function olderNode(): Promise<string> {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    const node = join(dir, 'node');
    if (dir.includes('node_modules') || !existsSync(node)) continue;
    const v = nodeVersion(node);
    if (v && major(v) < 24) return node;
  }
  const prefix = join(homedir(), '.cache', 'stratum-node20');
  const node = join(prefix, 'node_modules', '.bin', 'node');
  if (!existsSync(node)) {
    mkdirSync(prefix, { recursive: true });
    const r = await run('npm', ['install', '--prefix', prefix, '--no-save', '--no-audit', '--no-fund', 'node@20'], {
      cwd: prefix,
      timeoutMs: 300_000,
    });
    if (r.code !== 0 || !existsSync(node)) throw new Error(`npm install node@20 failed\n${r.stderr}`);
  }
  return node;
}

/** The environment of a shell whose first `node` is `node` (and no other Node directory is on PATH). */
export function envWithNode(node: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const dir = dirname(node);
  const rest = pathWithout(process.env.PATH ?? '', dir).filter((d) => d !== dir);
  // npm itself may live only beside a Node we dropped (a Node 24 cache): keep a way to reach it.
  const npm = spawnSync('sh', ['-c', 'command -v npm'], { encoding: 'utf8' }).stdout.trim();
  if (npm && !rest.includes(dirname(npm)) && !existsSync(join(dir, 'npm'))) rest.push(dirname(npm));
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: [dir, ...rest].join(delimiter), ...extra };
  // The outer npm's settings (npm test sets these) are not a fresh shell's.
  for (const key of Object.keys(env)) if (key.startsWith('npm_')) delete env[key];
  delete env.NODE_OPTIONS;
  env.npm_config_fund = 'false';
  env.npm_config_audit = 'false';
  env.npm_config_update_notifier = 'false';
  return env;
}

export type Served = { front: string; admin: string; t: Tracked; stop(): Promise<number | null> };

/** Starts a long-running command (npm start, npx stratum serve) and waits for stratum's ready line. */
export async function serveUntilReady(
  command: string,
  args: string[],
  opts: { cwd: string; env: NodeJS.ProcessEnv; timeoutMs?: number },
): Promise<Served> {
  const t = spawnTracked(command, args, { cwd: opts.cwd, env: opts.env });
  const deadline = Date.now() + (opts.timeoutMs ?? 120_000);
  for (;;) {
    const line = t.stdoutLines.find((l) => l.includes('"msg":"stratum ready"'));
    if (line) {
      const ready = JSON.parse(line.slice(line.indexOf('{'))) as { front: string; admin: string };
      // The whole group (npm, sh, the master, its workers): npm alone would not pass the signal on.
      const stop = () => t.stop('SIGTERM', 15_000);
      return { front: ready.front, admin: ready.admin, t, stop };
    }
    if (!isRunning(t)) {
      await t.exited;
      throw new Error(`${command} ${args.join(' ')} exited before it was ready\n${describeOutput(t)}`);
    }
    if (Date.now() > deadline) {
      await t.stop('SIGKILL', 0);
      throw new Error(`${command} ${args.join(' ')}: no ready line\n${describeOutput(t)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
