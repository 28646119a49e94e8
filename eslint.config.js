// The lint gate of `npm test` (after `tsc --noEmit`, before vitest). typescript-eslint's recommended
// rules without type information: fast (no second type check; tsc already did it), and they catch
// what tsc lets through (unused code, stray `any`, empty blocks). Style is the project's own:
// 120 columns, single quotes, semicolons — nothing here reformats code.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

// 120 columns everywhere; a regexp literal may run longer (split, it no longer reads as one pattern).
const MAX_LEN = { code: 120, ignoreUrls: true, ignoreRegExpLiterals: true };
const UNUSED = { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none', ignoreRestSiblings: true };

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
      '@typescript-eslint/no-unused-vars': ['error', UNUSED],
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
    // TEMPORARY (issue 13): the areas other engineers are rewriting right now — issue 12's request path, issue
    // 14's container tests — and the few shared files they have open. Here the rules still run, as warnings
    // (`npx eslint .` lists them; `npm test` runs `eslint --quiet`, errors only). Everything else, new files
    // included, is held to the rules. Fix an area, drop its line; drop the whole block when it is empty.
    files: [
      'src/proxy/routes.ts', 'src/proxy/routes.test.ts', 'src/proxy/upstream.ts', 'src/admin/server.ts',
      'src/observability/tracing.ts', 'test/observability/**', 'test/hardening/**', 'test/deploy/**', 'deploy/**',
      'bench/**', 'test/fixtures/apps/ws-shared.ts',
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
      '@typescript-eslint/no-unused-vars': ['warn', UNUSED],
    },
  },
);
