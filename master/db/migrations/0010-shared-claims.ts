import { sql, type Kysely, type Migration } from 'kysely';
import type { Engine } from '../database.js';

/**
 * What a shared instance holds on its host: its route (the values of the parameters its
 * release declares `unique`), which no other shared instance of the same host may hold,
 * and the partitions its backends point into.
 */
export const sharedClaims = (_engine: Engine): Migration => ({ up });

async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema.alterTable('instances').addColumn('shared_route', 'text').execute();
  // The database itself keeps two shared instances off the same route of one host, even
  // when two master processes attach them at the same moment.
  await db.schema
    .createIndex('instances_shared_route')
    .unique()
    .on('instances')
    .columns(['host_id', 'shared_route'])
    .where(sql.ref('shared_route'), 'is not', null)
    .execute();
  await db.schema
    .createTable('shared_backends')
    .addColumn('instance_id', 'text', (c) => c.notNull())
    .addColumn('partition_id', 'text', (c) => c.notNull())
    .addPrimaryKeyConstraint('shared_backends_pk', ['instance_id', 'partition_id'])
    .execute();
  await db.schema.createIndex('shared_backends_partition').on('shared_backends').column('partition_id').execute();
  // Backends are found by address.
  await db.schema.createIndex('partitions_ip').on('partitions').column('ip').execute();
}
