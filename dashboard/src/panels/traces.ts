// The slowest and the failed requests of the last minutes (the master's recent-trace memory),
// and the waterfall of the one picked: a bar per span from the front proxy down to the app
// handler, with the process that ran it. `#trace=<id>` in the address opens that trace.

import { getJson } from '../api.ts';
import { h, panel } from '../dom.ts';
import { ms, span } from '../format.ts';
import { LAYER, swatch } from '../palette.ts';
import { LAYER_KEYS, type RecentTrace } from '../model.ts';

const POLL_MS = 3000;
const LIST_LIMIT = 15;

function statusClass(status: number): string {
  return status >= 500 ? 's5xx' : status >= 400 ? 's4xx' : status >= 300 ? 's3xx' : 's2xx';
}

function niceStep(max: number): number {
  const raw = max / 4;
  const mag = 10 ** Math.floor(Math.log10(raw || 1));
  for (const f of [1, 2, 2.5, 5, 10]) if (raw <= f * mag) return f * mag;
  return 10 * mag;
}

/** Time in each layer as a thin stacked bar; widths are shares of the request. */
function layerBar(t: RecentTrace): HTMLElement {
  const bar = h('span', { class: 'mini', 'aria-hidden': 'true' });
  if (!t.layers) return bar;
  const whole = LAYER_KEYS.reduce((a, k) => a + Math.max(0, t.layers![k]), 0);
  for (const k of LAYER_KEYS) {
    const v = t.layers[k];
    if (v <= 0) continue;
    const seg = h('span', { class: LAYER[k].pattern });
    // Shares summing to 1: flex-grow below 1 in total would leave the bar part empty.
    seg.style.flexGrow = String(v / whole);
    bar.append(seg);
  }
  return bar;
}

export class TracesPanel {
  readonly root: HTMLElement;
  #slow = h('ol', { class: 'trace-list', 'data-kind': 'slow' });
  #failed = h('ol', { class: 'trace-list', 'data-kind': 'failed' });
  #detail = h('div', { class: 'waterfall-box', 'aria-live': 'polite' });
  #selected: RecentTrace | null = null;
  #now = Date.now();
  #error = h('p', { class: 'note error', hidden: true });

  constructor() {
    const p = panel('traces', 'Slow and failed requests', 'pick one to see its waterfall');
    p.body.append(
      this.#error,
      h(
        'div',
        { class: 'trace-lists' },
        h('div', {}, h('h3', {}, 'Slowest, last 10 min'), this.#slow),
        h('div', {}, h('h3', {}, 'Failed (5xx), latest first'), this.#failed),
      ),
      this.#detail,
    );
    this.root = p.root;
    this.#detail.append(h('p', { class: 'empty' }, 'No request picked yet.'));
    const id = new URLSearchParams(location.hash.slice(1)).get('trace');
    if (id)
      void getJson<RecentTrace>(`/traces/${encodeURIComponent(id)}`).then(
        (t) => this.#show(t),
        () => {},
      );
    void this.#poll();
  }

  async #poll(): Promise<void> {
    try {
      const [slow, failed] = await Promise.all([
        getJson<{ traces: RecentTrace[] }>(`/traces?kind=slow&limit=${LIST_LIMIT}`),
        getJson<{ traces: RecentTrace[] }>(`/traces?kind=failed&limit=${LIST_LIMIT}`),
      ]);
      this.#error.hidden = true;
      this.#now = Date.now();
      this.#fill(this.#slow, slow.traces, 'No requests in the last 10 minutes.');
      this.#fill(this.#failed, failed.traces, 'No failed requests. ✓');
    } catch (err) {
      this.#error.hidden = false;
      this.#error.textContent = `Could not load the recent traces: ${(err as Error).message}`;
    }
    setTimeout(() => void this.#poll(), POLL_MS);
  }

  #fill(list: HTMLElement, traces: RecentTrace[], empty: string): void {
    // The list is rebuilt on every poll: keep the keyboard focus on the same request.
    const focused = list.contains(document.activeElement)
      ? (document.activeElement as HTMLElement).dataset.traceId
      : undefined;
    if (traces.length === 0) {
      list.replaceChildren(h('li', { class: 'empty' }, empty));
      return;
    }
    list.replaceChildren(
      ...traces.map((t) => {
        const button = h(
          'button',
          {
            type: 'button',
            class: 'trace',
            'data-trace-id': t.id,
            'data-duration': t.durationMs.toFixed(3),
            'aria-pressed': this.#selected?.id === t.id ? 'true' : 'false',
          },
          h('span', { class: 't-dur' }, ms(t.durationMs)),
          h('span', { class: `t-status ${statusClass(t.status)}` }, t.status),
          h('span', { class: 't-path', title: `${t.method} ${t.path}` }, `${t.method} ${t.path}`),
          layerBar(t),
          h('span', { class: 't-meta' }, `${t.workerPid ? `pid ${t.workerPid} · ` : ''}${span(this.#now - t.at)} ago`),
        );
        button.addEventListener('click', () => this.#show(t));
        return h('li', {}, button);
      }),
    );
    if (focused) list.querySelector<HTMLElement>(`button[data-trace-id="${CSS.escape(focused)}"]`)?.focus();
  }

  #show(t: RecentTrace): void {
    this.#selected = t;
    history.replaceState(history.state, '', `#trace=${encodeURIComponent(t.id)}`);
    this.root
      .querySelectorAll<HTMLButtonElement>('button.trace')
      .forEach((b) => b.setAttribute('aria-pressed', String(b.dataset.traceId === t.id)));
    const total = Math.max(t.durationMs, ...t.spans.map((sp) => sp.start + sp.duration), 0.001);
    const step = niceStep(total);
    const at = (v: number) => `${Math.min(100, (100 * v) / total)}%`;
    const axis = h('div', { class: 'wf-axis', 'aria-hidden': 'true' });
    for (let v = 0; v <= total + 1e-9; v += step) {
      const tick = h('span', {}, ms(v));
      tick.style.left = at(v);
      if (v > total * 0.85) tick.classList.add('end');
      axis.append(tick);
    }
    const rows = t.spans.map((sp) => {
      const bar = h('div', { class: `wf-bar ${LAYER[sp.layer].pattern}` });
      bar.style.left = at(sp.start);
      bar.style.width = `max(2px, ${at(sp.duration)})`;
      return h(
        'div',
        { class: 'wf-row', 'data-layer': sp.layer, 'data-pid': sp.pid, role: 'row' },
        h(
          'div',
          { class: 'wf-label', role: 'rowheader' },
          swatch(LAYER[sp.layer]),
          h('b', {}, sp.name),
          h('span', { class: 'wf-where' }, `${LAYER[sp.layer].label} · pid ${sp.pid}`),
        ),
        h('div', { class: 'wf-track', role: 'cell' }, bar),
        h('div', { class: 'wf-dur', role: 'cell' }, ms(sp.duration)),
      );
    });
    const self = t.layers
      ? h(
          'ul',
          { class: 'share-labels' },
          ...LAYER_KEYS.map((k) => h('li', {}, swatch(LAYER[k]), h('b', {}, LAYER[k].label), ` ${ms(t.layers![k])}`)),
        )
      : null;
    this.#detail.replaceChildren(
      h(
        'article',
        { class: 'waterfall', 'data-trace-id': t.id },
        h(
          'header',
          {},
          h('h3', {}, h('span', { class: `t-status ${statusClass(t.status)}` }, t.status), ` ${t.method} ${t.path}`),
          h(
            'p',
            { class: 'note' },
            `${ms(t.durationMs)} total · ${new Date(t.at).toLocaleTimeString('en-GB')} · ${t.upstream}` +
              `${t.workerPid ? ` (pid ${t.workerPid})` : ''} · route ${t.route}`,
            t.error ? h('span', { class: 'error' }, ` · ${t.error}`) : null,
          ),
          h('p', { class: 'note mono' }, `${t.traceId ? `trace ${t.traceId} · ` : ''}request ${t.requestId}`),
        ),
        h(
          'div',
          { class: 'wf-grid', role: 'table', 'aria-label': 'spans' },
          h('div', { class: 'wf-row wf-head' }, h('div', {}, 'span'), axis, h('div', { class: 'wf-dur' }, 'duration')),
          ...rows,
        ),
        self ? h('div', { class: 'wf-self' }, h('span', { class: 'note' }, 'time in each layer: '), self) : null,
      ),
    );
  }
}
