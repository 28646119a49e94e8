// Colours from the Okabe–Ito palette (told apart with every common colour-vision deficiency),
// each also carried by a fill pattern and a label so no figure depends on colour alone.

import { s } from './dom.ts';
import type { LayerKey, StatusClass } from './model.ts';

export interface Look {
  label: string;
  color: string;
  /** The SVG pattern's id; the same name is a CSS class for HTML swatches and bars. */
  pattern: string;
}

export const LAYER: Record<LayerKey, Look & { role: string }> = {
  proxy: { label: 'proxy', role: 'front proxy (nginx)', color: '#0072B2', pattern: 'fill-proxy' },
  queue: { label: 'queue', role: 'wait for a worker', color: '#E69F00', pattern: 'fill-queue' },
  worker: { label: 'worker', role: 'worker (uWSGI)', color: '#009E73', pattern: 'fill-worker' },
  app: { label: 'app', role: 'app handler (Flask)', color: '#CC79A7', pattern: 'fill-app' },
};

export const STATUS: Record<StatusClass, Look> = {
  '2xx': { label: '2xx', color: '#56B4E9', pattern: 'fill-2xx' },
  '3xx': { label: '3xx', color: '#999999', pattern: 'fill-3xx' },
  '4xx': { label: '4xx', color: '#F0E442', pattern: 'fill-4xx' },
  '5xx': { label: '5xx', color: '#D55E00', pattern: 'fill-5xx' },
};

/** p50, p95 and p99 differ by line style as well as weight. */
export const QUANTILE_STYLE = {
  p50: { label: 'p50', width: 1.5, dash: '' },
  p95: { label: 'p95', width: 2.5, dash: '' },
  p99: { label: 'p99', width: 1.5, dash: '5 3' },
} as const;

type Mark = 'none' | 'hatch' | 'dots' | 'cross' | 'back';

function pattern(id: string, color: string, mark: Mark): SVGPatternElement {
  const ink = 'rgba(255,255,255,0.55)';
  const p = s(
    'pattern',
    { id, patternUnits: 'userSpaceOnUse', width: 6, height: 6 },
    s('rect', { width: 6, height: 6, fill: color }),
  );
  if (mark === 'hatch')
    p.append(s('path', { d: 'M-1,1 l2,-2 M0,6 l6,-6 M5,7 l2,-2', stroke: ink, 'stroke-width': 1.2 }));
  if (mark === 'back')
    p.append(s('path', { d: 'M-1,5 l2,2 M0,0 l6,6 M5,-1 l2,2', stroke: 'rgba(0,0,0,0.35)', 'stroke-width': 1.2 }));
  if (mark === 'dots') p.append(s('circle', { cx: 3, cy: 3, r: 1.1, fill: ink }));
  if (mark === 'cross') p.append(s('path', { d: 'M3,0 v6 M0,3 h6', stroke: ink, 'stroke-width': 1 }));
  return p;
}

/** One hidden SVG holding every pattern; any SVG of the page fills with `url(#fill-…)`. */
export function patternDefs(): SVGSVGElement {
  const marks: Record<LayerKey | StatusClass, Mark> = {
    proxy: 'none',
    queue: 'hatch',
    worker: 'dots',
    app: 'cross',
    '2xx': 'none',
    '3xx': 'dots',
    '4xx': 'back',
    '5xx': 'hatch',
  };
  const looks: Array<[LayerKey | StatusClass, Look]> = [...Object.entries(LAYER), ...Object.entries(STATUS)] as Array<
    [LayerKey | StatusClass, Look]
  >;
  return s(
    'svg',
    { class: 'defs', width: 0, height: 0, 'aria-hidden': 'true' },
    s('defs', {}, ...looks.map(([k, l]) => pattern(l.pattern, l.color, marks[k]))),
  );
}

/** A small square of a look's pattern, for legends and table cells. */
export function swatch(look: Look): SVGSVGElement {
  return s(
    'svg',
    { class: 'swatch', width: 12, height: 12, viewBox: '0 0 12 12', 'aria-hidden': 'true' },
    s('rect', { width: 12, height: 12, rx: 2, fill: `url(#${look.pattern})` }),
  );
}
