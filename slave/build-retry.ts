/**
 * Backoff between attempts to build a release that failed: a broken release must not
 * make the node download and build in a loop every minute. The attempts of each
 * release are kept in `<root>/state/software-attempts.json`, so that the backoff
 * survives the agent (which is a new process at every cron run).
 */
import { statfs } from 'node:fs/promises';
import path from 'node:path';
import { readJsonFile, writeFileAtomic } from './files.js';
import { stateRoot } from './paths.js';

/** First wait after a failure; each further failure doubles it, up to MAX_DELAY_MS. */
export const FIRST_DELAY_MS = 60_000;
export const MAX_DELAY_MS = 6 * 3600_000;

export interface Attempts {
  /** Failed attempts in a row. */
  failures: number;
  /** ISO time before which the release is not tried again. */
  nextAttemptAt: string;
  message: string;
}

type AttemptsFile = Record<string, Attempts>;

const attemptsPath = (root: string) => path.join(stateRoot(root), 'software-attempts.json');

export async function readAttempts(root: string): Promise<AttemptsFile> {
  return ((await readJsonFile(attemptsPath(root)).catch(() => undefined)) as AttemptsFile | undefined) ?? {};
}

/** The wait after `failures` failures in a row: 1 min, 2, 4... up to 6 h. */
export function backoffDelay(failures: number): number {
  return Math.min(FIRST_DELAY_MS * 2 ** Math.max(0, failures - 1), MAX_DELAY_MS);
}

export async function recordFailure(root: string, hash: string, message: string, now = Date.now()): Promise<Attempts> {
  const all = await readAttempts(root);
  const failures = (all[hash]?.failures ?? 0) + 1;
  const attempts = { failures, nextAttemptAt: new Date(now + backoffDelay(failures)).toISOString(), message };
  all[hash] = attempts;
  await writeFileAtomic(attemptsPath(root), `${JSON.stringify(all, null, 2)}\n`, 0o600);
  return attempts;
}

export async function forgetAttempts(root: string, hashes: string[]): Promise<void> {
  const all = await readAttempts(root);
  if (!hashes.some((hash) => hash in all)) return;
  for (const hash of hashes) delete all[hash];
  await writeFileAtomic(attemptsPath(root), `${JSON.stringify(all, null, 2)}\n`, 0o600);
}

/** Free space a build needs before it starts, in MiB: `PLEDGER_BUILD_MIN_FREE_MB`, 1024 by default. */
export function minimumFreeBytes(): number {
  const configured = Number(process.env.PLEDGER_BUILD_MIN_FREE_MB);
  return (Number.isFinite(configured) && configured >= 0 && process.env.PLEDGER_BUILD_MIN_FREE_MB ? configured : 1024) * 1024 * 1024;
}

/** Refuses to start a build on a file system that is nearly full: a build that fills it would break the running instances too. */
export async function checkFreeSpace(dir: string, needed = minimumFreeBytes()): Promise<void> {
  const stats = await statfs(dir);
  const free = stats.bavail * stats.bsize;
  if (free < needed) {
    throw new Error(`not enough free disk space on ${dir}: ${Math.floor(free / 2 ** 20)} MiB free, a build needs at least ${Math.ceil(needed / 2 ** 20)} MiB`);
  }
}
