// `stratum top`: the pool's stats, live in a terminal, like uwsgitop. Reads the admin
// listener's /stats every `interval` seconds and redraws; `--once` prints one frame and exits.

import type { TopOptions } from '../cli.ts';
import { TopRequestFailed } from '../errors.ts';
import type { PoolStats } from '../pool/supervisor.ts';

const STATE_MARK: Record<string, string> = { idle: 'idle', busy: 'BUSY', starting: 'start', draining: 'drain' };

function mib(bytes: number): string {
  return (bytes / 1048576).toFixed(1);
}

function pad(s: string | number, n: number, right = false): string {
  const t = String(s);
  return right ? t.padStart(n) : t.padEnd(n);
}

export function renderTop(stats: PoolStats, source: string, now = new Date()): string {
  const lines: string[] = [];
  const busy = stats.workers.filter((w) => w.state === 'busy').length;
  lines.push(`stratum top — ${source} — ${now.toISOString().replace('T', ' ').slice(0, 19)}`);
  lines.push(
    `workers ${stats.workers.length} (${busy} busy)  queue ${stats.queue}/${stats.queueLimit}  ` +
      `rejected ${stats.rejected}  respawns ${stats.respawns}  harakiri ${stats.harakiriKills}  ` +
      `recycles ${stats.recycles}  reloads ${stats.reloads}`,
  );
  lines.push(`socket ${stats.socket ?? '-'}`);
  lines.push('');
  lines.push(
    pad('WID', 4) + pad('PID', 9) + pad('STATE', 7) + pad('REQS', 10, true) + pad('INFL', 6, true) +
      pad('EXC', 6, true) + pad('HARAK', 7, true) + pad('RSS MiB', 9, true) + pad('AVG ms', 9, true) +
      pad('RESP', 6, true) + '  STARTED',
  );
  for (const w of stats.workers) {
    lines.push(
      pad(w.id, 4) + pad(w.pid, 9) + pad(STATE_MARK[w.state] ?? w.state, 7) + pad(w.requests, 10, true) +
        pad(w.inflight, 6, true) + pad(w.exceptions, 6, true) + pad(w.harakiri, 7, true) + pad(mib(w.rss), 9, true) +
        pad(w.avgMs.toFixed(2), 9, true) + pad(w.respawns, 6, true) + `  ${w.startedAt.slice(11, 19)}`,
    );
  }
  return lines.join('\n');
}

export async function runTop(opts: TopOptions): Promise<void> {
  const base = /^https?:\/\//.test(opts.admin) ? opts.admin : `http://${opts.admin}`;
  const url = new URL('/stats', base);
  const headers: Record<string, string> = opts.token ? { authorization: `Bearer ${opts.token}` } : {};
  const frame = async (): Promise<string> => {
    const res = await fetch(url, { headers, signal: AbortSignal.timeout(5000) });
    if (!res.ok) throw new TopRequestFailed(url.href, res.status);
    return renderTop((await res.json()) as PoolStats, url.host);
  };
  if (opts.once) {
    process.stdout.write(`${await frame()}\n`);
    return;
  }
  let stop = false;
  process.once('SIGINT', () => {
    stop = true;
  });
  while (!stop) {
    let text: string;
    try {
      text = await frame();
    } catch (err) {
      text = `stratum top — ${url.host} — unreachable: ${(err as Error).message} (retrying)`;
    }
    // Clear the screen and home the cursor, then draw the frame.
    process.stdout.write(`\x1b[2J\x1b[H${text}\n`);
    await new Promise((r) => setTimeout(r, opts.interval * 1000));
  }
}
