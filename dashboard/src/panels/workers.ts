// The pool, one row per worker (uWSGI's stats server in a table), with the listen queue above.
// A worker replaced in the last seconds — new pid, respawn count up, or just started — is marked
// "new", so a crash loop or a harakiri kill shows even between two glances.

import { h, panel } from '../dom.ts';
import { mib, ms, span } from '../format.ts';
import type { PoolStats } from '../model.ts';
import type { AppStats } from '../../../src/pool/apps.ts';

const NEW_FOR_MS = 10_000;

const STATE_ICON: Record<string, string> = { idle: '○', busy: '●', starting: '◐', draining: '◌' };

export class WorkersPanel {
  readonly root: HTMLElement;
  #chips = h('ul', { class: 'chips' });
  #rows = h('tbody');
  /** What each worker slot (of each app) looked like last time, and when it last changed hands. */
  #seen = new Map<string, { pid: number; respawns: number; changedAt: number }>();

  constructor() {
    const p = panel('workers', 'Workers');
    const head = [
      'worker',
      'pid',
      'state',
      'in flight',
      'requests',
      'RSS (MiB)',
      'avg (ms)',
      'exceptions',
      'harakiri kills',
      'respawns',
      'started',
    ];
    const numeric = new Set([
      'in flight',
      'requests',
      'RSS (MiB)',
      'avg (ms)',
      'exceptions',
      'harakiri kills',
      'respawns',
    ]);
    const table = h(
      'table',
      { class: 'table workers-table' },
      h(
        'thead',
        {},
        h('tr', {}, ...head.map((c) => h('th', { scope: 'col', class: numeric.has(c) ? 'num' : null }, c))),
      ),
      this.#rows,
    );
    p.body.append(this.#chips, h('div', { class: 'scroll' }, table));
    this.root = p.root;
  }

  /** `now`: the server's clock (the tick's time), so a skewed browser clock marks nothing. */
  update(pool: (PoolStats & { apps?: AppStats[] }) | null, now: number): void {
    if (!pool) {
      this.#chips.replaceChildren(h('li', {}, 'No worker pool: this Stratum runs in proxy mode.'));
      this.#rows.replaceChildren();
      return;
    }
    const q = pool.queueLimit > 0 ? pool.queue / pool.queueLimit : 0;
    const meter = h('meter', {
      min: 0,
      max: pool.queueLimit,
      value: pool.queue,
      high: pool.queueLimit * 0.5,
      optimum: 0,
      'aria-label': 'queue fill',
    });
    this.#chips.replaceChildren(
      h(
        'li',
        { class: q > 0.5 ? 'warn' : null },
        'queue ',
        h('b', {}, `${pool.queue} / ${pool.queueLimit}`),
        ' ',
        meter,
      ),
      h('li', { class: pool.rejected > 0 ? 'warn' : null }, 'rejected ', h('b', {}, pool.rejected)),
      h('li', {}, 'respawns ', h('b', {}, pool.respawns)),
      h('li', {}, 'harakiri kills ', h('b', {}, pool.harakiriKills)),
      h('li', {}, 'recycles ', h('b', {}, pool.recycles)),
      h('li', {}, 'reloads ', h('b', {}, pool.reloads)),
      ...(pool.socket ? [h('li', { class: 'socket' }, 'socket ', h('code', {}, pool.socket))] : []),
    );

    const workerRow = (w: PoolStats['workers'][number]) => {
      const key = `${w.app ?? ''}/${w.id}`;
      const before = this.#seen.get(key);
      const changed = before !== undefined && (before.pid !== w.pid || w.respawns > before.respawns);
      const changedAt = changed ? now : (before?.changedAt ?? 0);
      this.#seen.set(key, { pid: w.pid, respawns: w.respawns, changedAt });
      const started = Date.parse(w.startedAt);
      const fresh = now - started < NEW_FOR_MS || now - changedAt < NEW_FOR_MS;
      return h(
        'tr',
        { 'data-pid': w.pid, 'data-state': w.state, class: fresh ? 'fresh' : null },
        h(
          'td',
          {},
          `#${w.id}`,
          fresh
            ? h('span', { class: 'badge new-badge', title: 'replaced or started in the last 10 s' }, '★ new')
            : null,
        ),
        h('td', { class: 'mono' }, w.pid),
        h('td', {}, h('span', { class: `state state-${w.state}` }, `${STATE_ICON[w.state] ?? '?'} ${w.state}`)),
        h('td', { class: 'num' }, w.inflight),
        h('td', { class: 'num' }, w.requests.toLocaleString('en')),
        h('td', { class: 'num' }, mib(w.rss).replace(' MiB', '')),
        h('td', { class: 'num' }, ms(w.avgMs).replace(' ms', '')),
        h('td', { class: `num ${w.exceptions > 0 ? 'warn' : ''}` }, w.exceptions),
        h('td', { class: `num ${w.harakiri > 0 ? 'warn' : ''}` }, w.harakiri),
        h('td', { class: `num ${w.respawns > 0 ? 'warn' : ''}` }, w.respawns),
        h('td', { title: w.startedAt }, `${span(now - started)} ago`),
      );
    };
    const apps = pool.apps ?? [];
    if (apps.length <= 1 && apps.every((a) => a.name === 'default')) {
      this.#rows.replaceChildren(...pool.workers.map(workerRow));
      return;
    }
    // Several apps: a heading row per app, then its workers (http) or its processes (process).
    const rows: HTMLElement[] = [];
    for (const a of apps) {
      const what =
        a.kind === 'process'
          ? `process · ${a.processes?.length ?? 0} processes · restarts ${a.restarts ?? 0}`
          : `http · ${a.workers?.length ?? 0} workers · queue ${a.queue ?? 0}${a.socket ? ` · ${a.socket}` : ''}`;
      rows.push(
        h(
          'tr',
          { class: 'app-row', 'data-app': a.name },
          h('th', { colspan: 11, scope: 'rowgroup' }, a.name, ' ', what),
        ),
      );
      if (a.kind === 'http') rows.push(...(a.workers ?? []).map(workerRow));
      else
        for (const p of a.processes ?? [])
          rows.push(
            h(
              'tr',
              { 'data-pid': p.pid, 'data-state': p.up ? 'busy' : 'starting' },
              h('td', {}, `#${p.id}`),
              h('td', { class: 'mono' }, p.pid),
              h('td', {}, h('span', { class: `state state-${p.up ? 'busy' : 'starting'}` }, p.up ? '● up' : '◐ down')),
              h('td', { class: 'num' }, '–'),
              h('td', { class: 'num' }, '–'),
              h('td', { class: 'num' }, mib(p.rss).replace(' MiB', '')),
              h('td', { class: 'num' }, '–'),
              h('td', { class: 'num' }, '–'),
              h('td', { class: 'num' }, '–'),
              h('td', { class: `num ${p.restarts > 0 ? 'warn' : ''}` }, p.restarts),
              h('td', { title: p.startedAt }, `${span(now - Date.parse(p.startedAt))} ago`),
            ),
          );
    }
    this.#rows.replaceChildren(...rows);
  }
}
