/**
 * Billing through the master's API over a real database, on every engine: prices,
 * closing periods, invoices, late usage, payments, balances, statements, dunning,
 * exports checked by hledger and bean-check, isolation between customers, and bad
 * input that changes nothing.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rebuildProjections } from '../master/ledger/movements.js';
import { billingFixture, type BillingFixture } from './helpers/billing-fixture.js';
import { testEngines } from './helpers/databases.js';

const GIB = 1024 ** 3;

describe.each(testEngines())('billing API on %s', (engine) => {
  let f: BillingFixture;
  let alice: string;
  let bob: string;
  let web: { id: string; partition: string };
  let cache: { id: string; partition: string };
  let db: { id: string; partition: string };

  const expectUnchanged = async (action: () => Promise<unknown>) => {
    const before = await f.movements();
    await action();
    expect(await f.movements()).toBe(before);
  };

  beforeAll(async () => {
    f = await billingFixture(engine);
    alice = await f.customer('alice');
    bob = await f.customer('bob');
    web = await f.instance(alice, 'web <b>&</b>');
    cache = await f.instance(alice, 'cache');
    db = await f.instance(bob, 'db');
    await f.instance(alice, 'spare');
  });
  afterAll(async () => {
    await f?.close();
  });

  it('lets operators configure billing and set versioned price lists', async () => {
    const settings = await f.call(f.admin, 'PUT', '/api/v1/billing/settings', { taxRateBasisPoints: 2000 });
    expect(settings.body).toEqual({ currency: 'EUR', decimals: 2, taxRateBasisPoints: 2000, paymentTermsDays: 14, graceDays: 7, destroyAfterDays: null });
    const september = await f.call(f.admin, 'PUT', '/api/v1/billing/prices', {
      software: 'greeter',
      softwareType: 'default',
      validFrom: '2026-09',
      prices: { 'instance-month': '30.00', 'instance-hour': '0.01', 'cpu-hour': '0.50', 'memory-gib-hour': '0.02', 'disk-gib-month': '0.10' },
    });
    expect(september.status).toBe(200);
    expect(september.body).toEqual({
      software: 'greeter',
      softwareType: 'default',
      validFrom: '2026-09',
      currency: 'EUR',
      prices: { 'instance-month': '30.00', 'instance-hour': '0.01', 'cpu-hour': '0.50', 'memory-gib-hour': '0.02', 'disk-gib-month': '0.10' },
    });
    // From October the instance-month costs more; the rest is free.
    await f.call(f.admin, 'PUT', '/api/v1/billing/prices', { software: 'greeter', softwareType: 'default', validFrom: '2026-10', prices: { 'instance-month': '74.40' } });
    // Unit prices may be finer than the currency: only invoice amounts are rounded to cents.
    const fine = await f.call(f.admin, 'PUT', '/api/v1/billing/prices', { software: 'greeter', softwareType: 'default', validFrom: '2027-01', prices: { 'memory-gib-hour': '0.0045' } });
    expect(fine.body.prices).toEqual({ 'instance-month': '0.00', 'instance-hour': '0.00', 'cpu-hour': '0.00', 'memory-gib-hour': '0.0045', 'disk-gib-month': '0.00' });
    const list = await f.call(bob, 'GET', '/api/v1/billing/prices');
    expect(list.body.map((p: { validFrom: string }) => p.validFrom)).toEqual(['2026-09', '2026-10', '2027-01']);
  });

  it('refuses bad billing input with a clear error, changing nothing', async () => {
    await expectUnchanged(async () => {
      const byUser = await f.call(alice, 'PUT', '/api/v1/billing/prices', { software: 'greeter', softwareType: 'default', validFrom: '2026-09', prices: { 'cpu-hour': '1' } });
      expect(byUser.status).toBe(403);
      const unknownField = await f.call(f.admin, 'PUT', '/api/v1/billing/prices', { software: 'greeter', softwareType: 'default', validFrom: '2026-09', prices: { 'gpu-hour': '1' } });
      expect(unknownField.status).toBe(400);
      expect(unknownField.body.error.message).toMatch(/gpu-hour/);
      const float = await f.call(f.admin, 'PUT', '/api/v1/billing/prices', { software: 'greeter', softwareType: 'default', validFrom: '2026-09', prices: { 'cpu-hour': 0.5 } });
      expect(float.status).toBe(400);
      const tooPrecise = await f.call(f.admin, 'PUT', '/api/v1/billing/prices', { software: 'greeter', softwareType: 'default', validFrom: '2026-09', prices: { 'cpu-hour': '0.0000005' } });
      expect(tooPrecise.status).toBe(400);
      expect(tooPrecise.body.error.message).toMatch(/must be a decimal with at most 9 digits before the point and 6 after it/);
      const unknownSoftware = await f.call(f.admin, 'PUT', '/api/v1/billing/prices', { software: 'nosuch', softwareType: 'default', validFrom: '2026-09', prices: { 'cpu-hour': '1' } });
      expect(unknownSoftware.status).toBe(404);
      expect((await f.call(f.admin, 'POST', '/api/v1/billing/close', { period: '2026-13' })).status).toBe(400);
      const notOver = await f.call(f.admin, 'POST', '/api/v1/billing/close', { period: '2999-01' });
      expect(notOver.status).toBe(409);
      expect(notOver.body.error.message).toMatch(/is not over/);
      expect((await f.call(alice, 'POST', '/api/v1/billing/close', { period: '2026-09' })).status).toBe(403);
      const currency = await f.call(f.admin, 'PUT', '/api/v1/billing/settings', { currency: 'USD' });
      expect(currency.status).toBe(409);
      expect((await f.call(f.admin, 'PUT', '/api/v1/billing/settings', {})).status).toBe(400);
    });
  });

  it('closes a period: one invoice per customer, one line per instance and resource, posted to the journal', async () => {
    // alice's web: 3 hours in September, 2 of them running, 1.5 CPU hours, 2 GiB all along, 10 GiB of disk.
    for (const hour of ['2026-09-01T00:00:00.000Z', '2026-09-01T01:00:00.000Z', '2026-09-30T23:00:00.000Z']) {
      await f.report(web, hour, { cpuMilliseconds: 1_800_000, memoryByteSeconds: 2 * GIB * 3600, diskByteSeconds: 10 * GIB * 3600, uptimeSeconds: hour.startsWith('2026-09-30') ? 0 : 3600 });
    }
    await f.report(db, '2026-09-15T12:00:00.000Z', { uptimeSeconds: 1800 });
    // October usage stays for the October close.
    await f.report(cache, '2026-10-01T00:00:00.000Z');

    const closed = await f.call(f.admin, 'POST', '/api/v1/billing/close', { period: '2026-09' });
    expect(closed.status).toBe(200);
    expect(closed.body.closed).toBe(true);
    expect(closed.body.invoices.map((i: { id: string; account: string }) => [i.id, i.account])).toEqual([
      ['INV-2026-09-00001', 'alice'],
      ['INV-2026-09-00002', 'bob'],
    ]);
    const invoice = (await f.call(alice, 'GET', '/api/v1/billing/invoices/INV-2026-09-00001')).body;
    // instance-month: 30.00 × 3/720 = 0.125 → 0.13; instance-hour: 0.01 × 2 = 0.02; CPU: 0.50 × 1.5 = 0.75;
    // memory: 0.02 × 6 GiB-hours = 0.12; disk: 0.10 × 30 GiB-hours / 720 = 0.0041... → 0.00.
    expect(invoice.lines).toEqual([
      { instance: 'web <b>&</b>', software: 'greeter@1.0.0', softwareType: 'default', usageMonth: '2026-09', resource: 'instance-month', quantity: '0.004167', unitPrice: '30.00', amount: '0.13' },
      { instance: 'web <b>&</b>', software: 'greeter@1.0.0', softwareType: 'default', usageMonth: '2026-09', resource: 'instance-hour', quantity: '2', unitPrice: '0.01', amount: '0.02' },
      { instance: 'web <b>&</b>', software: 'greeter@1.0.0', softwareType: 'default', usageMonth: '2026-09', resource: 'cpu-hour', quantity: '1.5', unitPrice: '0.50', amount: '0.75' },
      { instance: 'web <b>&</b>', software: 'greeter@1.0.0', softwareType: 'default', usageMonth: '2026-09', resource: 'memory-gib-hour', quantity: '6', unitPrice: '0.02', amount: '0.12' },
      { instance: 'web <b>&</b>', software: 'greeter@1.0.0', softwareType: 'default', usageMonth: '2026-09', resource: 'disk-gib-month', quantity: '0.041667', unitPrice: '0.10', amount: '0.00' },
    ]);
    expect(invoice).toMatchObject({ subtotal: '1.02', taxRateBasisPoints: 2000, tax: '0.20', total: '1.22', paid: '0.00', outstanding: '1.22', status: 'open', currency: 'EUR' });

    const journal = await f.database.db.selectFrom('journal_postings').selectAll().where('transaction_id', '=', 'invoice:INV-2026-09-00001').orderBy('line').execute();
    expect(journal.map((p) => [p.account, Number(p.amount)])).toEqual([
      ['Assets:Receivable:C-alice', 122],
      ['Income:Instances', -13],
      ['Income:Instance-hours', -2],
      ['Income:CPU', -75],
      ['Income:Memory', -12],
      ['Liabilities:Tax:Sales', -20],
    ]);
  });

  it('answers the same invoices, byte for byte, when a period is closed again, and records nothing', async () => {
    const html = (await f.call(alice, 'GET', '/api/v1/billing/invoices/INV-2026-09-00001/html')).text;
    const json = (await f.call(alice, 'GET', '/api/v1/billing/invoices/INV-2026-09-00001')).text;
    await expectUnchanged(async () => {
      const again = await f.call(f.admin, 'POST', '/api/v1/billing/close', { period: '2026-09' });
      expect(again.body.closed).toBe(false);
      expect(again.body.invoices).toHaveLength(2);
    });
    expect((await f.call(alice, 'GET', '/api/v1/billing/invoices/INV-2026-09-00001/html')).text).toBe(html);
    expect((await f.call(alice, 'GET', '/api/v1/billing/invoices/INV-2026-09-00001')).text).toBe(json);
  });

  it('renders a printable invoice with the customer text escaped', async () => {
    const page = await f.call(alice, 'GET', '/api/v1/billing/invoices/INV-2026-09-00001/html');
    expect(page.status).toBe(200);
    expect(page.headers['content-type']).toMatch(/^text\/html/);
    expect(page.text).toContain('web &lt;b&gt;&amp;&lt;/b&gt;');
    expect(page.text).not.toContain('<b>&</b>');
    expect(page.text).toContain('1.22 EUR');
  });

  it('shows a customer their own invoices only', async () => {
    expect((await f.call(bob, 'GET', '/api/v1/billing/invoices')).body.map((i: { id: string }) => i.id)).toEqual(['INV-2026-09-00002']);
    expect((await f.call(bob, 'GET', '/api/v1/billing/invoices/INV-2026-09-00001')).status).toBe(404);
    expect((await f.call(bob, 'GET', '/api/v1/billing/invoices/INV-2026-09-00001/html')).status).toBe(404);
    expect((await f.call(bob, 'GET', '/api/v1/billing/invoices?account=alice')).status).toBe(403);
    expect((await f.call(bob, 'GET', '/api/v1/billing/balance?account=alice')).status).toBe(403);
    expect((await f.call(bob, 'GET', '/api/v1/billing/export?period=2026-09&format=csv')).status).toBe(403);
    expect((await f.call(f.admin, 'GET', '/api/v1/billing/invoices?period=2026-09')).body).toHaveLength(2);
  });

  it('puts usage reported late for a closed period on the next invoice, never into the closed one', async () => {
    const before = (await f.call(alice, 'GET', '/api/v1/billing/invoices/INV-2026-09-00001')).text;
    await f.report(web, '2026-09-02T00:00:00.000Z', { cpuMilliseconds: 3_600_000, uptimeSeconds: 3600 });
    // The same hour again, under another event id: counted once.
    await f.report(web, '2026-09-02T00:00:00.000Z', { cpuMilliseconds: 3_600_000, uptimeSeconds: 3600 });
    expect((await f.call(alice, 'GET', '/api/v1/billing/invoices/INV-2026-09-00001')).text).toBe(before);

    const october = await f.call(f.admin, 'POST', '/api/v1/billing/close', { period: '2026-10' });
    expect(october.body.invoices.map((i: { account: string }) => i.account)).toEqual(['alice']);
    const invoice = (await f.call(alice, 'GET', `/api/v1/billing/invoices/${october.body.invoices[0].id}`)).body;
    expect(invoice.lines.map((l: { instance: string; usageMonth: string; resource: string; amount: string }) => [l.instance, l.usageMonth, l.resource, l.amount])).toEqual([
      ['cache', '2026-10', 'instance-month', '0.10'],
      ['web <b>&</b>', '2026-09', 'instance-month', '0.04'],
      ['web <b>&</b>', '2026-09', 'instance-hour', '0.01'],
      ['web <b>&</b>', '2026-09', 'cpu-hour', '0.50'],
    ]);
    expect((await f.call(f.admin, 'POST', '/api/v1/billing/close', { period: '2026-08' })).status).toBe(409);
  });

  it('records payments, balances and statements; refuses overpayment and bad amounts', async () => {
    await expectUnchanged(async () => {
      expect((await f.call(alice, 'POST', '/api/v1/billing/payments', { invoice: 'INV-2026-09-00001', amount: '1.00' })).status).toBe(403);
      const over = await f.call(f.admin, 'POST', '/api/v1/billing/payments', { invoice: 'INV-2026-09-00001', amount: '5.00' });
      expect(over.status).toBe(409);
      expect(over.body.error.message).toBe('invoice INV-2026-09-00001 owes 1.22 EUR: 5.00 is more than that');
      expect((await f.call(f.admin, 'POST', '/api/v1/billing/payments', { invoice: 'INV-2026-09-00001', amount: '1.2x' })).status).toBe(400);
      expect((await f.call(f.admin, 'POST', '/api/v1/billing/payments', { invoice: 'INV-2026-09-00001', amount: '0' })).status).toBe(400);
      expect((await f.call(f.admin, 'POST', '/api/v1/billing/payments', { invoice: 'INV-2026-09-09999', amount: '1' })).status).toBe(404);
    });
    const paid = await f.call(f.admin, 'POST', '/api/v1/billing/payments', { invoice: 'INV-2026-09-00001', amount: '1.00', reference: 'bank 42' });
    expect(paid.status).toBe(201);
    expect(paid.body).toMatchObject({ invoice: 'INV-2026-09-00001', amount: '1.00', outstanding: '0.22', reference: 'bank 42', restarted: [] });
    const balance = (await f.call(alice, 'GET', '/api/v1/billing/balance')).body;
    expect(balance).toMatchObject({ account: 'alice', currency: 'EUR', balance: '1.00', hold: null });

    // A payment recorded by mistake is reversed by a new entry, never edited.
    const mistaken = await f.call(f.admin, 'POST', '/api/v1/billing/payments', { invoice: 'INV-2026-10-00001', amount: '0.50', reference: 'wrong customer' });
    await expectUnchanged(async () => {
      expect((await f.call(alice, 'POST', `/api/v1/billing/payments/${mistaken.body.id}/reverse`, { reason: 'x' })).status).toBe(403);
      expect((await f.call(f.admin, 'POST', `/api/v1/billing/payments/${mistaken.body.id}/reverse`, {})).status).toBe(400);
      expect((await f.call(f.admin, 'POST', '/api/v1/billing/payments/00000000-0000-0000-0000-000000000000/reverse', { reason: 'x' })).status).toBe(404);
    });
    const reversed = await f.call(f.admin, 'POST', `/api/v1/billing/payments/${mistaken.body.id}/reverse`, { reason: 'belongs to bob' });
    expect(reversed.status).toBe(201);
    expect(reversed.body).toMatchObject({ invoice: 'INV-2026-10-00001', amount: '-0.50', outstanding: '0.78' });
    expect((await f.call(f.admin, 'POST', `/api/v1/billing/payments/${mistaken.body.id}/reverse`, { reason: 'again' })).status).toBe(409);
    const reversal = await f.database.db.selectFrom('journal_transactions').selectAll().where('id', '=', `payment:reversal-of-${mistaken.body.id}`).executeTakeFirstOrThrow();
    expect(reversal).toMatchObject({ kind: 'reversal', reverses: `payment:${mistaken.body.id}` });

    const statement = (await f.call(alice, 'GET', '/api/v1/billing/statement')).body;
    expect(statement.entries.map((e: { kind: string; amount: string; balance: string }) => [e.kind, e.amount, e.balance])).toEqual([
      ['invoice', '1.22', '1.22'],
      ['invoice', '0.78', '2.00'],
      ['payment', '-1.00', '1.00'],
      ['payment', '-0.50', '0.50'],
      ['reversal', '0.50', '1.00'],
    ]);
  });

  it('stops an overdue customer’s instances with the reason on them, and starts them again on payment', async () => {
    const invoice = (await f.call(alice, 'GET', '/api/v1/billing/invoices/INV-2026-09-00001')).body;
    const dueAt = Date.parse(invoice.dueAt);
    // Within the grace period: nothing happens.
    const early = await f.call(f.admin, 'POST', '/api/v1/billing/dunning', { asOf: new Date(dueAt + 6 * 86_400_000).toISOString() });
    expect(early.body).toMatchObject({ held: [], instances: [] });

    const late = await f.call(f.admin, 'POST', '/api/v1/billing/dunning', { asOf: new Date(dueAt + 8 * 86_400_000).toISOString() });
    expect(late.body.held).toEqual(['alice', 'bob']);
    expect(late.body.instances.sort()).toEqual(['alice/cache', 'alice/spare', 'alice/web <b>&</b>', 'bob/db']);
    expect((await f.call(alice, 'GET', '/api/v1/instances/cache')).body.state).toBe('stopped');
    const history = (await f.call(alice, 'GET', '/api/v1/instances/cache/history')).body as { kind: string; actor: string; data: { reason?: string; state?: string } }[];
    const held = history.find((m) => m.kind === 'instance.held')!;
    expect(held.data.reason).toMatch(/^invoice INV-2026-09-00001 was due on .* and 0.22 EUR of it is unpaid/);
    expect(history.at(-1)).toMatchObject({ kind: 'instance.requested', actor: 'master', data: { state: 'stopped' } });
    const balance = (await f.call(alice, 'GET', '/api/v1/billing/balance')).body;
    expect(balance.hold).toMatchObject({ invoice: 'INV-2026-09-00001', reason: held.data.reason, destroyed: false });

    // Held: nothing of alice's starts again, and nothing new is created, until she pays.
    await expectUnchanged(async () => {
      for (const [title, body] of [
        ['cache', { software: 'greeter', state: 'started' }],
        ['more', { software: 'greeter' }],
        ['more', { software: 'greeter', state: 'stopped' }],
      ] as const) {
        const refused = await f.call(alice, 'PUT', `/api/v1/instances/${title}`, body);
        expect(refused.status).toBe(402);
        expect(refused.body.error).toMatchObject({ code: 'PAYMENT_REQUIRED', hint: expect.stringMatching(/^pay invoice INV-2026-09-00001 /) });
        expect(refused.body.error.message).toMatch(/until invoice INV-2026-09-00001 is paid$/);
      }
      expect((await f.call(alice, 'PUT', '/api/v1/instances/cache', { software: 'greeter', state: 'stopped' })).status).toBe(200);
    });
    expect((await f.call(alice, 'GET', '/api/v1/instances/cache')).body.state).toBe('stopped');
    expect((await f.call(alice, 'GET', '/api/v1/instances/more')).status).toBe(404);
    // A customer who owes nothing is not held by others' debts.
    const carol = await f.customer('carol');
    expect((await f.call(carol, 'PUT', '/api/v1/instances/more', { software: 'greeter' })).body.state).toBe('started');
    // Destroying stays allowed; a destroyed instance is not started again by the payment, nor recreated meanwhile.
    expect((await f.call(alice, 'PUT', '/api/v1/instances/spare', { software: 'greeter', state: 'destroyed' })).body.state).toBe('destroyed');
    expect((await f.call(alice, 'PUT', '/api/v1/instances/spare', { software: 'greeter' })).status).toBe(402);

    // Running dunning again changes nothing.
    await expectUnchanged(() => f.call(f.admin, 'POST', '/api/v1/billing/dunning', { asOf: new Date(dueAt + 9 * 86_400_000).toISOString() }));

    const settled = await f.call(f.admin, 'POST', '/api/v1/billing/payments', { invoice: 'INV-2026-09-00001', amount: '0.22' });
    expect(settled.body.restarted.sort()).toEqual(['cache', 'web <b>&</b>']);
    expect((await f.call(alice, 'GET', '/api/v1/instances/cache')).body.state).toBe('started');
    expect((await f.call(alice, 'GET', '/api/v1/billing/balance')).body.hold).toBeNull();
    expect((await f.call(alice, 'GET', '/api/v1/billing/invoices/INV-2026-09-00001')).body.status).toBe('paid');
  });

  it('destroys for non-payment only when the operator configured it', async () => {
    const invoice = (await f.call(bob, 'GET', '/api/v1/billing/invoices/INV-2026-09-00002')).body;
    const muchLater = new Date(Date.parse(invoice.dueAt) + 400 * 86_400_000).toISOString();
    expect((await f.call(f.admin, 'POST', '/api/v1/billing/payments', { invoice: 'INV-2026-10-00001', amount: '0.78' })).status).toBe(201);
    const held = await f.call(f.admin, 'POST', '/api/v1/billing/dunning', { asOf: muchLater });
    expect(held.body).toMatchObject({ held: [], destroyed: [] });
    expect((await f.call(bob, 'GET', '/api/v1/instances/db')).body.state).toBe('stopped');
    await f.call(f.admin, 'PUT', '/api/v1/billing/settings', { destroyAfterDays: 30 });
    const destroyed = await f.call(f.admin, 'POST', '/api/v1/billing/dunning', { asOf: muchLater });
    expect(destroyed.body).toMatchObject({ destroyed: ['bob'], instances: ['bob/db'] });
    expect((await f.call(bob, 'GET', '/api/v1/instances/db')).body.state).toBe('destroyed');
    expect((await f.call(bob, 'GET', '/api/v1/billing/balance')).body.hold).toMatchObject({ destroyed: true });
  });

  it('credits an unpaid invoice with a reversing entry dated now, once, and only for operators', async () => {
    const thisMonth = new Date().toISOString().slice(0, 7);
    const before = (await f.call(bob, 'GET', '/api/v1/billing/invoices/INV-2026-09-00002')).body;
    expect(before.status).toBe('open');
    await expectUnchanged(async () => {
      expect((await f.call(bob, 'POST', '/api/v1/billing/invoices/INV-2026-09-00002/credit', {})).status).toBe(403);
      expect((await f.call(f.admin, 'POST', '/api/v1/billing/invoices/INV-2026-09-09999/credit', {})).status).toBe(404);
      expect((await f.call(f.admin, 'POST', '/api/v1/billing/invoices/INV-2026-09-00002/credit', { reason: 'a\nb' })).status).toBe(400);
      expect((await f.call(f.admin, 'POST', '/api/v1/billing/invoices/INV-2026-09-00002/credit', { reason: 'x', amount: '1' })).status).toBe(400);
      const paid = await f.call(f.admin, 'POST', '/api/v1/billing/invoices/INV-2026-09-00001/credit', {});
      expect(paid.status).toBe(409);
      expect(paid.body.error).toMatchObject({ message: 'invoice INV-2026-09-00001 has 1.22 EUR paid on it: a credit note reverses an unpaid invoice', hint: expect.stringMatching(/reverse-payment/) });
    });

    const credited = await f.call(f.admin, 'POST', '/api/v1/billing/invoices/INV-2026-09-00002/credit', { reason: 'service outage' });
    expect(credited.status).toBe(201);
    expect(credited.body).toMatchObject({ invoice: 'INV-2026-09-00002', account: 'bob', amount: before.total, currency: 'EUR', reason: 'service outage', credited: true, restarted: [] });
    await expectUnchanged(async () => {
      const again = await f.call(f.admin, 'POST', '/api/v1/billing/invoices/INV-2026-09-00002/credit', { reason: 'twice' });
      expect(again.status).toBe(200);
      expect(again.body).toEqual({ ...credited.body, credited: false });
      const payment = await f.call(f.admin, 'POST', '/api/v1/billing/payments', { invoice: 'INV-2026-09-00002', amount: '0.01' });
      expect(payment.status).toBe(409);
      expect(payment.body.error.message).toBe('invoice INV-2026-09-00002 is credited: nothing is owed on it');
    });

    const after = (await f.call(bob, 'GET', '/api/v1/billing/invoices/INV-2026-09-00002')).body;
    expect(after).toEqual({ ...before, status: 'credited', credited: before.total, outstanding: '0.00' });
    const balance = (await f.call(bob, 'GET', '/api/v1/billing/balance')).body;
    expect(balance).toMatchObject({ balance: '0.00', overdue: '0.00', hold: null });
    const statement = (await f.call(bob, 'GET', '/api/v1/billing/statement')).body;
    expect(statement.entries.map((e: { kind: string; reference: string; amount: string; balance: string }) => [e.kind, e.reference, e.amount, e.balance])).toEqual([
      ['invoice', 'INV-2026-09-00002', before.total, before.total],
      ['credit', 'INV-2026-09-00002', `-${before.total}`, '0.00'],
    ]);

    // The closed period keeps its invoice entry as it was; the credit note belongs to this month.
    const journal = f.database.db.selectFrom('journal_transactions').selectAll();
    const note = await journal.where('id', '=', 'credit:INV-2026-09-00002').executeTakeFirstOrThrow();
    expect(note).toMatchObject({ kind: 'credit', period: thisMonth, reference: 'INV-2026-09-00002', reverses: 'invoice:INV-2026-09-00002', description: 'Credit note for INV-2026-09-00002 to bob: service outage' });
    const postings = async (id: string) =>
      (await f.database.db.selectFrom('journal_postings').select(['account', 'amount']).where('transaction_id', '=', id).orderBy('line').execute()).map((p) => [p.account, BigInt(p.amount)]);
    expect(await postings('credit:INV-2026-09-00002')).toEqual((await postings('invoice:INV-2026-09-00002')).map(([account, amount]) => [account, -(amount as bigint)]));
  });

  it('exports the journal as CSV, JSON, and journals that hledger and bean-check accept', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'pledger-export-'));
    const get = async (format: string) => {
      const answer = await f.call(f.admin, 'GET', `/api/v1/billing/export?period=2026-09&format=${format}`);
      expect(answer.status).toBe(200);
      return answer.text;
    };
    const csv = (await get('csv')).trim().split('\n');
    expect(csv[0]).toBe('date,transaction,kind,reference,description,account,currency,amount');
    expect(csv).toContain(`${csv[1]!.slice(0, 10)},invoice:INV-2026-09-00001,invoice,INV-2026-09-00001,Invoice INV-2026-09-00001 to alice for 2026-09,Assets:Receivable:C-alice,EUR,1.22`);
    const json = JSON.parse(await get('json')) as { id: string; postings: { amount: string }[] }[];
    expect(json.map((t) => t.id)).toEqual(['invoice:INV-2026-09-00001', 'invoice:INV-2026-09-00002']);

    const hledgerFile = path.join(dir, 'pledger.journal');
    writeFileSync(hledgerFile, await get('hledger'));
    execFileSync('hledger', ['check', '--strict', '-f', hledgerFile], { stdio: 'pipe' });
    const balance = execFileSync('hledger', ['balance', '-f', hledgerFile, '--flat', '--no-total', 'Receivable:C-alice']).toString();
    expect(balance).toMatch(/1\.22 EUR\s+Assets:Receivable:C-alice/);

    const beancountFile = path.join(dir, 'pledger.beancount');
    writeFileSync(beancountFile, await get('beancount'));
    execFileSync('bean-check', [beancountFile], { stdio: 'pipe' });

    // Payments belong to the month they were made in: this one.
    const thisMonth = new Date().toISOString().slice(0, 7);
    const payments = await f.call(f.admin, 'GET', `/api/v1/billing/export?period=${thisMonth}&format=beancount`);
    writeFileSync(beancountFile, payments.text);
    execFileSync('bean-check', [beancountFile], { stdio: 'pipe' });
    expect(payments.text).toContain('Payment bank 42 from alice for INV-2026-09-00001');
    expect(payments.text).toContain('"INV-2026-09-00002" "Credit note for INV-2026-09-00002 to bob: service outage"');
    writeFileSync(hledgerFile, (await f.call(f.admin, 'GET', `/api/v1/billing/export?period=${thisMonth}&format=hledger`)).text);
    execFileSync('hledger', ['check', '--strict', '-f', hledgerFile], { stdio: 'pipe' });
    const bob = execFileSync('hledger', ['balance', '-f', hledgerFile, '--flat', '--no-total', 'Receivable:C-bob']).toString();
    expect(bob).toMatch(/^\s*-0\.06 EUR\s+Assets:Receivable:C-bob/);
    expect((await f.call(f.admin, 'GET', '/api/v1/billing/export?period=2026-09&format=xml')).status).toBe(400);
  });

  it('rebuilds the same projections from the movements, billing included', async () => {
    const snapshot = async () => {
      const d = f.database.db;
      return {
        usage: await d.selectFrom('usage_hours').selectAll().orderBy('instance_id').orderBy('hour').execute(),
        prices: await d.selectFrom('prices').selectAll().orderBy('software_name').orderBy('valid_from').execute(),
        holds: await d.selectFrom('billing_holds').selectAll().orderBy('account_id').execute(),
        settings: await d.selectFrom('billing_settings').selectAll().orderBy('key').execute(),
        instances: await d.selectFrom('instances').selectAll().orderBy('id').execute(),
        journal: await d.selectFrom('journal_postings').selectAll().orderBy('transaction_id').orderBy('line').execute(),
        credits: await d.selectFrom('credit_notes').selectAll().orderBy('invoice_id').execute(),
        invoices: await d.selectFrom('invoices').selectAll().orderBy('id').execute(),
      };
    };
    const live = await snapshot();
    expect(live.credits).toHaveLength(1);
    expect(live.usage.length).toBeGreaterThan(0);
    expect(live.usage.filter((u) => (u as { billed_period?: string | null }).billed_period === null)).toEqual([]);
    await rebuildProjections(f.database.db);
    await f.backdateAgain();
    expect(await snapshot()).toEqual(live);
  });
});
