/**
 * `pledger node prune`: frees the disk of what no supplied release uses any more:
 * built releases the master no longer supplies (nor any instance of the node runs),
 * parts no kept release links to, and leftovers of interrupted builds.
 */
import { lstat, readdir } from 'node:fs/promises';
import path from 'node:path';
import type { NodeConfig } from '../config.js';
import { removeTree } from '../files.js';
import { withLock } from '../lock.js';
import type { Logger } from '../log.js';
import { connectMaster, pullDesiredState } from '../master.js';
import { lockPath, softwareRoot } from '../paths.js';
import { partsRoot, releaseParts } from './build.js';

export interface PruneReport {
  /** Paths removed (or that would be, with dryRun). */
  removed: { path: string; kind: 'software' | 'part' | 'leftover'; bytes: number }[];
  kept: { software: number; parts: number };
  offline: boolean;
}

export async function pruneNode(config: NodeConfig, log: Logger, options: { dryRun?: boolean } = {}): Promise<PruneReport> {
  // Under the software lock: a build running meanwhile would link parts this run cannot see.
  return withLock(lockPath(config.root, 'software'), 'pruning software', async () => {
    const pulled = await pullDesiredState(config, connectMaster(config), log);
    const wanted = new Set(pulled.state.software.filter((s) => s.state === 'available').map((s) => s.hash));
    for (const partition of pulled.state.partitions) if (partition.instance) wanted.add(partition.instance.software.hash);
    const report: PruneReport = { removed: [], kept: { software: 0, parts: 0 }, offline: pulled.offline };
    const remove = async (dir: string, kind: 'software' | 'part' | 'leftover') => {
      report.removed.push({ path: dir, kind, bytes: await diskUsage(dir) });
      if (!options.dryRun) {
        log.info('pruning', { path: dir, kind });
        await removeTree(dir);
      }
    };
    const usedParts = new Set<string>();
    for (const name of await readdir(softwareRoot(config.root)).catch(() => [] as string[])) {
      const dir = path.join(softwareRoot(config.root), name);
      if (name.startsWith('.build-')) continue; // removed by the builds themselves once stale
      if (wanted.has(name)) {
        report.kept.software++;
        for (const target of (await releaseParts(dir)).values()) usedParts.add(path.basename(target));
      } else {
        await remove(dir, 'software');
      }
    }
    for (const name of await readdir(partsRoot(config.root)).catch(() => [] as string[])) {
      const dir = path.join(partsRoot(config.root), name);
      if (name.startsWith('.build-')) await remove(dir, 'leftover');
      else if (usedParts.has(name)) report.kept.parts++;
      else await remove(dir, 'part');
    }
    return report;
  });
}

/** Bytes of the regular files under `dir`, links not followed. */
async function diskUsage(dir: string): Promise<number> {
  let total = 0;
  const walk = async (current: string): Promise<void> => {
    for (const entry of await readdir(current, { withFileTypes: true }).catch(() => [])) {
      const file = path.join(current, entry.name);
      if (entry.isDirectory()) await walk(file);
      else if (entry.isFile()) total += (await lstat(file).catch(() => ({ size: 0 }))).size;
    }
  };
  await walk(dir);
  return total;
}
