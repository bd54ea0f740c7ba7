import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expandBraces, globFiles } from '../../../local/host/glob';

let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-glob-'));
  for (const f of ['dist/functions/a.js', 'dist/functions/b.js', 'dist/functions/b.js.map', 'dist/functions/sub/c.js', 'dist/.hidden/d.js', 'dist/index.js']) {
    mkdirSync(join(dir, f, '..'), { recursive: true });
    writeFileSync(join(dir, f), '');
  }
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('package.json main globs', () => {
  it('matches one level with *', () => {
    expect(globFiles('dist/functions/*.js', dir)).toEqual(['dist/functions/a.js', 'dist/functions/b.js']);
  });

  it('matches any depth with **, skipping dot directories', () => {
    expect(globFiles('dist/**/*.js', dir)).toEqual(['dist/functions/a.js', 'dist/functions/b.js', 'dist/functions/sub/c.js', 'dist/index.js']);
  });

  it('expands braces', () => {
    expect(expandBraces('dist/{index.js,functions/{a,b}.js}')).toEqual(['dist/index.js', 'dist/functions/a.js', 'dist/functions/b.js']);
    expect(globFiles('./dist/{index.js,functions/a.js}', dir)).toEqual(['dist/functions/a.js', 'dist/index.js']);
  });

  it('takes a plain file name and finds nothing for a missing one', () => {
    expect(globFiles('dist/index.js', dir)).toEqual(['dist/index.js']);
    expect(globFiles('dist/nope/*.js', dir)).toEqual([]);
  });
});
