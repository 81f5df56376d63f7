/**
 * `pledger software check DIR` and `pledger software schema`: what a release author
 * runs before publishing, with no master involved.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Command } from '@commander-js/extra-typings';
import { PledgerError } from '../../protocol/errors.js';
import { print } from '../output.js';
import { globals } from './globals.js';

export interface CheckedProblem {
  where: string;
  /** `software.yaml:LINE:COLUMN` when the place is in software.yaml, else the file of the release. */
  at: string;
  message: string;
}

export function registerSoftwareCheckCommands(software: Command): void {
  software
    .command('check')
    .description('check a software release folder and report every problem with its place')
    .argument('<dir>')
    .action(async (dir, _options, command) => {
      const g = globals(command);
      const { loadSoftware } = await import('../../protocol/software-release.js');
      try {
        const loaded = await loadSoftware(dir);
        const { name, version } = loaded.definition;
        print(g, { ok: true, name, version, hash: loaded.hash, problems: [] }, (v) => `${v.name}@${v.version} is valid (${v.hash})`);
      } catch (error) {
        if (!(error instanceof PledgerError) || error.code !== 'SOFTWARE_INVALID') throw error;
        const problems = await locate(dir, (error.details as { where: string; message: string }[] | undefined) ?? [{ where: '(release)', message: error.message }]);
        print(g, { ok: false, problems }, (v) => [...v.problems.map((p) => `${p.at}: ${p.where === p.at ? '' : `${p.where}: `}${p.message}`), `${v.problems.length} problem(s)`].join('\n'));
        process.exitCode = 1;
      }
    });

  software
    .command('schema')
    .description('print the JSON Schema of software.yaml (docs/software.schema.json)')
    .action(async () => {
      const { softwareJsonSchema } = await import('../../protocol/software-release.js');
      process.stdout.write(`${JSON.stringify(softwareJsonSchema(), null, 2)}\n`);
    });
}

/**
 * Turns each problem's dotted place (`software-types.default.files`, `parts.app.build[1]`,
 * `software.yaml:7:3`) into the line and column of software.yaml it points at, so that an
 * editor can jump there. A place that is a file of the release stays as it is.
 */
async function locate(dir: string, problems: { where: string; message: string }[]): Promise<CheckedProblem[]> {
  const text = await readFile(path.join(dir, 'software.yaml'), 'utf8').catch(() => null);
  if (text === null) return problems.map((p) => ({ ...p, at: dir }));
  // Loaded here: every pledger command registers this one, few run it.
  const { LineCounter, parseDocument } = await import('yaml');
  const lineCounter = new LineCounter();
  const document = parseDocument(text, { lineCounter, keepSourceTokens: false, uniqueKeys: false });
  const position = (offset: number) => {
    const { line, col } = lineCounter.linePos(offset);
    return `software.yaml:${line}:${col}`;
  };
  return problems.map((problem) => {
    if (/^software\.yaml(:\d+:\d+)?$/.test(problem.where)) return { ...problem, at: problem.where };
    const keys = problem.where.split(/\.|\[(\d+)\]/).filter((k) => k !== undefined && k !== '');
    // Walk down as far as the document goes: a missing key points at its parent.
    for (let depth = keys.length; depth > 0; depth--) {
      const pathKeys = keys.slice(0, depth).map((k) => (/^\d+$/.test(k) ? Number(k) : k));
      const node = document.getIn(pathKeys, true) as { range?: [number, number, number] } | undefined;
      if (node?.range) return { ...problem, at: position(node.range[0]) };
    }
    const top = problem.where.includes('/') || /\.(njk|json|c|txt)$/.test(problem.where);
    return { ...problem, at: top ? problem.where : 'software.yaml' };
  });
}
