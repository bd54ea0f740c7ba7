/**
 * Errors the Azure Service Bus SDK's AMQP stack raises from its own timers or un-awaited
 * promises (a link or session close that times out while Service Bus is unreachable, and the
 * like). Application code cannot catch them; they would end the process. The local functions
 * host and the `ferry` CLI log them and go on (Azure's own Functions host runs its Service Bus
 * extension in .NET and is not exposed). Anything else still ends the process.
 *
 * Going on is not always harmless: an error thrown inside a timer may leave the promise that
 * timer should have settled pending for ever. The one such error seen here, the address getter
 * of a link whose connection came back, hung sends; shared/azure/amqp-fixes.ts mends it, and
 * a new kind of warning here deserves the same look.
 */
import type { Logger } from 'pino';

export function isAmqpStackError(err: unknown): boolean {
  const stack = err instanceof Error ? `${err.name} ${err.stack ?? ''}` : '';
  return /node_modules[\\/](rhea-promise|rhea|@azure[\\/]core-amqp|@azure[\\/]service-bus)[\\/]/.test(stack);
}

export function surviveAmqpStackErrors(log: Pick<Logger, 'warn' | 'error'>, what: string): void {
  const survive = (kind: string) => (err: unknown): void => {
    if (isAmqpStackError(err)) {
      log.warn({ err }, `${kind} from the Service Bus SDK (connection trouble); ${what} goes on`);
      return;
    }
    log.error({ err }, `${kind}: ${what} stops`);
    process.exit(1);
  };
  process.on('uncaughtException', survive('uncaught exception'));
  process.on('unhandledRejection', survive('unhandled rejection'));
}
