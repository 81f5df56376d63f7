/**
 * What the CLI prints: JSON with --json, plain text otherwise. Results go to stdout,
 * errors and progress to stderr.
 */
import { PledgerError } from '../protocol/errors.js';

export interface OutputOptions {
  json?: boolean;
}

/** Prints `value` as JSON, or as the text `human` makes of it. */
export function print<T>(options: OutputOptions, value: T, human: (value: T) => string): void {
  const text = options.json ? JSON.stringify(value, null, 2) : human(value);
  if (text) process.stdout.write(`${text}\n`);
}

/** A plain table: one header row and left-aligned columns. */
export function table(headers: string[], rows: (string | number | null | undefined)[][]): string {
  const cells = [headers, ...rows.map((r) => r.map((c) => (c === null || c === undefined ? '-' : String(c))))];
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  return cells.map((r) => r.map((c, i) => (i === r.length - 1 ? c : (c ?? '').padEnd(widths[i]!))).join('  ')).join('\n');
}

/** Key-value lines, aligned. */
export function fields(entries: [string, unknown][]): string {
  const width = Math.max(...entries.map(([k]) => k.length));
  return entries
    .map(([k, v]) => `${`${k}:`.padEnd(width + 2)}${v === null || v === undefined ? '-' : typeof v === 'object' ? JSON.stringify(v) : String(v)}`)
    .join('\n');
}

/** Prints an error on stderr and returns the exit code it maps to. */
export function reportError(options: OutputOptions, error: unknown): number {
  const known =
    error instanceof PledgerError
      ? error
      : new PledgerError('INTERNAL', (error as Error)?.message ?? String(error), { hint: 'this is a bug in pledger: please report it' });
  if (options.json) {
    process.stderr.write(`${JSON.stringify(known.toBody())}\n`);
  } else {
    process.stderr.write(`error: ${known.message}\n`);
    if (known.hint) process.stderr.write(`hint: ${known.hint}\n`);
  }
  return known.exitCode;
}
