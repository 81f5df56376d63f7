/**
 * The ledger's locking discipline.
 *
 * A write reads the projections to decide what to record (the instance's serial, what
 * an invoice still owes, which partition is free), and the movement it records is
 * replayed in the order of the ledger. Both hold under concurrent masters only if a
 * transaction takes the locks of what it reads before it reads it, and keeps them
 * until it commits: a conflicting transaction then waits, reads what the first one
 * committed, and appends its movements after the first one's.
 *
 * The locks are named after what they guard, one name per row a decision reads:
 *
 * | lock              | guards                                                       |
 * |-------------------|--------------------------------------------------------------|
 * | `account:<id>`    | an account's holds for non-payment (shared by its requests)  |
 * | `title:<o>:<t>`   | the title `t` of owner `o`, while it may not exist yet       |
 * | `instance:<id>`   | an instance row: serial, state, status, partition, host      |
 * | `node:<id>`       | a node row, its partitions, resources and supplies           |
 * | `invoice:<id>`    | an invoice, its payments and its credit note                 |
 *
 * Taken in that order of kinds where a transaction knows them up front; a transaction
 * that meets them in another order may deadlock, which PostgreSQL detects, and
 * `writeTransaction` then runs it again. Each movement kind's applier also names the
 * locks it needs (master/ledger/appliers.ts), and `record` takes them before
 * appending: a movement is never appended without them.
 *
 * On SQLite a write transaction holds the database's one write lock from its start,
 * and these calls cost nothing.
 */
import type { Transaction } from 'kysely';
import { engineOf, type LockRequest } from '../db/engine.js';
import type { Tables } from '../db/tables.js';

export type LockKey = `account:${string}` | `title:${string}` | `instance:${string}` | `node:${string}` | `invoice:${string}`;

export const locks = {
  account: (id: string): LockKey => `account:${id}`,
  title: (ownerId: string, title: string): LockKey => `title:${ownerId}:${title}`,
  instance: (id: string): LockKey => `instance:${id}`,
  node: (id: string): LockKey => `node:${id}`,
  invoice: (id: string): LockKey => `invoice:${id}`,
};

/** The locks each open transaction holds, so that taking one again costs no round trip. */
const held = new WeakMap<Transaction<Tables>, Set<string>>();

const KIND_ORDER = ['account', 'title', 'instance', 'node', 'invoice'];
const rank = (key: string) => KIND_ORDER.indexOf(key.slice(0, key.indexOf(':')));

/** Sorted by kind, then by name: two transactions taking the same set take it in the same order. */
function ordered(keys: Iterable<string>): string[] {
  return [...new Set(keys)].sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0));
}

/** Takes the exclusive locks `keys` (those not held yet), until the transaction ends. */
export async function lock(trx: Transaction<Tables>, ...keys: LockKey[]): Promise<void> {
  await take(trx, ordered(keys).map((key) => ({ key, shared: false })));
}

/** Takes `key` shared: it waits for, and holds back, only its exclusive holders. */
export async function lockShared(trx: Transaction<Tables>, key: LockKey): Promise<void> {
  await take(trx, [{ key, shared: true }]);
}

/**
 * Takes the exclusive lock `key` only if nobody holds it, without waiting: false when
 * another transaction does (an allocation then tries another node rather than queue).
 */
export async function tryLock(trx: Transaction<Tables>, key: LockKey): Promise<boolean> {
  let mine = held.get(trx);
  if (!mine) held.set(trx, (mine = new Set()));
  if (mine.has(`x ${key}`)) return true;
  if (!(await engineOf(trx).tryLock(trx, key))) return false;
  mine.add(`x ${key}`);
  return true;
}

async function take(trx: Transaction<Tables>, wanted: LockRequest[]): Promise<void> {
  let mine = held.get(trx);
  if (!mine) held.set(trx, (mine = new Set()));
  // An exclusive lock covers the shared one of the same name.
  const missing = wanted.filter(({ key, shared }) => !mine.has(`x ${key}`) && !(shared && mine.has(`s ${key}`)));
  if (missing.length === 0) return;
  await engineOf(trx).lock(trx, missing);
  for (const { key, shared } of missing) mine.add(`${shared ? 's' : 'x'} ${key}`);
}
