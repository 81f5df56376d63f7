import { sql, type Kysely, type Migration } from 'kysely';
import type { Engine } from '../database.js';

/**
 * What concurrent masters need to stay fast and agree:
 * - `nodes.desired_version`, moved on by every movement that changes what a node is
 *   asked to run, so that an unchanged poll is answered from the node's row alone;
 * - the free partitions of each node in reference order, so that an allocation reads
 *   one entry instead of every partition of its node;
 * - `master_leases`, so that periodic work runs in one master at a time (not a
 *   projection: it says which process works, not what happened).
 */
export const concurrency = (_engine: Engine): Migration => ({ up });

async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema.alterTable('nodes').addColumn('desired_version', 'integer', (c) => c.notNull().defaultTo(0)).execute();
  await db.schema.createIndex('partitions_free').on('partitions').columns(['node_id', 'reference']).where(sql.ref('instance_id'), 'is', null).execute();
  await db.schema
    .createTable('master_leases')
    .addColumn('name', 'text', (c) => c.primaryKey())
    .addColumn('holder', 'text', (c) => c.notNull())
    .addColumn('expires_at', 'text', (c) => c.notNull())
    .execute();
}
