import type { Kysely, Migration } from 'kysely';
import type { Engine } from '../database.js';

/** What nodes report beyond status: promise states and hourly usage. */
export const nodeReports = (engine: Engine): Migration => ({ up: (db) => up(db, engine === 'postgres') });

async function up(db: Kysely<unknown>, postgres: boolean): Promise<void> {
  const big = postgres ? 'bigint' : 'integer';
  await db.schema
    .createTable('instance_promises')
    .addColumn('instance_id', 'text', (c) => c.notNull().references('instances.id'))
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('status', 'text', (c) => c.notNull())
    .addColumn('message', 'text', (c) => c.notNull())
    .addColumn('since', 'text', (c) => c.notNull())
    // When the node checked: an older report arriving late never overwrites a newer one.
    .addColumn('reported_at', 'text', (c) => c.notNull())
    .addPrimaryKeyConstraint('instance_promises_pk', ['instance_id', 'name'])
    .execute();

  await db.schema
    .createTable('usage_hours')
    .addColumn('instance_id', 'text', (c) => c.notNull().references('instances.id'))
    .addColumn('hour', 'text', (c) => c.notNull())
    .addColumn('owner_id', 'text', (c) => c.notNull())
    .addColumn('software_id', 'text', (c) => c.notNull())
    .addColumn('software_type', 'text', (c) => c.notNull())
    .addColumn('node_id', 'text', (c) => c.notNull())
    .addColumn('cpu_ms', big, (c) => c.notNull())
    .addColumn('memory_byte_seconds', big, (c) => c.notNull())
    .addColumn('disk_byte_seconds', big, (c) => c.notNull())
    .addColumn('uptime_seconds', 'integer', (c) => c.notNull())
    .addColumn('recorded_at', 'text', (c) => c.notNull())
    .addPrimaryKeyConstraint('usage_hours_pk', ['instance_id', 'hour'])
    .execute();
  await db.schema.createIndex('usage_hours_owner_hour').on('usage_hours').columns(['owner_id', 'hour']).execute();

  // The partition an instance was last allocated to, kept after it is freed: a node
  // may still report the usage of an instance it has just destroyed.
  await db.schema.alterTable('instances').addColumn('last_partition_id', 'text').execute();
}
