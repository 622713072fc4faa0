// ESLint, type-aware: above all `no-deprecated`, so that a read of a property the Hetzner API
// description marks deprecated (the generated src/hcloud/openapi.ts carries `@deprecated`) fails
// `npm test` before the API stops sending it.
import tseslint from 'typescript-eslint';

export default tseslint.config(
  {
    // Generated from spec/hcloud/openapi.json (`npm run gen:types`); build output.
    ignores: ['src/hcloud/openapi.ts', 'dist/**', 'node_modules/**'],
  },
  {
    files: ['src/**/*.ts', 'test/**/*.ts', 'bench/**/*.ts', 'scripts/**/*.ts'],
    extends: [tseslint.configs.recommendedTypeChecked],
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      '@typescript-eslint/no-deprecated': 'error',
      // tap awaits the subtests that `t.test()` queues; its promise is not ours to await.
      '@typescript-eslint/no-floating-promises': [
        'error',
        { allowForKnownSafeCalls: [{ from: 'package', name: 'test', package: '@tapjs/test' }] },
      ],
      // As `only-throw-error` by default: an AbortSignal's reason (`any`) or a caught `unknown` passes on as it came.
      '@typescript-eslint/prefer-promise-reject-errors': ['error', { allowThrowingAny: true, allowThrowingUnknown: true }],
      // `const { a: _a, ...rest } = o` is how a field is left out.
      '@typescript-eslint/no-unused-vars': ['error', { ignoreRestSiblings: true }],
      // `async` without `await` is on purpose: a throw becomes a rejection (command runners, tap callbacks).
      '@typescript-eslint/require-await': 'off',
    },
  },
);
