/**
 * Links in the archives a node unpacks (source archives and binary cache parts): each
 * followed through the other links of the tree, as the kernel follows it, so that a
 * chain whose every link reads as inside cannot lead out of the part.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { create } from 'tar';
import { describe, expect, it } from 'vitest';
import { MAX_LINKS_FOLLOWED } from '../slave/parts/links.js';
import { unpackSource } from '../slave/parts/source.js';
import { writeTree } from './helpers/tree.js';

/**
 * A tar of `files` then the symbolic links `links` (path -> target), in that order. The
 * tar module refuses to unpack a link whose target, read as text, goes through a link
 * already unpacked: the order puts each link before those its target goes through.
 */
async function tarOf(files: Record<string, string>, links: Record<string, string>): Promise<string> {
  const dir = writeTree(files);
  for (const [link, target] of Object.entries(links)) {
    mkdirSync(path.dirname(path.join(dir, link)), { recursive: true });
    symlinkSync(target, path.join(dir, link));
  }
  const file = path.join(mkdtempSync(path.join(tmpdir(), 'pledger-links-')), 'archive.tar');
  await create({ file, cwd: dir, portable: true, follow: false }, [...Object.keys(files), ...Object.keys(links)]);
  return file;
}

const aside = () => path.join(mkdtempSync(path.join(tmpdir(), 'pledger-unpack-')), 'part');

describe('links in unpacked archives', () => {
  it('refuses a link that reads as inside but leads out through another link (s -> p/q/.. with p/q -> ..), naming it', async () => {
    const file = await tarOf({ 'p/file.txt': 'x' }, { 'p/q': '..', s: 'p/q/..' });
    // Each link alone reads as inside: p/q/.. is p.
    const dir = aside();
    await expect(unpackSource(file, dir, 0)).rejects.toThrow(
      'refused archive archive.tar: s links to p/q/.., which leads out of the part once the links on its way are followed',
    );
  });

  it('refuses a chain of links that leads out only at its end, and one longer than the kernel follows', async () => {
    const chain = await tarOf({}, { 'a/d': 'b/c/..', 'a/b/c': 'up', 'a/b/up': '../..' });
    await expect(unpackSource(chain, aside(), 0)).rejects.toThrow(/a\/d links to b\/c\/\.\., which leads out of the part/);

    // Inside all along, but never ending: b/down/.. is the root, where l1 is.
    const loop = await tarOf({ 'b/file.txt': 'x' }, { l1: 'l2', l2: 'a/down/../l1', 'a/down': '../b' });
    await expect(unpackSource(loop, aside(), 0)).rejects.toThrow(/l1 links to l2, which leads out of the part/);

    const long: Record<string, string> = {};
    for (let i = 0; i < MAX_LINKS_FOLLOWED + 1; i++) long[`n${i}`] = i === MAX_LINKS_FOLLOWED ? 'target.txt' : `n${i + 1}`;
    await expect(unpackSource(await tarOf({ 'target.txt': 'end' }, long), aside(), 0)).rejects.toThrow(/n0 links to n1, which leads out of the part/);
  });

  it('refuses a link through a dangling name whose later .. would lead out once that name exists', async () => {
    const file = await tarOf({}, { 'a/up': '..', 'a/later': 'up/missing/../..' });
    await expect(unpackSource(file, aside(), 0)).rejects.toThrow(/a\/later links to up\/missing\/\.\.\/\.\., which leads out of the part/);
  });

  it('unpacks links that stay inside, with .. and through other links, dangling ones included', async () => {
    const links = {
      'usr/lib/libx.so': 'libx.so.1',
      'usr/lib/libx.so.1': '../../lib/real/libx.so.1.2',
      'usr/bin/sh': '../../bin/dash',
      'usr/share/doc/x/changelog': '../../../../lib/real/../real/./libx.so.1.2',
      'deep/chain': '../here/here/usr/lib/libx.so',
      here: '.',
      'etc/alternatives/via': 'up/alternatives/up/lib-dir/libx.so.1',
      'etc/alternatives/back': 'up/../etc/lib-dir/libx.so',
      'etc/alternatives/up': '..',
      'etc/lib-dir': '../usr/lib',
      dangling: 'nowhere/yet',
    };
    const file = await tarOf({ 'lib/real/libx.so.1.2': 'the library', 'bin/dash': 'a shell' }, links);
    const dir = aside();
    await unpackSource(file, dir, 0);
    for (const [link, target] of Object.entries(links)) expect(readlinkSync(path.join(dir, link))).toBe(target);
    for (const reached of ['usr/lib/libx.so', 'usr/share/doc/x/changelog', 'etc/alternatives/via', 'etc/alternatives/back', 'deep/chain']) {
      expect(readFileSync(path.join(dir, reached), 'utf8'), reached).toBe('the library');
    }
    expect(existsSync(path.join(dir, 'dangling'))).toBe(false);
  });
});
