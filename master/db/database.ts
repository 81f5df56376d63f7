/**
 * Opens the master's database: SQLite (embedded, the default) or PostgreSQL, behind
 * the same kysely interface. Everything that differs between the two engines is
 * handled here or in the migrations, nowhere else.
 *
 * @example
 *   const database = openDatabase('sqlite:/var/lib/pledger/master.db');
 *   const database = openDatabase('postgres://pledger@127.0.0.1/pledger');
 */
import SqliteDatabase from 'better-sqlite3';
import { Kysely, PostgresDialect, SqliteDialect, type SqliteDatabase as KyselySqlite } from 'kysely';
import pg from 'pg';
import { enableGroupCommit } from './group-commit.js';
import type { Tables } from './tables.js';

export type Engine = 'sqlite' | 'postgres';

export interface Database {
  db: Kysely<Tables>;
  engine: Engine;
  /** The URL without its password, for logs. */
  displayUrl: string;
  /**
   * Where the errors of idle pooled connections go (PostgreSQL closed one: a restart, a
   * failover, `pg_terminate_backend`). The pool drops such a connection and opens another
   * when one is needed; without a listener, the error would end the process.
   */
  onConnectionError(listener: (error: Error) => void): void;
  close(): Promise<void>;
}

export function openDatabase(url: string): Database {
  if (/^postgres(ql)?:\/\//.test(url)) {
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
      engine: 'postgres',
      displayUrl,
      onConnectionError: (next) => {
        listener = next;
      },
      close: () => db.destroy(),
    };
  }
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
  enableGroupCommit(db);
  // An embedded file has no connection to lose.
  return { db, engine: 'sqlite', displayUrl: `sqlite:${file}`, onConnectionError: () => undefined, close: () => db.destroy() };
}

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

/**
 * True when `error` says another process held the database longer than this one
 * waited (SQLite's busy_timeout), or that PostgreSQL had to abort this transaction
 * for a concurrent one (serialization failure, deadlock): trying again succeeds.
 */
export function isBusy(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return (typeof code === 'string' && code.startsWith('SQLITE_BUSY')) || code === '40001' || code === '40P01';
}

/** True when `error` is a unique-constraint violation, on either engine. */
export function isUniqueViolation(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return code === '23505' || code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY';
}

/** PostgreSQL's classes of errors that mean the connection, not the query, failed. */
const CONNECTION_LOST_CODES = new Set(['57P01', '57P02', '57P03', '08000', '08003', '08006', '08001', '08004']);
const CONNECTION_LOST_MESSAGES = /Connection terminated|connection error and is not queryable|Client was closed|ECONNRESET|ECONNREFUSED|EPIPE|timeout exceeded when trying to connect/i;

/**
 * True when `error` says the database connection was lost or could not be had (the server
 * ended it, restarted, or is unreachable for now): the request did not happen, and the
 * same request succeeds once the pool has a new connection.
 */
export function isConnectionLost(error: unknown): boolean {
  const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown };
  if (typeof code === 'string' && (CONNECTION_LOST_CODES.has(code) || ['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT'].includes(code))) return true;
  return typeof message === 'string' && CONNECTION_LOST_MESSAGES.test(message);
}
