/**
 * Building software releases without root, into content-addressed directories.
 *
 * A release is downloaded from the master, checked against its hash before anything
 * of it is read, and built in a temporary directory beside its final place; only a
 * complete build is marked and renamed into `<root>/software/<hash>`. A half-built
 * directory therefore never counts as built, and a crash costs a rebuild, never a
 * broken release.
 *
 * Build commands are argv lists run without a shell, in the part's directory, with a
 * clean environment. Their templates see the *final* paths (`part.path`,
 * `software.path`), which is what a build must embed (an install prefix, a shebang);
 * the command itself works in its current directory, the part's directory.
 */
import { appendFile, cp, mkdir, open, readdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { API_PREFIX, type DesiredState } from '../protocol/api.js';
import type { MasterClient } from '../protocol/client.js';
import { PledgerError } from '../protocol/errors.js';
import { MAX_SOFTWARE_ARCHIVE_BYTES, unpackSoftware } from '../protocol/software-archive.js';
import { hashDirectory, loadSoftware, type LoadedSoftware } from '../protocol/software-release.js';
import type { NodeConfig } from './config.js';
import { errorMessage, pathExists, randomToken, removeTree } from './files.js';
import type { Logger } from './log.js';
import { connectMaster, pullDesiredState } from './master.js';
import { newEvent, Outbox } from './outbox.js';
import { withLock } from './lock.js';
import { BUILT_MARKER, lockPath, outboxPath, softwarePath, softwareRoot } from './paths.js';
import { cleanEnv, fileDescriptor } from './processes.js';
import { createTemplateEnvironment, renderString, shellQuote } from './render.js';
import type { ItemResult, RunReport } from './result.js';

export type { ItemResult, RunReport } from './result.js';

export const BUILD_LOG = 'build.log';
const DEFAULT_BUILD_TIMEOUT_S = 600;
const LOG_TAIL_LINES = 20;
/** Temporary build directories older than this are leftovers of a crashed run. */
const STALE_BUILD_MS = 2 * 24 * 3600 * 1000;

type SupplyEntry = DesiredState['software'][number];

export async function isSoftwareBuilt(root: string, hash: string): Promise<boolean> {
  return pathExists(path.join(softwarePath(root, hash), BUILT_MARKER));
}

/**
 * Brings the node's software to the desired state: builds every release supplied as
 * `available` that is not built yet, removes those supplied as `destroyed`. One failure
 * never stops the others. When everything is already there, nothing is downloaded,
 * nothing is run and nothing is reported. Throws CONFLICT while another run installs.
 */
export async function installSoftware(config: NodeConfig, log: Logger): Promise<RunReport> {
  return withLock(lockPath(config.root, 'software'), 'installing software', () => installAll(config, log));
}

async function installAll(config: NodeConfig, log: Logger): Promise<RunReport> {
  const master = connectMaster(config);
  const pulled = await pullDesiredState(config, master, log);
  const outbox = new Outbox(outboxPath(config.root));
  await mkdir(softwareRoot(config.root), { recursive: true });
  await removeStaleBuilds(config.root, log);
  const results: ItemResult[] = [];
  let unreachable = false;
  for (const entry of pulled.state.software) {
    const item = `${entry.name}@${entry.version}`;
    try {
      if (entry.state === 'available') results.push(await ensureBuilt(config, master, outbox, entry, log));
      else if (entry.state === 'destroyed') results.push(await removeSoftware(config, outbox, entry, log));
      else log.error('unknown supply state: ignored', { software: item, state: entry.state });
    } catch (error) {
      unreachable ||= isUnreachable(error);
      log.error('software failed', { software: item, reason: errorMessage(error) });
      results.push({ item, status: 'failed', message: errorMessage(error) });
    }
  }
  const flushed = await outbox.flush(master, log);
  return { results, offline: pulled.offline || flushed.offline || unreachable };
}

const isUnreachable = (error: unknown) => error instanceof PledgerError && error.code === 'MASTER_UNREACHABLE';

async function ensureBuilt(config: NodeConfig, master: MasterClient, outbox: Outbox, entry: SupplyEntry, log: Logger): Promise<ItemResult> {
  const item = `${entry.name}@${entry.version}`;
  if (await isSoftwareBuilt(config.root, entry.hash)) return { item, status: 'unchanged' };
  const final = softwarePath(config.root, entry.hash);
  const temporary = path.join(softwareRoot(config.root), `.build-${entry.hash}-${randomToken(6)}`);
  log.info('building software', { software: item, hash: entry.hash });
  try {
    await downloadRelease(master, entry.hash, temporary);
    const release = await loadSoftware(temporary);
    await buildParts(release, temporary, final, log);
    await writeFile(path.join(temporary, BUILT_MARKER), `${new Date().toISOString()}\n`);
    await moveIntoPlace(config.root, temporary, final, entry.hash);
  } catch (error) {
    const message = `${errorMessage(error)}${await buildLogTail(temporary)}`;
    await removeTree(temporary);
    // Telling the master that it cannot be reached would only be noise once it can.
    if (isUnreachable(error)) throw error;
    log.error('software build failed', { software: item, reason: message });
    await outbox.add(newEvent({ type: 'software.error', software: entry.hash, message }));
    return { item, status: 'failed', message };
  }
  log.info('software built', { software: item, path: final });
  await outbox.add(newEvent({ type: 'software.built', software: entry.hash }));
  return { item, status: 'done' };
}

/** Downloads and unpacks a release, and refuses it unless its content has the expected hash. */
async function downloadRelease(master: MasterClient, hash: string, dir: string): Promise<void> {
  const answer = await master.raw('GET', `${API_PREFIX}/node/software/${hash}`, { headers: { accept: 'application/gzip' } });
  if (answer.body.length > MAX_SOFTWARE_ARCHIVE_BYTES) throw new Error(`the archive is larger than ${MAX_SOFTWARE_ARCHIVE_BYTES} bytes`);
  await unpackSoftware(answer.body, dir);
  const actual = await hashDirectory(dir);
  if (actual !== hash) throw new Error(`refused: the release downloaded has the content hash ${actual}, not ${hash}`);
}

/** Builds each part in order, in `<release>/parts/<name>/`, logging every command to build.log. */
async function buildParts(release: LoadedSoftware, dir: string, final: string, log: Logger): Promise<void> {
  const { definition } = release;
  const env = createTemplateEnvironment(dir);
  const buildLog = path.join(dir, BUILD_LOG);
  await writeFile(buildLog, '');
  for (const [partName, part] of Object.entries(definition.parts ?? {})) {
    const partDir = path.join(dir, 'parts', partName);
    await mkdir(partDir, { recursive: true });
    for (const file of part.files ?? []) {
      await mkdir(path.dirname(path.join(partDir, file)), { recursive: true });
      await cp(path.join(dir, file), path.join(partDir, file));
    }
    const context = {
      part: { path: path.join(final, 'parts', partName) },
      software: { path: final, name: definition.name, version: definition.version, hash: release.hash },
    };
    for (const [i, command] of (part.build ?? []).entries()) {
      const argv = command.map((item, j) => renderString(env, item, context, `parts.${partName}.build[${i}][${j}]`));
      log.info('build command', { part: partName, argv });
      await runBuildCommand(argv, partDir, dir, buildLog, part.timeout ?? DEFAULT_BUILD_TIMEOUT_S);
    }
  }
}

async function runBuildCommand(argv: string[], cwd: string, home: string, buildLog: string, timeoutS: number): Promise<void> {
  await appendFile(buildLog, `$ ${argv.map(shellQuote).join(' ')}\n`);
  const [command = '', ...args] = argv;
  const output = await open(buildLog, 'a');
  try {
    // A group of its own, so that whatever the command left behind can be killed with it.
    const child = execa(command, args, {
      cwd,
      env: cleanEnv(home),
      extendEnv: false,
      detached: true,
      stdin: 'ignore',
      stdout: fileDescriptor(output.fd),
      stderr: fileDescriptor(output.fd),
      timeout: timeoutS * 1000,
      reject: false,
      buffer: false,
    });
    const result = await child;
    if (child.pid !== undefined) killGroup(child.pid);
    if (!result.failed) return;
    if (result.timedOut) throw new Error(`${command} timed out after ${timeoutS} s`);
    if (result.exitCode !== undefined) throw new Error(`${command} exited with code ${result.exitCode}`);
    if (result.signal) throw new Error(`${command} was killed by ${result.signal}`);
    throw new Error(`cannot run ${command}: ${result.originalMessage || result.shortMessage}`);
  } finally {
    await output.close();
  }
}

function killGroup(pgid: number): void {
  try {
    process.kill(-pgid, 'SIGKILL');
  } catch {
    // Nothing left in the group: the usual case.
  }
}

async function buildLogTail(dir: string): Promise<string> {
  const text = await readFile(path.join(dir, BUILD_LOG), 'utf8').catch(() => '');
  if (!text.trim()) return '';
  const lines = text.trimEnd().split('\n').slice(-LOG_TAIL_LINES);
  return `\n--- last lines of ${BUILD_LOG} ---\n${lines.join('\n')}`;
}

/**
 * Renames the finished build to its final name. A directory already there without the
 * marker is a leftover and is replaced; one with the marker was finished meanwhile by
 * another run, and ours is dropped.
 */
async function moveIntoPlace(root: string, temporary: string, final: string, hash: string): Promise<void> {
  if (await isSoftwareBuilt(root, hash)) {
    await removeTree(temporary);
    return;
  }
  await removeTree(final);
  await rename(temporary, final);
}

async function removeSoftware(config: NodeConfig, outbox: Outbox, entry: SupplyEntry, log: Logger): Promise<ItemResult> {
  const item = `${entry.name}@${entry.version}`;
  const dir = softwarePath(config.root, entry.hash);
  if (!(await pathExists(dir))) return { item, status: 'unchanged' };
  await removeTree(dir);
  log.info('software removed', { software: item });
  await outbox.add(newEvent({ type: 'software.removed', software: entry.hash }));
  return { item, status: 'done', message: 'removed' };
}

async function removeStaleBuilds(root: string, log: Logger): Promise<void> {
  for (const name of await readdir(softwareRoot(root))) {
    if (!name.startsWith('.build-')) continue;
    const dir = path.join(softwareRoot(root), name);
    const info = await stat(dir).catch(() => null);
    if (info && Date.now() - info.mtimeMs > STALE_BUILD_MS) {
      log.info('removing a stale build directory', { dir });
      await removeTree(dir);
    }
  }
}
