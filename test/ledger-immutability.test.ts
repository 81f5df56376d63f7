/**
 * The ledger's append-only tables, on every engine: the database itself refuses to
 * update or delete a movement, an invoice, a payment or a journal entry, whatever code
 * or person tries it.
 */
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { billingFixture, type BillingFixture } from './helpers/billing-fixture.js';
import { testEngines } from './helpers/databases.js';

describe.each(testEngines())('append-only ledger tables on %s', (engine) => {
  let f: BillingFixture;

  beforeAll(async () => {
    f = await billingFixture(engine, 2);
    await f.call(f.admin, 'PUT', '/api/v1/billing/prices', { software: 'greeter', softwareType: 'default', validFrom: '2026-01', prices: { 'instance-hour': '0.10' } });
    const alice = await f.customer('alice');
    const web = await f.instance(alice, 'web');
    await f.report(web, '2026-10-01T00:00:00.000Z');
    const closed = await f.call(f.admin, 'POST', '/api/v1/billing/close', { period: '2026-10' });
    expect(closed.body.invoices).toHaveLength(1);
    await f.call(f.admin, 'POST', '/api/v1/billing/payments', { invoice: closed.body.invoices[0].id, amount: '0.05' });
  });
  afterAll(async () => {
    await f?.close();
  });

  const tables = ['movements', 'journal_transactions', 'journal_postings', 'invoices', 'invoice_lines', 'payments', 'billing_periods'];

  it.each(tables)('refuses UPDATE and DELETE on %s', async (table) => {
    const count = async () => Number((await sql<{ n: number | string }>`select count(*) as n from ${sql.table(table)}`.execute(f.database.db)).rows[0]!.n);
    const before = await count();
    expect(before).toBeGreaterThan(0);
    const column = table === 'billing_periods' ? 'closed_at' : table === 'journal_postings' ? 'account' : table === 'invoice_lines' ? 'resource' : table === 'movements' ? 'actor' : 'id';
    await expect(sql`update ${sql.table(table)} set ${sql.ref(column)} = ${'forged'}`.execute(f.database.db)).rejects.toThrow(/append-only/);
    await expect(sql`delete from ${sql.table(table)}`.execute(f.database.db)).rejects.toThrow(/append-only/);
    if (engine === 'postgres') await expect(sql`truncate ${sql.table(table)} cascade`.execute(f.database.db)).rejects.toThrow(/append-only/);
    expect(await count()).toBe(before);
  });
});
