/**
 * Write transactions, committed in groups on SQLite.
 *
 * With `synchronous = FULL` every commit waits for the disk (an fsync), and on SQLite
 * only one transaction writes at a time anyway: a master that commits each request on
 * its own spends its time waiting for the disk. So requests that arrive while a group
 * is being written wait for it, then are applied one after the other inside one shared
 * transaction, and that transaction is committed once: one fsync for the whole group,
 * with the same durability for each request (none is answered before its commit).
 *
 * Each request runs inside a SAVEPOINT of its own: one that fails is rolled back alone,
 * gets its own error, and the others of its group are committed. Work given here must
 * only use the transaction it is handed (never the Kysely instance, which the group
 * holds) and never wait for anything else than the database.
 *
 * On PostgreSQL, transactions run side by side on a pool and the server already flushes
 * concurrent commits together: each request keeps a transaction of its own there.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { sql, type Kysely, type Transaction } from 'kysely';
import { engineOf } from './engine.js';
import type { Tables } from './tables.js';

export type WriteWork<T> = (trx: Transaction<Tables>) => Promise<T>;

/**
 * How many requests one group holds at most. A larger group saves fsyncs, but each of
 * its requests waits for the last one before it is answered.
 */
const MAX_GROUP = 256;

interface Waiting {
  work: WriteWork<unknown>;
  resolve(value: unknown): void;
  reject(error: unknown): void;
}

class GroupCommitter {
  private readonly queue: Waiting[] = [];
  private writing = false;
  /** Sizes of the groups committed so far, for benchmarks and tests. */
  readonly stats = { groups: 0, requests: 0, largest: 0 };

  constructor(private readonly db: Kysely<Tables>) {}

  run<T>(work: WriteWork<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ work, resolve: resolve as (value: unknown) => void, reject });
      if (this.writing) return;
      this.writing = true;
      // The group starts after the event loop's current turn, not at once: the database
      // calls are synchronous, so a group started now would run, fsync included, before
      // the requests already received in this turn are even read, and each group would
      // hold a single request.
      setImmediate(() => void this.writeGroups());
    });
  }

  private async writeGroups(): Promise<void> {
    try {
      while (this.queue.length > 0) await this.writeGroup();
    } finally {
      this.writing = false;
    }
  }

  private async writeGroup(): Promise<void> {
    const group: { waiting: Waiting; outcome?: { ok: true; value: unknown } | { ok: false; error: unknown } }[] = [];
    try {
      await this.db.transaction().execute(async (trx) => {
        // Requests that arrive while the group is being written join it, up to its size.
        while (this.queue.length > 0 && group.length < MAX_GROUP) {
          const member: (typeof group)[number] = { waiting: this.queue.shift()! };
          group.push(member);
          await sql`savepoint request`.execute(trx);
          try {
            member.outcome = { ok: true, value: await member.waiting.work(trx) };
            await sql`release savepoint request`.execute(trx);
          } catch (error) {
            member.outcome = { ok: false, error };
            await sql`rollback to savepoint request`.execute(trx);
            await sql`release savepoint request`.execute(trx);
          }
        }
      });
    } catch (error) {
      // The transaction itself failed (it could not begin or commit, or the database
      // broke mid-group): nothing of the group was written, so each of its requests
      // fails with that error; if it could not even begin, the first waiting one does,
      // so that a broken database cannot keep the queue spinning.
      if (group.length === 0) this.queue.shift()?.reject(error);
      for (const { waiting } of group) waiting.reject(error);
      return;
    }
    this.stats.groups++;
    this.stats.requests += group.length;
    this.stats.largest = Math.max(this.stats.largest, group.length);
    for (const { waiting, outcome } of group) {
      if (outcome!.ok) waiting.resolve(outcome!.value);
      else waiting.reject(outcome!.error);
    }
  }
}

const committers = new WeakMap<Kysely<Tables>, GroupCommitter>();

/** Makes `writeTransaction` on `db` commit in groups (SQLite, see above). */
export function enableGroupCommit(db: Kysely<Tables>): void {
  committers.set(db, new GroupCommitter(db));
}

/** How many times a transaction that lost a race is run again before its error is the caller's. */
const MAX_ATTEMPTS = 8;

/**
 * Runs `work` in a write transaction: its own on PostgreSQL, a savepoint of a shared,
 * group-committed one on SQLite. Resolves once its writes are committed.
 *
 * A transaction that lost a race (PostgreSQL aborted it for a deadlock, or a key it
 * inserted was committed meanwhile by another master) is run again from the start: it
 * then decides on what is committed, and the race is the master's problem, never the
 * caller's. `work` may therefore run more than once, and must do nothing but use `trx`.
 */
export async function writeTransaction<T>(db: Kysely<Tables>, work: WriteWork<T>): Promise<T> {
  const committer = committers.get(db);
  if (committer) return committer.run(work);
  const engine = engineOf(db);
  for (let attempt = 1; ; attempt++) {
    try {
      return await db.transaction().execute(work);
    } catch (error) {
      if (attempt >= MAX_ATTEMPTS || !engine.isRetryable(error)) throw error;
      // Apart by a random few milliseconds, growing: the transactions that met here
      // would otherwise meet again.
      await sleep(Math.random() * 2 ** attempt);
    }
  }
}

/** How the groups went on `db`: none when it does not commit in groups. */
export function groupCommitStats(db: Kysely<Tables>): { groups: number; requests: number; largest: number } | undefined {
  const committer = committers.get(db);
  return committer && { ...committer.stats };
}
