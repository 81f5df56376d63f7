/**
 * What differs between the two engines, behind one set of names. `engines/sqlite.ts`
 * and `engines/postgres.ts` export the same functions; `engineOf` picks the module of
 * a database or transaction.
 */
import { SqliteAdapter, type Kysely, type Transaction } from 'kysely';
import type { Tables } from './tables.js';
import * as postgres from './engines/postgres.js';
import * as sqlite from './engines/sqlite.js';

export type Engine = 'sqlite' | 'postgres';

/** One named lock of the ledger (see master/ledger/locks.ts). */
export interface LockRequest {
  key: string;
  /** Shared locks wait only for exclusive holders of the same key. */
  shared: boolean;
}

/** A database as an engine opens it. */
export interface Opened {
  db: Kysely<Tables>;
  /** The URL without its password, for logs. */
  displayUrl: string;
  /**
   * Where the errors of idle pooled connections go (PostgreSQL closed one: a restart, a
   * failover, `pg_terminate_backend`). The pool drops such a connection and opens another
   * when one is needed; without a listener, the error would end the process.
   */
  onConnectionError(listener: (error: Error) => void): void;
}

export type EngineModule = typeof sqlite | typeof postgres;

export const ENGINES: Record<Engine, EngineModule> = { sqlite, postgres };

export function engineOf(db: Kysely<Tables> | Transaction<Tables>): EngineModule {
  return db.getExecutor().adapter instanceof SqliteAdapter ? sqlite : postgres;
}
