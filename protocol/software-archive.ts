/**
 * How a software release travels: a gzipped tar of its folder, plain files and
 * directories only. The receiver extracts it and checks it by its content hash, never
 * by the archive's bytes, so two archives of the same folder are interchangeable.
 */
import { mkdir } from 'node:fs/promises';
import { once } from 'node:events';
import { create, extract } from 'tar';
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
 * Extracts an archive into `dir`. Refuses links, devices, absolute paths and `..`
 * (tar's strict mode turns each of those into an error) and archives that unpack to
 * more than 256 MiB.
 */
export async function unpackSoftware(archive: Buffer, dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  let unpacked = 0;
  let refusal: PledgerError | undefined;
  const refuse = (message: string) => {
    refusal ??= new PledgerError('SOFTWARE_INVALID', `bad software archive: ${message}`);
    return false;
  };
  const extractor = extract({
    cwd: dir,
    strict: true,
    preservePaths: false,
    noChmod: false,
    filter: (entryPath, entry) => {
      const type = 'type' in entry ? entry.type : 'File';
      if (type !== 'File' && type !== 'Directory') return refuse(`${entryPath} is a ${type}, not a plain file`);
      unpacked += entry.size ?? 0;
      if (unpacked > MAX_UNPACKED_BYTES) return refuse('it unpacks to more than 256 MiB');
      return true;
    },
  });
  const failed = once(extractor, 'error').then(([error]) => {
    throw new PledgerError('SOFTWARE_INVALID', `bad software archive: ${(error as Error).message}`);
  });
  extractor.end(archive);
  await Promise.race([once(extractor, 'close'), failed]);
  if (refusal) throw refusal;
}
