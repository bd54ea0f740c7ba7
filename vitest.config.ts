import { defineConfig } from 'vitest/config';

// mke2fs, debugfs and e2fsck live in /usr/sbin, which a non-login PATH may lack.
process.env.PATH = [process.env.PATH, '/usr/sbin', '/sbin'].filter(Boolean).join(':');

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Integration tests start real processes (Azurite, the emulator, the host); the
    // machine has 2 cores, so keep parallelism modest and deadlines generous.
    pool: 'forks',
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    testTimeout: 60_000,
    hookTimeout: 120_000,
    teardownTimeout: 30_000,
  },
});
