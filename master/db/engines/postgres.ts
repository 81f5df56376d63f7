/**
 * PostgreSQL, for more than one machine: several master processes share one server,
 * and transactions run side by side at READ COMMITTED.
 *
 * The same exports as ./sqlite.ts (see ../engine.ts).
 */
import { Kysely, PostgresDialect, sql, type Transaction } from 'kysely';
import pg from 'pg';
import type { Tables } from '../tables.js';
import type { LockRequest, Opened } from '../engine.js';

export const name = 'postgres' as const;

export function open(url: string): Opened {
  // A request waits at most 15 s for a connection (PostgreSQL restarting, failing over):
  // then it answers 503 and the client tries again, rather than hanging. Keepalives let
  // the pool notice a connection the network dropped without a goodbye.
  const pool = new pg.Pool({ connectionString: url, max: 10, connectionTimeoutMillis: 15_000, keepAlive: true });
  const displayUrl = url.replace(/:[^:@/]*@/, ':***@');
  let listener = (error: Error): void => void process.stderr.write(`${JSON.stringify({ level: 40, msg: 'idle database connection lost', database: displayUrl, err: error.message })}\n`);
  pool.on('error', (error) => listener(error));
  // A connection lost while a query holds it is reported to that query (which fails
  // and answers 503) and also emitted by the client: the pool listens only to idle
  // clients, so without this one the emit would end the process.
  pool.on('connect', (client) => client.on('error', (error) => listener(error)));
  const db = new Kysely<Tables>({ dialect: new PostgresDialect({ pool }) });
  return {
    db,
    displayUrl,
    onConnectionError: (next) => {
      listener = next;
    },
  };
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

/** Takes the exclusive lock `key` if nobody holds it: true when taken, false at once otherwise. */
export async function tryLock(trx: Transaction<Tables>, key: string): Promise<boolean> {
  const { rows } = await sql<{ taken: boolean }>`select pg_try_advisory_xact_lock(hashtextextended(${key}, 0)) as taken`.execute(trx);
  return rows[0]!.taken;
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

/** PostgreSQL's classes of errors that mean the connection, not the query, failed. */
const CONNECTION_LOST_CODES = new Set(['57P01', '57P02', '57P03', '08000', '08003', '08006', '08001', '08004', 'ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT']);
const CONNECTION_LOST_MESSAGES = /Connection terminated|connection error and is not queryable|Client was closed|ECONNRESET|ECONNREFUSED|EPIPE|timeout exceeded when trying to connect/i;

/**
 * The database connection was lost or could not be had (the server ended it, restarted,
 * or is unreachable for now): the request did not happen, and the same request
 * succeeds once the pool has a new connection.
 */
export function isConnectionLost(error: unknown): boolean {
  const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown };
  if (typeof code === 'string' && CONNECTION_LOST_CODES.has(code)) return true;
  return typeof message === 'string' && CONNECTION_LOST_MESSAGES.test(message);
}
