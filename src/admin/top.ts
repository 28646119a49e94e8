// `stratum top`: the pool's stats, live in a terminal, like uwsgitop. Reads the admin
// listener's /stats every `interval` seconds and redraws; `--once` prints one frame and exits.
// Several apps (`apps:`) get one section each: a pool's workers, or a process app's processes.

import type { TopOptions } from '../cli.ts';
import { TopRequestFailed } from '../errors.ts';
import type { AppStats } from '../pool/apps.ts';
import type { PoolStats, WorkerRow } from '../pool/stats.ts';

const STATE_MARK: Record<string, string> = { idle: 'idle', busy: 'BUSY', starting: 'start', draining: 'drain' };

function mib(bytes: number): string {
  return (bytes / 1048576).toFixed(1);
}

function pad(s: string | number, n: number, right = false): string {
  const t = String(s);
  return right ? t.padStart(n) : t.padEnd(n);
}

const WORKER_HEADER =
  pad('WID', 4) + pad('PID', 9) + pad('STATE', 7) + pad('REQS', 10, true) + pad('INFL', 6, true) +
  pad('EXC', 6, true) + pad('HARAK', 7, true) + pad('RSS MiB', 9, true) + pad('AVG ms', 9, true) +
  pad('RESP', 6, true) + '  STARTED';

function workerLines(workers: WorkerRow[]): string[] {
  return workers.map(
    (w) =>
      pad(w.id, 4) + pad(w.pid, 9) + pad(STATE_MARK[w.state] ?? w.state, 7) + pad(w.requests, 10, true) +
      pad(w.inflight, 6, true) + pad(w.exceptions, 6, true) + pad(w.harakiri, 7, true) + pad(mib(w.rss), 9, true) +
      pad(w.avgMs.toFixed(2), 9, true) + pad(w.respawns, 6, true) + `  ${w.startedAt.slice(11, 19)}`,
  );
}

function poolSummary(p: Omit<PoolStats, 'topology'>): string {
  const busy = p.workers.filter((w) => w.state === 'busy').length;
  return (
    `workers ${p.workers.length} (${busy} busy)  queue ${p.queue}/${p.queueLimit}  ` +
    `rejected ${p.rejected}  respawns ${p.respawns}  harakiri ${p.harakiriKills}  ` +
    `recycles ${p.recycles}  reloads ${p.reloads}`
  );
}

/** One section per app (several apps): its pool's line and workers, or a process app's processes. */
function appLines(app: AppStats): string[] {
  if (app.kind === 'process') {
    const lines = [`app ${app.name} (process)  processes ${app.processes?.length ?? 0}  restarts ${app.restarts ?? 0}`];
    lines.push(pad('ID', 4) + pad('PID', 9) + pad('STATE', 7) + pad('RSS MiB', 9, true) + pad('CPU s', 9, true) +
      pad('RESTARTS', 10, true) + '  STARTED');
    for (const p of app.processes ?? [])
      lines.push(pad(p.id, 4) + pad(p.pid, 9) + pad(p.up ? 'up' : 'DOWN', 7) + pad(mib(p.rss), 9, true) +
        pad(p.cpuSeconds.toFixed(2), 9, true) + pad(p.restarts, 10, true) + `  ${p.startedAt.slice(11, 19)}`);
    return lines;
  }
  const pool = app as AppStats & PoolStats;
  return [`app ${app.name} (http)  ${poolSummary(pool)}  socket ${pool.socket ?? '-'}`, WORKER_HEADER,
    ...workerLines(pool.workers)];
}

export function renderTop(stats: PoolStats & { apps?: AppStats[] }, source: string, now = new Date()): string {
  const lines: string[] = [];
  lines.push(`stratum top — ${source} — ${now.toISOString().replace('T', ' ').slice(0, 19)}`);
  lines.push(poolSummary(stats));
  const apps = stats.apps ?? [];
  // A lone app.module (the app named default) looks as it always did: one pool, its socket, its workers.
  if (apps.length <= 1 && apps.every((a) => a.name === 'default')) {
    lines.push(`socket ${stats.socket ?? '-'}`);
    lines.push('');
    lines.push(WORKER_HEADER);
    lines.push(...workerLines(stats.workers));
    return lines.join('\n');
  }
  for (const app of apps) lines.push('', ...appLines(app));
  return lines.join('\n');
}

export async function runTop(opts: TopOptions): Promise<void> {
  const base = /^https?:\/\//.test(opts.admin) ? opts.admin : `http://${opts.admin}`;
  const url = new URL('/stats', base);
  const headers: Record<string, string> = opts.token ? { authorization: `Bearer ${opts.token}` } : {};
  const frame = async (): Promise<string> => {
    const res = await fetch(url, { headers, signal: AbortSignal.timeout(5000) });
    if (!res.ok) throw new TopRequestFailed(url.href, res.status);
    return renderTop((await res.json()) as PoolStats & { apps?: AppStats[] }, url.host);
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
