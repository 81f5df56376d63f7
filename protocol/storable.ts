/**
 * Text the master's databases can hold as it was sent.
 *
 * PostgreSQL refuses a NUL character (U+0000) in a text column, and both engines store
 * text as UTF-8, where a lone UTF-16 surrogate has no encoding: the drivers replace it
 * with U+FFFD, silently. So:
 * - what a user sends is refused when it holds either (a 400 that names where), by the
 *   schemas' patterns for named fields and by `findUnstorable` for free-form JSON;
 * - what a node reports (log tails, messages) is evidence: `storable` keeps it, with each
 *   such character written as its JSON escape (`\u0000`), so nothing is refused or lost.
 *
 * @example
 *   findUnstorable({ a: [{ b: 'x\u0000' }] }) // → { path: '/a/0/b', problem: 'holds a NUL character (U+0000)' }
 *   storableText('tail\u0000end')            // → 'tail\\u0000end'
 */

/** The characters that can be stored, as a pattern's character class body (for JSON Schema). */
export const UNSTORABLE_CLASS = '\\u0000\\ud800-\\udfff';

/** Free-form JSON (instance parameters) nested deeper than this is refused before anything walks it recursively. */
export const MAX_JSON_DEPTH = 64;

/** A NUL or a UTF-16 surrogate that is not half of a pair. */
// eslint-disable-next-line no-control-regex -- the NUL is what this looks for
const UNSTORABLE = /\u0000|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
const UNSTORABLE_ALL = new RegExp(UNSTORABLE.source, 'g');

export interface Unstorable {
  /** A JSON pointer into the value: `/a/0/b`. */
  path: string;
  problem: string;
}

function describe(text: string): string | undefined {
  const found = UNSTORABLE.exec(text);
  if (!found) return undefined;
  if (found[0] === '\u0000') return 'holds a NUL character (U+0000)';
  return `holds a lone UTF-16 surrogate (U+${found[0].charCodeAt(0).toString(16).toUpperCase()})`;
}

const pointer = (path: string, key: string | number) => `${path}/${String(key).replaceAll('~', '~0').replaceAll('/', '~1')}`;

/**
 * The first place in `value` that no database could store as is, or that is nested
 * deeper than `maxDepth`; undefined when there is none. Walks with its own stack, so
 * that any depth is safe to look at.
 */
export function findUnstorable(value: unknown, maxDepth = MAX_JSON_DEPTH): Unstorable | undefined {
  const stack: { value: unknown; path: string; depth: number }[] = [{ value, path: '', depth: 0 }];
  while (stack.length > 0) {
    const item = stack.pop()!;
    if (typeof item.value === 'string') {
      const problem = describe(item.value);
      if (problem) return { path: item.path, problem };
      continue;
    }
    if (item.value === null || typeof item.value !== 'object') continue;
    if (item.depth >= maxDepth) return { path: item.path, problem: `is nested more than ${maxDepth} levels deep` };
    const entries: [string | number, unknown][] = Array.isArray(item.value) ? item.value.map((v, i) => [i, v]) : Object.entries(item.value);
    for (let i = entries.length - 1; i >= 0; i--) {
      const [key, child] = entries[i]!;
      if (typeof key === 'string') {
        const problem = describe(key);
        if (problem) return { path: pointer(item.path, key), problem: `has a name that ${problem}` };
      }
      stack.push({ value: child, path: pointer(item.path, key), depth: item.depth + 1 });
    }
  }
  return undefined;
}

/** `text` with each NUL and lone surrogate written as its JSON escape (`\u0000`, `\ud800`): storable, and still readable. */
export function storableText(text: string): string {
  if (!UNSTORABLE.test(text)) return text;
  return text.replace(UNSTORABLE_ALL, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** A copy of `value` with every string and property name made storable by `storableText`. */
export function storable<T>(value: T): T {
  if (typeof value === 'string') return storableText(value) as T;
  if (Array.isArray(value)) return value.map((item: unknown) => storable(item)) as T;
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([key, item]) => [storableText(key), storable(item)])) as T;
  }
  return value;
}
