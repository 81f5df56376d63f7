/**
 * The billing movements and their projections: settings, price lists, invoices,
 * payments, holds for non-payment, and the double-entry journal.
 *
 * `billing` below is their projection, registered with the others in
 * master/ledger/appliers.ts. Invoices, payments and the journal are
 * append-only (the database refuses UPDATE and DELETE on them), so their inserts ignore
 * a row that is already there: replaying the movements to rebuild the projections
 * meets them again and leaves them as they are.
 */
import type { Kysely, Transaction } from 'kysely';
import { PledgerError } from '../../protocol/errors.js';
import type { Tables } from '../db/tables.js';
import { NO_LOCKS, type Projection } from '../ledger/applier.js';
import { locks, type LockKey } from '../ledger/locks.js';
import { readJson } from '../db/json-columns.js';
type Db = Kysely<Tables> | Transaction<Tables>;


export interface Posting {
  account: string;
  currency: string;
  /** Minor units, as a decimal string: movement data is JSON, which has no bigint. */
  amount: string;
}

export interface JournalTransaction {
  id: string;
  /** When it happened, an ISO timestamp: it orders statements; exports print its day. */
  date: string;
  period: string;
  kind: 'invoice' | 'payment' | 'reversal' | 'credit';
  reference: string;
  description: string;
  reverses: string | null;
  postings: Posting[];
}

export interface BillingSettings {
  /** ISO 4217 code of the operator's currency. */
  currency: string;
  /** Minor digits of the currency: 2 for EUR, 0 for JPY. */
  decimals: number;
  /** Tax on invoices in basis points: 2000 is 20 %. 0 posts no tax. */
  taxRateBasisPoints: number;
  /** Days from issue to due date. */
  paymentTermsDays: number;
  /** Days past due before the customer's instances are stopped. */
  graceDays: number;
  /** Days past due before they are destroyed; null never destroys. */
  destroyAfterDays: number | null;
}

export const DEFAULT_SETTINGS: BillingSettings = {
  currency: 'EUR',
  decimals: 2,
  taxRateBasisPoints: 0,
  paymentTermsDays: 14,
  graceDays: 7,
  destroyAfterDays: null,
};

export const RESOURCES = ['instance-month', 'instance-hour', 'cpu-hour', 'memory-gib-hour', 'disk-gib-month'] as const;
export type Resource = (typeof RESOURCES)[number];
export type PriceAmounts = Record<Resource, string>;

export interface InvoiceLineData {
  instanceId: string;
  instanceTitle: string;
  softwareId: string;
  softwareType: string;
  usageMonth: string;
  resource: Resource;
  quantity: string;
  unit: string;
  unitPrice: string;
  amount: string;
}

export interface InvoiceData {
  invoiceId: string;
  ownerId: string;
  period: string;
  currency: string;
  subtotal: string;
  tax: string;
  total: string;
  taxRateBasisPoints: number;
  issuedAt: string;
  dueAt: string;
  lines: InvoiceLineData[];
  transaction: JournalTransaction | null;
}

export type BillingMovement =
  | { kind: 'billing.configured'; data: { settings: BillingSettings } }
  | { kind: 'price.set'; data: { softwareName: string; softwareType: string; validFrom: string; currency: string; prices: PriceAmounts } }
  | { kind: 'invoice.issued'; data: InvoiceData }
  /** Marks every usage hour before `until` not billed yet as billed by `period`. */
  | { kind: 'billing.closed'; data: { period: string; until: string; invoices: number } }
  | {
      kind: 'payment.recorded';
      data: { paymentId: string; invoiceId: string; amount: string; currency: string; reference: string; transaction: JournalTransaction };
    }
  /** A payment recorded by mistake: a negative payment and the journal entry that reverses the original. */
  | {
      kind: 'payment.reversed';
      data: { paymentId: string; reversalId: string; invoiceId: string; amount: string; currency: string; reference: string; transaction: JournalTransaction };
    }
  /**
   * A credit note: the invoice reversed whole, by a journal entry dated when it was
   * issued (`transaction` null for an invoice of nothing, which posted nothing).
   */
  | {
      kind: 'invoice.credited';
      data: { invoiceId: string; ownerId: string; amount: string; currency: string; reason: string; transaction: JournalTransaction | null };
    }
  | { kind: 'billing.held'; data: { accountId: string; invoiceId: string; reason: string; instanceIds: string[] } }
  | { kind: 'billing.destroyed'; data: { accountId: string; invoiceId: string; reason: string; instanceIds: string[] } }
  | { kind: 'billing.released'; data: { accountId: string; reason: string } }
  /** On the instance's own history, so that its owner sees why it was stopped or started. */
  | { kind: 'instance.held' | 'instance.released'; data: { instanceId: string; reason: string } };

/** The mutable billing projections, emptied before a rebuild. */
export const BILLING_PROJECTIONS = ['billing_settings', 'prices', 'billing_holds'] as const;

/** Refuses a transaction whose postings do not sum to zero in every currency. */
export function assertBalanced(transaction: JournalTransaction): void {
  if (transaction.postings.length < 2) throw new PledgerError('INTERNAL', `journal transaction ${transaction.id} has fewer than two postings`);
  const sums = new Map<string, bigint>();
  for (const p of transaction.postings) sums.set(p.currency, (sums.get(p.currency) ?? 0n) + BigInt(p.amount));
  for (const [currency, sum] of sums) {
    if (sum !== 0n) throw new PledgerError('INTERNAL', `journal transaction ${transaction.id} does not balance: ${currency} sums to ${sum}`);
  }
}

/** Rows per statement: under the bound-parameter limits of both engines for these tables. */
const ROWS_PER_STATEMENT = 1000;

async function insertChunked<T>(rows: T[], insert: (chunk: T[]) => Promise<unknown>): Promise<void> {
  for (let start = 0; start < rows.length; start += ROWS_PER_STATEMENT) await insert(rows.slice(start, start + ROWS_PER_STATEMENT));
}

async function insertTransaction(db: Db, transaction: JournalTransaction): Promise<void> {
  await insertTransactions(db, [transaction]);
}

/** Checks that each transaction balances, then inserts those not recorded yet with their postings. */
async function insertTransactions(db: Db, transactions: JournalTransaction[]): Promise<void> {
  for (const t of transactions) assertBalanced(t);
  const fresh = new Set<string>();
  await insertChunked(transactions, async (chunk) => {
    const inserted = await db
      .insertInto('journal_transactions')
      .values(chunk.map((t) => ({ id: t.id, date: t.date, period: t.period, kind: t.kind, reference: t.reference, description: t.description, reverses: t.reverses })))
      .onConflict((oc) => oc.column('id').doNothing())
      .returning('id')
      .execute();
    for (const r of inserted) fresh.add(r.id);
  });
  const postings = transactions
    .filter((t) => fresh.has(t.id))
    .flatMap((t) => t.postings.map((p, i) => ({ transaction_id: t.id, line: i + 1, account: p.account, currency: p.currency, amount: p.amount })));
  await insertChunked(postings, (chunk) => db.insertInto('journal_postings').values(chunk).execute());
}

/**
 * Applies `invoice.issued` movements, several to a statement: closing a month for
 * thousands of customers must not cost a round trip per row.
 */
export async function applyIssuedInvoices(db: Db, invoices: InvoiceData[]): Promise<void> {
  for (const d of invoices) {
    const lineSum = d.lines.reduce((sum, l) => sum + BigInt(l.amount), 0n);
    if (lineSum !== BigInt(d.subtotal) || lineSum + BigInt(d.tax) !== BigInt(d.total)) {
      throw new PledgerError('INTERNAL', `invoice ${d.invoiceId}: its lines do not add up to its total`);
    }
  }
  const fresh = new Set<string>();
  await insertChunked(invoices, async (chunk) => {
    const inserted = await db
      .insertInto('invoices')
      .values(
        chunk.map((d) => ({
          id: d.invoiceId,
          owner_id: d.ownerId,
          period: d.period,
          currency: d.currency,
          subtotal: d.subtotal,
          tax: d.tax,
          total: d.total,
          tax_rate_basis_points: d.taxRateBasisPoints,
          issued_at: d.issuedAt,
          due_at: d.dueAt,
        })),
      )
      .onConflict((oc) => oc.column('id').doNothing())
      .returning('id')
      .execute();
    for (const r of inserted) fresh.add(r.id);
  });
  const issued = invoices.filter((d) => fresh.has(d.invoiceId));
  const lines = issued.flatMap((d) =>
    d.lines.map((l, i) => ({
      invoice_id: d.invoiceId,
      line: i + 1,
      instance_id: l.instanceId,
      instance_title: l.instanceTitle,
      software_id: l.softwareId,
      software_type: l.softwareType,
      usage_month: l.usageMonth,
      resource: l.resource,
      quantity: l.quantity,
      unit: l.unit,
      unit_price: l.unitPrice,
      amount: l.amount,
    })),
  );
  await insertChunked(lines, (chunk) => db.insertInto('invoice_lines').values(chunk).execute());
  await insertTransactions(db, issued.flatMap((d) => (d.transaction ? [d.transaction] : [])));
}

const invoiceLock = (d: { invoiceId: string }): LockKey[] => [locks.invoice(d.invoiceId)];
const accountLock = (d: { accountId: string }): LockKey[] => [locks.account(d.accountId)];

async function applyPayment(db: Db, d: { invoiceId: string; amount: string; currency: string; reference: string; transaction: JournalTransaction }, id: string, at: string): Promise<void> {
  await db
    .insertInto('payments')
    .values({ id, invoice_id: d.invoiceId, amount: d.amount, currency: d.currency, paid_at: at, reference: d.reference })
    .onConflict((oc) => oc.column('id').doNothing())
    .execute();
  await insertTransaction(db, d.transaction);
}

/**
 * The billing projections. Money on an invoice (payments, reversals, a credit note) is
 * decided under the invoice's lock; holds under the account's; a month's close and the
 * invoices it issues hold the whole ledger back (close.ts).
 */
export const billing: Projection<BillingMovement['kind']> = {
  tables: BILLING_PROJECTIONS,
  appliers: {
    'billing.configured': {
      locks: NO_LOCKS,
      apply: async (db, { settings }) => {
        for (const [key, value] of Object.entries(settings)) {
          const text = JSON.stringify(value);
          await db
            .insertInto('billing_settings')
            .values({ key, value: text })
            .onConflict((oc) => oc.column('key').doUpdateSet({ value: text }))
            .execute();
        }
      },
    },
    'price.set': {
      locks: NO_LOCKS,
      apply: async (db, d, at) => {
        const values = {
          currency: d.currency,
          instance_month: d.prices['instance-month'],
          instance_hour: d.prices['instance-hour'],
          cpu_hour: d.prices['cpu-hour'],
          memory_gib_hour: d.prices['memory-gib-hour'],
          disk_gib_month: d.prices['disk-gib-month'],
          set_at: at,
        };
        await db
          .insertInto('prices')
          .values({ software_name: d.softwareName, software_type: d.softwareType, valid_from: d.validFrom, ...values })
          .onConflict((oc) => oc.columns(['software_name', 'software_type', 'valid_from']).doUpdateSet(values))
          .execute();
      },
    },
    'invoice.issued': {
      locks: invoiceLock,
      apply: (db, d) => applyIssuedInvoices(db, [d]),
      applyMany: (db, movements) => applyIssuedInvoices(db, movements.map((m) => m.data)),
    },
    'billing.closed': {
      locks: NO_LOCKS,
      apply: async (db, { period, until, invoices }, at) => {
        await db
          .insertInto('billing_periods')
          .values({ period, closed_at: at, invoices })
          .onConflict((oc) => oc.column('period').doNothing())
          .execute();
        await db.updateTable('usage_hours').set({ billed_period: period }).where('billed_period', 'is', null).where('hour', '<', until).execute();
      },
    },
    'payment.recorded': { locks: invoiceLock, apply: (db, d, at) => applyPayment(db, d, d.paymentId, at) },
    'payment.reversed': { locks: invoiceLock, apply: (db, d, at) => applyPayment(db, d, d.reversalId, at) },
    'invoice.credited': {
      locks: invoiceLock,
      apply: async (db, d, at) => {
        await db
          .insertInto('credit_notes')
          .values({ invoice_id: d.invoiceId, amount: d.amount, currency: d.currency, reason: d.reason, credited_at: at })
          .onConflict((oc) => oc.column('invoice_id').doNothing())
          .execute();
        if (d.transaction) await insertTransaction(db, d.transaction);
      },
    },
    'billing.held': {
      locks: accountLock,
      apply: async (db, d, at) => {
        await db
          .insertInto('billing_holds')
          .values({ account_id: d.accountId, invoice_id: d.invoiceId, reason: d.reason, since: at, instances: JSON.stringify(d.instanceIds), destroyed: 0 })
          .onConflict((oc) => oc.column('account_id').doNothing())
          .execute();
      },
    },
    'billing.destroyed': {
      locks: accountLock,
      apply: async (db, d) => {
        await db.updateTable('billing_holds').set({ destroyed: 1 }).where('account_id', '=', d.accountId).execute();
      },
    },
    'billing.released': {
      locks: accountLock,
      apply: async (db, d) => {
        await db.deleteFrom('billing_holds').where('account_id', '=', d.accountId).execute();
      },
    },
    // History only: the stop or start itself is an ordinary instance request.
    'instance.held': { locks: NO_LOCKS, apply: async () => {} },
    'instance.released': { locks: NO_LOCKS, apply: async () => {} },
  },
};

/** The billing settings in force: the defaults, overridden by what the operator configured. */
export async function loadSettings(db: Db): Promise<BillingSettings> {
  const rows = await db.selectFrom('billing_settings').selectAll().execute();
  const settings: Record<string, unknown> = { ...DEFAULT_SETTINGS };
  for (const row of rows) settings[row.key] = readJson('value', row.value);
  return settings as unknown as BillingSettings;
}
