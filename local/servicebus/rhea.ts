/**
 * rhea's module export is a Container instance whose helpers (`message`, `types`,
 * `create_container`, `uuid_to_string`...) live on its prototype. A compiled `import * as`
 * copies only own properties, so take the module object itself.
 */
import * as ns from 'rhea';

export const rhea = ((ns as unknown as { default?: typeof ns }).default ?? ns) as typeof ns;

/**
 * rhea ends a whole connection (ProtocolError) when a frame arrives on a channel whose session
 * it has already removed. With many session receivers timing out at once (acceptNextSession on
 * an empty queue), the SDK can send a link's detach (or a late flow/disposition) just after
 * the session's end crossed ours; Azure Service Bus ignores such a late frame, and so must the
 * emulator rather than drop every other link of that client (seen: "detach received on
 * invalid channel 4" under the churn benchmark, which made the host reconnect everything).
 */
type ConnectionProto = Record<string, (this: { remote_channel_map: Record<number, unknown> }, frame: { channel: number }) => void>;
// eslint-disable-next-line @typescript-eslint/no-require-imports
const connectionModule = require('rhea/lib/connection.js') as { Connection?: { prototype: ConnectionProto } } & { prototype?: ConnectionProto };
const proto = (connectionModule.Connection ?? (connectionModule as { prototype?: ConnectionProto })).prototype;
if (proto) {
  for (const name of ['detach', 'flow', 'disposition', 'transfer', 'end']) {
    const original = proto[`on_${name}`];
    if (typeof original !== 'function') continue;
    proto[`on_${name}`] = function (this: { remote_channel_map: Record<number, unknown> }, frame: { channel: number }) {
      if (!this.remote_channel_map[frame.channel]) return; // late frame of an ended session
      original.call(this, frame);
    };
  }
}

/**
 * On a protocol error rhea prints the offending read buffer in hex to console.error; that buffer
 * can hold a CBS put-token (a SAS signature). Keep the message, drop the bytes.
 */
const consoleError = console.error.bind(console);
console.error = (...args: unknown[]): void => {
  const [first, ...rest] = args;
  if (typeof first === 'string' && first.includes(' (buffer:')) {
    consoleError(first.replace(/ \(buffer:[0-9a-fx,]*\)/i, ' (frame bytes not logged: they may hold credentials)'), ...rest);
    return;
  }
  consoleError(...args);
};
