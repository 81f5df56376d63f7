import { sql, type Kysely, type Migration } from 'kysely';
import type { Engine } from '../database.js';

/**
 * Usage hours keyed by hour first. Nodes report hour by hour across every instance, so
 * a key that starts with the instance puts each new record on another index page,
 * and each batch of reports rewrites hundreds of pages; starting with the hour keeps
 * a batch's records together at the end of the index. The index by owner and hour
 * goes: no query reads it.
 *
 * The key no longer guards against counting an hour twice on its own: the movement
 * id (`usage:<instance>:<hour>`) does, as before, and the key stays unique.
 */
export const usageByHour = (engine: Engine): Migration => ({ up: (db) => (engine === 'postgres' ? postgres(db) : sqlite(db)) });

/**
 * On PostgreSQL, closing a month marks every usage hour it bills: an UPDATE of a
 * million rows. An updated row is a new row version; when no index covers the
 * changed column and its page has room, the new version stays on the page and no
 * index is touched (a HOT update): eight times faster here. So billed_period leaves
 * the indexes, and pages are filled half, leaving room for each row's billed version.
 * A close then reads the table whole (about 0.3 s per million usage hours).
 */
async function postgres(db: Kysely<unknown>): Promise<void> {
  await sql`ALTER TABLE usage_hours DROP CONSTRAINT usage_hours_pk`.execute(db);
  await sql`ALTER TABLE usage_hours ADD CONSTRAINT usage_hours_pk PRIMARY KEY (hour, instance_id)`.execute(db);
  await db.schema.dropIndex('usage_hours_owner_hour').execute();
  await db.schema.dropIndex('usage_hours_unbilled').execute();
  await sql`ALTER TABLE usage_hours SET (fillfactor = 50)`.execute(db);
}

/**
 * SQLite cannot change a primary key in place: the table is copied. It becomes a
 * WITHOUT ROWID table, stored in its key's order: one B-tree instead of a table and
 * its key's index.
 */
async function sqlite(db: Kysely<unknown>): Promise<void> {
  await sql`
    CREATE TABLE usage_hours_by_hour (
      instance_id text NOT NULL REFERENCES instances (id),
      hour text NOT NULL,
      owner_id text NOT NULL,
      software_id text NOT NULL,
      software_type text NOT NULL,
      node_id text NOT NULL,
      cpu_ms integer NOT NULL,
      memory_byte_seconds integer NOT NULL,
      disk_byte_seconds integer NOT NULL,
      uptime_seconds integer NOT NULL,
      recorded_at text NOT NULL,
      billed_period text,
      CONSTRAINT usage_hours_pk PRIMARY KEY (hour, instance_id)
    ) WITHOUT ROWID`.execute(db);
  const columns = sql.raw(
    'instance_id, hour, owner_id, software_id, software_type, node_id, cpu_ms, memory_byte_seconds, disk_byte_seconds, uptime_seconds, recorded_at, billed_period',
  );
  await sql`INSERT INTO usage_hours_by_hour (${columns}) SELECT ${columns} FROM usage_hours`.execute(db);
  await sql`DROP TABLE usage_hours`.execute(db);
  await sql`ALTER TABLE usage_hours_by_hour RENAME TO usage_hours`.execute(db);
  await db.schema.createIndex('usage_hours_unbilled').on('usage_hours').columns(['billed_period', 'hour']).execute();
}
