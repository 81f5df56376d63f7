import { Migrator } from 'kysely';
import { PledgerError } from '../../protocol/errors.js';
import type { Database } from './database.js';
import { migrationProvider } from './migrations/index.js';

/** Brings the schema up to date; safe to run from several master processes at once. */
export async function migrate(database: Database): Promise<void> {
  const migrator = new Migrator({ db: database.db, provider: migrationProvider(database.engine) });
  const { error, results } = await migrator.migrateToLatest();
  if (error) {
    const failed = results?.find((r) => r.status === 'Error')?.migrationName ?? 'a migration';
    throw new PledgerError('INTERNAL', `cannot migrate ${database.displayUrl}: ${failed} failed: ${(error as Error).message}`, {
      cause: error,
    });
  }
}
