// Routes (nginx locations) and upstreams (what each route hands requests to) over the last
// seconds: rate, 5xx, p95, and for upstreams whether the health checks see them up.

import { h, panel } from '../dom.ts';
import { ms, pct, rate } from '../format.ts';
import { flows, type FlowRow, type LiveTick } from '../model.ts';

function table(cols: string[], numeric: number[]): { table: HTMLTableElement; body: HTMLTableSectionElement } {
  const body = h('tbody');
  const t = h(
    'table',
    { class: 'table' },
    h(
      'thead',
      {},
      h('tr', {}, ...cols.map((c, i) => h('th', { scope: 'col', class: numeric.includes(i) ? 'num' : null }, c))),
    ),
    body,
  );
  return { table: t, body };
}

function cells(r: FlowRow): HTMLElement[] {
  return [
    h('td', { class: 'num' }, rate(r.rate)),
    h(
      'td',
      { class: `num ${r.errors > 0 ? 'warn' : ''}` },
      `${rate(r.errors)}`,
      h('small', {}, ` ${r.rate > 0 ? pct(r.errors, r.rate) : ''}`),
    ),
    h('td', { class: 'num' }, r.rate > 0 ? ms(r.p95) : '–'),
  ];
}

export class FlowsPanel {
  readonly root: HTMLElement;
  #routes = table(['route', 'rate', '5xx', 'p95'], [1, 2, 3]);
  #upstreams = table(['upstream', 'kind', 'rate', '5xx', 'p95', 'health'], [2, 3, 4]);
  #seconds: number;

  constructor(seconds: number) {
    this.#seconds = seconds;
    const p = panel(
      'flows',
      'Routes and upstreams',
      `last ${seconds} s; p95 is the request-weighted mean of each second’s p95`,
    );
    p.body.append(
      h(
        'div',
        { class: 'flow-tables' },
        h('div', { class: 'scroll' }, this.#routes.table),
        h('div', { class: 'scroll' }, this.#upstreams.table),
      ),
    );
    this.root = p.root;
  }

  update(ticks: LiveTick[]): void {
    const routes = flows(ticks, this.#seconds, 'routes');
    this.#routes.body.replaceChildren(
      ...(routes.length
        ? routes.map((r) => h('tr', { 'data-route': r.key }, h('td', { class: 'mono' }, r.key), ...cells(r)))
        : [h('tr', {}, h('td', { colspan: 4, class: 'empty' }, 'No traffic yet.'))]),
    );
    const ups = flows(ticks, this.#seconds, 'upstreams');
    this.#upstreams.body.replaceChildren(
      ...(ups.length
        ? ups.map((r) =>
            h(
              'tr',
              { 'data-upstream': r.key },
              h('td', { class: 'mono' }, r.key),
              h('td', {}, r.kind ?? ''),
              ...cells(r),
              h(
                'td',
                {},
                r.up === false
                  ? h('span', { class: 'health down' }, '✕ down')
                  : h('span', { class: 'health up' }, '✓ up'),
              ),
            ),
          )
        : [h('tr', {}, h('td', { colspan: 6, class: 'empty' }, 'No upstreams yet.'))]),
    );
  }
}
