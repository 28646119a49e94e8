// A five-field cron schedule (minute hour day-of-month month day-of-week), as PM2's `cron_restart`
// takes it: numbers, `*`, ranges `a-b`, steps `*/n` and `a-b/n`, lists `a,b`. Day-of-week 0 or 7 is
// Sunday. As in Vixie cron, when both day fields are restricted a day matching either is run.
// Times are the machine's local time. No names (`mon`, `jan`) and no `@daily`: the schema says so.

const FIELDS = [
  { name: 'minute', min: 0, max: 59 },
  { name: 'hour', min: 0, max: 23 },
  { name: 'day of month', min: 1, max: 31 },
  { name: 'month', min: 1, max: 12 },
  { name: 'day of week', min: 0, max: 7 },
] as const;

export interface CronSchedule {
  readonly text: string;
  /** Allowed values per field; day-of-week 7 folded into 0. */
  readonly sets: ReadonlyArray<ReadonlySet<number>>;
  readonly anyDayOfMonth: boolean;
  readonly anyDayOfWeek: boolean;
}

/** The schedule, or the reason the text is not one. */
export function parseCron(text: string): CronSchedule | string {
  const parts = text.trim().split(/\s+/);
  if (parts.length !== 5) return `expected 5 fields (minute hour day month weekday), got ${parts.length}`;
  const sets: Set<number>[] = [];
  for (let i = 0; i < 5; i++) {
    const f = FIELDS[i]!;
    const set = new Set<number>();
    for (const item of parts[i]!.split(',')) {
      const m = /^(\*|(\d+)(?:-(\d+))?)(?:\/(\d+))?$/.exec(item);
      if (!m) return `${f.name}: expected a number, a range a-b, * or a step like */5, got "${item}"`;
      const lo = m[1] === '*' ? f.min : Number(m[2]);
      const hi = m[1] === '*' ? f.max : m[3] !== undefined ? Number(m[3]) : m[4] !== undefined ? f.max : lo;
      const step = m[4] !== undefined ? Number(m[4]) : 1;
      if (lo < f.min || hi > f.max || lo > hi) return `${f.name}: expected values ${f.min}..${f.max}, got "${item}"`;
      if (step < 1) return `${f.name}: a step must be at least 1, got "${item}"`;
      for (let v = lo; v <= hi; v += step) set.add(i === 4 && v === 7 ? 0 : v);
    }
    sets.push(set);
  }
  return { text, sets, anyDayOfMonth: parts[2] === '*', anyDayOfWeek: parts[4] === '*' };
}

function matches(s: CronSchedule, d: Date): boolean {
  const [min, hour, dom, month, dow] = s.sets as ReadonlyArray<ReadonlySet<number>>;
  if (!min!.has(d.getMinutes()) || !hour!.has(d.getHours()) || !month!.has(d.getMonth() + 1)) return false;
  const byDom = dom!.has(d.getDate());
  const byDow = dow!.has(d.getDay());
  if (s.anyDayOfMonth && s.anyDayOfWeek) return true;
  if (s.anyDayOfMonth) return byDow;
  if (s.anyDayOfWeek) return byDom;
  return byDom || byDow;
}

/** The first minute strictly after `from` that the schedule names, or null if none within ~4 years. */
export function nextRun(s: CronSchedule, from: Date): Date | null {
  const d = new Date(from.getTime());
  d.setSeconds(0, 0);
  d.setMinutes(d.getMinutes() + 1);
  // Bounded: a schedule like "0 0 31 2 *" never runs; four years of minutes covers every leap day.
  for (let i = 0; i < 4 * 366 * 24 * 60; i++) {
    if (matches(s, d)) return d;
    d.setMinutes(d.getMinutes() + 1);
  }
  return null;
}
