/**
 * The node's side of the master's binary cache (opt-in, see `binaryCache` in the node
 * configuration).
 *
 * Before building a part, a node that downloads asks the master for an entry filed
 * under the part's hash, this node's platform and its root. It trusts the entry only
 * when the master's signature checks against the key the node was configured with and
 * the archive has the signed sha256; it unpacks it aside (nothing may leave the part),
 * checks that it is the part asked for, renames it into place and writes the marker
 * last, as a build would. Any failure is a warning, and the part is built instead.
 *
 * After building a part, a node that uploads packs it and files it with the master,
 * best effort: a cache that cannot take it never fails the build. Parts embed the
 * paths they were built at (install prefixes, wrappers, shebangs): a part whose files
 * hold the node's root is filed for that root only, one that holds none for any root.
 */
import { createHash } from 'node:crypto';
import { createWriteStream, readlinkSync } from 'node:fs';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { create } from 'tar';
import {
  decodePublicKey,
  MAX_BINARY_ARCHIVE_BYTES,
  verifyBinaryEntry,
  type BinaryEntry as BinaryEntryType,
} from '../../protocol/binary-cache.js';
import type { MasterClient } from '../../protocol/client.js';
import { PledgerError } from '../../protocol/errors.js';
import type { BinaryCacheSettings } from '../config.js';
import { errorMessage, randomToken, readJsonFile, removeTree } from '../files.js';
import type { Logger } from '../log.js';
import { BUILT_MARKER } from '../paths.js';
import { checkValue } from '../validate.js';
import { BinaryEntry } from '../validators.generated.js';
import { PART_MANIFEST, partPath, partsRoot } from './paths.js';
import { findEscapingLink } from './links.js';
import { unpackSource } from './source.js';

export interface BinaryCacheContext {
  root: string;
  master?: MasterClient;
  settings?: BinaryCacheSettings;
  buildLog: string;
  log: Logger;
}

class Refused extends Error {}

let platformOnce: Promise<string> | undefined;

/**
 * `<os id>-<os version>/<architecture>` (`debian-12/x64`): binaries built on one
 * system are never given to another. Read from /etc/os-release.
 */
export function nodePlatform(): Promise<string> {
  platformOnce ??= readOsRelease().then((os) => `${os}/${process.arch.toLowerCase().replace(/[^a-z0-9_]/g, '_')}`);
  return platformOnce;
}

async function readOsRelease(): Promise<string> {
  const text = await readFile('/etc/os-release', 'utf8').catch(() => readFile('/usr/lib/os-release', 'utf8').catch(() => ''));
  const field = (name: string) => {
    const match = new RegExp(`^${name}=(.*)$`, 'm').exec(text);
    return (match?.[1] ?? '').trim().replace(/^["']|["']$/g, '').toLowerCase().replace(/[^a-z0-9._+-]/g, '_');
  };
  const id = field('ID') || process.platform;
  const version = field('VERSION_ID');
  return (version ? `${id}-${version}` : id).replace(/^[^a-z0-9]+/, '').slice(0, 64) || 'unknown';
}

/**
 * Puts the part at its place from the binary cache. Returns false, having changed
 * nothing, when the cache is off, holds no entry, or its entry is refused.
 */
export async function fetchBuiltPart(context: BinaryCacheContext, part: { name: string; hash: string }): Promise<boolean> {
  const { master, settings, log } = context;
  if (!master || !settings?.download) return false;
  const platform = await nodePlatform();
  let entry: BinaryEntryType;
  try {
    const answer = await master.node.binary(part.hash, { query: { platform, prefix: context.root } });
    entry = checkValue<BinaryEntryType>(BinaryEntry, answer, 'binary cache entry');
  } catch (error) {
    if (!(error instanceof PledgerError && error.code === 'NOT_FOUND')) {
      log.error('binary cache lookup failed: building the part', { part: part.name, hash: part.hash, reason: errorMessage(error) });
    }
    return false;
  }
  const temporary = path.join(partsRoot(context.root), `.build-${part.hash}-${randomToken(6)}`);
  const archive = `${temporary}.archive`;
  try {
    await takeEntry(context, part, platform, entry, temporary, archive);
    await removeTree(archive);
    log.info('part taken from the binary cache', { part: part.name, hash: part.hash, platform, relocatable: entry.prefix === '', bytes: entry.size });
    await writeFile(context.buildLog, `# part ${part.name} (${part.hash}) taken from the binary cache\n`, { flag: 'a' });
    return true;
  } catch (error) {
    await removeTree(archive);
    await removeTree(temporary);
    const reason = errorMessage(error);
    log.error('binary cache entry refused: building the part instead', { part: part.name, hash: part.hash, platform, reason });
    await writeFile(context.buildLog, `# part ${part.name}: binary cache entry refused (${reason}); building it\n`, { flag: 'a' });
    return false;
  }
}

async function takeEntry(
  context: BinaryCacheContext,
  part: { name: string; hash: string },
  platform: string,
  entry: BinaryEntryType,
  temporary: string,
  archive: string,
): Promise<void> {
  const key = decodePublicKey(context.settings!.publicKey);
  // What the entry claims to be must be what was asked, and the master must have signed it.
  if (entry.partHash !== part.hash || entry.platform !== platform || (entry.prefix !== '' && entry.prefix !== context.root)) {
    throw new Refused(`the master answered an entry for ${entry.partHash} on ${entry.platform} under "${entry.prefix}"`);
  }
  if (!verifyBinaryEntry(entry, key)) throw new Refused('its signature does not check against the configured binary cache key');
  const bytes = await context.master!.node.binaryArchive(part.hash, { query: { platform, prefix: entry.prefix } });
  if (bytes.length > MAX_BINARY_ARCHIVE_BYTES) throw new Refused(`the archive is larger than ${MAX_BINARY_ARCHIVE_BYTES} bytes`);
  const actual = createHash('sha256').update(bytes).digest('hex');
  if (actual !== entry.sha256) throw new Refused(`checksum mismatch: the archive has the sha256 ${actual}, the signed entry says ${entry.sha256}`);
  await mkdir(temporary, { recursive: true });
  await writeFile(archive, bytes, { mode: 0o600 });
  await unpackSource(archive, temporary, 0).catch((error: unknown) => {
    throw new Refused(errorMessage(error));
  });
  const manifest = (await readJsonFile(path.join(temporary, PART_MANIFEST)).catch(() => undefined)) as { hash?: unknown } | undefined;
  if (manifest?.hash !== part.hash) throw new Refused(`the archive holds no manifest of part ${part.hash}`);
  const final = partPath(context.root, part.hash);
  await removeTree(final);
  await rename(temporary, final);
  // Last, as after a build: until it is there, the folder does not count.
  await writeFile(path.join(final, BUILT_MARKER), `${new Date().toISOString()}\n`);
}

/**
 * Files the part just built with the master, unless an entry is there already. Never
 * throws: what goes wrong is logged, and the build stands.
 */
export async function uploadBuiltPart(context: BinaryCacheContext, part: { name: string; hash: string }): Promise<void> {
  const { master, settings, log } = context;
  if (!master || !settings?.upload) return;
  const file = path.join(partsRoot(context.root), `.build-${part.hash}-${randomToken(6)}.upload`);
  try {
    const platform = await nodePlatform();
    const present = await master.node.binary(part.hash, { query: { platform, prefix: context.root } }).then(
      () => true,
      (error: unknown) => {
        if (error instanceof PledgerError && error.code === 'NOT_FOUND') return false;
        throw error;
      },
    );
    if (present) return;
    const packed = await packPart(partPath(context.root, part.hash), context.root, file);
    if (typeof packed === 'string') {
      log.info('part not filed in the binary cache', { part: part.name, hash: part.hash, reason: packed });
      return;
    }
    // A part that holds its node's root anywhere (a prefix, a wrapper, a link) only
    // works under that root: filed for it. One that holds none works under any root.
    const prefix = packed.holdsRoot ? context.root : '';
    await master.node.fileBinary(part.hash, await readFile(file), { query: { platform, prefix, sha256: packed.sha256 } });
    log.info('part filed in the binary cache', { part: part.name, hash: part.hash, platform, relocatable: prefix === '', bytes: packed.size });
  } catch (error) {
    log.error('part not filed in the binary cache', { part: part.name, hash: part.hash, reason: errorMessage(error) });
  } finally {
    await removeTree(file);
  }
}

/**
 * Packs the part into `file` as a gzipped tar, without its marker (the receiver writes
 * its own, last), streaming: the part is read once, looked through for `root` on the
 * way, and never held in memory. Returns why not instead when the part cannot travel:
 * a link that leads out of it (the receiver would refuse it), or an archive bigger
 * than the master takes.
 */
async function packPart(dir: string, root: string, file: string): Promise<{ sha256: string; size: number; holdsRoot: boolean } | string> {
  // What every receiver would refuse (see unpackSource) is not worth filing.
  const escaping = await findEscapingLink(dir);
  if (escaping) return `${escaping.link} links to ${escaping.target}, out of the part once the links on its way are followed`;
  let refusal: string | undefined;
  const tar = create(
    {
      cwd: dir,
      portable: true,
      follow: false,
      filter: (entryPath, stat) => {
        if (path.posix.normalize(entryPath) === BUILT_MARKER) return false;
        if ('isSymbolicLink' in stat && stat.isSymbolicLink()) {
          const target = readlinkSync(path.join(dir, entryPath));
          const resolved = path.posix.normalize(path.posix.join(path.posix.dirname(entryPath), target));
          if (path.posix.isAbsolute(target) || resolved === '..' || resolved.startsWith('../')) refusal ??= `${entryPath} links to ${target}, out of the part`;
        }
        return true;
      },
    },
    ['.'],
  );
  // The root may straddle two chunks: each look starts with the end of the last chunk.
  const needle = Buffer.from(root);
  let carried = Buffer.alloc(0);
  let holdsRoot = false;
  const scan = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      if (!holdsRoot) {
        const window = Buffer.concat([carried, chunk]);
        holdsRoot = window.includes(needle);
        carried = window.subarray(Math.max(0, window.length - needle.length + 1));
      }
      done(null, chunk);
    },
  });
  const hash = createHash('sha256');
  let size = 0;
  const meter = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      size += chunk.length;
      if (size > MAX_BINARY_ARCHIVE_BYTES) return done(new Refused(`its archive is larger than ${MAX_BINARY_ARCHIVE_BYTES} bytes`));
      hash.update(chunk);
      done(null, chunk);
    },
  });
  try {
    // tar's stream is not a Node stream; its async iterator is the common ground.
    await pipeline(tar as AsyncIterable<Buffer>, scan, createGzip(), meter, createWriteStream(file, { mode: 0o600 }));
  } catch (error) {
    if (error instanceof Refused) return error.message;
    throw error;
  }
  return refusal ?? { sha256: hash.digest('hex'), size, holdsRoot };
}
