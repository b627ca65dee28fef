import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // tfjs keeps one global engine per process: each test file gets its own.
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 60_000,
  },
});
