import { readFileSync } from 'node:fs';
import { expect, test } from 'vitest';
import { configDocs } from './docs.ts';
import { schema } from './schema.ts';

test('docs/config.md is up to date with the schema', () => {
  const committed = readFileSync(new URL('../../docs/config.md', import.meta.url), 'utf8');
  if (committed !== configDocs()) {
    expect.fail('docs/config.md is stale: run `npm run docs:config` and commit the result');
  }
});

test('the reference has a row for every field of every section', () => {
  const docs = configDocs();
  const defaults = schema.parse({});
  for (const [section, value] of Object.entries(defaults)) {
    if (section === 'routes') continue;
    if (value !== null && typeof value === 'object') {
      for (const field of Object.keys(value)) expect(docs).toContain(`| \`${section}.${field}\` |`);
    } else {
      expect(docs).toContain(`| \`${section}\` |`);
    }
  }
  for (const field of ['host', 'path', 'target', 'readTimeout', 'harakiri', 'clientMaxBodySize']) {
    expect(docs).toContain(`| \`routes[].${field}\` |`);
  }
});

test('the reference shows input defaults, not machine-specific values', () => {
  const docs = configDocs();
  expect(docs).toContain('| `proxy.clientMaxBodySize` | size | `"100m"` |');
  expect(docs).toMatch(/\| `pool\.workers` \| integer ≥ 1 \| CPU count/);
});
