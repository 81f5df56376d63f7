import type { Kysely, Migration } from 'kysely';
import type { Engine } from '../database.js';

/**
 * The source cache: every source archive a node downloaded for a build, kept by its
 * sha256, so that a release still builds after its upstream file has vanished.
 */
export const softwareCache = (engine: Engine): Migration => ({ up: (db) => up(db, engine === 'postgres') });

async function up(db: Kysely<unknown>, postgres: boolean): Promise<void> {
  await db.schema
    .createTable('source_cache')
    .addColumn('sha256', 'text', (c) => c.primaryKey())
    .addColumn('content', postgres ? 'bytea' : 'blob', (c) => c.notNull())
    .addColumn('size', 'integer', (c) => c.notNull())
    .addColumn('uploaded_by', 'text', (c) => c.notNull().references('nodes.id'))
    .addColumn('uploaded_at', 'text', (c) => c.notNull())
    .execute();
}
