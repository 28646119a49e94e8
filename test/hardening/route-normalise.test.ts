// Routing on the normalised path (nginx `location` matching): a prefix route can be neither
// escaped ("/rec/../x" does not reach /rec) nor bypassed (encoded letters, dot segments, doubled
// slashes still reach /rec), while the raw request target goes upstream unchanged. Raw
// connections: fetch would normalise the URL before sending it.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT, startStratum, stopAllStratum, type StratumProcess } from '../helpers/stratum.ts';
import { exchange, portOf, recordingUpstream, writeConfig } from './helpers.ts';

afterAll(stopAllStratum);

const APP = join(REPO_ROOT, 'test/hardening/fixtures/app.ts');
let stratum: StratumProcess;
let rec: Awaited<ReturnType<typeof recordingUpstream>>;
let port: number;

beforeAll(async () => {
  rec = await recordingUpstream();
  const { dir, file } = writeConfig('route-normalise', '');
  const root = join(dir, 'public');
  mkdirSync(join(root, 'c'), { recursive: true });
  writeFileSync(join(root, 'ok.txt'), 'public file\n');
  // Where "//static/ok.txt" cut at the prefix's length ("c/ok.txt") would land.
  writeFileSync(join(root, 'c', 'ok.txt'), 'not the file asked for\n');
  writeFileSync(file, `
listen: 127.0.0.1:0
admin: { listen: 127.0.0.1:0 }
app: { module: ${APP} }
pool: { workers: 1 }
routes:
  - { path: /, target: pool }
  - { path: /rec, target: "${rec.url}" }
  - { path: /static, target: "static:${root}" }
`);
  stratum = await startStratum(['serve', '--config', file]);
  port = portOf(stratum.front!);
});
afterAll(async () => {
  await stratum?.stop();
  rec?.close();
});

const get = (target: string) =>
  exchange(port, `GET ${target} HTTP/1.1\r\nHost: route.test\r\nConnection: close\r\n\r\n`);

describe('routes match the normalised path', () => {
  const escapes = ['/rec/../echo', '/rec/%2e%2e/echo', '/rec/./../echo'];
  it.each(escapes)('%s escapes /rec: the pool answers, with the raw target', async (target) => {
    const before = rec.seen.length;
    const r = await get(target);
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body.toString()).url).toBe(target);
    expect(rec.seen.length).toBe(before);
  });

  const under = ['/x/../rec/secret', '/%72ec/x', '//rec/x', '/./rec/x', '/rec'];
  it.each(under)('%s reaches /rec, forwarded unchanged', async (target) => {
    const before = rec.seen.length;
    const r = await get(target);
    expect(r.status).toBe(200);
    expect(r.body.toString()).toBe('recorded');
    expect(rec.seen.length).toBe(before + 1);
    expect(rec.seen.at(-1)!.url).toBe(target);
  });
});

describe('a static route reached through a non-canonical path', () => {
  it('serves its canonical path', async () => {
    const r = await get('/static/ok.txt');
    expect(r.status).toBe(200);
    expect(r.body.toString()).toBe('public file\n');
  });

  it.each(['//static/ok.txt', '/%73tatic/ok.txt', '/x/../static/ok.txt'])('%s: 403, never another file', async (t) => {
    const r = await get(t);
    expect(r.status).toBe(403);
    expect(r.raw).not.toContain('not the file asked for');
  });
});
