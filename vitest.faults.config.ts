import { defineConfig } from 'vitest/config';

// The fault suite alone (`npm run test:faults`, FERRY_FAULTS=full): every scenario at the
// issue's figures, one file at a time (each runs a whole stack and kills parts of it), and the
// table of all scenarios at the end. The default `npm test` runs the same files in short mode.
process.env.PATH = [process.env.PATH, '/usr/sbin', '/sbin'].filter(Boolean).join(':');

export default defineConfig({
  test: {
    include: ['test/faults/**/*.fault.test.ts'],
    globalSetup: ['test/faults/global-setup.ts'],
    pool: 'forks',
    poolOptions: { forks: { singleFork: true } },
    testTimeout: 1_800_000,
    hookTimeout: 300_000,
    teardownTimeout: 120_000,
  },
});
