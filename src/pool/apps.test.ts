// The pure parts of several apps: the cron schedule, env files, the apps a config names, and how
// `stratum top` shows them.
import { describe, expect, it } from 'vitest';
import { renderTop } from '../admin/top.ts';
import { schema } from '../config/schema.ts';
import { defaultAppName, parseEnvFile, resolveApps, type ServiceStats } from './apps.ts';
import { nextRun, parseCron, type CronSchedule } from './cron.ts';

function cron(text: string): CronSchedule {
  const c = parseCron(text);
  if (typeof c === 'string') throw new Error(c);
  return c;
}

describe('cron schedules', () => {
  it('finds the next minute each form names', () => {
    const from = new Date(2026, 11, 1, 10, 44, 30); // Tue 1 Dec 2026, 10:44:30 local
    expect(nextRun(cron('* * * * *'), from)).toEqual(new Date(2026, 11, 1, 10, 45));
    expect(nextRun(cron('*/15 * * * *'), from)).toEqual(new Date(2026, 11, 1, 10, 45));
    expect(nextRun(cron('0 3 * * *'), from)).toEqual(new Date(2026, 11, 2, 3, 0));
    expect(nextRun(cron('30 9-17/4 * * 1-5'), from)).toEqual(new Date(2026, 11, 1, 13, 30));
    expect(nextRun(cron('0 0 1 1 *'), from)).toEqual(new Date(2027, 0, 1, 0, 0));
    // Sunday is 0 or 7; day of month and day of week restricted together: either matches (Vixie cron).
    expect(nextRun(cron('0 12 * * 7'), from)).toEqual(new Date(2026, 11, 6, 12, 0));
    expect(nextRun(cron('0 12 15 * 0'), from)).toEqual(new Date(2026, 11, 6, 12, 0));
    expect(nextRun(cron('0 0 30 2 *'), from)).toBeNull();
  });

  it('refuses what it cannot read, naming the field', () => {
    expect(parseCron('0 3 * *')).toMatch(/expected 5 fields/);
    expect(parseCron('60 * * * *')).toMatch(/^minute: expected values 0\.\.59/);
    expect(parseCron('0 3 * * mon')).toMatch(/^day of week: expected a number/);
    expect(parseCron('*/0 * * * *')).toMatch(/step must be at least 1/);
  });

  it('is checked by the schema', () => {
    const r = schema.safeParse({ apps: [{ name: 'q', kind: 'process', module: '/x.js', cron: '0 25 * * *' }] });
    expect(r.success).toBe(false);
    expect(r.error!.issues[0]!.path).toEqual(['apps', 0, 'cron']);
  });
});

describe('apps in the config', () => {
  it('parses env files as dotenv does', () => {
    const text =
      '# comment\n\nA=1\nexport B = two words \nC="quoted # kept\\nnext"\nD=\'single\'\nE=x # note\nbad line\n';
    expect(parseEnvFile(text)).toEqual({
      A: '1',
      B: 'two words',
      C: 'quoted # kept\nnext',
      D: 'single',
      E: 'x',
    });
  });

  it('app.module is the app named default; listed apps take the pool settings they leave null', () => {
    const c = schema.parse({
      app: { module: '/srv/main.js' },
      pool: { workers: 4, harakiri: 30, cheaper: { enabled: true, min: 2, max: 4 } },
      apps: [
        { name: 'api', module: '/srv/api.js', workers: 2, env: { N: 1, ON: true } },
        { name: 'jobs', kind: 'process', module: '/srv/jobs.js' },
      ],
      routes: [
        { path: '/api/', target: 'pool:api' },
        { path: '/', target: 'pool' },
      ],
    });
    const specs = resolveApps(c);
    expect(specs.map((s) => [s.name, s.kind, s.config.pool.workers, s.config.pool.harakiri])).toEqual([
      ['default', 'http', 4, 30],
      ['api', 'http', 2, 30],
      ['jobs', 'process', 1, 30],
    ]);
    // The global cheaper range is cut to the app's own worker count.
    expect(specs[1]!.config.pool.cheaper).toEqual({ enabled: true, min: 2, max: 2 });
    expect(specs[1]!.env).toEqual({ N: '1', ON: 'true' });
    expect(specs[1]!.config.app.module).toBe('/srv/api.js');
    expect(defaultAppName(specs)).toBe('default');
    expect(defaultAppName(specs.slice(1))).toBe('api');
  });

  it('refuses a route to an app that does not exist or serves no HTTP, and duplicate names', () => {
    const issue = (input: unknown) => {
      const r = schema.safeParse(input);
      return r.success ? null : { path: r.error.issues[0]!.path.join('.'), message: r.error.issues[0]!.message };
    };
    const apps = [
      { name: 'web', module: '/w.js' },
      { name: 'jobs', kind: 'process', module: '/j.js' },
    ];
    expect(issue({ apps, routes: [{ path: '/', target: 'pool:nope' }] })).toEqual({
      path: 'routes.0.target',
      message: 'no app named "nope" (apps: web, jobs)',
    });
    expect(issue({ apps, routes: [{ path: '/', target: 'pool:jobs' }] })?.message).toMatch(/kind process/);
    expect(issue({ apps: [...apps, { name: 'web', module: '/x.js' }] })?.path).toBe('apps.2.name');
    expect(issue({ app: { module: '/m.js' }, apps: [{ name: 'default', module: '/x.js' }] })?.path).toBe('apps.0.name');
    expect(issue({ apps, routes: [{ path: '/', target: 'pool:bad name' }] })?.path).toBe('routes.0.target');
  });
});

describe('stratum top with several apps', () => {
  const worker = (pid: number, app: string) => ({
    app,
    id: 1,
    pid,
    state: 'idle' as const,
    requests: 3,
    inflight: 0,
    exceptions: 0,
    harakiri: 0,
    rss: 50 * 1048576,
    avgMs: 1.5,
    startedAt: '2026-12-01T10:00:00.000Z',
    respawns: 0,
    generation: 0,
  });
  const counters = { rejected: 0, reloads: 1, respawns: 0, harakiriKills: 0, harakiriTimeouts: 0, recycles: 0 };
  const pool = (app: string, pid: number) => ({
    ...counters,
    exceptions: 0,
    app,
    topology: 'worker' as const,
    workers: [worker(pid, app)],
    queue: 0,
    queueLimit: 1024,
    socket: `unix:/tmp/${app}.sock`,
  });
  it('draws one section per app: a pool with its workers, a process app with its processes', () => {
    const stats: ServiceStats = {
      ...pool('web', 11),
      workers: [worker(11, 'web'), worker(22, 'api')],
      apps: [
        { ...pool('web', 11), name: 'web', kind: 'http' },
        { ...pool('api', 22), name: 'api', kind: 'http' },
        {
          name: 'jobs',
          kind: 'process',
          restarts: 2,
          processes: [
            {
              id: 1,
              pid: 33,
              up: true,
              rss: 20 * 1048576,
              cpuSeconds: 1.25,
              restarts: 2,
              startedAt: '2026-12-01T10:01:02.000Z',
            },
          ],
        },
      ],
    };
    const out = renderTop(stats, 'admin', new Date('2026-12-01T10:05:00Z'));
    const lines = out.split('\n');
    const at = (prefix: string) => lines.findIndex((l) => l.startsWith(prefix));
    expect(at('app web (http)')).toBeGreaterThan(0);
    expect(lines[at('app web (http)') + 2]).toMatch(/^1\s+11\s+idle/);
    expect(lines[at('app api (http)') + 2]).toMatch(/^1\s+22\s+idle/);
    expect(lines[at('app jobs (process)')]).toContain('restarts 2');
    expect(lines[at('app jobs (process)') + 2]).toMatch(/^1\s+33\s+up\s+20\.0\s+1\.25\s+2\s+10:01:02$/);
  });

  it('a lone app looks as it did before apps', () => {
    const stats = {
      ...pool('default', 11),
      apps: [{ ...pool('default', 11), name: 'default', kind: 'http' as const }],
    };
    const out = renderTop(stats, 'admin', new Date('2026-12-01T10:05:00Z'));
    expect(out).toContain('socket unix:/tmp/default.sock');
    expect(out).not.toContain('app default');
    expect(out).toMatch(/^1\s+11\s+idle/m);
  });
});
