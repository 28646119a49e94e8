// Element builders for HTML and SVG. No `style` attribute is ever written: the admin listener's
// Content-Security-Policy refuses inline styles, so sizes set at run time go through `el.style`.

type Attrs = Record<string, string | number | boolean | null | undefined>;
export type Child = Node | string | number | null | undefined | false;

const SVG_NS = 'http://www.w3.org/2000/svg';

function build<E extends Element>(el: E, attrs: Attrs, children: Child[]): E {
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.append(typeof c === 'number' ? String(c) : c);
  }
  return el;
}

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  return build(document.createElement(tag), attrs, children);
}

export function s<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: Child[]
): SVGElementTagNameMap[K] {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** A titled card: `<section class="panel"><header><h2>…` with room for controls beside the title. */
export function panel(
  id: string,
  title: string,
  note?: string,
): { root: HTMLElement; head: HTMLElement; body: HTMLElement } {
  const head = h('header', { class: 'panel-head' }, h('h2', {}, title), note ? h('p', { class: 'note' }, note) : null);
  const body = h('div', { class: 'panel-body' });
  const root = h('section', { class: 'panel', id }, head, body);
  return { root, head, body };
}
