/**
 * rhea's module export is a Container instance whose helpers (`message`, `types`,
 * `create_container`, `uuid_to_string`...) live on its prototype. A compiled `import * as`
 * copies only own properties, so take the module object itself.
 */
import * as ns from 'rhea';

export const rhea = ((ns as unknown as { default?: typeof ns }).default ?? ns) as typeof ns;
