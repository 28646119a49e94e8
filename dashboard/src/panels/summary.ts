// The first look: which layer holds most of a request's time right now, each layer's
// quantiles over the last seconds, and the traffic, errors and workers in one line of cards.

import { h } from '../dom.ts';
import { ms, pct, rate } from '../format.ts';
import { LAYER, swatch } from '../palette.ts';
import { LAYER_KEYS, type ConnectionCounts, type LayerKey, type PoolStats, type WindowSummary } from '../model.ts';

/** ms of the mean request spent in each layer (a request outside the pool counts as proxy). */
export function layerShares(sum: WindowSummary): Record<LayerKey, number> {
  const n = sum.total.count || 1;
  return Object.fromEntries(LAYER_KEYS.map((k) => [k, (sum.layers[k].mean * sum.layers[k].count) / n])) as Record<
    LayerKey,
    number
  >;
}

export class SummaryPanel {
  readonly root: HTMLElement;
  #verdict = h('p', { class: 'verdict', 'data-testid': 'verdict' });
  #cards = new Map<string, HTMLElement>();

  constructor() {
    const cards = h('div', { class: 'cards' });
    for (const k of LAYER_KEYS) {
      const card = h('article', { class: 'card layer-card', 'data-layer': k });
      this.#cards.set(k, card);
      cards.append(card);
    }
    for (const k of ['traffic', 'errors', 'workers']) {
      const card = h('article', { class: 'card', 'data-card': k });
      this.#cards.set(k, card);
      cards.append(card);
    }
    this.root = h('section', { class: 'summary', 'aria-label': 'Now' }, this.#verdict, cards);
  }

  update(sum: WindowSummary, pool: PoolStats | null, connections: readonly ConnectionCounts[] = []): void {
    const shares = layerShares(sum);
    const whole = LAYER_KEYS.reduce((a, k) => a + shares[k], 0);
    if (sum.slowest) {
      const k = sum.slowest;
      this.#verdict.replaceChildren(
        'Right now most of a request’s time is in ',
        h('b', { class: `layer-name ${k}` }, swatch(LAYER[k]), ` ${LAYER[k].label}`),
        `: ${ms(shares[k])} of a ${ms(whole)} mean (${pct(shares[k], whole)}), last ${sum.seconds} s.`,
      );
    } else {
      this.#verdict.replaceChildren(`No requests in the last ${sum.seconds} s.`);
    }
    this.#verdict.dataset.slowest = sum.slowest ?? '';

    for (const k of LAYER_KEYS) {
      const q = sum.layers[k];
      const hot = sum.slowest === k;
      const card = this.#cards.get(k)!;
      card.classList.toggle('hot', hot);
      card.replaceChildren(
        h(
          'header',
          {},
          swatch(LAYER[k]),
          h('h3', {}, LAYER[k].label),
          hot ? h('span', { class: 'badge hot-badge' }, '▲ most time') : null,
        ),
        h('p', { class: 'role' }, LAYER[k].role),
        h('p', { class: 'big' }, h('small', {}, 'p95 '), q.count ? ms(q.p95) : '–'),
        h(
          'dl',
          { class: 'qs' },
          ...(['p50', 'p99', 'mean'] as const).map((n) =>
            h('div', {}, h('dt', {}, n), h('dd', {}, q.count ? ms(q[n]) : '–')),
          ),
        ),
        h('p', { class: 'sub' }, q.count ? `${pct(shares[k], whole)} of request time` : 'no requests'),
      );
    }

    const errs = sum.status['5xx'];
    this.#cards
      .get('traffic')!
      .replaceChildren(
        h('header', {}, h('h3', {}, 'Requests')),
        h('p', { class: 'role' }, `all routes, last ${sum.seconds} s`),
        h('p', { class: 'big' }, rate(sum.rate)),
        h('p', { class: 'sub' }, sum.total.count ? `p95 ${ms(sum.total.p95)} overall` : 'no requests'),
        ...connections.map((c) =>
          h(
            'p',
            { class: `sub ${c.refused > 0 || c.open >= c.limit * 0.9 ? 'warn' : ''}`, 'data-testid': 'connections' },
            `connections ${c.open.toLocaleString('en')} / ${c.limit.toLocaleString('en')}`,
            c.refused > 0 ? ` · refused ${c.refused.toLocaleString('en')}` : '',
          ),
        ),
      );
    const errorCard = this.#cards.get('errors')!;
    errorCard.classList.toggle('alarm', errs > 0);
    errorCard.replaceChildren(
      h('header', {}, h('h3', {}, 'Errors'), errs > 0 ? h('span', { class: 'badge alarm-badge' }, '✕ 5xx') : null),
      h('p', { class: 'role' }, '5xx answers'),
      h('p', { class: 'big' }, rate(errs)),
      h('p', { class: 'sub' }, `${pct(errs, sum.rate)} of requests`),
      h('p', { class: 'sub' }, `4xx ${rate(sum.status['4xx'])}`),
    );
    const busy = pool ? pool.workers.filter((w) => w.state === 'busy').length : 0;
    this.#cards
      .get('workers')!
      .replaceChildren(
        h('header', {}, h('h3', {}, 'Workers')),
        h('p', { class: 'role' }, pool ? 'busy / total' : 'no pool in this mode'),
        h('p', { class: 'big' }, pool ? `${busy} / ${pool.workers.length}` : '–'),
        h('p', { class: 'sub' }, pool ? `queue ${pool.queue} / ${pool.queueLimit}` : ''),
        h('p', { class: 'sub' }, pool ? `rejected ${pool.rejected}` : ''),
      );
  }
}
