// Stratum's live dashboard: one page on the admin listener that tells at a glance which layer —
// proxy, queue, worker or app — is slow right now. Everything comes from the admin API: the
// /live stream (one tick a second, the last minutes first) and /traces for single requests.

import { openLive, type LinkState } from './api.ts';
import { h } from './dom.ts';
import { clock, span } from './format.ts';
import { summarize, type LiveTick } from './model.ts';
import { patternDefs } from './palette.ts';
import { FlowsPanel } from './panels/flows.ts';
import { LatencyPanel, TimeSharePanel } from './panels/latency.ts';
import { SummaryPanel } from './panels/summary.ts';
import { TracesPanel } from './panels/traces.ts';
import { TrafficPanel } from './panels/traffic.ts';
import { WorkersPanel } from './panels/workers.ts';

/** "Right now" is the last 10 seconds: long enough to hold a few requests, short enough to move. */
const NOW_SECONDS = 10;
const KEEP_TICKS = 900;
const WINDOWS = [
  { label: '1 min', ms: 60_000 },
  { label: '5 min', ms: 300_000 },
];

const LINK_TEXT: Record<LinkState, string> = {
  connecting: 'connecting…',
  connected: 'connected',
  reconnecting: 'reconnecting…',
  unauthorized: 'token needed: open this page with ?token=…',
};

let ticks: LiveTick[] = [];
let windowMs = 300_000;
let lastTickAt = 0;
let linkState: LinkState = 'connecting';

const summary = new SummaryPanel();
const latency = new LatencyPanel();
const timeShare = new TimeSharePanel();
const traffic = new TrafficPanel();
const workers = new WorkersPanel();
const traces = new TracesPanel();
const routes = new FlowsPanel(NOW_SECONDS);

const link = h(
  'div',
  { class: 'link', role: 'status', 'aria-live': 'polite', 'data-testid': 'link' },
  h('span', { class: 'dot', 'aria-hidden': 'true' }),
  h('span', { class: 'link-text' }),
  h('span', { class: 'link-age' }),
);
const windowButtons = WINDOWS.map((w) => {
  const b = h(
    'button',
    { type: 'button', 'data-window-s': w.ms / 1000, 'aria-pressed': String(w.ms === windowMs) },
    w.label,
  );
  b.addEventListener('click', () => {
    windowMs = w.ms;
    for (const x of windowButtons) x.setAttribute('aria-pressed', String(x === b));
    render();
  });
  return b;
});

document
  .getElementById('app')!
  .replaceChildren(
    patternDefs(),
    h(
      'header',
      { class: 'top' },
      h('div', { class: 'brand' }, h('h1', {}, 'Stratum'), h('span', { class: 'where' }, location.host)),
      h(
        'div',
        { class: 'controls' },
        h('div', { class: 'segmented', role: 'group', 'aria-label': 'time window' }, ...windowButtons),
        link,
      ),
    ),
    h(
      'main',
      {},
      summary.root,
      latency.root,
      h('div', { class: 'pair' }, timeShare.root, traffic.root),
      workers.root,
      traces.root,
      routes.root,
    ),
    h(
      'footer',
      {},
      'Data: ',
      h('code', {}, '/live'),
      ' (Server-Sent Events), ',
      h('code', {}, '/stats'),
      ', ',
      h('code', {}, '/traces'),
      ', ',
      h('code', {}, '/metrics'),
      ' on this admin listener.',
    ),
  );

function showLink(): void {
  link.dataset.state = linkState;
  link.querySelector('.link-text')!.textContent = LINK_TEXT[linkState];
  const age = Date.now() - lastTickAt;
  link.querySelector('.link-age')!.textContent =
    lastTickAt === 0
      ? ''
      : linkState === 'connected' && age > 3000
        ? ` · no data for ${span(age)}`
        : ` · ${clock(lastTickAt)}`;
}

function render(): void {
  const last = ticks.at(-1);
  const sum = summarize(ticks, NOW_SECONDS);
  summary.update(sum, last?.pool ?? null, last?.connections);
  latency.update(ticks, windowMs, sum);
  timeShare.update(ticks, windowMs, sum);
  traffic.update(ticks, windowMs, sum);
  workers.update(last?.pool ?? null, last?.t ?? Date.now());
  routes.update(ticks);
  showLink();
}

openLive({
  history(all) {
    ticks = all.slice(-KEEP_TICKS);
    lastTickAt = ticks.length ? Date.now() : lastTickAt;
    render();
  },
  tick(t) {
    ticks.push(t);
    if (ticks.length > KEEP_TICKS) ticks.splice(0, ticks.length - KEEP_TICKS);
    lastTickAt = Date.now();
    render();
  },
  state(s) {
    linkState = s;
    showLink();
  },
});
setInterval(showLink, 1000);
render();
