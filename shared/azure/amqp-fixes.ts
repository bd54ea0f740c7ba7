/**
 * A mend for the AMQP stack under @azure/service-bus, applied once when this module is loaded.
 * Every module that creates a ServiceBusClient imports it: the appliance's transport, the
 * functions' queue senders and the local functions host.
 *
 * rhea-promise 3.0.3 (the newest release) has a bug in AwaitableSender.send.
 * - Its timeout builds its error message from `this.address`, which is `this.source.address`:
 *   the link's *remote* source.
 * - rhea clears a link's remote state when its connection goes away and comes back. After that
 *   the getter throws a TypeError inside the timer, before `reject` runs.
 * - So the send's promise never settles, and `ServiceBusSender.sendMessages` hangs for ever.
 *
 * Upstream: amqp/rhea-promise#109, fixed by #119, not in a release. In Ferry it held an
 * appliance's outbox (one disk's later batches were never sent). It also held apply invocations
 * (a compaction request never sent, so the disk's session never moved again), after Service
 * Bus went away and came back. Reproduced by test/integration/servicebus/send-timeout.test.ts.
 *
 * The mend: `address` falls back to the link's target, as given when it was created, when the
 * remote source is gone. The timer then rejects with the SDK's ordinary timeout error, which
 * the SDK's retries handle. Remove it once a rhea-promise release has #119.
 */
import { AwaitableSender } from 'rhea-promise';

interface LinkInternals {
  source?: { address?: string } | null;
  target?: { address?: string } | null;
  _link?: { options?: { source?: { address?: string } | string; target?: { address?: string } | string } };
}

function addressOf(link: LinkInternals): string | undefined {
  const given = (t: { address?: string } | string | undefined): string | undefined => (typeof t === 'string' ? t : t?.address);
  return link.source?.address ?? link.target?.address ?? given(link._link?.options?.target) ?? given(link._link?.options?.source);
}

/** Makes `address` of rhea-promise's links safe to read on a link whose remote state is gone. Idempotent. */
export function mendLinkAddress(): boolean {
  let proto: object | null = AwaitableSender.prototype;
  while (proto && !Object.prototype.hasOwnProperty.call(proto, 'address')) proto = Object.getPrototypeOf(proto) as object | null;
  if (!proto) return false; // the layout changed: nothing to mend here
  const current = Object.getOwnPropertyDescriptor(proto, 'address');
  if ((current?.get as { ferryMended?: boolean } | undefined)?.ferryMended) return true;
  const get = function (this: LinkInternals): string | undefined {
    return addressOf(this);
  };
  (get as { ferryMended?: boolean }).ferryMended = true;
  Object.defineProperty(proto, 'address', { get, configurable: true, enumerable: current?.enumerable ?? false });
  return true;
}

mendLinkAddress();
