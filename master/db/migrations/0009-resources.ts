import type { Kysely, Migration } from 'kysely';
import type { Engine } from '../database.js';

/** Declared resources: what nodes offer, what instances need and take. */
export const resources = (_engine: Engine): Migration => ({ up });

async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable('node_resources')
    .addColumn('node_id', 'text', (c) => c.notNull().references('nodes.id'))
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('capacity', 'integer')
    .addColumn('used', 'integer', (c) => c.notNull().defaultTo(0))
    .addPrimaryKeyConstraint('node_resources_pk', ['node_id', 'name'])
    .execute();
  await db.schema.alterTable('instances').addColumn('resources', 'text', (c) => c.notNull().defaultTo('{}')).execute();
  await db.schema.alterTable('instances').addColumn('needs', 'text', (c) => c.notNull().defaultTo('{}')).execute();
}
