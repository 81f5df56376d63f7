/**
 * SQLite, the embedded default: one file, one writer at a time.
 *
 * Every engine file has the same exports (see ../engine.ts): how to open it, how a
 * transaction takes the ledger's named locks, how to defer foreign keys during a
 * rebuild, and how to read its errors. Nothing else in the master tells the engines apart.
 */
import SqliteDatabase from 'better-sqlite3';
import { Kysely, SqliteDialect, sql, type SqliteDatabase as KyselySqlite, type Transaction } from 'kysely';
import type { Tables } from '../tables.js';
import type { LockRequest, Opened } from '../engine.js';

export const name = 'sqlite' as const;

export function open(url: string): Opened {
  const file = url.replace(/^sqlite:/, '');
  const sqlite = new SqliteDatabase(file);
  // WAL lets readers go on while one process writes; FULL sync because the ledger
  // holds money and usage that must survive a power cut; busy_timeout because
  // several master processes may share the file.
  sqlite.pragma('journal_mode = WAL');
  sqlite.pragma('synchronous = FULL');
  sqlite.pragma('foreign_keys = ON');
  sqlite.pragma('busy_timeout = 5000');
  // The ledger's indexes (movement ids, usage by instance and hour) take inserts all
  // over their B-trees: with SQLite's default 2 MB page cache, a large ledger spends
  // its time re-reading pages. 64 MB keeps the hot part of them in memory.
  sqlite.pragma('cache_size = -65536');
  // A checkpoint copies the pages of the WAL back into the database file (and syncs it).
  // Every batch of usage reports rewrites pages all over the ledger's indexes: with the
  // default of a checkpoint every 1,000 pages (4 MB), nearly every batch paid one. At
  // 10,000 pages (40 MB), a page rewritten by several batches is copied back once.
  // Durability is the same: each commit is synced to the WAL (synchronous = FULL).
  sqlite.pragma('wal_autocheckpoint = 10000');
  const db = new Kysely<Tables>({ dialect: new SqliteDialect({ database: withStatementCache(sqlite) }) });
  // An embedded file has no connection to lose.
  return { db, displayUrl: `sqlite:${file}`, onConnectionError: () => undefined };
}

/**
 * Nothing to do: every write transaction begins with `BEGIN IMMEDIATE` (below), which
 * takes the database's one write lock, so a transaction already holds every lock there
 * is before it reads anything.
 */
export async function lock(_trx: Transaction<Tables>, _locks: LockRequest[]): Promise<void> {}

/** Always taken: the transaction holds the database's one write lock already. */
export async function tryLock(_trx: Transaction<Tables>, _key: string): Promise<boolean> {
  return true;
}

/** Foreign keys checked at commit rather than at each statement (a rebuild refills tables in any order). */
export async function deferForeignKeys(trx: Transaction<Tables>): Promise<void> {
  await sql`PRAGMA defer_foreign_keys = ON`.execute(trx);
}

/** Waits for every transaction that records movements and holds new ones back: SQLite's one writer already does. */
export async function lockLedger(_trx: Transaction<Tables>): Promise<void> {}

/** Memory for one large aggregation (a month's close): SQLite sizes its own. */
export async function allowLargeSort(_trx: Transaction<Tables>): Promise<void> {}

/** Another process held the database longer than this one waited (busy_timeout). */
export function isRetryable(error: unknown): boolean {
  const code = codeOf(error);
  return typeof code === 'string' && code.startsWith('SQLITE_BUSY');
}

export function isUniqueViolation(error: unknown): boolean {
  const code = codeOf(error);
  return code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY';
}

/** An embedded file has no connection to lose. */
export function isConnectionLost(_error: unknown): boolean {
  return false;
}

const codeOf = (error: unknown) => (error as { code?: unknown } | null)?.code;

/** Prepared statements kept per connection: the master runs a few dozen distinct queries. */
const CACHED_STATEMENTS = 256;

/**
 * The connection as kysely sees it, with its prepared statements kept and reused. Kysely
 * prepares every query it runs; compiling a statement costs more than running it for
 * the hot ones (a node's report inserts hundreds of rows with one statement), so a
 * statement is prepared once per distinct SQL text. A statement still being iterated
 * (a streamed export) is busy: a query with the same text meanwhile gets its own.
 */
function withStatementCache(sqlite: SqliteDatabase.Database): KyselySqlite {
  const statements = new Map<string, SqliteDatabase.Statement>();
  return {
    prepare(source: string) {
      // Every transaction of the master writes. Taking the write lock when it begins
      // makes a second process wait its turn (busy_timeout) instead of failing later
      // at its first write because the snapshot it read is no longer the latest.
      if (source === 'begin') source = 'begin immediate';
      const cached = statements.get(source);
      if (cached && !cached.busy) return cached;
      const statement = sqlite.prepare(source);
      if (!cached) {
        if (statements.size >= CACHED_STATEMENTS) statements.delete(statements.keys().next().value!);
        statements.set(source, statement);
      }
      return statement;
    },
    close: () => sqlite.close(),
  } as KyselySqlite;
}
