// Latency over the last minutes: p50/p95/p99 per layer as four small charts (each on its own
// scale, so a 0.3 ms proxy is as readable as a 300 ms app), then the mean request's time stacked
// by layer — the one chart that compares layers — and the share of each over the last seconds.

import { TimeChart, legend, type Series } from '../charts.ts';
import { h, panel } from '../dom.ts';
import { ms, pct } from '../format.ts';
import { LAYER, QUANTILE_STYLE, swatch } from '../palette.ts';
import { LAYER_KEYS, type LiveTick, type WindowSummary } from '../model.ts';
import { layerShares } from './summary.ts';

const QUANTILES = ['p50', 'p95', 'p99'] as const;

export class LatencyPanel {
  readonly root: HTMLElement;
  #charts: TimeChart[] = [];
  #now = LAYER_KEYS.map(() => h('span', { class: 'now' }));

  constructor() {
    const p = panel('latency', 'Latency by layer', 'ms, one point per second; each chart has its own scale');
    p.head.append(
      legend(
        QUANTILES.map((q) => ({
          label: QUANTILE_STYLE[q].label,
          color: 'currentColor',
          width: QUANTILE_STYLE[q].width,
          dash: QUANTILE_STYLE[q].dash,
        })),
      ),
    );
    const grid = h('div', { class: 'multiples' });
    LAYER_KEYS.forEach((k, i) => {
      this.#charts.push(new TimeChart({ height: 150, format: ms, label: `${k} latency p50, p95, p99 in ms` }));
      grid.append(
        h(
          'div',
          { class: 'multiple', 'data-layer': k },
          h(
            'h3',
            {},
            swatch(LAYER[k]),
            ` ${LAYER[k].label} `,
            h('span', { class: 'role' }, LAYER[k].role),
            this.#now[i]!,
          ),
          this.#charts[i]!.el,
        ),
      );
    });
    p.body.append(grid);
    this.root = p.root;
  }

  update(ticks: LiveTick[], windowMs: number, sum: WindowSummary): void {
    const times = ticks.map((t) => t.t);
    LAYER_KEYS.forEach((k, i) => {
      const series: Series[] = QUANTILES.map((q) => ({
        key: `${k}-${q}`,
        label: `${LAYER[k].label} ${q}`,
        color: LAYER[k].color,
        kind: 'line',
        width: QUANTILE_STYLE[q].width,
        dash: QUANTILE_STYLE[q].dash,
        values: ticks.map((t) => (t.layers[k].count > 0 ? t.layers[k][q] : null)),
        attrs: { 'data-layer': k, 'data-quantile': q },
      }));
      this.#charts[i]!.update(times, series, windowMs);
      const q = sum.layers[k];
      this.#now[i]!.textContent = q.count ? `p95 ${ms(q.p95)}` : '';
    });
  }
}

export class TimeSharePanel {
  readonly root: HTMLElement;
  #chart: TimeChart;
  #share = h('div', { class: 'share', role: 'img' });
  #shareNote = h('p', { class: 'note' });
  #ticks: LiveTick[] = [];

  constructor() {
    const p = panel('time-share', 'Where the mean request’s time goes', 'ms per request, stacked by layer');
    p.head.append(
      legend(LAYER_KEYS.map((k) => ({ label: LAYER[k].label, color: LAYER[k].color, pattern: LAYER[k].pattern }))),
    );
    this.#chart = new TimeChart({
      height: 190,
      format: ms,
      label: 'mean request time stacked by layer, ms',
      stacked: true,
      footer: (i) => {
        const t = this.#ticks[i];
        return t ? `total ${ms(t.total.mean)} mean · ${t.total.count} requests` : null;
      },
    });
    p.body.append(this.#chart.el, this.#shareNote, this.#share);
    this.root = p.root;
  }

  update(ticks: LiveTick[], windowMs: number, sum: WindowSummary): void {
    this.#ticks = ticks;
    const times = ticks.map((t) => t.t);
    // Per request, not per layer sample: a request outside the pool has a proxy time only.
    const series: Series[] = LAYER_KEYS.map((k) => ({
      key: `mean-${k}`,
      label: LAYER[k].label,
      color: LAYER[k].color,
      pattern: LAYER[k].pattern,
      kind: 'area',
      values: ticks.map((t) => (t.total.count > 0 ? (t.layers[k].mean * t.layers[k].count) / t.total.count : null)),
      attrs: { 'data-layer': k },
    }));
    this.#chart.update(times, series, windowMs);

    const shares = layerShares(sum);
    const whole = LAYER_KEYS.reduce((a, k) => a + shares[k], 0);
    this.#shareNote.textContent =
      whole > 0
        ? `Last ${sum.seconds} s: ${ms(whole)} per request on average`
        : `No requests in the last ${sum.seconds} s`;
    const parts = LAYER_KEYS.filter((k) => shares[k] > 0).map((k) => {
      const seg = h('div', {
        class: `seg ${LAYER[k].pattern}`,
        'data-layer': k,
        title: `${LAYER[k].label}: ${ms(shares[k])} (${pct(shares[k], whole)})`,
      });
      seg.style.flexGrow = String(shares[k] / whole);
      return seg;
    });
    const labels = LAYER_KEYS.map((k) =>
      h('li', {}, swatch(LAYER[k]), h('b', {}, LAYER[k].label), ` ${ms(shares[k])} · ${pct(shares[k], whole)}`),
    );
    this.#share.setAttribute('aria-label', `time per layer over the last ${sum.seconds} s`);
    this.#share.replaceChildren(
      h('div', { class: 'share-bar' }, ...parts),
      h('ul', { class: 'share-labels' }, ...labels),
    );
  }
}
