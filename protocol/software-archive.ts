/**
 * How a software release travels: a gzipped tar of its folder, plain files and
 * directories only. The receiver extracts it and checks it by its content hash, never
 * by the archive's bytes, so two archives of the same folder are interchangeable.
 */
import { mkdir } from 'node:fs/promises';
import { create, extract, Parser } from 'tar';
import { PledgerError } from './errors.js';

/** Releases are source and templates: anything bigger is a mistake or an attack. */
export const MAX_SOFTWARE_ARCHIVE_BYTES = 64 * 1024 * 1024;
const MAX_UNPACKED_BYTES = 256 * 1024 * 1024;

export async function packSoftware(dir: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  const stream = create({ gzip: true, cwd: dir, portable: true, follow: false }, ['.']);
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/**
 * Extracts an archive into `dir`, which the caller removes on failure. Refuses links,
 * devices, absolute paths and `..` (in a plain name or in a pax header), and archives
 * that unpack to more than 256 MiB, with a SOFTWARE_INVALID naming the first problem.
 *
 * Every way tar reports a problem ends in that one refusal: a warning (it would skip
 * the entry), an error event (a damaged gzip stream), or an exception thrown while the
 * bytes are written in (a header whose checksum fails, in strict mode), so a damaged
 * archive can neither crash the process nor leave a rejected promise unobserved.
 */
export async function unpackSoftware(archive: Buffer, dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  let unpacked = 0;
  let refusal: PledgerError | undefined;
  const refuse = (message: string) => {
    refusal ??= new PledgerError('SOFTWARE_INVALID', `bad software archive: ${message}`);
    return false;
  };
  await new Promise<void>((resolve) => {
    const extractor = extract({
      cwd: dir,
      // Warnings come to onwarn rather than being thrown from inside write().
      strict: false,
      onwarn: (_code, message) => refuse(typeof message === 'string' ? message : String(message)),
      preservePaths: false,
      noChmod: false,
      filter: (entryPath, entry) => {
        if (refusal) return false;
        const type = 'type' in entry ? entry.type : 'File';
        if (leavesFolder(entryPath)) return refuse(`${entryPath} leads out of the release folder (absolute path or ..)`);
        if (type !== 'File' && type !== 'Directory') return refuse(`${entryPath} is a ${type}, not a plain file`);
        unpacked += entry.size ?? 0;
        if (unpacked > MAX_UNPACKED_BYTES) return refuse('it unpacks to more than 256 MiB');
        return true;
      },
    });
    extractor.on('error', (error: Error) => {
      refuse(error.message);
      resolve();
    });
    extractor.on('close', () => resolve());
    try {
      extractor.end(archive);
    } catch (error) {
      refuse((error as Error).message);
      resolve();
    }
  });
  if (refusal) throw refusal;
}

/** True for an entry name that is absolute or climbs out with `..`. */
function leavesFolder(entryPath: string): boolean {
  if (entryPath.startsWith('/') || /^[A-Za-z]:/.test(entryPath)) return true;
  return entryPath.split(/[\\/]/).includes('..');
}

/**
 * Reads a gzipped tar through without unpacking it: throws ARCHIVE_INVALID when the
 * gzip stream or a tar header is damaged, so that the master does not keep, for every
 * node to fetch, an archive that no node can unpack. What it holds is each receiver's
 * to check, when it unpacks.
 */
export async function checkGzippedTar(archive: Buffer): Promise<void> {
  let problem: string | undefined;
  await new Promise<void>((resolve) => {
    const parser = new Parser({
      strict: false,
      onwarn: (_code, message) => {
        problem ??= typeof message === 'string' ? message : String(message);
      },
      onReadEntry: (entry) => entry.resume(),
    });
    parser.on('error', (error: Error) => {
      problem ??= error.message;
      resolve();
    });
    parser.on('end', () => resolve());
    parser.on('close', () => resolve());
    try {
      parser.end(archive);
    } catch (error) {
      problem ??= (error as Error).message;
      resolve();
    }
  });
  if (archive[0] !== 0x1f || archive[1] !== 0x8b) problem ??= 'it is not gzipped';
  if (problem) throw new PledgerError('ARCHIVE_INVALID', `refused: the archive cannot be unpacked: ${problem}`);
}
