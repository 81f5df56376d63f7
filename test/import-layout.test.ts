/**
 * The layout of the house, kept by a test: inside master/ no module imports itself
 * back through others (an import circle), and the master and the node agent share only
 * protocol/. `import type` does not count: it vanishes when the code is compiled.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '..');

function sources(folder: string): string[] {
  return readdirSync(path.join(ROOT, folder), { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.ts') && !f.endsWith('.generated.ts'))
    .map((f) => path.join(folder, f));
}

/** The modules `file` imports at run time (static imports, not `import type`), as paths from the root. */
function runtimeImports(file: string): string[] {
  const text = readFileSync(path.join(ROOT, file), 'utf8');
  const found: string[] = [];
  for (const m of text.matchAll(/^import\s+(type\s+)?[^;]*?from\s+'(\.[^']+)';/gms)) {
    // `import { type A }` still loads its module (verbatimModuleSyntax): only `import type` does not.
    if (m[1]) continue;
    found.push(path.normalize(path.join(path.dirname(file), m[2]!.replace(/\.js$/, '.ts'))));
  }
  return found;
}

function cycles(files: string[]): string[][] {
  const graph = new Map(files.map((f) => [f, runtimeImports(f).filter((i) => files.includes(i))]));
  const found: string[][] = [];
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (file: string) => {
    state.set(file, 'open');
    stack.push(file);
    for (const next of graph.get(file)!) {
      if (state.get(next) === 'open') found.push([...stack.slice(stack.indexOf(next)), next]);
      else if (!state.has(next)) visit(next);
    }
    stack.pop();
    state.set(file, 'done');
  };
  for (const f of files) if (!state.has(f)) visit(f);
  return found;
}

describe('the layout of the code', () => {
  it('has no import circle inside master/', () => {
    const files = sources('master');
    expect(files.length).toBeGreaterThan(20);
    expect(cycles(files).map((c) => c.join(' -> '))).toEqual([]);
  });

  it('lets the master and the node agent share protocol/ only', () => {
    const master = sources('master');
    const slave = sources('slave');
    expect(master.length).toBeGreaterThan(0);
    expect(slave.length).toBeGreaterThan(0);
    const crossing = [
      ...master.flatMap((f) => runtimeImports(f).filter((i) => i.startsWith('slave/')).map((i) => `${f} -> ${i}`)),
      ...slave.flatMap((f) => runtimeImports(f).filter((i) => i.startsWith('master/')).map((i) => `${f} -> ${i}`)),
    ];
    expect(crossing).toEqual([]);
  });
});
