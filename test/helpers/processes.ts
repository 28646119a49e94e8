// Child processes started by tests (stratum, nginx, uWSGI): output captured for failure messages,
// stopped with SIGTERM then SIGKILL after a grace period, and every one still alive killed at the
// end of the file (afterAll) or, as a last resort, when the test process exits.
// Each is the leader of its own process group: the three are all master + workers, and a worker
// orphaned by a killed master (nginx's keeps listening) is reached through the group id.
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';

export interface Tracked {
  proc: ChildProcess;
  /** stdout split into lines as they arrive (the last, unterminated line once the stream ends). */
  stdoutLines: string[];
  stdout(): string;
  stderr(): string;
  /** Resolves with the exit code (null when killed by a signal) once the process has exited. */
  exited: Promise<number | null>;
  /** SIGTERM (or `signal`), then SIGKILL after `graceMs`; resolves with the exit code. */
  stop(signal?: NodeJS.Signals, graceMs?: number): Promise<number | null>;
}

const live = new Set<Tracked>();
const tempDirs = new Set<string>();
const OUTPUT_LIMIT = 1 << 20;

/** SIGKILL to the whole process group led by `proc` (its workers included); quiet when gone. */
function killGroup(proc: ChildProcess): void {
  if (proc.pid === undefined) return;
  try {
    process.kill(-proc.pid, 'SIGKILL');
  } catch {
    // ESRCH: the group has no member left
  }
}

process.once('exit', () => {
  for (const t of live) killGroup(t.proc);
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

export function spawnTracked(command: string, args: string[], options: SpawnOptions = {}): Tracked {
  const proc = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true, ...options });
  let out = '';
  let err = '';
  let partial = '';
  const stdoutLines: string[] = [];
  proc.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    if (out.length < OUTPUT_LIMIT) out += chunk;
    partial += chunk;
    const lines = partial.split('\n');
    partial = lines.pop() ?? '';
    stdoutLines.push(...lines);
  });
  proc.stdout?.on('end', () => {
    if (partial) stdoutLines.push(partial);
    partial = '';
  });
  proc.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    if (err.length < OUTPUT_LIMIT) err += chunk;
  });
  const exited = new Promise<number | null>((resolve) => {
    proc.once('error', (e) => {
      err += `\nspawn ${command}: ${e.message}`;
      resolve(null);
    });
    proc.once('exit', (code) => resolve(code));
  });
  const tracked: Tracked = {
    proc,
    stdoutLines,
    stdout: () => out,
    stderr: () => err,
    exited,
    async stop(signal = 'SIGTERM', graceMs = 10_000) {
      if (proc.exitCode === null && proc.signalCode === null) {
        if (signal === 'SIGKILL') killGroup(proc);
        else proc.kill(signal);
        const timer = setTimeout(() => killGroup(proc), graceMs);
        try {
          await exited;
        } finally {
          clearTimeout(timer);
        }
      }
      // Whatever the leader left behind in its group (a worker that outlived it) goes too.
      killGroup(proc);
      live.delete(tracked);
      return proc.exitCode;
    },
  };
  live.add(tracked);
  return tracked;
}

/** Kills (SIGKILL) every process the helpers started that is still running; for afterAll. */
export async function killLeftovers(): Promise<void> {
  await Promise.all([...live].map((t) => t.stop('SIGKILL', 0)));
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}

/** A fresh directory under the OS temp dir, removed by killLeftovers() or at exit. */
export function makeTempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), `stratum-${prefix}-`));
  tempDirs.add(dir);
  return dir;
}

/** A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** Polls `probe` every `intervalMs` until it returns true; throws `describe()` after `timeoutMs`. */
export async function waitUntil(
  probe: () => Promise<boolean>,
  { timeoutMs, intervalMs = 50, describe }: { timeoutMs: number; intervalMs?: number; describe: () => string },
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await probe().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(describe());
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/** True when a TCP connection to host:port (or a Unix socket path) is accepted. */
export function canConnect(
  target: { host: string; port: number } | { path: string },
  timeoutMs = 1000,
): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(target as net.NetConnectOpts);
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

export function isRunning(t: Tracked): boolean {
  return t.proc.exitCode === null && t.proc.signalCode === null;
}

/** The tail of a process's output, for an error message. */
export function describeOutput(t: Tracked, extra = ''): string {
  const tail = (s: string) => (s.length > 8000 ? `…${s.slice(-8000)}` : s);
  const exit = t.proc.exitCode ?? t.proc.signalCode ?? 'running';
  return `exit=${exit}\n--- stdout ---\n${tail(t.stdout())}\n--- stderr ---\n${tail(t.stderr())}${extra}`;
}
