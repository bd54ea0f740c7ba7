/**
 * The glob matching the worker applies to `package.json` `main` (it uses globby): `*`, `?`,
 * `[...]`, `**` and `{a,b}`; names starting with a dot are skipped unless the pattern names
 * them. Results are relative to `cwd`, with `/` separators, sorted.
 */
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

/** `a{b,c}d` -> [`abd`, `acd`], nested braces included. */
export function expandBraces(pattern: string): string[] {
  let depth = 0;
  let start = -1;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === '\\') {
      i++;
      continue;
    }
    if (c === '{') {
      if (depth === 0) start = i;
      depth++;
    } else if (c === '}' && depth > 0) {
      depth--;
      if (depth === 0) {
        const inner = pattern.slice(start + 1, i);
        const alternatives = splitTopLevel(inner);
        if (alternatives.length < 2) continue;
        const head = pattern.slice(0, start);
        const tail = pattern.slice(i + 1);
        return alternatives.flatMap((alt) => expandBraces(head + alt + tail));
      }
    }
  }
  return [pattern];
}

function splitTopLevel(inner: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let last = 0;
  for (let i = 0; i < inner.length; i++) {
    const c = inner[i];
    if (c === '{') depth++;
    else if (c === '}') depth--;
    else if (c === ',' && depth === 0) {
      parts.push(inner.slice(last, i));
      last = i + 1;
    }
  }
  parts.push(inner.slice(last));
  return parts;
}

/** One path segment of a glob as a RegExp, or the literal string when it has no magic. */
function segmentMatcher(segment: string): RegExp | string {
  if (!/[*?[]/.test(segment)) return segment;
  let re = '^';
  for (let i = 0; i < segment.length; i++) {
    const c = segment[i] as string;
    if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '[') {
      const end = segment.indexOf(']', i + 1);
      if (end < 0) {
        re += '\\[';
        continue;
      }
      let cls = segment.slice(i + 1, end);
      if (cls.startsWith('!')) cls = '^' + cls.slice(1);
      re += `[${cls.replace(/\\/g, '\\\\')}]`;
      i = end;
    } else re += c.replace(/[.+^${}()|\\]/g, '\\$&');
  }
  return new RegExp(re + '$');
}

function matches(matcher: RegExp | string, name: string): boolean {
  if (typeof matcher === 'string') return matcher === name;
  // Like globby (dot: false), wildcards do not match names starting with a dot.
  return !name.startsWith('.') && matcher.test(name);
}

function listDir(dir: string): { name: string; isDir: boolean }[] {
  try {
    return readdirSync(dir, { withFileTypes: true }).map((d) => {
      let isDir = d.isDirectory();
      if (d.isSymbolicLink()) {
        try {
          isDir = statSync(join(dir, d.name)).isDirectory();
        } catch {
          isDir = false;
        }
      }
      return { name: d.name, isDir };
    });
  } catch {
    return [];
  }
}

/** Files (not directories) under `cwd` matching `pattern`. */
export function globFiles(pattern: string, cwd: string): string[] {
  const found = new Set<string>();
  for (const alt of expandBraces(pattern)) {
    const segments = alt.replace(/\\/g, '/').replace(/^\.\//, '').split('/').filter((s) => s !== '' && s !== '.');
    walk(cwd, '', segments, found);
  }
  return [...found].sort();
}

function walk(root: string, rel: string, segments: string[], found: Set<string>): void {
  const [seg, ...rest] = segments;
  if (seg === undefined) return;
  const dir = join(root, rel);
  if (seg === '**') {
    // Zero directories...
    walk(root, rel, rest, found);
    // ...or one more, then `**` again.
    for (const entry of listDir(dir)) {
      if (entry.isDir && !entry.name.startsWith('.') && entry.name !== 'node_modules') {
        walk(root, rel ? `${rel}/${entry.name}` : entry.name, segments, found);
      }
    }
    return;
  }
  if (seg === '..') {
    walk(root, rel ? `${rel}/..` : '..', rest, found);
    return;
  }
  const matcher = segmentMatcher(seg);
  for (const entry of listDir(dir)) {
    if (!matches(matcher, entry.name)) continue;
    const path = rel ? `${rel}/${entry.name}` : entry.name;
    if (rest.length === 0) {
      if (!entry.isDir) found.add(path);
    } else if (entry.isDir) {
      walk(root, path, rest, found);
    }
  }
}
