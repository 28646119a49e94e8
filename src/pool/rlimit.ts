// The open-file limit (RLIMIT_NOFILE): read from /proc, and the soft limit raised to the hard one
// at start. Node has no setrlimit. Node itself already raises the soft limit of its own process
// at start-up (PlatformInit in src/node.cc; measured: `ulimit -Sn 256; node` shows 20000 / 20000
// here), so this usually finds nothing to do; when the soft limit is still below the hard one (an
// embedder, a binary search that stopped short), util-linux's `prlimit` raises it for this
// process. It runs in the master before any worker is forked: rlimits are inherited at fork.

import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';

export interface FdLimit {
  soft: number;
  /** Infinity when unlimited. */
  hard: number;
}

/** The open-file limits of a process (Linux: /proc/PID/limits), or null where they cannot be read. */
export function fdLimit(pid: number | 'self' = 'self'): FdLimit | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/limits`, 'latin1');
  } catch {
    return null;
  }
  const m = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(text);
  if (!m) return null;
  const n = (s: string) => (s === 'unlimited' ? Infinity : Number(s));
  return { soft: n(m[1]!), hard: n(m[2]!) };
}

/** The most a process may raise RLIMIT_NOFILE to when its hard limit is unlimited (fs.nr_open). */
function nrOpen(): number {
  try {
    return Number(readFileSync('/proc/sys/fs/nr_open', 'latin1').trim()) || 1_048_576;
  } catch {
    return 1_048_576;
  }
}

/**
 * Raise the soft open-file limit of `pid` to its hard limit, if it is below; log the outcome once.
 * A failure (no prlimit, not permitted, not Linux) is a warning: the service starts with the
 * limit it has, and proxy.maxConnections' default follows whatever that is.
 */
export function raiseFdLimit(log: Logger, pid = process.pid): FdLimit | null {
  const before = fdLimit(pid);
  if (!before) {
    log.warn('open-file limit unknown (no /proc/PID/limits): proxy.maxConnections assumes 1024');
    return null;
  }
  if (before.soft >= before.hard) {
    log.info({ fdSoft: before.soft, fdHard: before.hard }, 'open-file limit (soft = hard)');
    return before;
  }
  const target = before.hard === Infinity ? nrOpen() : before.hard;
  try {
    execFileSync(
      'prlimit',
      ['--pid', String(pid), `--nofile=${target}:${before.hard === Infinity ? 'unlimited' : target}`],
      {
        stdio: 'pipe',
        timeout: 5000,
      },
    );
  } catch (err) {
    const why = String((err as { stderr?: Buffer }).stderr ?? (err as Error).message).trim();
    log.warn(
      { fdSoft: before.soft, fdHard: before.hard, err: why },
      'could not raise the open-file soft limit to the hard one (prlimit); going on with the soft limit',
    );
    return before;
  }
  const after = fdLimit(pid) ?? before;
  log.info({ fdSoft: after.soft, fdHard: after.hard, fdSoftBefore: before.soft }, 'open-file soft limit raised');
  return after;
}
