/**
 * PostgreSQL, for more than one machine: several master processes share one server,
 * and transactions run side by side at READ COMMITTED.
 *
 * The same exports as ./sqlite.ts (see ../engine.ts).
 */
import { Kysely, PostgresDialect, sql, type Transaction } from 'kysely';
import pg from 'pg';
import type { Tables } from '../tables.js';
import type { LockRequest } from '../engine.js';

export const name = 'postgres' as const;

export function open(url: string): { db: Kysely<Tables>; displayUrl: string } {
  const pool = new pg.Pool({ connectionString: url, max: 10 });
  const db = new Kysely<Tables>({ dialect: new PostgresDialect({ pool }) });
  return { db, displayUrl: url.replace(/:[^:@/]*@/, ':***@') };
}

/**
 * Takes the named locks, in the order given, each held until the transaction ends.
 * Advisory locks rather than row locks: a lock may name a row that does not exist yet
 * (the title of an instance being created), and one statement takes several. Two names
 * that hash alike only wait for each other more than needed.
 */
export async function lock(trx: Transaction<Tables>, locks: LockRequest[]): Promise<void> {
  if (locks.length === 0) return;
  const calls = locks.map(({ key, shared }) =>
    shared ? sql`pg_advisory_xact_lock_shared(hashtextextended(${key}, 0))` : sql`pg_advisory_xact_lock(hashtextextended(${key}, 0))`,
  );
  // The functions of one select list are called in order, left to right.
  await sql`select ${sql.join(calls)}`.execute(trx);
}

export async function deferForeignKeys(trx: Transaction<Tables>): Promise<void> {
  await sql`SET CONSTRAINTS ALL DEFERRED`.execute(trx);
}

/**
 * Waits for every transaction that is recording a movement and holds new ones back
 * until this one commits: the movements' order is then the order in which they were
 * committed (closing a month relies on it to bill exactly what a rebuild bills).
 */
export async function lockLedger(trx: Transaction<Tables>): Promise<void> {
  await sql`LOCK TABLE movements IN SHARE ROW EXCLUSIVE MODE`.execute(trx);
}

/** Enough memory to add up a month of usage in a hash table rather than sorting on disk; this transaction only. */
export async function allowLargeSort(trx: Transaction<Tables>): Promise<void> {
  await sql`SET LOCAL work_mem = '64MB'`.execute(trx);
}

/**
 * PostgreSQL aborted the transaction for a concurrent one (serialization failure,
 * deadlock), or a unique key was taken by a transaction that committed meanwhile:
 * running it again decides on what is committed now.
 */
export function isRetryable(error: unknown): boolean {
  const code = codeOf(error);
  return code === '40001' || code === '40P01' || code === '23505';
}

export function isUniqueViolation(error: unknown): boolean {
  return codeOf(error) === '23505';
}

const codeOf = (error: unknown) => (error as { code?: unknown } | null)?.code;
