import { sql, type Kysely, type Migration } from 'kysely';
import type { Engine } from '../database.js';

/**
 * The money side of the ledger: price lists, invoices, payments and the double-entry
 * journal, and the database's own refusal to edit any of the append-only tables.
 */
export const billing = (engine: Engine): Migration => ({ up: (db) => up(db, engine === 'postgres') });

/** Tables whose rows are never updated or deleted: a correction is a new, reversing entry. */
export const APPEND_ONLY_TABLES = ['movements', 'journal_transactions', 'journal_postings', 'invoices', 'invoice_lines', 'payments', 'billing_periods'] as const;

async function up(db: Kysely<unknown>, postgres: boolean): Promise<void> {
  const big = postgres ? 'bigint' : 'integer';

  // Projections (rebuilt from the movements like any other).
  await db.schema
    .createTable('billing_settings')
    .addColumn('key', 'text', (c) => c.primaryKey())
    .addColumn('value', 'text', (c) => c.notNull())
    .execute();
  await db.schema
    .createTable('prices')
    .addColumn('software_name', 'text', (c) => c.notNull())
    .addColumn('software_type', 'text', (c) => c.notNull())
    /** The first billing month the version applies to: YYYY-MM. */
    .addColumn('valid_from', 'text', (c) => c.notNull())
    .addColumn('currency', 'text', (c) => c.notNull())
    .addColumn('instance_month', big, (c) => c.notNull())
    .addColumn('instance_hour', big, (c) => c.notNull())
    .addColumn('cpu_hour', big, (c) => c.notNull())
    .addColumn('memory_gib_hour', big, (c) => c.notNull())
    .addColumn('disk_gib_month', big, (c) => c.notNull())
    .addColumn('set_at', 'text', (c) => c.notNull())
    .addPrimaryKeyConstraint('prices_pk', ['software_name', 'software_type', 'valid_from'])
    .execute();
  await db.schema
    .createTable('billing_holds')
    .addColumn('account_id', 'text', (c) => c.primaryKey())
    .addColumn('invoice_id', 'text', (c) => c.notNull())
    .addColumn('reason', 'text', (c) => c.notNull())
    .addColumn('since', 'text', (c) => c.notNull())
    /** JSON array of the instance ids stopped for it: only those are started again. */
    .addColumn('instances', 'text', (c) => c.notNull())
    .addColumn('destroyed', 'integer', (c) => c.notNull())
    .execute();

  // Which close billed each usage hour: null until one did. A late hour for a closed
  // month stays null, so the next close bills it.
  await db.schema.alterTable('usage_hours').addColumn('billed_period', 'text').execute();
  await db.schema.createIndex('usage_hours_unbilled').on('usage_hours').columns(['billed_period', 'hour']).execute();

  // Append-only records.
  await db.schema
    .createTable('billing_periods')
    .addColumn('period', 'text', (c) => c.primaryKey())
    .addColumn('closed_at', 'text', (c) => c.notNull())
    .addColumn('invoices', 'integer', (c) => c.notNull())
    .execute();
  await db.schema
    .createTable('invoices')
    .addColumn('id', 'text', (c) => c.primaryKey())
    // No foreign key to accounts: rebuilding the projections empties accounts, never invoices.
    .addColumn('owner_id', 'text', (c) => c.notNull())
    .addColumn('period', 'text', (c) => c.notNull())
    .addColumn('currency', 'text', (c) => c.notNull())
    .addColumn('subtotal', big, (c) => c.notNull())
    .addColumn('tax', big, (c) => c.notNull())
    .addColumn('total', big, (c) => c.notNull())
    .addColumn('tax_rate_basis_points', 'integer', (c) => c.notNull())
    .addColumn('issued_at', 'text', (c) => c.notNull())
    .addColumn('due_at', 'text', (c) => c.notNull())
    .addUniqueConstraint('invoices_owner_period', ['owner_id', 'period'])
    .execute();
  await db.schema
    .createTable('invoice_lines')
    .addColumn('invoice_id', 'text', (c) => c.notNull().references('invoices.id'))
    .addColumn('line', 'integer', (c) => c.notNull())
    .addColumn('instance_id', 'text', (c) => c.notNull())
    .addColumn('instance_title', 'text', (c) => c.notNull())
    .addColumn('software_id', 'text', (c) => c.notNull())
    .addColumn('software_type', 'text', (c) => c.notNull())
    /** The month the usage happened in: an earlier one for a late report. */
    .addColumn('usage_month', 'text', (c) => c.notNull())
    .addColumn('resource', 'text', (c) => c.notNull())
    .addColumn('quantity', big, (c) => c.notNull())
    .addColumn('unit', 'text', (c) => c.notNull())
    .addColumn('unit_price', big, (c) => c.notNull())
    .addColumn('amount', big, (c) => c.notNull())
    .addPrimaryKeyConstraint('invoice_lines_pk', ['invoice_id', 'line'])
    .execute();
  await db.schema
    .createTable('payments')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('invoice_id', 'text', (c) => c.notNull().references('invoices.id'))
    .addColumn('amount', big, (c) => c.notNull())
    .addColumn('currency', 'text', (c) => c.notNull())
    .addColumn('paid_at', 'text', (c) => c.notNull())
    .addColumn('reference', 'text', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('payments_invoice').on('payments').column('invoice_id').execute();
  await db.schema
    .createTable('journal_transactions')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('date', 'text', (c) => c.notNull())
    /** The billing month it belongs to in exports: an invoice's period, a payment's month. */
    .addColumn('period', 'text', (c) => c.notNull())
    .addColumn('kind', 'text', (c) => c.notNull())
    .addColumn('reference', 'text', (c) => c.notNull())
    .addColumn('description', 'text', (c) => c.notNull())
    .addColumn('reverses', 'text')
    .execute();
  await db.schema.createIndex('journal_transactions_period').on('journal_transactions').columns(['period', 'id']).execute();
  await db.schema
    .createTable('journal_postings')
    .addColumn('transaction_id', 'text', (c) => c.notNull().references('journal_transactions.id'))
    .addColumn('line', 'integer', (c) => c.notNull())
    .addColumn('account', 'text', (c) => c.notNull())
    .addColumn('currency', 'text', (c) => c.notNull())
    .addColumn('amount', big, (c) => c.notNull())
    .addPrimaryKeyConstraint('journal_postings_pk', ['transaction_id', 'line'])
    .execute();
  await db.schema.createIndex('journal_postings_account').on('journal_postings').columns(['account', 'transaction_id']).execute();

  for (const table of APPEND_ONLY_TABLES) await refuseChanges(db, table, postgres);
}

/** The engine itself refuses UPDATE and DELETE (and TRUNCATE) on an append-only table. */
async function refuseChanges(db: Kysely<unknown>, table: string, postgres: boolean): Promise<void> {
  const message = `${table} is append-only: record a reversing entry instead`;
  if (postgres) {
    await sql`
      CREATE OR REPLACE FUNCTION pledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        RAISE EXCEPTION '% is append-only: record a reversing entry instead', TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
      END
      $$`.execute(db);
    await sql`CREATE TRIGGER ${sql.raw(`${table}_append_only`)} BEFORE UPDATE OR DELETE ON ${sql.table(table)}
      FOR EACH ROW EXECUTE FUNCTION pledger_refuse_change()`.execute(db);
    await sql`CREATE TRIGGER ${sql.raw(`${table}_no_truncate`)} BEFORE TRUNCATE ON ${sql.table(table)}
      FOR EACH STATEMENT EXECUTE FUNCTION pledger_refuse_change()`.execute(db);
    return;
  }
  for (const operation of ['UPDATE', 'DELETE']) {
    await sql`CREATE TRIGGER ${sql.raw(`${table}_no_${operation.toLowerCase()}`)} BEFORE ${sql.raw(operation)} ON ${sql.table(table)}
      BEGIN SELECT RAISE(ABORT, ${sql.lit(message)}); END`.execute(db);
  }
}
