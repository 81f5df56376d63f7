/**
 * A source archive as a part: fetched by URL (http, https or file), refused unless its
 * sha256 is the one the release carries, and unpacked with nothing leaving the part.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { extract } from 'tar';
import { findEscapingLink } from './links.js';

/** Sources bigger than this are refused while they download. */
export const MAX_SOURCE_BYTES = 4 * 1024 * 1024 * 1024;

export class SourceError extends Error {}

/**
 * Downloads `url` to `file` and checks it against `sha256`; a mismatch removes the file
 * and fails with both hashes, so the author can tell a changed upstream from a typo.
 */
export async function downloadSource(url: string, sha256: string, file: string, timeoutS: number): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  const hash = createHash('sha256');
  let size = 0;
  const meter = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      size += chunk.length;
      if (size > MAX_SOURCE_BYTES) return done(new SourceError(`${url} is larger than ${MAX_SOURCE_BYTES} bytes`));
      hash.update(chunk);
      done(null, chunk);
    },
  });
  const signal = AbortSignal.timeout(timeoutS * 1000);
  try {
    await pipeline(await openSource(url, signal), meter, createWriteStream(file, { mode: 0o600 }), { signal });
  } catch (error) {
    await rm(file, { force: true });
    if (signal.aborted) throw new SourceError(`downloading ${url} timed out after ${timeoutS} s`);
    throw error instanceof SourceError ? error : new SourceError(`cannot download ${url}: ${(error as Error).message}`);
  }
  const actual = hash.digest('hex');
  if (actual !== sha256) {
    await rm(file, { force: true });
    throw new SourceError(`checksum mismatch for ${url}: expected sha256 ${sha256}, got ${actual}`);
  }
}

async function openSource(url: string, signal: AbortSignal): Promise<Readable> {
  const parsed = new URL(url);
  if (parsed.protocol === 'file:') return createReadStream(fileURLToPath(parsed));
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new SourceError(`${url}: only http, https and file URLs are fetched`);
  const answer = await fetch(parsed, { signal, redirect: 'follow' });
  if (!answer.ok || !answer.body) throw new SourceError(`${url} answered ${answer.status} ${answer.statusText}`);
  return Readable.fromWeb(answer.body as import('node:stream/web').ReadableStream);
}

/**
 * Unpacks a tar archive (plain, gzip, brotli or zstd, as the tar module reads them)
 * into `dir`, which the caller sets aside and removes on failure. An entry with an
 * absolute path or a `..` component, a link pointing out of the part (by itself or
 * through other links of the archive), or a device, is refused with its name.
 */
export async function unpackSource(file: string, dir: string, strip: number): Promise<void> {
  await mkdir(dir, { recursive: true });
  let refusal: SourceError | undefined;
  const refuse = (message: string) => {
    refusal ??= new SourceError(`refused archive ${path.basename(file)}: ${message}`);
    return false;
  };
  try {
    await extract({
      file,
      cwd: dir,
      strip,
      strict: true,
      preservePaths: false,
      preserveOwner: false,
      filter: (entryPath, entry) => {
        if (refusal) return false;
        const type = 'type' in entry ? entry.type : 'File';
        if (escapes(entryPath)) return refuse(`${entryPath} leads out of the part (absolute path or ..)`);
        if (type === 'SymbolicLink' || type === 'Link') {
          const target = 'linkpath' in entry ? String(entry.linkpath ?? '') : '';
          const resolved = type === 'SymbolicLink' ? path.posix.join(path.posix.dirname(entryPath), target) : target;
          if (path.posix.isAbsolute(target) || escapes(resolved)) return refuse(`${entryPath} links to ${target}, out of the part`);
          return true;
        }
        if (type !== 'File' && type !== 'OldFile' && type !== 'ContiguousFile' && type !== 'Directory') return refuse(`${entryPath} is a ${type}`);
        return true;
      },
    });
  } catch (error) {
    throw refusal ?? new SourceError(`cannot unpack ${path.basename(file)}: ${(error as Error).message}`);
  }
  if (refusal) throw refusal;
  // The filter sees each link alone, as text; only the unpacked tree shows where a chain of them leads.
  const escaping = await findEscapingLink(dir);
  if (escaping) {
    throw new SourceError(
      `refused archive ${path.basename(file)}: ${escaping.link} links to ${escaping.target}, which leads out of the part once the links on its way are followed`,
    );
  }
}

function escapes(entryPath: string): boolean {
  if (entryPath.startsWith('/') || /^[A-Za-z]:/.test(entryPath)) return true;
  const normalized = path.posix.normalize(entryPath);
  return normalized === '..' || normalized.startsWith('../');
}
