import { defineConfig } from 'vitest/config';

// Each test file runs in its own process: SoftHSM2 reads SOFTHSM2_CONF once, when the module is
// first initialised, so files that provision their own fleet must not share a process.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    isolate: true,
    testTimeout: 120_000,
    hookTimeout: 180_000,
    maxWorkers: 2,
    reporters: ['default', './test/helpers/summary-reporter.ts'],
  },
});
