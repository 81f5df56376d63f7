import { sql, type Kysely, type Migration } from 'kysely';
import type { Engine } from '../database.js';

/** Instance trees: who requested a sub-instance, the root of its tree, shared instances and their host. */
export const instanceTrees = (_engine: Engine): Migration => ({ up });

async function up(db: Kysely<unknown>): Promise<void> {
  // A root's root is itself; rows from before trees are roots of their own (null).
  await db.schema.alterTable('instances').addColumn('root_id', 'text').execute();
  await db.schema.alterTable('instances').addColumn('parent_id', 'text').execute();
  // 1 for a shared instance: it has a host instance instead of a partition.
  await db.schema.alterTable('instances').addColumn('shared', 'integer', (c) => c.notNull().defaultTo(0)).execute();
  await db.schema.alterTable('instances').addColumn('host_id', 'text').execute();
  await db.schema.createIndex('instances_root').on('instances').column('root_id').execute();
  // Most instances are roots and have no host: partial indexes keep them out, so that
  // inserting an ordinary instance does not pay for two more index entries.
  await db.schema.createIndex('instances_parent').on('instances').column('parent_id').where(sql.ref('parent_id'), 'is not', null).execute();
  await db.schema.createIndex('instances_host').on('instances').column('host_id').where(sql.ref('host_id'), 'is not', null).execute();
}
