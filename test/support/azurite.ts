/**
 * Azurite alone, as a child process on free ports in a temp dir, for tests of the storage
 * adapters that need no emulator or host.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SupervisedChild, tcpReady } from '../../local/stack/children';
import { storageConnectionString } from '../../local/stack/stack';
import { freePorts } from './ports';
import { ROOT } from './stack';

export interface TestAzurite {
  connectionString: string;
  stop(): Promise<void>;
}

export async function startAzurite(): Promise<TestAzurite> {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-azurite-'));
  const [blob, queue, table] = (await freePorts(3)) as [number, number, number];
  const logs: string[] = [];
  const child = new SupervisedChild(
    {
      name: 'azurite',
      command: process.execPath,
      args: [
        require.resolve('azurite/dist/src/azurite.js', { paths: [ROOT] }),
        '--location', dir, '--blobPort', String(blob), '--queuePort', String(queue), '--tablePort', String(table),
        '--skipApiVersionCheck', '--disableTelemetry', '--silent',
      ],
      env: process.env,
      cwd: dir,
      ready: async () => (await tcpReady(blob)) && (await tcpReady(queue)) && (await tcpReady(table)),
    },
    (_n, line) => logs.push(line),
    () => undefined,
  );
  await child.start();
  return {
    connectionString: storageConnectionString({ blob, queue, table }),
    async stop() {
      await child.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
