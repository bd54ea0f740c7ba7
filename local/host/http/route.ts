/**
 * ASP.NET Core route templates, the syntax Azure Functions HTTP routes use
 * (https://learn.microsoft.com/aspnet/core/fundamentals/routing#route-templates):
 * literals (case-insensitive), `{name}`, `{name:constraint[:constraint...]}`, `{name?}`,
 * `{name=default}`, catch-all `{*name}` / `{**name}` (last segment only), complex segments
 * such as `{file}.{ext}`, and `{{` / `}}` for literal braces.
 *
 * Routes are tried in ASP.NET's inbound precedence: per segment, literal < complex <
 * constrained parameter < parameter < catch-all; the first route that matches wins.
 */
import { HostError } from '../errors';

type Constraint = { name: string; test: (value: string) => boolean };

interface ParamPart {
  kind: 'param';
  name: string;
  optional: boolean;
  catchAll: boolean;
  defaultValue?: string;
  constraints: Constraint[];
}
interface LiteralPart {
  kind: 'literal';
  text: string;
}
type Part = ParamPart | LiteralPart;
type Segment = Part[];

export interface CompiledRoute {
  template: string;
  segments: Segment[];
  /** One digit per segment, lower first (ASP.NET RoutePrecedence.ComputeInbound). */
  precedence: number[];
}

export type RouteValues = Record<string, string>;

const INT32 = [-2147483648, 2147483647];

function number(fnName: string, arg: string | undefined, template: string, constraint: string): number {
  const n = Number(arg);
  if (arg === undefined || arg.trim() === '' || !Number.isFinite(n)) {
    throw HostError.invalidRoute(fnName, template, `constraint "${constraint}" needs a numeric argument`);
  }
  return n;
}

function makeConstraint(fnName: string, template: string, spec: string): Constraint {
  const m = /^([a-zA-Z]+)(?:\((.*)\))?$/s.exec(spec);
  if (!m) throw HostError.invalidRoute(fnName, template, `constraint "${spec}" is not of the form name or name(args)`);
  const name = (m[1] as string).toLowerCase();
  const raw = m[2];
  // In templates, braces inside a regex are doubled (`{{2}}`).
  const args = raw === undefined ? [] : name === 'regex' ? [raw.replace(/\{\{/g, '{').replace(/\}\}/g, '}')] : raw.split(',').map((s) => s.trim());
  const num = (i: number): number => number(fnName, args[i], template, spec);
  const isInt = (v: string): boolean => /^[+-]?\d+$/.test(v);
  switch (name) {
    case 'int':
      return { name, test: (v) => isInt(v) && Number(v) >= (INT32[0] as number) && Number(v) <= (INT32[1] as number) };
    case 'long':
      return { name, test: (v) => isInt(v) && BigInt(v) >= -(2n ** 63n) && BigInt(v) < 2n ** 63n };
    case 'bool':
      return { name, test: (v) => /^(true|false)$/i.test(v) };
    case 'alpha':
      return { name, test: (v) => /^[a-z]+$/i.test(v) };
    case 'guid':
      return { name, test: (v) => /^[({]?[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}[)}]?$/i.test(v) };
    case 'datetime':
      return { name, test: (v) => !Number.isNaN(Date.parse(v)) };
    case 'decimal':
    case 'double':
    case 'float':
      return { name, test: (v) => /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(v) };
    case 'required':
      return { name, test: (v) => v.length > 0 };
    case 'min': {
      const min = num(0);
      return { name, test: (v) => isInt(v) && Number(v) >= min };
    }
    case 'max': {
      const max = num(0);
      return { name, test: (v) => isInt(v) && Number(v) <= max };
    }
    case 'range': {
      const min = num(0);
      const max = num(1);
      return { name, test: (v) => isInt(v) && Number(v) >= min && Number(v) <= max };
    }
    case 'length': {
      if (args.length === 1) {
        const len = num(0);
        return { name, test: (v) => v.length === len };
      }
      const min = num(0);
      const max = num(1);
      return { name, test: (v) => v.length >= min && v.length <= max };
    }
    case 'minlength': {
      const min = num(0);
      return { name, test: (v) => v.length >= min };
    }
    case 'maxlength': {
      const max = num(0);
      return { name, test: (v) => v.length <= max };
    }
    case 'regex': {
      let re: RegExp;
      try {
        // ASP.NET: case-insensitive, not implicitly anchored.
        re = new RegExp(args[0] ?? '', 'i');
      } catch (err) {
        throw HostError.invalidRoute(fnName, template, `regex constraint does not compile (${(err as Error).message})`);
      }
      return { name, test: (v) => re.test(v) };
    }
    default:
      throw HostError.invalidRoute(fnName, template, `unknown constraint "${name}"`);
  }
}

/** Splits `{...}` content at top-level `:` (parentheses protect regex arguments). */
function splitConstraints(body: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let last = 0;
  for (let i = 0; i < body.length; i++) {
    const c = body[i];
    if (c === '(') depth++;
    else if (c === ')') depth = Math.max(0, depth - 1);
    else if (c === ':' && depth === 0) {
      out.push(body.slice(last, i));
      last = i + 1;
    }
  }
  out.push(body.slice(last));
  return out;
}

function parseParam(fnName: string, template: string, body: string): ParamPart {
  let inner = body;
  let catchAll = false;
  if (inner.startsWith('**')) {
    catchAll = true;
    inner = inner.slice(2);
  } else if (inner.startsWith('*')) {
    catchAll = true;
    inner = inner.slice(1);
  }
  let defaultValue: string | undefined;
  let optional = false;
  // `=default` and `?` come after the constraints; a regex argument may contain either, so
  // only look outside parentheses.
  const pieces = splitConstraints(inner);
  let last = pieces[pieces.length - 1] as string;
  const eq = topLevelIndex(last, '=');
  if (eq >= 0) {
    defaultValue = last.slice(eq + 1);
    last = last.slice(0, eq);
  }
  if (last.endsWith('?') && topLevelIndex(last, '?') === last.length - 1) {
    optional = true;
    last = last.slice(0, -1);
  }
  pieces[pieces.length - 1] = last;
  const [name, ...constraintSpecs] = pieces;
  if (!name || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
    throw HostError.invalidRoute(fnName, template, `"{${body}}" does not start with a valid parameter name`);
  }
  if (catchAll && optional) throw HostError.invalidRoute(fnName, template, `a catch-all parameter cannot be marked optional ("{${body}}")`);
  if (optional && defaultValue !== undefined) {
    throw HostError.invalidRoute(fnName, template, `"{${body}}" cannot be both optional and have a default value`);
  }
  return {
    kind: 'param',
    name,
    optional,
    catchAll,
    defaultValue,
    constraints: constraintSpecs.map((c) => makeConstraint(fnName, template, c)),
  };
}

function topLevelIndex(s: string, ch: string): number {
  let depth = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === '(') depth++;
    else if (c === ')') depth = Math.max(0, depth - 1);
    else if (c === ch && depth === 0) return i;
  }
  return -1;
}

function parseSegment(fnName: string, template: string, text: string): Segment {
  const parts: Part[] = [];
  let literal = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '{' && text[i + 1] === '{') {
      literal += '{';
      i++;
    } else if (c === '}' && text[i + 1] === '}') {
      literal += '}';
      i++;
    } else if (c === '{') {
      // Find the matching close brace, letting parentheses (regex arguments) hold braces.
      let depth = 0;
      let end = -1;
      for (let j = i + 1; j < text.length; j++) {
        const d = text[j];
        if (d === '(') depth++;
        else if (d === ')') depth = Math.max(0, depth - 1);
        else if (d === '}' && depth === 0) {
          end = j;
          break;
        }
      }
      if (end < 0) throw HostError.invalidRoute(fnName, template, `unclosed "{" in segment "${text}"`);
      if (literal) parts.push({ kind: 'literal', text: literal });
      literal = '';
      const param = parseParam(fnName, template, text.slice(i + 1, end));
      const prev = parts[parts.length - 1];
      if (prev?.kind === 'param') {
        throw HostError.invalidRoute(fnName, template, `parameters {${prev.name}} and {${param.name}} must be separated by literal text`);
      }
      parts.push(param);
      i = end;
    } else if (c === '}') {
      throw HostError.invalidRoute(fnName, template, `unmatched "}" in segment "${text}"`);
    } else {
      literal += c;
    }
  }
  if (literal) parts.push({ kind: 'literal', text: literal });
  if (parts.length > 1) {
    for (const [i, p] of parts.entries()) {
      if (p.kind !== 'param') continue;
      if (p.catchAll) throw HostError.invalidRoute(fnName, template, `catch-all {*${p.name}} must be a whole segment`);
      if (p.optional && i !== parts.length - 1) {
        throw HostError.invalidRoute(fnName, template, `optional {${p.name}?} must be the last part of its segment`);
      }
    }
  }
  return parts;
}

export function compileRoute(fnName: string, template: string): CompiledRoute {
  const trimmed = template.replace(/^[~/]+/, '').replace(/\/+$/, '');
  const segments = trimmed === '' ? [] : trimmed.split('/').map((s) => {
    if (s === '') throw HostError.invalidRoute(fnName, template, 'it contains an empty segment ("//")');
    return parseSegment(fnName, template, s);
  });
  const names = new Set<string>();
  segments.forEach((seg, i) => {
    for (const p of seg) {
      if (p.kind !== 'param') continue;
      const lower = p.name.toLowerCase();
      if (names.has(lower)) throw HostError.invalidRoute(fnName, template, `parameter {${p.name}} appears twice`);
      names.add(lower);
      if (p.catchAll && i !== segments.length - 1) throw HostError.invalidRoute(fnName, template, `catch-all {*${p.name}} must be the last segment`);
    }
  });
  // Once a segment may be left out, every later one must be too.
  let sawOptional = false;
  for (const seg of segments) {
    const omissible = isOmissible(seg);
    if (sawOptional && !omissible) {
      throw HostError.invalidRoute(fnName, template, 'an optional or defaulted parameter may only be followed by other optional segments');
    }
    if (omissible) sawOptional = true;
  }
  return { template: trimmed, segments, precedence: segments.map(precedenceOf) };
}

function isOmissible(seg: Segment): boolean {
  const only = seg.length === 1 ? seg[0] : undefined;
  return only?.kind === 'param' && (only.optional || only.catchAll || only.defaultValue !== undefined);
}

function precedenceOf(seg: Segment): number {
  if (seg.length > 1) return 2;
  const only = seg[0];
  if (!only || only.kind === 'literal') return 1;
  if (only.catchAll) return 5;
  return only.constraints.length > 0 ? 3 : 4;
}

export function comparePrecedence(a: CompiledRoute, b: CompiledRoute): number {
  const n = Math.max(a.precedence.length, b.precedence.length);
  for (let i = 0; i < n; i++) {
    const x = a.precedence[i];
    const y = b.precedence[i];
    if (x === undefined) return 1;
    if (y === undefined) return -1;
    if (x !== y) return x - y;
  }
  return a.template.localeCompare(b.template);
}

/**
 * A route value as ASP.NET Core decodes it: a malformed escape (`%zz`, a cut UTF-8 sequence)
 * is kept as written rather than failing the match, so the function sees it and can answer
 * 400 naming the parameter (a 404 "no such route" would send the caller looking elsewhere).
 */
function decode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

function accepts(p: ParamPart, value: string): boolean {
  return p.constraints.every((c) => c.test(value));
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Matches a URL path (below the route prefix, no query) against the route. */
export function matchRoute(route: CompiledRoute, path: string): RouteValues | undefined {
  const trimmed = path.replace(/^\/+/, '').replace(/\/+$/, '');
  const raw = trimmed === '' ? [] : trimmed.split('/');
  const values: RouteValues = {};
  const { segments } = route;
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i] as Segment;
    const first = seg[0];
    if (seg.length === 1 && first?.kind === 'param' && first.catchAll) {
      const rest = raw.slice(i).map(decode);
      const value = rest.join('/');
      if (value === '' && first.defaultValue !== undefined) values[first.name] = first.defaultValue;
      else if (value !== '') {
        if (!accepts(first, value)) return undefined;
        values[first.name] = value;
      }
      return values;
    }
    const text = raw[i];
    if (text === undefined) {
      if (!isOmissible(seg)) return undefined;
      const p = first as ParamPart;
      if (p.defaultValue !== undefined) values[p.name] = p.defaultValue;
      continue;
    }
    if (seg.length === 1 && first) {
      const value = decode(text);
      if (value === '') return undefined;
      if (first.kind === 'literal') {
        if (value.toLowerCase() !== first.text.toLowerCase()) return undefined;
      } else {
        if (!accepts(first, value)) return undefined;
        values[first.name] = value;
      }
      continue;
    }
    // A complex segment: literals anchor, parameters take the text between them.
    const value = decode(text);
    const params: ParamPart[] = [];
    let re = '^';
    for (const p of seg) {
      if (p.kind === 'literal') re += escapeRe(p.text);
      else {
        params.push(p);
        // Greedy: ASP.NET matches complex segments right to left, so in `{name}.{ext}` the
        // last dot separates ("a.b.pdf" -> name "a.b", ext "pdf").
        re += p.optional ? '(.*)' : '(.+)';
      }
    }
    const m = new RegExp(re + '$', 'is').exec(value);
    if (!m) return undefined;
    for (const [k, p] of params.entries()) {
      const v = m[k + 1] ?? '';
      if (v === '') {
        if (!p.optional) return undefined;
        continue;
      }
      if (!accepts(p, v)) return undefined;
      values[p.name] = v;
    }
  }
  if (raw.length > segments.length) return undefined;
  return values;
}
