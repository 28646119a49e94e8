// Time-series charts drawn as SVG at the container's pixel width (text stays its real size on a
// phone and on a wide screen): lines, stacked areas and stacked bars, one point per second, with
// a hover/touch read-out. Each series is a `<g class="series">` carrying `data-points`, the
// number of seconds it has a value for (what a test or a curious person can read off the DOM).

import { h, s } from './dom.ts';
import { clock } from './format.ts';

export interface Series {
  key: string;
  label: string;
  color: string;
  /** One value per time; null = nothing measured that second (a gap in a line). */
  values: Array<number | null>;
  kind: 'line' | 'area' | 'bar';
  width?: number;
  dash?: string;
  /** Pattern id for areas and bars. */
  pattern?: string;
  /** Extra attributes on the series' group (data-layer, data-quantile…). */
  attrs?: Record<string, string>;
}

export interface ChartOptions {
  height: number;
  /** Formats an axis or read-out value with its unit. */
  format: (v: number) => string;
  label: string;
  /** Areas and bars stack in series order; lines never do. */
  stacked?: boolean;
  /** Read-out line added below the series values (a total, say). */
  footer?: (i: number) => string | null;
}

const M = { top: 10, right: 10, bottom: 22, left: 58 };
const RULES = 4;

function niceStep(max: number, count: number): number {
  const raw = max / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  for (const f of [1, 2, 2.5, 5, 10]) if (raw <= f * mag) return f * mag;
  return 10 * mag;
}

export class TimeChart {
  readonly el: HTMLElement;
  #opts: ChartOptions;
  #times: number[] = [];
  #series: Series[] = [];
  #windowMs = 300_000;
  #hoverT: number | null = null;
  #tip: HTMLElement;
  #plot: HTMLElement;
  #width = 0;

  constructor(opts: ChartOptions) {
    this.#opts = opts;
    this.#plot = h('div', { class: 'chart-plot' });
    this.#tip = h('div', { class: 'chart-tip', role: 'status', hidden: true });
    this.el = h('figure', { class: 'chart', 'aria-label': opts.label }, this.#plot, this.#tip);
    new ResizeObserver(() => {
      const w = Math.floor(this.#plot.clientWidth);
      if (w !== this.#width) {
        this.#width = w;
        this.#draw();
      }
    }).observe(this.#plot);
  }

  update(times: number[], series: Series[], windowMs: number): void {
    this.#times = times;
    this.#series = series;
    this.#windowMs = windowMs;
    this.#draw();
  }

  #draw(): void {
    const width = this.#width || Math.floor(this.#plot.clientWidth);
    // Not laid out yet (or hidden): the ResizeObserver draws once there is room.
    if (width < M.left + M.right + 40) return;
    const { height, stacked, format } = this.#opts;
    const times = this.#times;
    const end = times.at(-1) ?? Date.now();
    const start = end - this.#windowMs;
    const first = times.findIndex((t) => t > start);
    const from = first < 0 ? times.length : first;
    const iw = width - M.left - M.right;
    const ih = height - M.top - M.bottom;
    const x = (t: number) => M.left + ((t - start) / this.#windowMs) * iw;

    // Stacked layers sit on the sum of the ones before them.
    const base = new Array<number>(times.length).fill(0);
    const tops = this.#series.map((sr) => {
      if (!stacked || sr.kind === 'line') return sr.values.map((v) => v);
      return sr.values.map((v, i) => (base[i] = base[i]! + (v ?? 0)));
    });
    let max = 0;
    for (const vs of tops) for (let i = from; i < vs.length; i++) max = Math.max(max, vs[i] ?? 0);
    const step = niceStep(max > 0 ? max : 1, RULES);
    const yMax = Math.max(step * Math.ceil((max > 0 ? max : 1) / step), step);
    const y = (v: number) => M.top + ih - (v / yMax) * ih;

    const svg = s('svg', {
      width,
      height,
      viewBox: `0 0 ${width} ${height}`,
      role: 'img',
      'aria-label': this.#opts.label,
    });
    const grid = s('g', { class: 'grid' });
    for (let v = 0; v <= yMax + step / 2; v += step) {
      grid.append(
        s('line', { x1: M.left, x2: width - M.right, y1: y(v), y2: y(v) }),
        s('text', { x: M.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, format(v)),
      );
    }
    // Time labels at a round interval that leaves each one room (about 52 px).
    const every =
      [10_000, 15_000, 30_000, 60_000, 120_000, 300_000].find((e) => (iw * e) / this.#windowMs >= 52) ?? this.#windowMs;
    for (let ago = 0; ago <= this.#windowMs; ago += every) {
      const px = x(end - ago);
      grid.append(s('line', { class: 'vrule', x1: px, x2: px, y1: M.top, y2: M.top + ih }));
      const label = ago === 0 ? 'now' : ago % 60_000 === 0 ? `−${ago / 60_000} min` : `−${ago / 1000} s`;
      grid.append(
        s(
          'text',
          { x: px, y: height - 6, 'text-anchor': ago === 0 ? 'end' : ago === this.#windowMs ? 'start' : 'middle' },
          label,
        ),
      );
    }
    svg.append(grid);

    const clip = `clip-${Math.random().toString(36).slice(2)}`;
    svg.append(s('clipPath', { id: clip }, s('rect', { x: M.left, y: M.top - 2, width: iw, height: ih + 2 })));
    const barW = Math.max(1, iw / (this.#windowMs / 1000) - 1);
    const prev = new Array<number>(times.length).fill(0);
    this.#series.forEach((sr, si) => {
      const top = tops[si]!;
      let points = 0;
      for (let i = from; i < sr.values.length; i++) if (sr.values[i] !== null) points++;
      const g = s('g', {
        class: 'series',
        'data-series': sr.key,
        'data-points': points,
        'clip-path': `url(#${clip})`,
        ...sr.attrs,
      });
      if (sr.kind === 'line') {
        let d = '';
        let pen = false;
        for (let i = Math.max(0, from - 1); i < times.length; i++) {
          const v = top[i];
          if (v === null || v === undefined) {
            pen = false;
            continue;
          }
          d += `${pen ? 'L' : 'M'}${x(times[i]!).toFixed(1)},${y(v).toFixed(1)}`;
          pen = true;
        }
        g.append(
          s('path', {
            d,
            fill: 'none',
            stroke: sr.color,
            'stroke-width': sr.width ?? 1.5,
            'stroke-dasharray': sr.dash || null,
            'stroke-linejoin': 'round',
          }),
        );
      } else if (sr.kind === 'area') {
        let upper = '';
        let lower = '';
        for (let i = Math.max(0, from - 1); i < times.length; i++) {
          const px = x(times[i]!).toFixed(1);
          upper += `${upper ? 'L' : 'M'}${px},${y(top[i] ?? 0).toFixed(1)}`;
          lower = `L${px},${y(stacked ? prev[i]! : 0).toFixed(1)}${lower}`;
        }
        if (upper) {
          g.append(s('path', { d: `${upper}${lower}Z`, fill: `url(#${sr.pattern})`, 'fill-opacity': 0.9 }));
          g.append(s('path', { d: upper, fill: 'none', stroke: sr.color, 'stroke-width': 1.5 }));
        }
      } else {
        for (let i = from; i < times.length; i++) {
          const v = sr.values[i] ?? 0;
          if (v <= 0) continue;
          const y0 = y(stacked ? prev[i]! : 0);
          const y1 = y(top[i] ?? 0);
          g.append(
            s('rect', {
              x: x(times[i]! - 1000) + 0.5,
              y: y1,
              width: barW,
              height: Math.max(0.5, y0 - y1),
              fill: `url(#${sr.pattern})`,
            }),
          );
        }
      }
      if (stacked && sr.kind !== 'line') for (let i = 0; i < times.length; i++) prev[i] = top[i] ?? 0;
      svg.append(g);
    });

    const rule = s('line', { class: 'hover-rule', y1: M.top, y2: M.top + ih, visibility: 'hidden' });
    const catcher = s('rect', { class: 'catcher', x: M.left, y: M.top, width: iw, height: ih, fill: 'transparent' });
    const pick = (ev: PointerEvent) => {
      const bounds = svg.getBoundingClientRect();
      const t = start + ((ev.clientX - bounds.left - M.left) / iw) * this.#windowMs;
      this.#hoverT = t;
      this.#readout(rule, x, from);
    };
    catcher.addEventListener('pointermove', pick);
    catcher.addEventListener('pointerdown', pick);
    catcher.addEventListener('pointerleave', () => {
      this.#hoverT = null;
      this.#readout(rule, x, from);
    });
    svg.append(rule, catcher);
    this.#plot.replaceChildren(svg);
    this.#readout(rule, x, from);
  }

  #readout(rule: SVGLineElement, x: (t: number) => number, from: number): void {
    const times = this.#times;
    if (this.#hoverT === null || times.length === from) {
      rule.setAttribute('visibility', 'hidden');
      this.#tip.hidden = true;
      return;
    }
    let best = from;
    for (let i = from; i < times.length; i++)
      if (Math.abs(times[i]! - this.#hoverT) < Math.abs(times[best]! - this.#hoverT)) best = i;
    const px = x(times[best]!);
    rule.setAttribute('x1', String(px));
    rule.setAttribute('x2', String(px));
    rule.setAttribute('visibility', 'visible');
    const rows = this.#series.map((sr) => {
      const v = sr.values[best];
      return h(
        'div',
        { class: 'tip-row' },
        sample(sr),
        h('span', {}, sr.label),
        h('b', {}, v === null || v === undefined ? '–' : this.#opts.format(v)),
      );
    });
    const footer = this.#opts.footer?.(best);
    this.#tip.replaceChildren(
      h('div', { class: 'tip-time' }, clock(times[best]!)),
      ...rows,
      ...(footer ? [h('div', { class: 'tip-foot' }, footer)] : []),
    );
    this.#tip.hidden = false;
    const w = this.#width;
    const left = px > w / 2 ? px - this.#tip.offsetWidth - 12 : px + 12;
    this.#tip.style.left = `${Math.max(0, left)}px`;
  }
}

type Entry = { label: string; color: string; pattern?: string; dash?: string; width?: number };

/** A series' look in small: a patterned square for areas and bars, a line sample for lines. */
function sample(e: Entry): SVGSVGElement {
  return e.pattern
    ? s(
        'svg',
        { class: 'sample', width: 14, height: 12, 'aria-hidden': 'true' },
        s('rect', { width: 14, height: 12, rx: 2, fill: `url(#${e.pattern})` }),
      )
    : s(
        'svg',
        { class: 'sample', width: 24, height: 12, 'aria-hidden': 'true' },
        s('line', {
          x1: 1,
          x2: 23,
          y1: 6,
          y2: 6,
          stroke: e.color,
          'stroke-width': e.width ?? 2,
          'stroke-dasharray': e.dash || null,
        }),
      );
}

/** A legend row: one entry per series, with its sample and its label. */
export function legend(entries: Entry[]): HTMLElement {
  return h('ul', { class: 'legend' }, ...entries.map((e) => h('li', {}, sample(e), e.label)));
}
