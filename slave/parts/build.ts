/**
 * Parts, content-addressed. Each part of a release is built into
 * `<root>/parts/<hash>`, where the hash covers its normalized definition: its kind and
 * inputs (Debian packages, source checksum, the content of its files), its build
 * commands, the hashes of the parts it comes after, the node's platform, and, unless
 * it is `shared`, the release's own hash. A shared part is therefore built once per
 * node and reused by every release naming the same definition; a release only links
 * `<release>/parts/<name>` to it.
 *
 * A part's inputs are fetched and unpacked aside (`<root>/parts/.build-<hash>-<random>`),
 * then renamed into place, where its build commands run (a build embeds its final
 * path); only a complete build gets the marker that makes it count, and a folder
 * without it is removed and built again.
 */
import { createHash } from 'node:crypto';
import { appendFile, cp, mkdir, readdir, readFile, readlink, rename, stat, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { MasterClient } from '../../protocol/client.js';
import { MAX_SOFTWARE_ARCHIVE_BYTES } from '../../protocol/software-archive.js';
import type { LoadedSoftware, PartDefinition } from '../../protocol/software-release.js';
import { pathExists, randomToken, readJsonFile, removeTree } from '../files.js';
import type { Logger } from '../log.js';
import { BUILT_MARKER } from '../paths.js';
import { cleanEnv } from '../processes.js';
import { createTemplateEnvironment, renderString } from '../render.js';
import type { BinaryCacheSettings } from '../config.js';
import { fetchBuiltPart, uploadBuiltPart } from './binary-cache.js';
import { runStep } from './command.js';
import { installDebianPackages, writeProgramWrappers } from './deb.js';
import { installNpmPackages } from './npm.js';
import { PART_MANIFEST, partPath, partsRoot } from './paths.js';
import { downloadSource, SourceError, unpackSource } from './source.js';

export { PART_MANIFEST, partPath, partsRoot } from './paths.js';

export const DEFAULT_BUILD_TIMEOUT_S = 600;
/** Bump when the way a part is built changes, so that no node reuses a part built the old way. */
const PART_FORMAT = 2;

export interface PlannedPart {
  name: string;
  hash: string;
  shared: boolean;
  definition: PartDefinition;
  /** The normalized definition the hash was taken of. */
  normalized: object;
}

/**
 * The hash of every part of a release, in the order written (which is an order to
 * build in: a part comes only after parts written before it).
 */
export async function planParts(release: LoadedSoftware, releaseDir: string): Promise<PlannedPart[]> {
  const planned: PlannedPart[] = [];
  const byName = new Map<string, PlannedPart>();
  for (const [name, definition] of Object.entries(release.definition.parts ?? {})) {
    const files: [string, string, string][] = [];
    for (const file of definition.files ?? []) {
      const full = path.join(releaseDir, file);
      const content = await readFile(full);
      const executable = ((await stat(full)).mode & 0o111) !== 0;
      files.push([file, executable ? 'x' : '-', createHash('sha256').update(content).digest('hex')]);
    }
    if (definition.npm) {
      for (const name of ['package.json', 'package-lock.json']) {
        files.push([`${definition.npm}/${name}`, 'npm', createHash('sha256').update(await readFile(path.join(releaseDir, definition.npm, name))).digest('hex')]);
      }
    }
    const shared = definition.shared ?? false;
    const normalized = {
      format: PART_FORMAT,
      platform: `${process.platform}-${process.arch}`,
      deb: definition.deb ? [...definition.deb].sort() : null,
      source: definition.source ? { sha256: definition.source.sha256, strip: definition.source.strip ?? 0 } : null,
      files,
      build: definition.build ?? [],
      after: Object.fromEntries((definition.after ?? []).map((dependency) => [dependency, byName.get(dependency)!.hash])),
      release: shared ? null : release.hash,
    };
    const hash = createHash('sha256').update(JSON.stringify(normalized)).digest('hex');
    const part = { name, hash, shared, definition, normalized };
    planned.push(part);
    byName.set(name, part);
  }
  return planned;
}

export async function isPartBuilt(root: string, hash: string): Promise<boolean> {
  return pathExists(path.join(partPath(root, hash), BUILT_MARKER));
}

export interface PartBuildContext {
  root: string;
  release: LoadedSoftware;
  /** The release's folder while it is built: where its files are read from. */
  releaseDir: string;
  /** Its final folder: what `software.path` is for a part that is not shared. */
  releaseFinal: string;
  buildLog: string;
  log: Logger;
  /** The master, for its source cache: where sources are kept, and found when upstream is gone. */
  master?: MasterClient;
  /** Whether parts are taken from and given to the master's binary cache (off when absent). */
  binaryCache?: BinaryCacheSettings;
}

/**
 * Makes each part of the release exist under `<root>/parts/`, taking those that do not
 * from the binary cache when the node uses it, building the others, and links
 * `<release>/parts/<name>` to it. Returns how many were built, reused and taken.
 */
export async function ensureParts(context: PartBuildContext): Promise<{ built: number; reused: number; fromCache: number }> {
  const planned = await planParts(context.release, context.releaseDir);
  const counts = { built: 0, reused: 0, fromCache: 0 };
  const cache = { root: context.root, master: context.master, settings: context.binaryCache, buildLog: context.buildLog, log: context.log };
  const links = path.join(context.releaseDir, 'parts');
  await mkdir(links, { recursive: true });
  await mkdir(partsRoot(context.root), { recursive: true });
  const hashes = new Map(planned.map((p) => [p.name, p.hash]));
  for (const [i, part] of planned.entries()) {
    // `progress` says where the build is on a terminal; cron gets the same as JSON lines.
    const progress = `${i + 1}/${planned.length}`;
    if (await isPartBuilt(context.root, part.hash)) {
      context.log.info('part reused', { software: context.release.definition.name, part: part.name, progress, hash: part.hash });
      counts.reused++;
    } else if (await fetchBuiltPart(cache, part)) {
      counts.fromCache++;
    } else {
      context.log.info('building part', { software: context.release.definition.name, part: part.name, progress, hash: part.hash });
      const started = Date.now();
      await buildPart(context, part, hashes);
      context.log.info('part built', { software: context.release.definition.name, part: part.name, progress, seconds: (Date.now() - started) / 1000 });
      counts.built++;
      await uploadBuiltPart(cache, part);
    }
    await symlink(partPath(context.root, part.hash), path.join(links, part.name));
  }
  return counts;
}

async function buildPart(context: PartBuildContext, part: PlannedPart, hashes: Map<string, string>): Promise<void> {
  const { root, release, releaseDir, buildLog } = context;
  const { definition } = part;
  const final = partPath(root, part.hash);
  const temporary = path.join(partsRoot(root), `.build-${part.hash}-${randomToken(6)}`);
  const work = `${temporary}.work`;
  const timeoutS = definition.timeout ?? DEFAULT_BUILD_TIMEOUT_S;
  const dependencies = (definition.after ?? []).map((name) => partPath(root, hashes.get(name)!));
  await writeFile(buildLog, `# part ${part.name} (${part.hash})\n`, { flag: 'a' });
  try {
    await mkdir(temporary, { recursive: true });
    let debs: { file: string; sha256: string }[] = [];
    if (definition.deb) {
      debs = await installDebianPackages(definition.deb, temporary, path.join(work, 'debs'), { log: buildLog, timeoutS });
      await writeProgramWrappers(temporary, final, dependencies);
    }
    if (definition.source) {
      const archive = path.join(work, 'source');
      await writeFile(buildLog, `# fetching ${definition.source.url}\n`, { flag: 'a' });
      await fetchSource(context, definition.source.url, definition.source.sha256, archive, timeoutS);
      await unpackSource(archive, temporary, definition.source.strip ?? 0);
    }
    if (definition.npm) {
      await writeFile(buildLog, `# npm packages of ${definition.npm}\n`, { flag: 'a' });
      await installNpmPackages(path.join(releaseDir, definition.npm), temporary, path.join(work, 'npm'), { log: buildLog, timeoutS });
    }
    for (const file of definition.files ?? []) {
      await mkdir(path.dirname(path.join(temporary, file)), { recursive: true });
      await cp(path.join(releaseDir, file), path.join(temporary, file));
    }
    // Builds embed their final path (an install prefix, a shebang, an rpath): the
    // commands run there. Until the marker is written last, the folder does not count.
    await removeTree(final);
    await rename(temporary, final);
    const env = createTemplateEnvironment(releaseDir);
    const templateContext = {
      part: { path: final, hash: part.hash },
      parts: Object.fromEntries((definition.after ?? []).map((name) => [name, { path: partPath(root, hashes.get(name)!) }])),
      // A shared part serves other releases too: it sees none (the format refuses such a use).
      ...(part.shared
        ? {}
        : { software: { path: context.releaseFinal, name: release.definition.name, version: release.definition.version, hash: release.hash } }),
    };
    const home = path.join(work, 'home');
    await mkdir(home, { recursive: true });
    for (const [i, command] of (definition.build ?? []).entries()) {
      const argv = command.map((item, j) => renderString(env, item, templateContext, `parts.${part.name}.build[${i}][${j}]`));
      context.log.info('build command', { part: part.name, argv });
      await runStep(argv, { cwd: final, env: cleanEnv(home), log: buildLog, timeoutS });
    }
    await writeFile(path.join(final, PART_MANIFEST), `${JSON.stringify({ name: part.name, hash: part.hash, definition: part.normalized, debs }, null, 2)}\n`);
    await writeFile(path.join(final, BUILT_MARKER), `${new Date().toISOString()}\n`);
    await removeTree(work);
  } catch (error) {
    await removeTree(work);
    await removeTree(temporary);
    if (!(await isPartBuilt(root, part.hash))) await removeTree(final);
    throw new Error(`part ${part.name}: ${(error as Error).message}`);
  }
}

/** The part folders a built release links to, by name. */
export async function releaseParts(releaseDir: string): Promise<Map<string, string>> {
  const found = new Map<string, string>();
  const links = path.join(releaseDir, 'parts');
  for (const name of await readdir(links).catch(() => [] as string[])) {
    const target = await readlink(path.join(links, name)).catch(() => null);
    if (target) found.set(name, target);
  }
  return found;
}

/** Removes the parts only this release used (those not shared); shared ones wait for `pledger node prune`. */
export async function removeReleaseParts(root: string, releaseDir: string): Promise<void> {
  for (const target of (await releaseParts(releaseDir)).values()) {
    if (path.dirname(target) !== partsRoot(root)) continue;
    const manifest = (await readJsonFile(path.join(target, PART_MANIFEST)).catch(() => undefined)) as { definition?: { release?: string | null } } | undefined;
    if (manifest?.definition?.release) await removeTree(target);
  }
}

/**
 * Fetches a source archive from upstream and files a copy in the master's source
 * cache; when upstream fails (gone, unreachable, or serving other bytes), fetches it
 * from that cache instead. Either way the content is checked against its sha256.
 */
async function fetchSource(context: PartBuildContext, url: string, sha256: string, file: string, timeoutS: number): Promise<void> {
  const { master, buildLog, log } = context;
  try {
    await downloadSource(url, sha256, file, timeoutS);
  } catch (upstream) {
    if (!master) throw upstream;
    let cached: Buffer;
    try {
      cached = await master.node.source(sha256);
    } catch (error) {
      throw new SourceError(`${(upstream as Error).message}; not in the master's source cache either (${(error as Error).message})`);
    }
    const actual = createHash('sha256').update(cached).digest('hex');
    if (actual !== sha256) throw new SourceError(`${(upstream as Error).message}; the master's source cache holds other content (sha256 ${actual})`);
    await writeFile(file, cached, { mode: 0o600 });
    await appendFile(buildLog, `# ${url}: ${(upstream as Error).message}; fetched from the master's source cache instead\n`);
    log.info('source fetched from the master cache', { url, sha256, reason: (upstream as Error).message });
    return;
  }
  if (!master) return;
  try {
    // HEAD first: most sources are there already, and an upload costs the whole archive.
    const present = await master.node.hasSource(sha256).then(() => true, () => false);
    const size = (await stat(file)).size;
    if (!present && size <= MAX_SOFTWARE_ARCHIVE_BYTES) {
      await master.node.fileSource(sha256, await readFile(file));
      log.info('source filed in the master cache', { url, sha256, bytes: size });
    }
  } catch (error) {
    // The build has what it needs: a cache that cannot take the copy is worth a line, not a failure.
    log.error('source not filed in the master cache', { url, sha256, reason: (error as Error).message });
  }
}
