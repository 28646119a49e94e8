import { defineConfig } from 'vitest/config';

// The behaviour suites run twice, once per topology (STRATUM_TOPOLOGY reaches every `stratum` the
// tests start): the front in every worker (the default) and the front in the master.
const BEHAVIOUR = [
  'test/integration/**/*.test.ts',
  'test/interop/**/*.test.ts',
  'test/pool/**/*.test.ts',
  'test/hardening/**/*.test.ts',
  'test/observability/**/*.test.ts',
];

export default defineConfig({
  test: {
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    fileParallelism: false,
    reporters: ['default'],
    projects: [
      {
        extends: true,
        test: {
          name: 'worker',
          include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
          env: { STRATUM_TOPOLOGY: 'worker' },
        },
      },
      {
        extends: true,
        test: { name: 'master', include: BEHAVIOUR, env: { STRATUM_TOPOLOGY: 'master' } },
      },
    ],
  },
});
