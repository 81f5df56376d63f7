/**
 * The crontab lines of a node, for operators who prefer the system's cron to
 * `pledger node daemon`: rendered from templates/node-crontab.njk. Every value
 * (paths, the program) is data, quoted for the shell cron hands the line to, with
 * cron's own `%` escaped.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import nunjucks from 'nunjucks';
import { logPath } from './paths.js';
import { shellQuote } from './render.js';

export interface CrontabInput {
  root: string;
  configFile: string;
  /** argv that runs `pledger`: the node executable and the CLI's entry point. */
  pledger: string[];
  /** Seconds each one-shot run may wait first. */
  jitterSeconds: number;
}

/** One line per cycle, and how often cron starts it. */
export const CRON_CYCLES = [
  { command: 'software', when: '*/5 * * * *' },
  { command: 'instance', when: '* * * * *' },
  { command: 'promise', when: '* * * * *' },
  { command: 'usage', when: '* * * * *' },
  { command: 'report', when: '* * * * *' },
] as const;

function templatesDir(): string {
  const candidates = [path.join(import.meta.dirname, '..', 'templates'), path.join(import.meta.dirname, '..', '..', 'templates')];
  const found = candidates.find((dir) => existsSync(path.join(dir, 'node-crontab.njk')));
  if (!found) throw new Error(`templates/node-crontab.njk not found (looked in ${candidates.join(', ')})`);
  return found;
}

/** A value quoted for /bin/sh, with `%` escaped (cron turns a bare % into a newline). A list is quoted item by item. */
export function crontabQuote(value: unknown): string {
  const items = Array.isArray(value) ? value : [value];
  return items
    .map((item) => {
      const text = String(item);
      if (/[\n\r]/.test(text)) throw new Error(`a crontab value cannot hold a line break: ${JSON.stringify(text)}`);
      return shellQuote(text).replaceAll('%', '\\%');
    })
    .join(' ');
}

export function renderCrontab(input: CrontabInput): string {
  const env = new nunjucks.Environment(new nunjucks.FileSystemLoader(templatesDir()), { autoescape: false, throwOnUndefined: true });
  env.addFilter('crontab', crontabQuote);
  return env.render('node-crontab.njk', {
    root: input.root,
    config: input.configFile,
    pledger: input.pledger,
    log: logPath(input.root),
    jitter: input.jitterSeconds,
    cycles: CRON_CYCLES,
  });
}
