import type { Kysely, Migration } from 'kysely';
import type { Engine } from '../database.js';

/**
 * What each node last said of the events it set aside (the master refused them for good;
 * they are kept on the node): a count and the latest one's reason, for `pledger node list`.
 * Like `node_heartbeats`, it is the node's own report of its state, replaced at each
 * report, not a projection of the ledger: no foreign key, so that a rebuild of the
 * projections, which empties and refills `nodes`, leaves it as it is.
 */
export const nodeSetAside = (_engine: Engine): Migration => ({ up: (db) => up(db) });

async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable('node_set_aside')
    .addColumn('node_id', 'text', (c) => c.primaryKey())
    .addColumn('count', 'integer', (c) => c.notNull())
    .addColumn('last_event', 'text')
    .addColumn('last_type', 'text')
    .addColumn('last_reason', 'text')
    .addColumn('last_at', 'text')
    .addColumn('reported_at', 'text', (c) => c.notNull())
    .execute();
}
