/**
 * One run at a time per task. Cron starts the agent every minute and a build or a
 * slow promise can outlast that minute: two runs deploying the same partition would
 * start its services twice. A lock file names the pid and start time of its owner, so
 * a lock left by a crashed run is recognised as stale and taken over.
 *
 * Taking over is where two runs could both end up holding the lock. Node has no flock,
 * and plain file operations give no compare-and-swap on a name: deciding "this lock is
 * stale" and removing it are two steps, and in between another run may have removed the
 * same stale lock and linked its own, which the first would then remove. Renaming the
 * lock aside, checking what was taken and linking it back when it was a live one does
 * not close that gap either: while the name is vacant a third run links its own lock,
 * the link back fails, and the owner of the lock taken aside and the third run both
 * believe they hold it.
 *
 * So removing a stale lock is itself reserved, and the reservation is named after the
 * stale content: `<lock>.reap-<hash of name and content>`, created with link(), which
 * only one process can do. Every lock content is unique (it holds a random nonce) and a
 * stale one stays stale (a dead process never comes back with the same pid and start
 * time), which gives these invariants:
 *
 * 1. The lock name is only ever removed by its live owner when it releases, or by the
 *    holder of the reservation for its current content, after checking that content
 *    is still the stale one.
 * 2. While the lock holds stale content S, nobody but the holder of S's reservation
 *    can change it: S's owner is dead, link() fails on an existing name, and any other
 *    remover would need S's reservation. So the reserver's check ("still S") stays
 *    true until its unlink: it never removes anything but S.
 * 3. A live owner's lock is never judged stale (it is alive, and its content is never
 *    torn: it is written aside and linked into place), so nobody removes it but itself.
 *
 * The interleavings, for runs A and B that both read the same stale S:
 * - A reserves S, checks, unlinks, links its own lock. B's reservation fails (A's
 *   reservation exists and A is alive): B waits and starts over, finds A's live lock,
 *   and gives up with CONFLICT.
 * - A has finished and removed its reservation before B tries: B reserves S anew, reads
 *   the lock, finds A's content (not S) and removes nothing.
 * - A unlinks S, then C (which never saw S) links its lock before A does: A's link
 *   fails, A reads C's live lock and gives up. One holder, C.
 * - A dies holding S's reservation: the reservation is itself a stale lock, and is
 *   reaped the same way, by a reservation named after its own content. Its dead
 *   owner can no longer act, so whoever reaps it then reserves S with invariant 2 intact.
 * - A late reservation of a content long gone (a run that read S minutes ago) finds
 *   other content and removes nothing.
 * Reservations are removed by their owners when done; a crash in between leaves one
 * behind, and the next run that meets it reaps it.
 */
import { createHash } from 'node:crypto';
import { link, mkdir, readFile, rm, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { PledgerError } from '../protocol/errors.js';
import { randomToken } from './files.js';
import { isAlive, readProcessStat, type ServiceRecord } from './processes.js';

/**
 * Rounds of "link, or reap what is in the way" before giving up: each lost round means
 * another run was busy with the same name. Fewer for reservations, which are short-lived.
 */
const ATTEMPTS = [20, 3];
/** Reservations of reservations: one level per run that crashed while reaping. */
const MAX_DEPTH = 8;

export async function withLock<T>(file: string, task: string, run: () => Promise<T>): Promise<T> {
  await acquire(file, task);
  try {
    return await run();
  } finally {
    // Ours by invariant 3: nobody else removes a live owner's lock.
    await rm(file, { force: true });
  }
}

interface Owner extends ServiceRecord {
  nonce: string;
}

async function acquire(file: string, task: string): Promise<void> {
  const me: Owner = { pid: process.pid, startTime: (await readProcessStat(process.pid))?.startTime ?? 0, nonce: randomToken(12) };
  await mkdir(path.dirname(file), { recursive: true });
  // Written aside then linked into place: the lock appears complete or not at all.
  const candidate = `${file}.${randomToken(6)}`;
  await writeFile(candidate, JSON.stringify(me), { mode: 0o600 });
  try {
    const outcome = await take(file, candidate, 0);
    if (outcome === 'taken') return;
    const owner = outcome === 'busy' ? undefined : outcome;
    throw new PledgerError('CONFLICT', owner ? `another node agent run (pid ${owner.pid}) is ${task}` : `another node agent run is ${task}`, {
      hint: 'wait for it to finish',
    });
  } finally {
    await rm(candidate, { force: true });
  }
}

/**
 * Links `candidate` at `file`, reaping a stale lock in the way. Answers 'taken', the
 * live owner in the way, or 'busy' when other runs kept the name out of reach.
 */
async function take(file: string, candidate: string, depth: number): Promise<'taken' | 'busy' | ServiceRecord> {
  for (let attempt = 0; attempt < ATTEMPTS[Math.min(depth, 1)]!; attempt++) {
    try {
      await link(candidate, file);
      return 'taken';
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const content = await readContent(file);
    if (content === undefined) continue; // released meanwhile
    const owner = parseOwner(content);
    if (owner && (await isAlive(owner))) return owner;
    if (depth >= MAX_DEPTH) return 'busy';
    if ((await reap(file, content, candidate, depth)) === 'busy') await sleep(5 + Math.random() * 20);
  }
  return 'busy';
}

/** Removes `file` if it still holds `stale`, under the reservation named after that content (see the invariants above). */
async function reap(file: string, stale: string, candidate: string, depth: number): Promise<'done' | 'busy'> {
  const reservation = `${file}.reap-${createHash('sha256').update(path.basename(file)).update('\0').update(stale).digest('base64url').slice(0, 22)}`;
  const outcome = await take(reservation, candidate, depth + 1);
  if (outcome !== 'taken') return 'busy';
  try {
    if ((await readContent(file)) === stale) await unlink(file).catch(ignoreMissing);
  } finally {
    await rm(reservation, { force: true });
  }
  return 'done';
}

async function readContent(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, 'utf8');
  } catch (error) {
    ignoreMissing(error);
    return undefined;
  }
}

/** A damaged lock has no owner: nobody holds it. */
function parseOwner(content: string): ServiceRecord | undefined {
  try {
    const owner = JSON.parse(content) as Partial<ServiceRecord>;
    if (typeof owner.pid === 'number' && typeof owner.startTime === 'number') return { pid: owner.pid, startTime: owner.startTime };
  } catch {
    // Torn or not JSON.
  }
  return undefined;
}

function ignoreMissing(error: unknown): void {
  if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
}
