// Requests per second by status class, stacked: the height is the request rate, the 5xx band is
// the error rate.

import { TimeChart, legend, type Series } from '../charts.ts';
import { h, panel } from '../dom.ts';
import { pct, rate } from '../format.ts';
import { STATUS, swatch } from '../palette.ts';
import { STATUS_CLASSES, type LiveTick, type WindowSummary } from '../model.ts';

export class TrafficPanel {
  readonly root: HTMLElement;
  #chart: TimeChart;
  #ticks: LiveTick[] = [];
  #note = h('p', { class: 'note' });
  #classes = h('ul', { class: 'share-labels' });

  constructor() {
    const p = panel('traffic', 'Requests by status', 'req/s, stacked by status class');
    p.head.append(
      legend(
        STATUS_CLASSES.map((c) => ({ label: STATUS[c].label, color: STATUS[c].color, pattern: STATUS[c].pattern })),
      ),
    );
    this.#chart = new TimeChart({
      height: 214,
      format: rate,
      label: 'requests per second by status class',
      stacked: true,
      footer: (i) => {
        const t = this.#ticks[i];
        return t ? `total ${rate(t.rate)}` : null;
      },
    });
    p.body.append(this.#chart.el, this.#note, this.#classes);
    this.root = p.root;
  }

  update(ticks: LiveTick[], windowMs: number, sum: WindowSummary): void {
    this.#ticks = ticks;
    const series: Series[] = STATUS_CLASSES.map((c) => ({
      key: `status-${c}`,
      label: STATUS[c].label,
      color: STATUS[c].color,
      pattern: STATUS[c].pattern,
      kind: 'bar',
      values: ticks.map((t) => t.status[c]),
      attrs: { 'data-status': c },
    }));
    this.#chart.update(
      ticks.map((t) => t.t),
      series,
      windowMs,
    );
    this.#note.textContent = `Last ${sum.seconds} s: ${rate(sum.rate)}`;
    this.#classes.replaceChildren(
      ...STATUS_CLASSES.map((c) =>
        h(
          'li',
          { 'data-status': c },
          swatch(STATUS[c]),
          h('b', {}, c),
          ` ${rate(sum.status[c])} · ${pct(sum.status[c], sum.rate)}`,
        ),
      ),
    );
  }
}
