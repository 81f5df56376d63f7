import { sql, type Kysely, type Migration } from 'kysely';
import type { Engine } from '../database.js';

/**
 * Credit notes, and content stores that survive a rebuild.
 *
 * `credit_notes` holds one row per invoice reversed by a credit note: append-only like
 * the invoices it marks, so a rebuild meets its rows again and leaves them.
 *
 * The source and binary caches point at the node that uploaded each entry. They are
 * content, not projections: a rebuild keeps them while it empties and refills `nodes`.
 * On PostgreSQL those foreign keys become deferrable (still checked at once unless a
 * transaction defers them), so that the rebuild can check them at its commit, when the
 * nodes are back; SQLite defers every foreign key with a pragma and needs nothing here.
 */
export const creditNotes = (engine: Engine): Migration => ({ up: (db) => up(db, engine === 'postgres') });

async function up(db: Kysely<unknown>, postgres: boolean): Promise<void> {
  const big = postgres ? 'bigint' : 'integer';
  await db.schema
    .createTable('credit_notes')
    .addColumn('invoice_id', 'text', (c) => c.primaryKey().references('invoices.id'))
    .addColumn('amount', big, (c) => c.notNull())
    .addColumn('currency', 'text', (c) => c.notNull())
    .addColumn('reason', 'text', (c) => c.notNull())
    .addColumn('credited_at', 'text', (c) => c.notNull())
    .execute();
  const message = 'credit_notes is append-only: record a reversing entry instead';
  if (postgres) {
    // pledger_refuse_change() is migration 0003's.
    await sql`CREATE TRIGGER credit_notes_append_only BEFORE UPDATE OR DELETE ON credit_notes FOR EACH ROW EXECUTE FUNCTION pledger_refuse_change()`.execute(db);
    await sql`CREATE TRIGGER credit_notes_no_truncate BEFORE TRUNCATE ON credit_notes FOR EACH STATEMENT EXECUTE FUNCTION pledger_refuse_change()`.execute(db);
    await sql`
      DO $$
      DECLARE c record;
      BEGIN
        FOR c IN
          SELECT conrelid::regclass::text AS tab, conname FROM pg_constraint
          WHERE contype = 'f' AND confrelid = 'nodes'::regclass AND conrelid IN ('source_cache'::regclass, 'binary_cache'::regclass)
        LOOP
          EXECUTE format('ALTER TABLE %I ALTER CONSTRAINT %I DEFERRABLE INITIALLY IMMEDIATE', c.tab, c.conname);
        END LOOP;
      END
      $$`.execute(db);
    return;
  }
  for (const operation of ['UPDATE', 'DELETE']) {
    await sql`CREATE TRIGGER ${sql.raw(`credit_notes_no_${operation.toLowerCase()}`)} BEFORE ${sql.raw(operation)} ON credit_notes
      BEGIN SELECT RAISE(ABORT, ${sql.lit(message)}); END`.execute(db);
  }
}
