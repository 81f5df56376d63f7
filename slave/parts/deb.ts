/**
 * Debian binary packages as a part, without root: `apt-get download` fetches the named
 * packages and the dependencies the host lacks (apt checks each file against the
 * hashes of its signed index), `dpkg-deb -x` extracts them into the part's directory,
 * and a wrapper per program puts the part's libraries on the loader's path.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chmod, lstat, mkdir, readdir, readlink, symlink, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { shellQuote } from '../render.js';
import { captureStep, runStep, type StepOptions } from './command.js';

const CLEAN_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** Folders whose programs get a wrapper in `<part>/bin`. */
const PROGRAM_DIRS = ['usr/bin', 'usr/sbin', 'bin', 'sbin'];
/** Where the wrappers go: a name no Debian package uses, so that nothing of theirs is overwritten. */
export const WRAPPER_DIR = 'pledger/bin';

export interface DebianFile {
  file: string;
  sha256: string;
}

/**
 * Downloads `packages` (names, or `name=version`) and the dependencies the host lacks
 * into `downloadDir`, extracts them into `partDir` and returns what was extracted.
 */
export async function installDebianPackages(packages: string[], partDir: string, downloadDir: string, options: Omit<StepOptions, 'cwd' | 'env'>): Promise<DebianFile[]> {
  await mkdir(downloadDir, { recursive: true });
  const step: StepOptions = { ...options, cwd: downloadDir, env: { PATH: CLEAN_PATH, HOME: downloadDir, LANG: 'C.UTF-8' } };
  // The resolver of apt itself, in simulation (which needs no root): it picks among
  // alternatives and virtual packages the way an installation would, and lists only
  // what the host does not have.
  const simulation = await captureStep(
    ['apt-get', 'install', '--simulate', '--quiet', '--no-install-recommends', '-o', 'Debug::NoLocking=true', '-o', 'APT::Get::Show-Versions=false', ...packages],
    step,
  );
  const wanted = new Map<string, string>();
  for (const request of packages) wanted.set(request.split('=')[0]!, request);
  for (const match of simulation.matchAll(/^Inst (\S+) (?:\[[^\]]*\] )?\((\S+)/gm)) {
    const name = match[1]!.split(':')[0]!;
    if (!wanted.has(name)) wanted.set(name, `${name}=${match[2]!}`);
  }
  await runStep(['apt-get', 'download', '--quiet', ...wanted.values()], step);
  const files = (await readdir(downloadDir)).filter((name) => name.endsWith('.deb')).sort();
  const extracted: DebianFile[] = [];
  for (const file of files) {
    await runStep(['dpkg-deb', '-x', file, partDir], step);
    extracted.push({ file, sha256: await sha256File(path.join(downloadDir, file)) });
  }
  await relocateAbsoluteLinks(partDir);
  return extracted;
}

/**
 * Packages link across top-level folders with absolute targets (`/usr/bin/x`); once
 * extracted under a part, such a link would reach the host's file. Each becomes a
 * relative link inside the part.
 */
async function relocateAbsoluteLinks(partDir: string): Promise<void> {
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const file = path.join(dir, entry.name);
      if (entry.isDirectory()) await walk(file);
      else if (entry.isSymbolicLink()) {
        const target = await readlink(file);
        if (!path.isAbsolute(target)) continue;
        await unlink(file);
        await symlink(path.relative(dir, path.join(partDir, target)) || '.', file);
      }
    }
  };
  await walk(partDir);
}

/**
 * Writes `<part>/pledger/bin/NAME` for every program of the packages' usr/bin, usr/sbin,
 * bin and sbin (the first of a name wins), and `<part>/pledger/usr/lib/…/bin/NAME` for
 * those of `bin` folders under usr/lib: each a two-line script that
 * sets LD_LIBRARY_PATH to the part's library folders (and those of `libraryParts`)
 * and execs the program, so that the process keeps its pid and its signals.
 */
export async function writeProgramWrappers(partDir: string, finalDir: string, libraryParts: string[]): Promise<string[]> {
  const libraryDirs: string[] = [];
  for (const [built, final] of [[partDir, finalDir] as const, ...libraryParts.map((p) => [p, p] as const)]) {
    for (const base of ['usr/lib', 'lib']) {
      for (const name of await readdir(path.join(built, base)).catch(() => [] as string[])) {
        if (/-linux-gnu[a-z]*$/.test(name)) libraryDirs.push(path.join(final, base, name));
      }
      if (await isDirectory(path.join(built, base))) libraryDirs.push(path.join(final, base));
    }
  }
  const write = async (wrapper: string, program: string) => {
    const script = [
      '#!/bin/sh',
      `LD_LIBRARY_PATH=${shellQuote(libraryDirs.join(':'))}\${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec ${shellQuote(program)} "$@"`,
      '',
    ].join('\n');
    await mkdir(path.dirname(wrapper), { recursive: true });
    await writeFile(wrapper, script);
    await chmod(wrapper, 0o755);
  };
  const written: string[] = [];
  for (const dir of PROGRAM_DIRS) {
    for (const name of await programsIn(path.join(partDir, dir))) {
      if (written.includes(name)) continue;
      await write(path.join(partDir, WRAPPER_DIR, name), path.join(finalDir, dir, name));
      written.push(name);
    }
  }
  // Versioned programs out of PATH (usr/lib/postgresql/15/bin/initdb): a wrapper at the
  // same relative place under pledger/, since their names clash with Debian's
  // dispatchers in usr/bin.
  for (const dir of await libraryBinDirs(partDir)) {
    for (const name of await programsIn(path.join(partDir, dir))) {
      await write(path.join(partDir, 'pledger', dir, name), path.join(finalDir, dir, name));
      written.push(path.join(dir, name));
    }
  }
  return written;
}

async function programsIn(dir: string): Promise<string[]> {
  const names: string[] = [];
  for (const name of (await readdir(dir).catch(() => [] as string[])).sort()) {
    const info = await lstat(path.join(dir, name)).catch(() => null);
    if (info && !info.isDirectory()) names.push(name);
  }
  return names;
}

/** `bin` and `sbin` folders two or three levels under usr/lib: usr/lib/NAME/bin, usr/lib/NAME/VERSION/bin. */
async function libraryBinDirs(partDir: string): Promise<string[]> {
  const found: string[] = [];
  const walk = async (relative: string, depth: number): Promise<void> => {
    for (const entry of await readdir(path.join(partDir, relative), { withFileTypes: true }).catch(() => [])) {
      if (!entry.isDirectory()) continue;
      const child = path.join(relative, entry.name);
      if (entry.name === 'bin' || entry.name === 'sbin') found.push(child);
      else if (depth < 2) await walk(child, depth + 1);
    }
  };
  await walk('usr/lib', 0);
  return found.sort();
}

async function isDirectory(dir: string): Promise<boolean> {
  return (await lstat(dir).catch(() => null))?.isDirectory() ?? false;
}

export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(file), hash);
  return hash.digest('hex');
}
