/**
 * Rendering an instance from its release's templates.
 *
 * nunjucks has no sandbox, so the line between code and data is kept strictly:
 * templates come only from the release (its files and the strings of software.yaml),
 * parameters enter only as values of the context, and an output is never rendered
 * again. A parameter that looks like a template is therefore printed as it is.
 * `throwOnUndefined` turns a missing value into an error, which is reported with the
 * template, the line and the expression that had no value.
 */
import { readFileSync, statSync } from 'node:fs';
import { mkdir, realpath } from 'node:fs/promises';
import path from 'node:path';
import nunjucks from 'nunjucks';
import { writeFileAtomic } from './files.js';
import { PARTITION_PRIVATE_DIR } from './paths.js';

/** A deployment that cannot be rendered: the message names the template and the value. */
export class RenderError extends Error {
  override name = 'RenderError';
}

/** Single-quotes a value for a POSIX shell: the value can never end the quoting. */
export function shellQuote(value: unknown): string {
  return `'${String(value).replaceAll("'", `'\\''`)}'`;
}

function defined(filter: string, value: unknown): unknown {
  if (value === undefined) throw new Error(`the ${filter} filter got an undefined value`);
  return value;
}

/**
 * The environment of one release: the loader is rooted at the release folder, so a
 * template can include other templates of the release and nothing else.
 */
export function createTemplateEnvironment(releaseDir: string): nunjucks.Environment {
  const env = new nunjucks.Environment(new nunjucks.FileSystemLoader(releaseDir, { noCache: true }), {
    autoescape: false,
    throwOnUndefined: true,
  });
  env.addFilter('json', (value: unknown) => JSON.stringify(defined('json', value)));
  env.addFilter('shell', (value: unknown) => shellQuote(defined('shell', value)));
  return env;
}

/** Renders a string of software.yaml (a service argument, a promise, a published value). */
export function renderString(env: nunjucks.Environment, source: string, context: object, where: string): string {
  try {
    return env.renderString(source, context);
  } catch (error) {
    throw explain(error, where, () => source);
  }
}

/** Renders a template file of the release, named by its path in the release. */
export function renderTemplate(env: nunjucks.Environment, releaseDir: string, template: string, context: object, where: string): string {
  try {
    return env.render(template, context);
  } catch (error) {
    throw explain(error, where, (file) => readFileSync(file ? path.resolve(releaseDir, file) : path.join(releaseDir, template), 'utf8'), releaseDir);
  }
}

/**
 * Rewrites nunjucks's "(path) [Line 2, Column 7] attempted to output null or
 * undefined value" into "templates/x.njk, line 2: {{ parameters.port }} has no value".
 */
function explain(error: unknown, where: string, source: (file: string | undefined) => string, releaseDir?: string): RenderError {
  const raw = error instanceof Error ? error.message : String(error);
  // An error in an included template is wrapped once per level: the innermost header is the culprit.
  const headers = [...raw.matchAll(/(?:^|Template render error: )\(([^()\n]+)\)(?: \[Line (\d+), Column (\d+)\])?/g)];
  const innermost = headers.at(-1);
  if (!innermost) return new RenderError(`${where}: ${raw}`);
  const [header, file, line, column] = innermost;
  const reason = raw.slice(innermost.index + header.length).trim();
  const inFile = file && file !== 'unknown path' && releaseDir ? path.relative(releaseDir, file) : undefined;
  const place = `${where}${inFile && !where.includes(inFile) ? ` (in ${inFile})` : ''}${line ? `, line ${line}` : ''}`;
  const cleanReason = reason.replace(/^Error: /, '');
  if (line && column && /undefined value/.test(reason)) {
    let expression: string | undefined;
    try {
      expression = expressionAt(source(inFile), Number(line), Number(column));
    } catch {
      expression = undefined;
    }
    return new RenderError(`${place}: ${expression ?? 'a value'} is undefined`);
  }
  return new RenderError(`${place}: ${cleanReason}`);
}

/** The `{{ ... }}` that holds the 1-based line and column nunjucks reported. */
function expressionAt(source: string, line: number, column: number): string | undefined {
  const text = source.split('\n')[line - 1];
  if (text === undefined) return undefined;
  const start = text.lastIndexOf('{{', column);
  if (start < 0) return undefined;
  const end = text.indexOf('}}', start);
  return end < 0 ? undefined : text.slice(start, end + 2);
}

/**
 * The absolute path of `relative` inside `dir`, or an error when it would leave it
 * (absolute path, `..`) or land in the agent's private directory.
 */
export function resolveInside(dir: string, relative: string): string {
  const root = path.resolve(dir);
  const target = path.resolve(root, relative);
  if (path.isAbsolute(relative) || !target.startsWith(root + path.sep)) {
    throw new RenderError(`${relative} is outside the partition`);
  }
  const first = path.relative(root, target).split(path.sep)[0];
  if (first === PARTITION_PRIVATE_DIR) throw new RenderError(`${relative} is in ${PARTITION_PRIVATE_DIR}/, which belongs to the agent`);
  return target;
}

export interface RenderedFile {
  /** Path inside the partition. */
  path: string;
  content: string;
  /** 0750 when the template is executable (a wrapper script), 0640 otherwise: files may hold secrets. */
  mode: number;
}

/**
 * Renders every file of a software type in memory first, so that one error leaves the
 * partition as it was. `files` maps a path in the partition to a template of the release.
 */
export function renderFiles(env: nunjucks.Environment, releaseDir: string, files: Record<string, string>, context: object): RenderedFile[] {
  return Object.entries(files).map(([target, template]) => ({
    path: target,
    content: renderTemplate(env, releaseDir, template, context, `${target} (from ${template})`),
    mode: statSync(path.join(releaseDir, template)).mode & 0o100 ? 0o750 : 0o640,
  }));
}

/**
 * Writes rendered files into the partition, each atomically. A directory on the way
 * that is a symbolic link out of the partition (a service may have made one) is refused.
 */
export async function writePartitionFiles(partitionDir: string, files: RenderedFile[]): Promise<void> {
  const root = await realpath(partitionDir);
  const targets = files.map((file) => ({ ...file, target: resolveInside(partitionDir, file.path) }));
  for (const { path: relative, target, content, mode } of targets) {
    const parent = path.dirname(target);
    await mkdir(parent, { recursive: true });
    const realParent = await realpath(parent);
    if (realParent !== root && !realParent.startsWith(root + path.sep)) throw new RenderError(`${relative} is outside the partition`);
    await writeFileAtomic(path.join(realParent, path.basename(target)), content, mode);
  }
}
