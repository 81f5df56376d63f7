/**
 * Several master processes sharing one database (a PostgreSQL database, or a SQLite
 * file), all asked at once to close the same month through the real CLI: one of them
 * closes it, the others answer the same invoices (or a clear "try again"), and the
 * ledger holds exactly one invoice per customer and a balanced journal.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { billingFixture, type BillingFixture } from './helpers/billing-fixture.js';
import { testEngines } from './helpers/databases.js';
import { pledger, serveDatabase, type RunningMaster } from './helpers/processes.js';

const CUSTOMERS = 6;
const MASTERS = 3;
const CLOSES = 8;

interface CloseAnswer {
  period: string;
  closed: boolean;
  invoices: { id: string; account: string }[];
}

describe.each(testEngines())('closing a month from several masters at once on %s', (engine) => {
  let f: BillingFixture;
  const masters: RunningMaster[] = [];

  beforeAll(async () => {
    f = await billingFixture(engine, CUSTOMERS * 2);
    await f.call(f.admin, 'PUT', '/api/v1/billing/prices', {
      software: 'greeter',
      softwareType: 'default',
      validFrom: '2026-01',
      prices: { 'instance-month': '30.00', 'instance-hour': '0.01', 'cpu-hour': '0.50' },
    });
    for (let c = 0; c < CUSTOMERS; c++) {
      const token = await f.customer(`customer-${c}`);
      // Some customers have two instances: an invoice has a line per instance, still one invoice.
      for (let i = 0; i <= c % 2; i++) {
        const instance = await f.instance(token, `service-${i}`);
        for (let hour = 0; hour < 3; hour++) {
          await f.report(instance, new Date(Date.UTC(2026, 9, 1 + c, hour)).toISOString(), { cpuMilliseconds: 1000 * (c + 1), uptimeSeconds: 3600 });
        }
      }
    }
    const url = engine === 'sqlite' ? f.database.displayUrl : await postgresUrlOf(f);
    for (let m = 0; m < MASTERS; m++) masters.push(await serveDatabase(url, f.admin));
  }, 120_000);

  afterAll(async () => {
    for (const master of masters) await master.stop();
    await f?.close();
  });

  it('issues one invoice per customer, once, and the journal balances', async () => {
    const runs = await Promise.all(
      Array.from({ length: CLOSES }, (_, i) =>
        pledger(['billing', 'close', '--period', '2026-10', '--json'], { env: { PLEDGER_MASTER_URL: masters[i % MASTERS]!.url, PLEDGER_TOKEN: f.admin } }),
      ),
    );
    const answers: CloseAnswer[] = [];
    for (const run of runs) {
      if (run.exitCode === 0) {
        answers.push(run.json<CloseAnswer>());
      } else {
        // The only refusal allowed is the one that says to try again, never an internal error.
        expect(run.stderr).toMatch(/^error: .*try again/);
      }
    }
    expect(answers.length).toBeGreaterThan(0);
    expect(answers.filter((a) => a.closed).length).toBeLessThanOrEqual(1);
    const invoiceIds = answers[0]!.invoices.map((i) => i.id).sort();
    expect(invoiceIds).toHaveLength(CUSTOMERS);
    for (const answer of answers) expect(answer.invoices.map((i) => i.id).sort()).toEqual(invoiceIds);

    // Closed once: asked again, any master answers the same invoices without closing anything.
    const again = await pledger(['billing', 'close', '--period', '2026-10', '--json'], { env: { PLEDGER_MASTER_URL: masters[0]!.url, PLEDGER_TOKEN: f.admin } });
    expect(again.stderr).toBe('');
    expect(again.json<CloseAnswer>().closed).toBe(false);
    expect(again.json<CloseAnswer>().invoices.map((i) => i.id).sort()).toEqual(invoiceIds);

    const { db } = f.database;
    const perOwner = await db.selectFrom('invoices').select(['owner_id', (eb) => eb.fn.countAll().as('n')]).where('period', '=', '2026-10').groupBy('owner_id').execute();
    expect(perOwner).toHaveLength(CUSTOMERS);
    for (const row of perOwner) expect(Number(row.n)).toBe(1);
    expect(await db.selectFrom('billing_periods').selectAll().execute()).toHaveLength(1);
    const closes = await db.selectFrom('movements').select('id').where('kind', '=', 'billing.closed').execute();
    expect(closes).toEqual([{ id: 'close:2026-10' }]);

    // Every journal transaction sums to zero, and there is one per invoice.
    const transactions = await db
      .selectFrom('journal_postings')
      .select(['transaction_id', (eb) => eb.fn.sum<string | number>('amount').as('sum'), (eb) => eb.fn.countAll().as('postings')])
      .groupBy('transaction_id')
      .execute();
    expect(transactions).toHaveLength(CUSTOMERS);
    for (const t of transactions) {
      expect(Number(t.sum)).toBe(0);
      expect(Number(t.postings)).toBeGreaterThanOrEqual(2);
    }
    // Every usage hour was billed, by this close.
    const billed = await db.selectFrom('usage_hours').select(['billed_period', (eb) => eb.fn.countAll().as('hours')]).groupBy('billed_period').execute();
    expect(billed.map((b) => ({ period: b.billed_period, hours: Number(b.hours) }))).toEqual([{ period: '2026-10', hours: 3 * (CUSTOMERS + CUSTOMERS / 2) }]);
  }, 120_000);
});

/** The fixture's PostgreSQL URL with its password: masters started from the test need it. */
async function postgresUrlOf(f: BillingFixture): Promise<string> {
  const row = await f.database.db
    .selectNoFrom((eb) => eb.fn<string>('current_database', []).as('name'))
    .executeTakeFirstOrThrow();
  const url = new URL(process.env.PLEDGER_TEST_POSTGRES_URL!);
  url.pathname = `/${row.name}`;
  return url.toString();
}
