import type { Kysely, Migration } from 'kysely';
import type { Engine } from '../database.js';

/** The ledger, its projections and the software store. */
export const ledger = (engine: Engine): Migration => ({ up: (db) => up(db, engine === 'postgres') });

async function up(db: Kysely<unknown>, postgres: boolean): Promise<void> {
  // The one column whose type differs: a gapless, ordered sequence on each engine.
  await db.schema
    .createTable('movements')
    .addColumn('seq', postgres ? 'bigint' : 'integer', (c) =>
      postgres ? c.primaryKey().generatedAlwaysAsIdentity() : c.primaryKey().autoIncrement(),
    )
    .addColumn('id', 'text', (c) => c.notNull().unique())
    .addColumn('at', 'text', (c) => c.notNull())
    .addColumn('actor', 'text', (c) => c.notNull())
    .addColumn('kind', 'text', (c) => c.notNull())
    .addColumn('subject', 'text', (c) => c.notNull())
    .addColumn('data', 'text', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('movements_subject').on('movements').columns(['subject', 'seq']).execute();

  await db.schema
    .createTable('accounts')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('name', 'text', (c) => c.notNull().unique())
    .addColumn('role', 'text', (c) => c.notNull())
    .addColumn('created_at', 'text', (c) => c.notNull())
    .execute();
  await db.schema
    .createTable('tokens')
    .addColumn('hash', 'text', (c) => c.primaryKey())
    .addColumn('account_id', 'text', (c) => c.notNull().references('accounts.id'))
    .addColumn('created_at', 'text', (c) => c.notNull())
    .execute();

  await db.schema
    .createTable('nodes')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('name', 'text', (c) => c.notNull().unique())
    .addColumn('credential_hash', 'text', (c) => c.notNull().unique())
    .addColumn('registered_at', 'text', (c) => c.notNull())
    .execute();
  await db.schema
    .createTable('node_heartbeats')
    .addColumn('node_id', 'text', (c) => c.primaryKey())
    .addColumn('last_seen_at', 'text', (c) => c.notNull())
    .execute();

  await db.schema
    .createTable('software')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('version', 'text', (c) => c.notNull())
    .addColumn('hash', 'text', (c) => c.notNull())
    .addColumn('description', 'text', (c) => c.notNull())
    .addColumn('definition', 'text', (c) => c.notNull())
    .addColumn('parameter_schemas', 'text', (c) => c.notNull())
    .addColumn('published_at', 'text', (c) => c.notNull())
    .addUniqueConstraint('software_name_version', ['name', 'version'])
    .execute();
  await db.schema
    .createTable('software_archives')
    .addColumn('hash', 'text', (c) => c.primaryKey())
    .addColumn('archive', postgres ? 'bytea' : 'blob', (c) => c.notNull())
    .execute();

  await db.schema
    .createTable('partitions')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('node_id', 'text', (c) => c.notNull().references('nodes.id'))
    .addColumn('reference', 'text', (c) => c.notNull())
    .addColumn('ip', 'text', (c) => c.notNull())
    .addColumn('port_first', 'integer', (c) => c.notNull())
    .addColumn('port_last', 'integer', (c) => c.notNull())
    .addColumn('instance_id', 'text', (c) => c.unique())
    .addUniqueConstraint('partitions_node_reference', ['node_id', 'reference'])
    .execute();

  await db.schema
    .createTable('supplies')
    .addColumn('node_id', 'text', (c) => c.notNull().references('nodes.id'))
    .addColumn('software_id', 'text', (c) => c.notNull().references('software.id'))
    .addColumn('state', 'text', (c) => c.notNull())
    .addColumn('status', 'text', (c) => c.notNull())
    .addColumn('message', 'text')
    .addPrimaryKeyConstraint('supplies_pk', ['node_id', 'software_id'])
    .execute();

  await db.schema
    .createTable('instances')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('owner_id', 'text', (c) => c.notNull().references('accounts.id'))
    .addColumn('title', 'text', (c) => c.notNull())
    .addColumn('software_id', 'text', (c) => c.notNull().references('software.id'))
    .addColumn('software_type', 'text', (c) => c.notNull())
    .addColumn('parameters', 'text', (c) => c.notNull())
    .addColumn('state', 'text', (c) => c.notNull())
    .addColumn('serial', 'integer', (c) => c.notNull())
    .addColumn('status', 'text', (c) => c.notNull())
    .addColumn('message', 'text')
    .addColumn('partition_id', 'text', (c) => c.references('partitions.id'))
    .addColumn('connection', 'text', (c) => c.notNull())
    .addColumn('created_at', 'text', (c) => c.notNull())
    .addColumn('updated_at', 'text', (c) => c.notNull())
    .addUniqueConstraint('instances_owner_title', ['owner_id', 'title'])
    .execute();
  await db.schema.createIndex('instances_software').on('instances').column('software_id').execute();
}
