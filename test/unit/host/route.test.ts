import { describe, expect, it } from 'vitest';
import { comparePrecedence, compileRoute, matchRoute } from '../../../local/host/http/route';

const m = (template: string, path: string) => matchRoute(compileRoute('fn', template), path);

describe('route templates', () => {
  it('matches literals case-insensitively and ignores surrounding slashes', () => {
    expect(m('vms/list', 'VMs/List/')).toEqual({});
    expect(m('/vms/list', 'vms/other')).toBeUndefined();
  });

  it('binds parameters, URL-decoded', () => {
    expect(m('vms/{vmId}/ops/{opId}', 'vms/a%20b/ops/7')).toEqual({ vmId: 'a b', opId: '7' });
  });

  it('applies int, long, alpha, bool, guid and length constraints', () => {
    expect(m('x/{id:int}', 'x/-12')).toEqual({ id: '-12' });
    expect(m('x/{id:int}', 'x/2147483648')).toBeUndefined();
    expect(m('x/{id:long}', 'x/2147483648')).toEqual({ id: '2147483648' });
    expect(m('x/{id:alpha}', 'x/abc1')).toBeUndefined();
    expect(m('x/{b:bool}', 'x/TRUE')).toEqual({ b: 'TRUE' });
    expect(m('x/{g:guid}', 'x/0f8fad5b-d9cb-469f-a165-70867728950e')).toBeDefined();
    expect(m('x/{s:length(2,3)}', 'x/abcd')).toBeUndefined();
  });

  it('chains constraints and takes regex arguments with colons and braces', () => {
    expect(m('x/{id:int:min(10)}', 'x/9')).toBeUndefined();
    expect(m('x/{id:int:min(10)}', 'x/10')).toEqual({ id: '10' });
    expect(m('x/{v:regex(^a:[0-9]{{2}}$)}', 'x/a:12')).toEqual({ v: 'a:12' });
  });

  it('handles optional parameters and defaults', () => {
    expect(m('opt/{id?}', 'opt')).toEqual({});
    expect(m('opt/{id?}', 'opt/3')).toEqual({ id: '3' });
    expect(m('page/{n=1}', 'page')).toEqual({ n: '1' });
  });

  it('gives catch-all the rest of the path, or nothing', () => {
    expect(m('f/{*rest}', 'f/a/b/c')).toEqual({ rest: 'a/b/c' });
    expect(m('f/{**rest}', 'f')).toEqual({});
  });

  it('matches complex segments right to left', () => {
    expect(m('d/{name}.{ext}', 'd/a.b.pdf')).toEqual({ name: 'a.b', ext: 'pdf' });
    expect(m('d/file-{id:int}', 'd/file-9')).toEqual({ id: '9' });
    expect(m('d/file-{id:int}', 'd/file-x')).toBeUndefined();
  });

  it('refuses too many segments', () => {
    expect(m('a/{b}', 'a/b/c')).toBeUndefined();
  });

  it('orders literal < constrained < plain parameter < catch-all', () => {
    const routes = ['x/{*all}', 'x/{id}', 'x/{id:int}', 'x/latest'].map((t) => compileRoute('fn', t));
    expect(routes.sort(comparePrecedence).map((r) => r.template)).toEqual(['x/latest', 'x/{id:int}', 'x/{id}', 'x/{*all}']);
  });

  it('rejects malformed templates with a message naming the problem', () => {
    expect(() => compileRoute('f', 'a/{*rest}/b')).toThrow("Function 'f' has an invalid route template \"a/{*rest}/b\": catch-all {*rest} must be the last segment.");
    expect(() => compileRoute('f', 'a/{id:nope}')).toThrow('unknown constraint "nope"');
    expect(() => compileRoute('f', 'a/{id}/{id}')).toThrow('parameter {id} appears twice');
    expect(() => compileRoute('f', 'a/{id')).toThrow('unclosed "{"');
    expect(() => compileRoute('f', 'a/{x}{y}')).toThrow('must be separated by literal text');
    expect(() => compileRoute('f', '{id?}/more')).toThrow('may only be followed by other optional segments');
  });
});
