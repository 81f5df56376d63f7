/**
 * Opens the master's database: SQLite (embedded, the default) or PostgreSQL, behind
 * the same kysely interface. What differs between the two engines lives in
 * `engines/`, one file per engine with the same exports, and nowhere else.
 *
 * @example
 *   const database = openDatabase('sqlite:/var/lib/pledger/master.db');
 *   const database = openDatabase('postgres://pledger@127.0.0.1/pledger');
 */
import { ENGINES, engineOf, type Engine, type Opened } from './engine.js';
import { enableGroupCommit } from './group-commit.js';

export type { Engine } from './engine.js';

export interface Database extends Opened {
  engine: Engine;
  close(): Promise<void>;
}

export function openDatabase(url: string): Database {
  const engine: Engine = /^postgres(ql)?:\/\//.test(url) ? 'postgres' : 'sqlite';
  const opened = ENGINES[engine].open(url);
  // SQLite writes one transaction at a time: requests share commits there (group-commit.ts).
  if (engine === 'sqlite') enableGroupCommit(opened.db);
  return { ...opened, engine, close: () => opened.db.destroy() };
}

/**
 * True when `error` says the transaction lost a race that running it again wins:
 * another process held SQLite longer than this one waited, or PostgreSQL aborted it
 * for a concurrent one.
 */
export function isBusy(error: unknown): boolean {
  return ENGINES.sqlite.isRetryable(error) || ENGINES.postgres.isRetryable(error);
}

/** True when `error` is a unique-constraint violation, on either engine. */
export function isUniqueViolation(error: unknown): boolean {
  return ENGINES.sqlite.isUniqueViolation(error) || ENGINES.postgres.isUniqueViolation(error);
}

/**
 * True when `error` says the database connection was lost or could not be had: the
 * request did not happen, and the same request succeeds once there is a new connection.
 */
export function isConnectionLost(error: unknown): boolean {
  return ENGINES.postgres.isConnectionLost(error);
}

export { engineOf };
