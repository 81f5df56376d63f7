/**
 * Symbolic links of an unpacked tree, followed as the kernel follows them.
 *
 * Checking each link's target as text is not enough: with `p/q -> ..`, the link
 * `s -> p/q/..` reads as `p`, inside, but the kernel walks `p/q` first, lands on the
 * tree's root and goes up once more, out of it. So every link is resolved component by
 * component, through the links of the tree it meets on the way.
 */
import { lstat, readdir, readlink } from 'node:fs/promises';
import path from 'node:path';

/** As the kernel's own limit (MAXSYMLINKS): a longer chain is taken as leading out. */
export const MAX_LINKS_FOLLOWED = 40;

export interface EscapingLink {
  /** The link, relative to the tree's root. */
  link: string;
  target: string;
}

/** The first symbolic link under `root` that leads out of it when followed, if any. */
export async function findEscapingLink(root: string): Promise<EscapingLink | undefined> {
  const walk = async (relative: string[]): Promise<EscapingLink | undefined> => {
    for (const entry of await readdir(path.join(root, ...relative), { withFileTypes: true })) {
      const child = [...relative, entry.name];
      if (entry.isSymbolicLink()) {
        if (!(await staysInside(root, child))) return { link: child.join('/'), target: await readlink(path.join(root, ...child)) };
      } else if (entry.isDirectory()) {
        const found = await walk(child);
        if (found) return found;
      }
    }
    return undefined;
  };
  return walk([]);
}

/**
 * Whether the link at `link` (components under `root`) resolves inside `root`. A
 * component that does not exist ends the walk on disk: the rest is followed as text,
 * so that a target which dangles today cannot lead out once its folders are made.
 */
async function staysInside(root: string, link: string[]): Promise<boolean> {
  const resolved = link.slice(0, -1);
  const first = await readlink(path.join(root, ...link));
  if (path.isAbsolute(first)) return false;
  const pending = first.split('/');
  let followed = 1;
  let onDisk = true;
  while (pending.length > 0) {
    const component = pending.shift()!;
    if (component === '' || component === '.') continue;
    if (component === '..') {
      if (resolved.length === 0) return false;
      resolved.pop();
      continue;
    }
    if (onDisk) {
      const stat = await lstat(path.join(root, ...resolved, component)).catch(() => undefined);
      if (stat?.isSymbolicLink()) {
        if (++followed > MAX_LINKS_FOLLOWED) return false;
        const target = await readlink(path.join(root, ...resolved, component));
        if (path.isAbsolute(target)) return false;
        pending.unshift(...target.split('/'));
        continue;
      }
      // Missing, or a file with components after it: nothing more to follow on disk.
      if (!stat?.isDirectory()) onDisk = false;
    }
    resolved.push(component);
  }
  return true;
}
