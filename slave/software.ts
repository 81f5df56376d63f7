/**
 * Building software releases without root, into content-addressed directories.
 *
 * A release is downloaded from the master, checked against its hash before anything
 * of it is read, and built in a temporary directory beside its final place; only a
 * complete build is marked and renamed into `<root>/software/<hash>`. A half-built
 * directory therefore never counts as built, and a crash costs a rebuild, never a
 * broken release. Its parts live under `<root>/parts/<hash>` (see parts/build.ts): the
 * release only links to them, so a part shared by several releases is built once.
 *
 * A failed build is reported to the master with the end of its log, and tried again
 * after a backoff that grows with each failure; the other releases go on meanwhile.
 */
import { mkdir, readdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { DesiredState } from '../protocol/api.js';
import type { MasterClient } from '../protocol/client.js';
import { PledgerError } from '../protocol/errors.js';
import { checkFreeSpace, forgetAttempts, readAttempts, recordFailure } from './build-retry.js';
import type { NodeConfig } from './config.js';
import { errorMessage, pathExists, randomToken, removeTree } from './files.js';
import type { Logger } from './log.js';
import { connectMaster, pullDesiredState } from './master.js';
import { newEvent, openOutbox, type Outbox } from './outbox.js';
import { withLock } from './lock.js';
import { partsRoot } from './parts/paths.js';
import { BUILT_MARKER, lockPath, softwarePath, softwareRoot } from './paths.js';
import type { ItemResult, RunReport } from './result.js';

/**
 * What building needs (the release format and its validator, tar, the part builders,
 * execa, nunjucks) loads only when something is to be built: the run cron starts every
 * minute, which usually has nothing to do, stays cheap.
 */
const builders = async () => {
  const [archive, format, parts] = await Promise.all([
    import('../protocol/software-archive.js'),
    import('../protocol/software-release.js'),
    import('./parts/build.js'),
  ]);
  return { ...archive, ...format, ...parts };
};

export type { ItemResult, RunReport } from './result.js';

export const BUILD_LOG = 'build.log';
const LOG_TAIL_LINES = 20;
const MAX_LOG_LINE = 400;
const MAX_ERROR_CHARS = 4000;
const truncate = (text: string, max: number) => (text.length > max ? `${text.slice(0, max)}…` : text);
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
  const outbox = openOutbox(config);
  try {
    return await installWith(config, master, pulled, outbox, log);
  } finally {
    // The daemon runs this every cycle: one database connection per run, closed.
    outbox.close();
  }
}

async function installWith(
  config: NodeConfig,
  master: MasterClient,
  pulled: Awaited<ReturnType<typeof pullDesiredState>>,
  outbox: Outbox,
  log: Logger,
): Promise<RunReport> {
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
  const waiting = (await readAttempts(config.root))[entry.hash];
  if (waiting && Date.parse(waiting.nextAttemptAt) > Date.now()) {
    // Reported when it failed; trying again before the backoff ends would only loop.
    return { item, status: 'failed', message: `failed ${waiting.failures} time(s), next attempt after ${waiting.nextAttemptAt}: ${waiting.message.split('\n')[0]}` };
  }
  const final = softwarePath(config.root, entry.hash);
  const temporary = path.join(softwareRoot(config.root), `.build-${entry.hash}-${randomToken(6)}`);
  log.info('building software', { software: item, hash: entry.hash });
  const started = Date.now();
  try {
    await checkFreeSpace(config.root);
    const { ensureParts, loadSoftware } = await builders();
    await downloadRelease(master, entry.hash, temporary);
    const release = await loadSoftware(temporary);
    const buildLog = path.join(temporary, BUILD_LOG);
    await writeFile(buildLog, '');
    const parts = await ensureParts({
      root: config.root,
      release,
      releaseDir: temporary,
      releaseFinal: final,
      buildLog,
      log,
      master,
      binaryCache: config.binaryCache,
    });
    await writeFile(path.join(temporary, BUILT_MARKER), `${new Date().toISOString()}\n`);
    await moveIntoPlace(config.root, temporary, final, entry.hash);
    log.info('software built', { software: item, path: final, partsBuilt: parts.built, partsReused: parts.reused, partsFromCache: parts.fromCache, seconds: (Date.now() - started) / 1000 });
  } catch (error) {
    const message = `${truncate(errorMessage(error), MAX_ERROR_CHARS)}${await buildLogTail(temporary)}`;
    await removeTree(temporary);
    // Telling the master that it cannot be reached would only be noise once it can.
    if (isUnreachable(error)) throw error;
    const attempts = await recordFailure(config.root, entry.hash, message);
    log.error('software build failed', { software: item, reason: message, failures: attempts.failures, nextAttemptAt: attempts.nextAttemptAt });
    await outbox.add(newEvent({ type: 'software.error', software: entry.hash, message }));
    return { item, status: 'failed', message };
  }
  await forgetAttempts(config.root, [entry.hash]);
  await outbox.add(newEvent({ type: 'software.built', software: entry.hash }));
  return { item, status: 'done' };
}

/** Downloads and unpacks a release, and refuses it unless its content has the expected hash. */
async function downloadRelease(master: MasterClient, hash: string, dir: string): Promise<void> {
  const { MAX_SOFTWARE_ARCHIVE_BYTES, hashDirectory, unpackSoftware } = await builders();
  const archive = await master.node.software(hash);
  if (archive.length > MAX_SOFTWARE_ARCHIVE_BYTES) throw new Error(`the archive is larger than ${MAX_SOFTWARE_ARCHIVE_BYTES} bytes`);
  await unpackSoftware(archive, dir);
  const actual = await hashDirectory(dir);
  if (actual !== hash) throw new Error(`refused: the release downloaded has the content hash ${actual}, not ${hash}`);
}

async function buildLogTail(dir: string): Promise<string> {
  const text = await readFile(path.join(dir, BUILD_LOG), 'utf8').catch(() => '');
  if (!text.trim()) return '';
  // The master takes messages of at most 16 KiB: a tool printing one huge line (a
  // progress bar, minified output) must not make the report undeliverable.
  const lines = text
    .trimEnd()
    .split('\n')
    .slice(-LOG_TAIL_LINES)
    .map((line) => (line.length > MAX_LOG_LINE ? `${line.slice(0, MAX_LOG_LINE)}…` : line));
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
  await (await builders()).removeReleaseParts(config.root, dir);
  await removeTree(dir);
  await forgetAttempts(config.root, [entry.hash]);
  log.info('software removed', { software: item });
  await outbox.add(newEvent({ type: 'software.removed', software: entry.hash }));
  return { item, status: 'done', message: 'removed' };
}

async function removeStaleBuilds(root: string, log: Logger): Promise<void> {
  const candidates = [
    ...(await readdir(softwareRoot(root))).map((name) => path.join(softwareRoot(root), name)),
    ...(await readdir(partsRoot(root)).catch(() => [] as string[])).map((name) => path.join(partsRoot(root), name)),
  ];
  for (const dir of candidates) {
    if (!path.basename(dir).startsWith('.build-')) continue;
    const info = await stat(dir).catch(() => null);
    if (info && Date.now() - info.mtimeMs > STALE_BUILD_MS) {
      log.info('removing a stale build directory', { dir });
      await removeTree(dir);
    }
  }
}
