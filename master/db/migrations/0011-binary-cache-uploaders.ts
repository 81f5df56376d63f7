import type { Kysely, Migration } from 'kysely';
import type { Engine } from '../database.js';

/**
 * Which nodes the master takes built parts from: an operator's setting, off for every
 * node until an operator turns it on (0/1, the same on both engines).
 */
export const binaryCacheUploaders = (_engine: Engine): Migration => ({ up });

async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema.alterTable('nodes').addColumn('binary_cache_upload', 'integer', (c) => c.notNull().defaultTo(0)).execute();
}
