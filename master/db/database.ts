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
  close(): Promise<void>;
}

export function openDatabase(url: string): Database {
  if (/^postgres(ql)?:\/\//.test(url)) {
    const pool = new pg.Pool({ connectionString: url, max: 10 });
    const db = new Kysely<Tables>({ dialect: new PostgresDialect({ pool }) });
    return { db, engine: 'postgres', displayUrl: url.replace(/:[^:@/]*@/, ':***@'), close: () => db.destroy() };
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
  const db = new Kysely<Tables>({ dialect: new SqliteDialect({ database: withStatementCache(sqlite) }) });
  enableGroupCommit(db);
  return { db, engine: 'sqlite', displayUrl: `sqlite:${file}`, close: () => db.destroy() };
}

/** Statements kept prepared; past this many, the cache starts again empty. */
const STATEMENT_CACHE_SIZE = 1000;

/**
 * The SQLite connection as kysely sees it, keeping the statements it prepares: kysely
 * prepares each query again at every run, and on the request path compiling SQL costs
 * as much as running it. The master runs a bounded set of statements, so the cache
 * rarely fills; a query built with a variable number of values could fill it, and then
 * it is simply emptied. A statement still being iterated (a streamed query) is busy
 * and cannot run twice at once: a fresh one is prepared for that case.
 */
function withStatementCache(sqlite: SqliteDatabase.Database): KyselySqlite {
  const statements = new Map<string, SqliteDatabase.Statement>();
  return {
    close: () => sqlite.close(),
    prepare(text: string) {
      const cached = statements.get(text);
      if (cached && !cached.busy) return cached;
      const statement = sqlite.prepare(text);
      if (!cached) {
        if (statements.size >= STATEMENT_CACHE_SIZE) statements.clear();
        statements.set(text, statement);
      }
      return statement;
    },
  };
}

/** True when `error` is a unique-constraint violation, on either engine. */
export function isUniqueViolation(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return code === '23505' || code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY';
}
