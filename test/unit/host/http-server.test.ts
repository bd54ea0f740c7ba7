import { describe, expect, it } from 'vitest';
import { createLogger } from '../../../local/log';
import type { RegisteredFunction } from '../../../local/host/core-api';
import { HttpFrontEnd, keyMatches, toHttpFunction } from '../../../local/host/http/server';
import type { Invoker } from '../../../local/host/invoker';

function fn(name: string): RegisteredFunction {
  return { functionId: name, metadata: { name, bindings: {} }, callback: () => undefined };
}

const options = { routePrefix: 'api', functionKey: 'k', adminKey: 'a', maxBodyBytes: 1, invoker: {} as Invoker, logger: createLogger('t', { level: 'silent' }) };

describe('HTTP front end', () => {
  it('compares keys exactly, whatever their lengths', () => {
    expect(keyMatches('secret', 'secret')).toBe(true);
    expect(keyMatches('secret ', 'secret')).toBe(false);
    expect(keyMatches('s', 'secret')).toBe(false);
    expect(keyMatches(undefined, 'secret')).toBe(false);
    expect(keyMatches('', '')).toBe(false);
  });

  it('defaults the route to the function name and the auth level to function', () => {
    const f = toHttpFunction(fn('getThing'), 'req', { type: 'httpTrigger' });
    expect(f.route.template).toBe('getThing');
    expect(f.authLevel).toBe('function');
    expect(f.methods).toBeUndefined();
  });

  it('refuses two functions on the same route and method', () => {
    const a = toHttpFunction(fn('a'), 'req', { route: 'things/{id}', methods: ['GET', 'PUT'] });
    const b = toHttpFunction(fn('b'), 'req', { route: 'Things/{id}', methods: ['put'] });
    expect(() => new HttpFrontEnd([a, b], options)).toThrow(`Functions 'a' and 'b' both serve route "Things/{id}" for the same methods; give one another route or other methods.`);
  });

  it('allows the same route for different methods', () => {
    const a = toHttpFunction(fn('a'), 'req', { route: 'things/{id}', methods: ['GET'] });
    const b = toHttpFunction(fn('b'), 'req', { route: 'things/{id}', methods: ['DELETE'] });
    expect(() => new HttpFrontEnd([a, b], options)).not.toThrow();
  });
});
