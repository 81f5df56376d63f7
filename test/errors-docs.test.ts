/**
 * The error table of protocol/errors.ts and the references that describe it: every
 * code is in docs/api.md with its HTTP status, and every exit code in docs/cli.md.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ERRORS } from '../protocol/errors.js';

const docs = (name: string) => readFileSync(path.join(import.meta.dirname, '..', 'docs', name), 'utf8');

/** The rows of the Markdown table that follows `heading`, as cells. */
function tableAfter(text: string, heading: string): string[][] {
  const start = text.indexOf(`\n${heading}\n`);
  expect(start, heading).toBeGreaterThan(-1);
  const rows: string[][] = [];
  let seen = false;
  for (const line of text.slice(start + heading.length + 2).split('\n')) {
    if (!line.startsWith('|')) {
      if (seen) break;
      continue;
    }
    seen = true;
    rows.push(line.split('|').slice(1, -1).map((cell) => cell.trim()));
  }
  return rows.slice(2);
}

describe('the error table', () => {
  it('lists every code in docs/api.md with its HTTP status, and nothing else', () => {
    const documented = new Map<string, number>();
    for (const [codes, status] of tableAfter(docs('api.md'), '## Errors')) {
      for (const code of codes!.matchAll(/`([A-Z_]+)`/g)) documented.set(code[1]!, Number(status));
    }
    expect(Object.fromEntries(documented)).toEqual(Object.fromEntries(Object.entries(ERRORS).map(([code, e]) => [code, e.status])));
  });

  it('gives every exit code of the table a row in docs/cli.md', () => {
    const documented = new Set(tableAfter(docs('cli.md'), '## Exit codes').map(([code]) => Number(code)));
    for (const [code, error] of Object.entries(ERRORS)) expect(documented.has(error.exitCode), `${code}: exit code ${error.exitCode}`).toBe(true);
  });
});
