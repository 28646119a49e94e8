// The programmatic API (src/index.ts) on the sources: start() resolves once the child stratum is
// ready and stop() drains it; a bad config rejects with the CLI's one line and its exit code.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, test } from 'vitest';
import { defineConfig, start } from '../../src/index.ts';
import { killLeftovers, makeTempDir } from '../helpers/processes.ts';

afterAll(killLeftovers);

test('start() serves the app through the front; stop() drains it and resolves with exit code 0', async () => {
  const dir = makeTempDir('api');
  writeFileSync(join(dir, 'app.mjs'), 'export default (req, res) => res.end(`api ${req.url}`);\n');
  const lines: string[] = [];
  const s = await start(
    defineConfig({
      app: { module: './app.mjs' },
      listen: '127.0.0.1:0',
      admin: { listen: '127.0.0.1:0' },
      pool: { workers: 1 },
    }),
    { cwd: dir, onLog: (line) => lines.push(line) },
  );
  try {
    expect(s.front).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(s.workers).toHaveLength(1);
    const res = await fetch(`${s.front}/x`);
    expect(await res.text()).toBe('api /x');
    expect((await fetch(`${s.admin}/stats`)).status).toBe(200);
  } finally {
    expect(await s.stop()).toBe(0);
  }
  expect(lines.some((l) => l.includes('"msg":"stratum ready"'))).toBe(true);
});

test('a config the schema refuses: start() rejects with the one line naming the field, exit code 2', async () => {
  const dir = makeTempDir('api');
  // @ts-expect-error the typings refuse it too
  const bad = defineConfig({ pool: { workers: 'many' } });
  const err = (await start(bad, { cwd: dir }).catch((e: unknown) => e)) as Error & { exitCode: number };
  expect(err.message).toMatch(/^stratum: pool\.workers: /);
  expect(err.exitCode).toBe(2);
});
