/**
 * `pledger billing` through the real CLI and a real master process: prices, closing a
 * month, invoices (text, JSON, HTML), payments, balances, exports streamed to a file
 * and checked by hledger, and bad input that changes nothing.
 */
import { execFileSync } from 'node:child_process';
import Sqlite from 'better-sqlite3';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BalanceView, DesiredState, InvoiceSummary, InvoiceView } from '../protocol/api.js';
import { freshDatabase, type TestDatabase } from './helpers/databases.js';
import { accountEnv, countMovements, expectLedgerUnchanged, pledger, type RunningMaster, startMaster } from './helpers/processes.js';

describe('pledger billing', () => {
  let db: TestDatabase;
  let master: RunningMaster;
  let asAdmin: Record<string, string>;
  let asAlice: Record<string, string>;
  let invoiceId: string;

  const expectUnchanged = (action: () => Promise<void>) => expectLedgerUnchanged(db.url, action);
  let credential: string;
  let web: { id: string; createdAt: string };
  /** The node API as node-a calls it. */
  const nodeCall = (method: string, url: string, body?: unknown) =>
    fetch(`${master.url}/api/v1/node${url}`, {
      method,
      headers: { authorization: `Bearer ${credential}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
  const usageEvent = (id: string, hour: string) => ({
    id,
    at: new Date().toISOString(),
    type: 'instance.usage',
    partition: 'part0',
    instance: web.id,
    hour,
    cpuMilliseconds: 1000,
    memoryByteSeconds: 0,
    diskByteSeconds: 0,
    uptimeSeconds: 3600,
  });

  beforeAll(async () => {
    db = await freshDatabase('sqlite');
    master = await startMaster(db.url);
    asAdmin = { PLEDGER_MASTER_URL: master.url, PLEDGER_TOKEN: master.adminToken };
    asAlice = await accountEnv(master, 'alice');
    credential = (await pledger(['node', 'register', 'node-a', '--json'], { env: asAdmin })).json<{ credential: string }>().credential;
    const asNode = async (method: string, url: string, body?: unknown) => {
      const response = await nodeCall(method, url, body);
      expect(response.status).toBe(200);
      return response.json() as Promise<unknown>;
    };
    await asNode('PUT', '/partitions', { partitions: [{ reference: 'part0', ip: '127.44.0.1', ports: { first: 31000, last: 31009 } }] });
    expect((await pledger(['supply', 'hello', 'node-a'], { env: asAdmin })).exitCode).toBe(0);
    expect((await pledger(['request', 'web', 'hello'], { env: asAlice })).exitCode).toBe(0);
    const state = (await asNode('GET', '/desired-state')) as DesiredState;
    const instance = state.partitions[0]!.instance!;
    // October is long over: the instance is taken to have been requested before it, or its
    // usage would be refused as outside its life.
    const writable = new Sqlite(db.url.replace(/^sqlite:/, ''));
    try {
      writable.prepare('UPDATE instances SET created_at = ? WHERE id = ?').run('2026-01-01T00:00:00.000Z', instance.id);
      web = { id: instance.id, createdAt: '2026-01-01T00:00:00.000Z' };
    } finally {
      writable.close();
    }
    const events = ['2026-10-01T00:00:00.000Z', '2026-10-01T01:00:00.000Z'].map((hour, i) => ({
      id: `usage-cli-${i}-aaaa`,
      at: new Date().toISOString(),
      type: 'instance.usage',
      partition: 'part0',
      instance: instance.id,
      hour,
      cpuMilliseconds: 0,
      memoryByteSeconds: 0,
      diskByteSeconds: 0,
      uptimeSeconds: 3600,
    }));
    await asNode('POST', '/events', { events });
  });
  afterAll(async () => {
    await master?.stop();
    await db?.drop();
  });

  it('sets and lists prices', async () => {
    const set = await pledger(['billing', 'price', 'set', 'hello', '--from', '2026-01', '--instance-hour', '1.25', '--instance-month', '744'], { env: asAdmin });
    expect(set.stderr).toBe('');
    expect(set.stdout).toMatch(/^hello default from 2026-01: instance-month 744\.00 EUR, instance-hour 1\.25 EUR, cpu-hour 0\.00 EUR/);
    const list = await pledger(['billing', 'price', 'list'], { env: asAlice });
    expect(list.stdout.split('\n')[1]).toMatch(/^hello\s+default\s+2026-01\s+EUR\s+744\.00\s+1\.25\s+0\.00\s+0\.00\s+0\.00$/);
  });

  it('refuses bad input with a clear message and its exit code, changing nothing', async () => {
    await expectUnchanged(async () => {
      const badAmount = await pledger(['billing', 'price', 'set', 'hello', '--from', '2026-01', '--cpu-hour', '1.5x'], { env: asAdmin });
      expect(badAmount.exitCode).toBe(2);
      expect(badAmount.stderr).toMatch(/^error: invalid request: body\.prices\.cpu-hour must be a decimal with at most 9 digits before the point and 6 after it/);
      const badPeriod = await pledger(['billing', 'close', '--period', '2026-13'], { env: asAdmin });
      expect(badPeriod.exitCode).toBe(2);
      expect(badPeriod.stderr).toMatch(/body\.period must match pattern/);
      const byUser = await pledger(['billing', 'close', '--period', '2026-10'], { env: asAlice });
      expect(byUser.exitCode).toBe(3);
      expect(byUser.stderr).toMatch(/^error: only an operator/);
      const noPrice = await pledger(['billing', 'price', 'set', 'hello', '--from', '2026-01'], { env: asAdmin });
      expect(noPrice.exitCode).toBe(2);
      expect(noPrice.stderr).toBe('error: name at least one price\nhint: e.g. --instance-month 30.00 --cpu-hour 0.05');
      const badTax = await pledger(['billing', 'settings', '--tax-rate', 'twenty'], { env: asAdmin });
      expect(badTax.exitCode).toBe(2);
    });
  });

  it('shows the documented billing settings, sets days before destroying and sets them back to never', async () => {
    const shown = await pledger(['billing', 'settings', '--json'], { env: asAlice });
    expect(shown.exitCode).toBe(0);
    expect(shown.json()).toEqual({ currency: 'EUR', decimals: 2, taxRateBasisPoints: 0, paymentTermsDays: 14, graceDays: 7, destroyAfterDays: null });
    const thirty = await pledger(['billing', 'settings', '--destroy-after-days', '30'], { env: asAdmin });
    expect(thirty.exitCode).toBe(0);
    expect(thirty.stdout).toMatch(/^destroy after: +30 days overdue$/m);
    const never = await pledger(['billing', 'settings', '--destroy-after-days', 'never'], { env: asAdmin });
    expect(never.stderr).toBe('');
    expect(never.exitCode).toBe(0);
    expect(never.stdout).toMatch(/^destroy after: +never$/m);
    expect((await pledger(['billing', 'settings', '--json'], { env: asAlice })).json()).toMatchObject({ destroyAfterDays: null });
    await expectUnchanged(async () => {
      const bad = await pledger(['billing', 'settings', '--destroy-after-days', 'soon'], { env: asAdmin });
      expect(bad.exitCode).toBe(2);
      expect(bad.stderr).toMatch(/expected a whole number of days/);
      const byUser = await pledger(['billing', 'settings', '--destroy-after-days', 'never'], { env: asAlice });
      expect(byUser.exitCode).toBe(3);
    });
  });

  it('refuses usage of an hour outside the instance\'s life, billing nothing for it and blocking no month', async () => {
    await expectUnchanged(async () => {
      // Long before, and the last hour that ended before it was requested by more than a node's clock may be off.
      for (const hour of ['2001-01-01T00:00:00.000Z', '2025-12-31T22:00:00.000Z']) {
        const refused = await nodeCall('POST', '/events', { events: [usageEvent(`usage-before-life-${hour.slice(0, 4)}`, hour)] });
        expect(refused.status).toBe(400);
        const body = (await refused.json()) as { error: { code: string; message: string } };
        expect(body.error).toMatchObject({ code: 'BAD_REQUEST' });
        expect(body.error.message).toBe(`usage event usage-before-life-${hour.slice(0, 4)}: the hour ${hour} is outside the life of instance ${web.id} (${web.createdAt} to now)`);
      }
    });
    // Nothing was recorded for them: the next test closes October, which an open month before it would block.
  });

  it('closes a month once, whatever the number of times it is asked', async () => {
    const closed = await pledger(['billing', 'close', '--period', '2026-10', '--json'], { env: asAdmin });
    expect(closed.exitCode).toBe(0);
    const result = closed.json<{ closed: boolean; invoices: InvoiceSummary[] }>();
    expect(result.closed).toBe(true);
    // 744.00 × 2/744 + 1.25 × 2
    expect(result.invoices).toMatchObject([{ account: 'alice', total: '4.50', outstanding: '4.50', status: 'open' }]);
    invoiceId = result.invoices[0]!.id;
    await expectUnchanged(async () => {
      const again = await pledger(['billing', 'close', '--period', '2026-10'], { env: asAdmin });
      expect(again.stdout).toMatch(/^2026-10 was closed at .*: 1 invoice\(s\)/);
    });
  });

  it('shows a customer their invoice as text, JSON and HTML', async () => {
    const text = await pledger(['billing', 'invoice', invoiceId], { env: asAlice });
    expect(text.stdout).toMatch(/web\s+2026-10\s+instance-hour\s+2\s+1\.25\s+2\.50/);
    expect(text.stdout).toMatch(/total:\s+4\.50 EUR/);
    expect((await pledger(['billing', 'invoice', invoiceId, '--json'], { env: asAlice })).json<InvoiceView>().lines).toHaveLength(2);
    const html = await pledger(['billing', 'invoice', invoiceId, '--html'], { env: asAlice });
    expect(html.stdout).toMatch(/^<!DOCTYPE html>/);
    expect(html.stdout).toContain(`<title>Invoice ${invoiceId}</title>`);
  });

  it('records a payment and shows the balance and the statement', async () => {
    await expectUnchanged(async () => {
      const tooMuch = await pledger(['billing', 'pay', invoiceId, '10'], { env: asAdmin });
      expect(tooMuch.exitCode).toBe(5);
      expect(tooMuch.stderr).toMatch(`error: invoice ${invoiceId} owes 4.50 EUR: 10 is more than that`);
    });
    const paid = await pledger(['billing', 'pay', invoiceId, '4', '--reference', 'wire 7'], { env: asAdmin });
    expect(paid.stdout).toBe(`paid 4.00 EUR on ${invoiceId}; outstanding 0.50 EUR`);
    expect((await pledger(['billing', 'balance', '--json'], { env: asAlice })).json<BalanceView>()).toMatchObject({ balance: '0.50', overdue: '0.00', hold: null });
    const statement = await pledger(['billing', 'statement'], { env: asAlice });
    expect(statement.stdout).toMatch(/payment\s+INV-2026-10-00001\s+-4\.00\s+0\.50/);
  });

  it('refuses to start anything of a customer held for non-payment, with exit code 8 and the invoice to pay', async () => {
    const { dueAt } = (await pledger(['billing', 'invoice', invoiceId, '--json'], { env: asAlice })).json<InvoiceView>();
    const dunning = await pledger(['billing', 'dunning', '--as-of', new Date(Date.parse(dueAt) + 8 * 86_400_000).toISOString(), '--json'], { env: asAdmin });
    expect(dunning.json()).toMatchObject({ held: ['alice'], instances: ['alice/web'] });
    expect((await pledger(['info', 'web', '--json'], { env: asAlice })).json<{ state: string }>().state).toBe('stopped');
    await expectUnchanged(async () => {
      const started = await pledger(['request', 'web', 'hello', '--state', 'started'], { env: asAlice });
      expect(started.exitCode).toBe(8);
      expect(started.stderr).toBe(
        `error: "web" cannot be started: the instances of alice are stopped until invoice ${invoiceId} is paid\n` +
          `hint: pay invoice ${invoiceId} (\`pledger billing invoice ${invoiceId}\` shows what it owes): the instances stopped for it start again then`,
      );
      const created = await pledger(['request', 'blog', 'hello'], { env: asAlice });
      expect(created.exitCode).toBe(8);
      expect(created.stderr).toMatch(/^error: "blog" cannot be created: /);
    });
    const paid = await pledger(['billing', 'pay', invoiceId, '0.50'], { env: asAdmin });
    expect(paid.stdout).toBe(`paid 0.50 EUR on ${invoiceId}; outstanding 0.00 EUR\nstarted again: web`);
    expect((await pledger(['info', 'web', '--json'], { env: asAlice })).json<{ state: string }>().state).toBe('started');
  });

  it('exports the month to a file that hledger accepts', async () => {
    const file = path.join(mkdtempSync(path.join(tmpdir(), 'pledger-cli-export-')), 'october.journal');
    const exported = await pledger(['billing', 'export', '--period', '2026-10', '--format', 'hledger', '--output', file], { env: asAdmin });
    expect(exported.exitCode).toBe(0);
    expect(readFileSync(file, 'utf8')).toContain(`(${invoiceId})`);
    execFileSync('hledger', ['check', '--strict', '-f', file], { stdio: 'pipe' });
    const csv = await pledger(['billing', 'export', '--period', '2026-10', '--format', 'csv'], { env: asAdmin });
    expect(csv.stdout.split('\n')[0]).toBe('date,transaction,kind,reference,description,account,currency,amount');
    const refused = await pledger(['billing', 'export', '--period', '2026-10', '--format', 'csv'], { env: asAlice });
    expect(refused.exitCode).toBe(3);
  });

  it('credits an invoice once its payments are reversed, and says so when asked again', async () => {
    await expectUnchanged(async () => {
      const byUser = await pledger(['billing', 'credit', invoiceId], { env: asAlice });
      expect(byUser.exitCode).toBe(3);
      const paid = await pledger(['billing', 'credit', invoiceId], { env: asAdmin });
      expect(paid.exitCode).toBe(5);
      expect(paid.stderr).toBe(
        `error: invoice ${invoiceId} has 4.50 EUR paid on it: a credit note reverses an unpaid invoice\nhint: reverse its payments first with \`pledger billing reverse-payment ID --reason TEXT\``,
      );
    });
    const { entries } = (await pledger(['billing', 'statement', '--json'], { env: asAlice })).json<{ entries: { kind: string; transaction: string }[] }>();
    for (const entry of entries.filter((e) => e.kind === 'payment')) {
      const reversed = await pledger(['billing', 'reverse-payment', entry.transaction.slice('payment:'.length), '--reason', 'sent back'], { env: asAdmin });
      expect(reversed.exitCode, reversed.stderr).toBe(0);
    }
    const credited = await pledger(['billing', 'credit', invoiceId, '--reason', 'goodwill'], { env: asAdmin });
    expect(credited.stdout).toBe(`credited ${invoiceId} to alice: 4.50 EUR taken off`);
    await expectUnchanged(async () => {
      const again = await pledger(['billing', 'credit', invoiceId], { env: asAdmin });
      expect(again.exitCode).toBe(0);
      expect(again.stdout).toMatch(new RegExp(`^${invoiceId} was credited already at \\S+: nothing changed$`));
    });
    expect((await pledger(['billing', 'invoices', '--json'], { env: asAlice })).json<InvoiceSummary[]>()).toMatchObject([{ id: invoiceId, status: 'credited', outstanding: '0.00' }]);
    expect((await pledger(['billing', 'balance', '--json'], { env: asAlice })).json<BalanceView>()).toMatchObject({ balance: '0.00' });
    const file = path.join(mkdtempSync(path.join(tmpdir(), 'pledger-cli-credit-')), 'now.journal');
    await pledger(['billing', 'export', '--period', new Date().toISOString().slice(0, 7), '--format', 'hledger', '--output', file], { env: asAdmin });
    expect(readFileSync(file, 'utf8')).toContain(`(${invoiceId}) Credit note for ${invoiceId} to alice: goodwill`);
    execFileSync('hledger', ['check', '--strict', '-f', file], { stdio: 'pipe' });
  });

  it('rebuilds the projections from the movements, leaving invoices and balances as they were', async () => {
    const before = (await pledger(['billing', 'balance', '--json'], { env: asAlice })).stdout;
    const invoice = (await pledger(['billing', 'invoice', invoiceId, '--json'], { env: asAlice })).stdout;
    const rebuilt = await pledger(['master', 'rebuild', '--database', db.url, '--json']);
    expect(rebuilt.exitCode).toBe(0);
    expect(rebuilt.json<{ replayed: number }>().replayed).toBe(countMovements(db.url));
    expect((await pledger(['billing', 'balance', '--json'], { env: asAlice })).stdout).toBe(before);
    expect((await pledger(['billing', 'invoice', invoiceId, '--json'], { env: asAlice })).stdout).toBe(invoice);
    expect((await pledger(['info', 'web', '--json'], { env: asAlice })).json<{ state: string }>().state).toBe('started');
  });
});
