/**
 * rhea's module export is a Container instance whose helpers (`message`, `types`,
 * `create_container`, `uuid_to_string`...) live on its prototype. A compiled `import * as`
 * copies only own properties, so take the module object itself.
 */
import * as ns from 'rhea';

export const rhea = ((ns as unknown as { default?: typeof ns }).default ?? ns) as typeof ns;

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
