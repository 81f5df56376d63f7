/**
 * Usage sums past 2^53, on every engine: a month of memory byte-seconds of a 4 GiB
 * instance is about 1.1 × 10^16, beyond what a JavaScript number holds exactly. The
 * invoice line must carry the exact total, in the ledger and in its projection.
 */
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { billingFixture, type BillingFixture } from './helpers/billing-fixture.js';
import { testEngines } from './helpers/databases.js';

const GIB = 1024 ** 3;

describe.each(testEngines())('usage sums on %s', (engine) => {
  let f: BillingFixture;

  beforeAll(async () => {
    f = await billingFixture(engine, 1);
  });
  afterAll(async () => {
    await f?.close();
  });

  it('bills a month of a 4 GiB instance’s memory with the exact byte-second total', async () => {
    await f.call(f.admin, 'PUT', '/api/v1/billing/prices', { software: 'greeter', softwareType: 'default', validFrom: '2026-01', prices: { 'memory-gib-hour': '0.01' } });
    const alice = await f.customer('alice');
    const web = await f.instance(alice, 'web');
    // 720 hours of September at 4 GiB, one of them a byte-second more: an odd total
    // between 2^53 and 2^54, which no double holds.
    let exact = 0n;
    for (let hour = 0; hour < 720; hour++) {
      const memoryByteSeconds = 4 * GIB * 3600 + (hour === 0 ? 1 : 0);
      exact += BigInt(memoryByteSeconds);
      await f.report(web, new Date(Date.UTC(2026, 8, 1, hour)).toISOString(), { memoryByteSeconds });
    }
    expect(BigInt(Number(exact))).not.toBe(exact);

    const closed = await f.call(f.admin, 'POST', '/api/v1/billing/close', { period: '2026-09' });
    expect(closed.status).toBe(200);
    const id = closed.body.invoices[0].id as string;
    const issued = await f.database.db.selectFrom('movements').select('data').where('kind', '=', 'invoice.issued').executeTakeFirstOrThrow();
    const lines = (JSON.parse(issued.data) as { lines: { resource: string; quantity: string; amount: string }[] }).lines;
    expect(lines).toEqual([expect.objectContaining({ resource: 'memory-gib-hour', quantity: exact.toString(), amount: '2880' })]);
    const { rows } = await sql<{ quantity: string }>`select cast(quantity as text) as quantity from invoice_lines where invoice_id = ${id}`.execute(f.database.db);
    expect(rows).toEqual([{ quantity: exact.toString() }]);
    const invoice = (await f.call(alice, 'GET', `/api/v1/billing/invoices/${id}`)).body;
    expect(invoice.lines).toMatchObject([{ resource: 'memory-gib-hour', quantity: '2880', amount: '28.80' }]);
  });
});
