import type { Kysely, Migration } from 'kysely';
import type { Engine } from '../database.js';

/**
 * The binary cache: built parts uploaded by nodes, one archive per part hash, platform
 * and node path, with the master's signature; and the master's signing keys, created
 * at its first start and kept with the rest of its state so that every master process
 * sharing the database signs with the same key.
 */
export const binaryCache = (engine: Engine): Migration => ({ up: (db) => up(db, engine === 'postgres') });

async function up(db: Kysely<unknown>, postgres: boolean): Promise<void> {
  await db.schema
    .createTable('signing_keys')
    .addColumn('name', 'text', (c) => c.primaryKey())
    .addColumn('public_key', 'text', (c) => c.notNull())
    // PKCS#8 PEM: never leaves the master.
    .addColumn('private_key', 'text', (c) => c.notNull())
    .addColumn('created_at', 'text', (c) => c.notNull())
    .execute();
  await db.schema
    .createTable('binary_cache')
    .addColumn('part_hash', 'text', (c) => c.notNull())
    .addColumn('platform', 'text', (c) => c.notNull())
    // '' for a part that holds no path of its node, else the node root it was built under.
    .addColumn('prefix', 'text', (c) => c.notNull())
    .addColumn('sha256', 'text', (c) => c.notNull())
    .addColumn('size', 'integer', (c) => c.notNull())
    .addColumn('content', postgres ? 'bytea' : 'blob', (c) => c.notNull())
    .addColumn('signature', 'text', (c) => c.notNull())
    .addColumn('uploaded_by', 'text', (c) => c.notNull().references('nodes.id'))
    .addColumn('uploaded_at', 'text', (c) => c.notNull())
    .addPrimaryKeyConstraint('binary_cache_pk', ['part_hash', 'platform', 'prefix'])
    .execute();
}
