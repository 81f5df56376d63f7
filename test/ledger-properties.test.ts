/**
 * The ledger's invariants, checked with fast-check over generated price lists and
 * usage reports, on every engine:
 * - every journal transaction balances, in every currency;
 * - re-sending any subset of usage reports, any number of times, changes no total;
 * - closing a period twice gives identical invoices, and late reports never change a
 *   closed one;
 * - the invoice lines of a period add up to the journal's revenue for it.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { assertBalanced, type JournalTransaction } from '../master/billing/journal.js';
import { formatAmount } from '../master/billing/money.js';
import { billingFixture, type BillingFixture } from './helpers/billing-fixture.js';
import { testEngines } from './helpers/databases.js';

const RESOURCES = ['instance-month', 'instance-hour', 'cpu-hour', 'memory-gib-hour', 'disk-gib-month'] as const;
const SEPTEMBER = Date.UTC(2026, 8, 1);
const HOURS = (30 + 31) * 24; // September and October

interface Report {
  instance: number;
  hour: number;
  cpu: number;
  memory: number;
  disk: number;
  uptime: number;
}

const reportArbitrary = fc.record({
  instance: fc.integer({ min: 0, max: 2 }),
  hour: fc.integer({ min: 0, max: HOURS - 1 }),
  cpu: fc.integer({ min: 0, max: 3_600_000 }),
  memory: fc.integer({ min: 0, max: 2 ** 40 }),
  disk: fc.integer({ min: 0, max: 2 ** 44 }),
  uptime: fc.integer({ min: 0, max: 3600 }),
});

const scenario = fc.record({
  prices: fc.record(Object.fromEntries(RESOURCES.map((r) => [r, fc.integer({ min: 0, max: 500_000 })])) as Record<(typeof RESOURCES)[number], fc.Arbitrary<number>>),
  taxRate: fc.integer({ min: 0, max: 2500 }),
  reports: fc.uniqueArray(reportArbitrary, { selector: (r) => `${r.instance}:${r.hour}`, minLength: 1, maxLength: 25 }),
  /** Indexes of reports sent again (modulo the number of reports), each any number of times. */
  resent: fc.array(fc.nat(), { maxLength: 30 }),
  /** How many of the reports arrive only after September is closed. */
  late: fc.nat(),
});

const hourOf = (index: number) => new Date(SEPTEMBER + index * 3_600_000).toISOString();

describe.each(testEngines())('ledger invariants on %s', (engine) => {
  it('holds for any prices, usage, re-sent reports and late reports', { timeout: 600_000 }, async () => {
    await fc.assert(
      fc.asyncProperty(scenario, async ({ prices, taxRate, reports, resent, late }) => {
        const f = await billingFixture(engine, 3);
        try {
          await check(f, prices, taxRate, reports, resent, late % (reports.length + 1));
        } finally {
          await f.close();
        }
      }),
      { numRuns: engine === 'sqlite' ? 25 : 8 },
    );
  });

  it('refuses any journal transaction that does not balance', () => {
    const posting = fc.record({ account: fc.constantFrom('Assets:Bank', 'Income:CPU', 'Assets:Receivable:C-a'), currency: fc.constantFrom('EUR', 'USD'), amount: fc.bigInt({ min: -(10n ** 15n), max: 10n ** 15n }) });
    fc.assert(
      fc.property(fc.array(posting, { minLength: 2, maxLength: 8 }), (postings) => {
        const transaction: JournalTransaction = {
          id: 't',
          date: '2026-11-01',
          period: '2026-11',
          kind: 'invoice',
          reference: 'r',
          description: 'd',
          reverses: null,
          postings: postings.map((p) => ({ ...p, amount: p.amount.toString() })),
        };
        const sums = new Map<string, bigint>();
        for (const p of postings) sums.set(p.currency, (sums.get(p.currency) ?? 0n) + p.amount);
        const balanced = [...sums.values()].every((s) => s === 0n);
        if (balanced) expect(() => assertBalanced(transaction)).not.toThrow();
        else expect(() => assertBalanced(transaction)).toThrow(/does not balance/);
      }),
    );
  });
});

async function check(f: BillingFixture, prices: Record<string, number>, taxRate: number, reports: Report[], resent: number[], lateCount: number): Promise<void> {
  await f.call(f.admin, 'PUT', '/api/v1/billing/settings', { taxRateBasisPoints: taxRate });
  const priceSet = await f.call(f.admin, 'PUT', '/api/v1/billing/prices', {
    software: 'greeter',
    softwareType: 'default',
    validFrom: '2026-01',
    prices: Object.fromEntries(Object.entries(prices).map(([r, minor]) => [r, formatAmount(BigInt(minor), 2)])),
  });
  expect(priceSet.status).toBe(200);
  const instances: { id: string; partition: string }[] = [];
  for (const name of ['ann', 'ben', 'cid']) instances.push(await f.instance(await f.customer(name), `${name}-web`));
  const send = (r: Report) =>
    f.report(instances[r.instance]!, hourOf(r.hour), { cpuMilliseconds: r.cpu, memoryByteSeconds: r.memory, diskByteSeconds: r.disk, uptimeSeconds: r.uptime });

  // The late reports are about September too when they can be: that is the hard case.
  const onTime = reports.slice(0, reports.length - lateCount);
  const lateReports = reports.slice(reports.length - lateCount);
  for (const r of onTime) await send(r);
  for (const index of resent) if (onTime.length > 0) await send(onTime[index % onTime.length]!);
  await expectTotals(f, onTime);

  const first = await f.call(f.admin, 'POST', '/api/v1/billing/close', { period: '2026-09' });
  expect(first.status).toBe(200);
  const september = await invoicesOf(f, '2026-09');
  const movements = await f.movements();
  const again = await f.call(f.admin, 'POST', '/api/v1/billing/close', { period: '2026-09' });
  expect(again.body.closed).toBe(false);
  expect(await f.movements()).toBe(movements);
  expect(await invoicesOf(f, '2026-09')).toEqual(september);

  for (const r of lateReports) await send(r);
  for (const index of resent) await send(reports[index % reports.length]!);
  await expectTotals(f, reports);
  expect(await invoicesOf(f, '2026-09')).toEqual(september);

  expect((await f.call(f.admin, 'POST', '/api/v1/billing/close', { period: '2026-10' })).status).toBe(200);

  // Every transaction balances.
  const unbalanced = await f.database.db
    .selectFrom('journal_postings')
    .select(['transaction_id', 'currency'])
    .groupBy(['transaction_id', 'currency'])
    .having((eb) => eb.fn.sum('amount'), '!=', 0)
    .execute();
  expect(unbalanced).toEqual([]);

  for (const period of ['2026-09', '2026-10']) {
    const lines = await f.database.db
      .selectFrom('invoice_lines as l')
      .innerJoin('invoices as v', 'v.id', 'l.invoice_id')
      .select((eb) => eb.fn.sum<string | number | null>('l.amount').as('sum'))
      .where('v.period', '=', period)
      .executeTakeFirstOrThrow();
    const revenue = await f.database.db
      .selectFrom('journal_postings as p')
      .innerJoin('journal_transactions as t', 't.id', 'p.transaction_id')
      .select((eb) => eb.fn.sum<string | number | null>('p.amount').as('sum'))
      .where('t.period', '=', period)
      .where('t.kind', '=', 'invoice')
      .where('p.account', 'like', 'Income:%')
      .executeTakeFirstOrThrow();
    expect(BigInt(lines.sum ?? 0)).toBe(-BigInt(revenue.sum ?? 0));
  }

  // Every hour was billed, once: the instance-month quantities count each reported hour.
  if (prices['instance-month']! > 0) {
    const hours = await f.database.db
      .selectFrom('invoice_lines')
      .select((eb) => eb.fn.sum<string | number | null>('quantity').as('sum'))
      .where('resource', '=', 'instance-month')
      .executeTakeFirstOrThrow();
    expect(Number(hours.sum ?? 0)).toBe(reports.length);
  }
}

async function expectTotals(f: BillingFixture, reports: Report[]): Promise<void> {
  const row = await f.database.db
    .selectFrom('usage_hours')
    .select((eb) => [
      eb.fn.countAll<string | number>().as('hours'),
      eb.fn.sum<string | number | null>('cpu_ms').as('cpu'),
      eb.fn.sum<string | number | null>('memory_byte_seconds').as('memory'),
      eb.fn.sum<string | number | null>('disk_byte_seconds').as('disk'),
      eb.fn.sum<string | number | null>('uptime_seconds').as('uptime'),
    ])
    .executeTakeFirstOrThrow();
  const sum = (pick: (r: Report) => number) => reports.reduce((s, r) => s + BigInt(pick(r)), 0n);
  expect({ hours: BigInt(row.hours), cpu: BigInt(row.cpu ?? 0), memory: BigInt(row.memory ?? 0), disk: BigInt(row.disk ?? 0), uptime: BigInt(row.uptime ?? 0) }).toEqual({
    hours: BigInt(reports.length),
    cpu: sum((r) => r.cpu),
    memory: sum((r) => r.memory),
    disk: sum((r) => r.disk),
    uptime: sum((r) => r.uptime),
  });
}

async function invoicesOf(f: BillingFixture, period: string): Promise<string[]> {
  const list = (await f.call(f.admin, 'GET', `/api/v1/billing/invoices?period=${period}`)).body as { id: string }[];
  const pages = [];
  for (const invoice of list) {
    pages.push((await f.call(f.admin, 'GET', `/api/v1/billing/invoices/${invoice.id}`)).text);
    pages.push((await f.call(f.admin, 'GET', `/api/v1/billing/invoices/${invoice.id}/html`)).text);
  }
  return pages;
}
