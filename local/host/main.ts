/**
 * `node dist/local/host/main.js`: the local functions host as a process.
 *
 * FERRY_APP_ROOT (default: the project root), FERRY_HOST_PORT (default 7071), the function key
 * from FERRY_FUNCTION_KEY or local/.data/function-key, FERRY_ADMIN_KEY for admin-level
 * functions (default: the function key), app settings from local.settings.json overlaid by the
 * environment. SIGINT/SIGTERM: graceful stop (FERRY_HOST_GRACE_MS, default 10 s), exit 0.
 */
import { resolve } from 'node:path';
import { createLogger } from '../log';
import { surviveAmqpStackErrors } from '../sdk-errors';
import { functionKey, loadAppSettings, projectRoot } from '../settings';
import { startFunctionsHost } from './index';

async function main(): Promise<void> {
  const logger = createLogger('host');
  surviveAmqpStackErrors(logger, 'the host');
  const appRoot = resolve(process.env.FERRY_APP_ROOT ?? projectRoot());
  const portText = process.env.FERRY_HOST_PORT ?? '7071';
  const port = Number(portText);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`FERRY_HOST_PORT must be a port number, not "${portText}".`);
  const graceMs = Number(process.env.FERRY_HOST_GRACE_MS ?? 10_000);
  if (!Number.isFinite(graceMs) || graceMs < 0) throw new Error(`FERRY_HOST_GRACE_MS must be a number of milliseconds, not "${process.env.FERRY_HOST_GRACE_MS}".`);

  const host = await startFunctionsHost({
    appRoot,
    port,
    functionKey: functionKey(),
    adminKey: process.env.FERRY_ADMIN_KEY || undefined,
    settings: loadAppSettings(appRoot),
    logger,
  });
  const base = `${host.url}${host.routePrefix ? `/${host.routePrefix}` : ''}`;
  logger.info(`Functions host listening on ${base}`);
  for (const f of host.functions) {
    const detail =
      f.trigger.toLowerCase() === 'httptrigger'
        ? `[${(f.methods ?? ['*']).join(',')}] ${host.url}${f.route}`
        : f.schedule ?? f.entityPath ?? '';
    logger.info(`${f.name}: ${f.trigger} ${detail}`.trimEnd());
  }

  let signals = 0;
  const onSignal = (signal: NodeJS.Signals): void => {
    signals++;
    if (signals > 1) {
      logger.warn(`${signal} again: exiting now`);
      process.exit(1);
    }
    logger.info(`${signal}: stopping (in-flight invocations get up to ${graceMs} ms)`);
    host.stop({ graceMs }).then(
      () => {
        logger.info('Functions host stopped');
        process.exit(0);
      },
      (err) => {
        logger.error({ err }, 'Stopping failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
}

main().catch((err) => {
  createLogger('host').fatal({ err }, `Functions host failed to start: ${(err as Error)?.message ?? String(err)}`);
  process.exit(1);
});
