/**
 * `npm start`: runs Azurite, the Service Bus emulator and the functions host in the
 * foreground with prefixed logs; Ctrl-C / SIGTERM stops all three.
 */
import { dataDir, functionKey, loadAppSettings, masterKey, projectRoot } from '../settings';
import { LocalStack, portsFromSettings } from './stack';

const WIDTH = 'servicebus'.length;
const COLORS: Record<string, string> = { azurite: '\x1b[36m', servicebus: '\x1b[35m', host: '\x1b[32m', stack: '\x1b[1m' };
const useColor = process.stdout.isTTY && !process.env.NO_COLOR;

function print(name: string, line: string): void {
  const label = `[${name}]`.padEnd(WIDTH + 2);
  process.stdout.write(useColor ? `${COLORS[name] ?? ''}${label}\x1b[0m ${line}\n` : `${label} ${line}\n`);
}

async function main(): Promise<void> {
  const root = projectRoot();
  const data = dataDir(root);
  const settings = loadAppSettings(root);
  const ports = portsFromSettings(settings);
  const key = functionKey(data);
  const stack = new LocalStack({
    root,
    dataDir: data,
    ports,
    functionKey: key,
    masterKey: masterKey(data).toString('base64'),
    ...(settings.FERRY_SERVICEBUS_CONFIG ? { servicebusConfig: settings.FERRY_SERVICEBUS_CONFIG } : {}),
    sink: print,
    onUnexpectedExit: (name, how) => {
      print('stack', `${name} stopped unexpectedly (${how}); stopping the stack.`);
      void shutdown(1);
    },
  });

  let shuttingDown = false;
  const shutdown = async (code: number): Promise<void> => {
    if (shuttingDown) return;
    shuttingDown = true;
    print('stack', 'stopping...');
    await stack.stop();
    print('stack', 'stopped.');
    process.exit(code);
  };
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, () => void shutdown(0));

  print('stack', `starting (data in ${data})`);
  const ep = await stack.start();
  print('stack', 'Ferry local stack is ready:');
  print('stack', `  functions host  ${ep.apiUrl}   (try: curl ${ep.apiUrl}/health)`);
  print('stack', `  function key    ${key}   (header x-functions-key)`);
  print('stack', `  service bus     sb://127.0.0.1:${ports.servicebus}   (ServiceBusConnection, UseDevelopmentEmulator=true)`);
  print('stack', `  azurite         blob ${ports.blob}, queue ${ports.queue}, table ${ports.table}   (AzureWebJobsStorage)`);
  print('stack', 'Press Ctrl-C to stop.');
}

main().catch((err: unknown) => {
  print('stack', `failed: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
