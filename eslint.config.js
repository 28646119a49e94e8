// The lint gate of `npm test` (after `tsc --noEmit`, before vitest). typescript-eslint's recommended
// rules without type information: fast (no second type check; tsc already did it), and they catch
// what tsc lets through (unused code, stray `any`, empty blocks). Style is the project's own:
// 120 columns, single quotes, semicolons — nothing here reformats code.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

// 120 columns everywhere; a regexp literal may run longer (split, it no longer reads as one pattern).
const MAX_LEN = { code: 120, ignoreUrls: true, ignoreRegExpLiterals: true };

export default tseslint.config(
  {
    ignores: ['dist/**', 'dashboard/dist/**', 'node_modules/**', 'test/artifacts/**', 'coverage/**'],
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: {
      ecmaVersion: 2024,
      sourceType: 'module',
      globals: {
        process: 'readonly', console: 'readonly', Buffer: 'readonly', URL: 'readonly', setTimeout: 'readonly',
        clearTimeout: 'readonly', setInterval: 'readonly', clearInterval: 'readonly', setImmediate: 'readonly',
        fetch: 'readonly', AbortSignal: 'readonly', performance: 'readonly', structuredClone: 'readonly',
      },
    },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      'max-len': ['error', MAX_LEN],
      quotes: ['error', 'single', { avoidEscape: true, allowTemplateLiterals: true }],
      semi: ['error', 'always'],
      eqeqeq: ['error', 'always', { null: 'ignore' }],
      'no-var': 'error',
      'prefer-const': 'error',
      '@typescript-eslint/no-unused-vars': ['error', {
        argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none', ignoreRestSiblings: true,
      }],
      '@typescript-eslint/consistent-type-imports': ['error', { fixStyle: 'inline-type-imports' }],
      // The code base is strict TypeScript; `!` after a checked index is its idiom (noUncheckedIndexedAccess-style).
      '@typescript-eslint/no-non-null-assertion': 'off',
    },
  },
  {
    // Plain JavaScript: the bin entry points (no TypeScript on purpose: they must parse on any Node) and configs.
    files: ['**/*.js', '**/*.mjs', '**/*.cjs'],
    rules: { '@typescript-eslint/consistent-type-imports': 'off' },
  },
  {
    files: ['dashboard/src/**'],
    languageOptions: {
      globals: {
        window: 'readonly', document: 'readonly', EventSource: 'readonly', requestAnimationFrame: 'readonly',
        HTMLElement: 'readonly', getComputedStyle: 'readonly', localStorage: 'readonly',
      },
    },
  },
  {
    // TEMPORARY (issue 13): files that other engineers are rewriting right now (issue 12's request path, issue 14's
    // container test), listed one by one so that every other file, and any new one, is held to the rules. Here the
    // rules still run, as warnings: `npx eslint src test bench` lists what is left. Fix a file, drop its line;
    // drop the whole block when the list is empty.
    files: [
      'bench/apps/node-cluster.ts',
      'bench/apps/otlp-sink.ts',
      'bench/apps/undici-proxy.ts',
      'bench/procs.ts',
      'bench/prof-summary.ts',
      'bench/run.ts',
      'bench/stacks.ts',
      'bench/wrk.ts',
      'src/admin/dashboard.ts',
      'src/admin/server.ts',
      'src/appliance.test.ts',
      'src/appliance.ts',
      'src/host/app.ts',
      'src/observability/histogram.test.ts',
      'src/observability/histogram.ts',
      'src/observability/layers.test.ts',
      'src/observability/layers.ts',
      'src/observability/live.ts',
      'src/observability/metrics.test.ts',
      'src/observability/metrics.ts',
      'src/observability/observer.ts',
      'src/observability/recent.test.ts',
      'src/observability/recent.ts',
      'src/observability/tracing.ts',
      'src/pool/ipc.ts',
      'src/pool/supervisor.ts',
      'src/pool/worker.ts',
      'src/proxy/forward.ts',
      'src/proxy/routes.ts',
      'src/proxy/server.ts',
      'src/proxy/upstream-http.ts',
      'src/proxy/upstream-static.ts',
      'src/proxy/upstream-uwsgi.ts',
      'src/proxy/upstream.ts',
      'src/uwsgi/server-timeout.test.ts',
      'src/uwsgi/server.test.ts',
      'src/uwsgi/server.ts',
      'test/deploy/deploy.test.ts',
      'test/hardening/admin.test.ts',
      'test/hardening/fixtures/app.ts',
      'test/hardening/helpers.ts',
      'test/hardening/http-edge.test.ts',
      'test/hardening/overload.test.ts',
      'test/hardening/upstream-faults.test.ts',
      'test/hardening/uwsgi-fuzz.ts',
      'test/hardening/uwsgi.test.ts',
      'test/integration/apps.test.ts',
      'test/integration/async-listener.test.ts',
      'test/integration/http-upstream.test.ts',
      'test/integration/upgrade.test.ts',
      'test/observability/flask-traceparent.test.ts',
      'test/observability/metrics-off.test.ts',
      'test/observability/prometheus.test.ts',
      'test/observability/server-timing.test.ts',
      'test/observability/tracing.test.ts',
      'test/pool/cheaper.test.ts',
      'test/pool/pool.test.ts',
      'test/pool/split-harakiri.test.ts',
    ],
    rules: {
      'max-len': ['warn', MAX_LEN],
      '@typescript-eslint/consistent-type-imports': ['warn', { fixStyle: 'inline-type-imports' }],
      '@typescript-eslint/no-explicit-any': 'warn',
      'no-empty': 'warn',
      'no-control-regex': 'warn',
      'no-useless-escape': 'warn',
      'no-unused-private-class-members': 'warn',
      'preserve-caught-error': 'warn',
    },
  },
);
