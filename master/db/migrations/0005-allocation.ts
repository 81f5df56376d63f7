import { sql, type Kysely, type Migration } from 'kysely';
import type { Engine } from '../database.js';

/** Where instances may go: node labels, allocation scope and owner, instance SLAs. */
export const allocation = (_engine: Engine): Migration => ({ up });

async function up(db: Kysely<unknown>): Promise<void> {
  // open: anyone's instances; owner: only its owner's; closed: nothing new.
  await db.schema.alterTable('nodes').addColumn('scope', 'text', (c) => c.notNull().defaultTo('open')).execute();
  await db.schema.alterTable('nodes').addColumn('owner_id', 'text').execute();
  // How many of its partitions are free, kept by the projection: allocation walks the
  // nodes that have one, in name order, and stops at the first that fits, instead of
  // sorting every free partition of the fleet at every request.
  await db.schema.alterTable('nodes').addColumn('free_partitions', 'integer', (c) => c.notNull().defaultTo(0)).execute();
  await db.schema.createIndex('nodes_with_free_partitions').on('nodes').column('name').where(sql.ref('free_partitions'), '>', 0).execute();
  // One row per label, so that SLA filters are plain joins on both engines.
  await db.schema
    .createTable('node_labels')
    .addColumn('node_id', 'text', (c) => c.notNull().references('nodes.id'))
    .addColumn('key', 'text', (c) => c.notNull())
    .addColumn('value', 'text', (c) => c.notNull())
    .addPrimaryKeyConstraint('node_labels_pk', ['node_id', 'key'])
    .execute();
  await db.schema.createIndex('node_labels_key_value').on('node_labels').columns(['key', 'value', 'node_id']).execute();
  await db.schema.alterTable('instances').addColumn('sla', 'text', (c) => c.notNull().defaultTo('{}')).execute();
}
