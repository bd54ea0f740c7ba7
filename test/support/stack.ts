/**
 * The integration tests' stack: the same Azurite, Service Bus emulator and functions host as
 * `npm start`, on free ports in a temporary directory (local/stack/ephemeral.ts).
 * `FERRY_TEST_VERBOSE=1` echoes their output to stderr.
 */
import { resolve } from 'node:path';
import { startEphemeralStack, type EphemeralStack, type EphemeralStackOptions } from '../../local/stack/ephemeral';

export type TestStack = EphemeralStack;

export const ROOT = resolve(__dirname, '../..');

export function startTestStack(options: EphemeralStackOptions = {}): Promise<TestStack> {
  return startEphemeralStack({
    ...options,
    onLine: (name, line) => {
      if (process.env.FERRY_TEST_VERBOSE) process.stderr.write(`[${name}] ${line}\n`);
      options.onLine?.(name, line);
    },
  });
}
