// Numbers as a person reads them, always with their unit.

const grouped = new Intl.NumberFormat('en', { maximumFractionDigits: 0 });

/** 0.27 ms, 9.58 ms, 42.1 ms, 301 ms, 12,345 ms. */
export function ms(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  return `${num(v)} ms`;
}

export function num(v: number): string {
  const a = Math.abs(v);
  if (a === 0) return '0';
  if (a < 10) return v.toFixed(2);
  if (a < 100) return v.toFixed(1);
  return grouped.format(v);
}

export function rate(v: number): string {
  return `${v === 0 ? '0' : v < 10 ? v.toFixed(1) : grouped.format(v)} req/s`;
}

export function pct(part: number, whole: number): string {
  if (whole <= 0) return '–';
  const p = (100 * part) / whole;
  return `${p > 0 && p < 1 ? p.toFixed(1) : Math.round(p)}%`;
}

export function mib(bytes: number): string {
  return `${(bytes / 1048576).toFixed(1)} MiB`;
}

/** "8 s", "3 min 5 s", "2 h 4 min" — how long ago, for `ago` labels. */
export function span(ms: number): string {
  const sec = Math.max(0, Math.round(ms / 1000));
  if (sec < 60) return `${sec} s`;
  const min = Math.floor(sec / 60);
  if (min < 60) return `${min} min ${sec % 60} s`;
  const hours = Math.floor(min / 60);
  if (hours < 48) return `${hours} h ${min % 60} min`;
  return `${Math.floor(hours / 24)} d`;
}

export function clock(t: number): string {
  const d = new Date(t);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':');
}
