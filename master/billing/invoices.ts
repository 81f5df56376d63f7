/**
 * Reading invoices, recording payments, balances and statements. A customer reads only
 * their own; an operator reads anyone's and records payments.
 */
import { createHash, randomUUID } from 'node:crypto';
import type { Kysely } from 'kysely';
import type { BalanceView, BillingResource, CreditNoteView, InvoiceSummary, InvoiceView, PaymentCreate, PaymentView, StatementView } from '../../protocol/api.js';
import { PledgerError } from '../../protocol/errors.js';
import type { AccountRow } from '../accounts.js';
import { writeTransaction } from '../db/group-commit.js';
import type { Tables } from '../db/tables.js';
import { lock, locks } from '../ledger/locks.js';
import { record } from '../ledger/movements.js';
import { BANK_ACCOUNT, receivableAccount } from './accounts.js';
import { unitFraction } from './close.js';
import { loadSettings, type BillingSettings, type JournalTransaction } from './journal.js';
import { exact, exactSum, formatAmount, formatPrice, formatQuotient, int, parseAmount } from './money.js';

/** The account a request is about: the caller's own, or for an operator the one named. */
export async function subjectAccount(db: Kysely<Tables>, caller: AccountRow, name: string | undefined): Promise<AccountRow> {
  if (name === undefined || name === caller.name) return caller;
  if (caller.role !== 'admin') throw new PledgerError('FORBIDDEN', 'only an operator may read the billing of another account');
  const account = await db.selectFrom('accounts').selectAll().where('name', '=', name).executeTakeFirst();
  if (!account) throw new PledgerError('ACCOUNT_NOT_FOUND', `no account named "${name}"`);
  return account;
}

type InvoiceRow = Awaited<ReturnType<typeof invoiceRows>>[number];

function invoiceRows(db: Kysely<Tables>, filter: { ownerId?: string; period?: string; id?: string }) {
  let query = db
    .selectFrom('invoices as v')
    .innerJoin('accounts as a', 'a.id', 'v.owner_id')
    .select(['v.id', 'v.owner_id', 'v.period', 'v.currency', 'v.tax_rate_basis_points', 'v.issued_at', 'v.due_at'])
    .select([exact('v.subtotal').as('subtotal'), exact('v.tax').as('tax'), exact('v.total').as('total')])
    .select('a.name as account_name')
    .select((eb) =>
      eb
        .selectFrom('payments as p')
        .select(exactSum('p.amount').as('paid'))
        .whereRef('p.invoice_id', '=', 'v.id')
        .as('paid'),
    )
    .select((eb) => eb.selectFrom('credit_notes as c').select(exact('c.amount').as('credited')).whereRef('c.invoice_id', '=', 'v.id').as('credited'));
  if (filter.ownerId !== undefined) query = query.where('v.owner_id', '=', filter.ownerId);
  if (filter.period !== undefined) query = query.where('v.period', '=', filter.period);
  if (filter.id !== undefined) query = query.where('v.id', '=', filter.id);
  return query.orderBy('v.id').execute();
}

/** What an invoice still owes: its total, less what was paid and what a credit note took off. */
function owed(row: InvoiceRow): bigint {
  return int(row.total) - int(row.paid) - int(row.credited);
}

function summary(row: InvoiceRow, settings: BillingSettings, now: Date): InvoiceSummary {
  const paid = int(row.paid);
  const outstanding = owed(row);
  const status = row.credited !== null ? 'credited' : outstanding <= 0n ? 'paid' : Date.parse(row.due_at) < now.getTime() ? 'overdue' : 'open';
  const money = (v: bigint) => formatAmount(v, settings.decimals);
  return {
    id: row.id,
    account: row.account_name,
    period: row.period,
    currency: row.currency,
    subtotal: money(int(row.subtotal)),
    taxRateBasisPoints: row.tax_rate_basis_points,
    tax: money(int(row.tax)),
    total: money(int(row.total)),
    paid: money(paid),
    credited: money(int(row.credited)),
    outstanding: money(outstanding),
    status,
    issuedAt: row.issued_at,
    dueAt: row.due_at,
  };
}

export async function listInvoices(db: Kysely<Tables>, filter: { ownerId?: string; period?: string }, now = new Date()): Promise<InvoiceSummary[]> {
  const settings = await loadSettings(db);
  return (await invoiceRows(db, filter)).map((r) => summary(r, settings, now));
}

/** One invoice with its lines; another customer's is as absent as one that does not exist. */
export async function getInvoice(db: Kysely<Tables>, caller: AccountRow, id: string, now = new Date()): Promise<InvoiceView> {
  const [row] = await invoiceRows(db, { id, ...(caller.role === 'admin' ? {} : { ownerId: caller.id }) });
  if (!row) throw new PledgerError('NOT_FOUND', `no invoice ${id}`, { hint: 'list your invoices with `pledger billing invoices`' });
  const settings = await loadSettings(db);
  const lines = await db
    .selectFrom('invoice_lines')
    .select(['instance_title', 'software_id', 'software_type', 'usage_month', 'resource', exact('quantity').as('quantity'), exact('unit_price').as('unit_price'), exact('amount').as('amount')])
    .where('invoice_id', '=', id)
    .orderBy('line')
    .execute();
  return {
    ...summary(row, settings, now),
    lines: lines.map((l) => {
      const resource = l.resource as BillingResource;
      const { numerator, denominator } = unitFraction(resource, int(l.quantity), l.usage_month);
      return {
        instance: l.instance_title,
        software: l.software_id,
        softwareType: l.software_type,
        usageMonth: l.usage_month,
        resource,
        quantity: formatQuotient(numerator, denominator, 6),
        unitPrice: formatPrice(int(l.unit_price), settings.decimals),
        amount: formatAmount(int(l.amount), settings.decimals),
      };
    }),
  };
}

/**
 * The id of the payment an idempotency key names: the same key always names the same
 * payment, so a request sent again (after a timeout, by a retrying client) records
 * nothing new.
 */
function paymentIdFor(idempotencyKey: string | undefined): string {
  if (idempotencyKey === undefined) return randomUUID();
  const hex = createHash('sha256').update(`payment\n${idempotencyKey}`).digest('hex');
  // Shaped as the random ids are (a version-4-like UUID), so that every payment id looks alike.
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-8${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}

/**
 * Records a payment against an invoice: cash in the bank, the customer's receivable
 * down. A payment larger than what the invoice still owes is refused. Decided under the
 * invoice's lock: two payments of what it owes, at once, are one payment and a refusal.
 *
 * With an idempotency key, the same key again answers the payment it recorded first,
 * and records nothing; the same key for another invoice or amount is refused.
 */
export async function recordPayment(
  db: Kysely<Tables>,
  input: PaymentCreate,
  actor: string,
  idempotencyKey?: string,
): Promise<Omit<PaymentView, 'restarted'> & { ownerId: string }> {
  const paymentId = paymentIdFor(idempotencyKey);
  return writeTransaction(db, async (trx) => {
    await lock(trx, locks.invoice(input.invoice));
    const paidAt = new Date().toISOString();
    const settings = await loadSettings(trx);
    const [row] = await invoiceRows(trx, { id: input.invoice });
    if (!row) throw new PledgerError('NOT_FOUND', `no invoice ${input.invoice}`);
    const amount = parseAmount(input.amount, settings.decimals);
    const answerRecorded = async () => {
      const first = await trx.selectFrom('payments').select(['invoice_id', 'paid_at', 'reference', 'currency', exact('amount').as('amount')]).where('id', '=', paymentId).executeTakeFirst();
      if (!first) return undefined;
      if (first.invoice_id !== row.id || int(first.amount) !== amount || (input.reference !== undefined && input.reference !== first.reference)) {
        throw new PledgerError('CONFLICT', `the idempotency key ${JSON.stringify(idempotencyKey)} was used for another payment (${formatAmount(int(first.amount), settings.decimals)} ${first.currency} on ${first.invoice_id})`, {
          hint: 'give each payment its own key, and the same key only when sending the same payment again',
        });
      }
      // What the invoice owed just after it, as the first answer said.
      const { paidBefore } = await trx
        .selectFrom('payments')
        .select(exactSum('amount').as('paidBefore'))
        .where('invoice_id', '=', row.id)
        .where((eb) => eb.or([eb('paid_at', '<', first.paid_at), eb.and([eb('paid_at', '=', first.paid_at), eb('id', '<=', paymentId)])]))
        .executeTakeFirstOrThrow();
      return {
        id: paymentId,
        invoice: row.id,
        amount: formatAmount(amount, settings.decimals),
        currency: first.currency,
        paidAt: first.paid_at,
        reference: first.reference,
        outstanding: formatAmount(int(row.total) - int(paidBefore) - int(row.credited), settings.decimals),
        ownerId: row.owner_id,
      };
    };
    if (idempotencyKey !== undefined) {
      const answered = await answerRecorded();
      if (answered) return answered;
    }
    if (row.credited !== null) throw new PledgerError('CONFLICT', `invoice ${row.id} is credited: nothing is owed on it`, { hint: 'record the payment against the invoice it belongs to' });
    const outstanding = owed(row);
    if (amount <= 0n) throw new PledgerError('BAD_REQUEST', 'a payment must be more than zero', { hint: 'a refund is a reversal: see the billing documentation' });
    if (amount > outstanding) {
      throw new PledgerError('CONFLICT', `invoice ${row.id} owes ${formatAmount(outstanding, settings.decimals)} ${row.currency}: ${input.amount} is more than that`);
    }
    const reference = input.reference ?? paymentId;
    const recorded = await record(
      trx,
      {
        kind: 'payment.recorded',
        data: {
          paymentId,
          invoiceId: row.id,
          amount: amount.toString(),
          currency: row.currency,
          reference,
          transaction: {
            id: `payment:${paymentId}`,
            date: paidAt,
            period: paidAt.slice(0, 7),
            kind: 'payment',
            reference: row.id,
            description: `Payment ${reference} from ${row.account_name} for ${row.id}`,
            reverses: null,
            postings: [
              { account: BANK_ACCOUNT, currency: row.currency, amount: amount.toString() },
              { account: receivableAccount(row.account_name), currency: row.currency, amount: (-amount).toString() },
            ],
          },
        },
      },
      { id: `payment:${paymentId}`, actor, subject: row.owner_id, at: paidAt },
    );
    // The same key sent for another invoice at the same moment: that one recorded it first.
    if (!recorded) return (await answerRecorded())!;
    return {
      id: paymentId,
      invoice: row.id,
      amount: formatAmount(amount, settings.decimals),
      currency: row.currency,
      paidAt,
      reference,
      outstanding: formatAmount(outstanding - amount, settings.decimals),
      ownerId: row.owner_id,
    };
  });
}

/**
 * Reverses a payment recorded by mistake: nothing is edited; a negative payment and a
 * journal entry with the opposite postings are added, and the invoice owes that much again.
 */
export async function reversePayment(db: Kysely<Tables>, paymentId: string, reason: string, actor: string): Promise<Omit<PaymentView, 'restarted'>> {
  const reversedAt = new Date().toISOString();
  const reversalId = `reversal-of-${paymentId}`;
  return writeTransaction(db, async (trx) => {
    const settings = await loadSettings(trx);
    const found = await trx.selectFrom('payments').select('invoice_id').where('id', '=', paymentId).executeTakeFirst();
    if (found) await lock(trx, locks.invoice(found.invoice_id));
    const payment = await trx.selectFrom('payments').selectAll().where('id', '=', paymentId).executeTakeFirst();
    if (!payment || int(payment.amount) <= 0n) throw new PledgerError('NOT_FOUND', `no payment ${paymentId}`, { hint: 'payment ids are in `pledger billing statement --json`' });
    if (await trx.selectFrom('payments').select('id').where('id', '=', reversalId).executeTakeFirst()) {
      throw new PledgerError('CONFLICT', `payment ${paymentId} is reversed already`);
    }
    const [invoice] = await invoiceRows(trx, { id: payment.invoice_id });
    const amount = int(payment.amount);
    const reference = `reversal of ${payment.reference}: ${reason}`;
    await record(
      trx,
      {
        kind: 'payment.reversed',
        data: {
          paymentId,
          reversalId,
          invoiceId: payment.invoice_id,
          amount: (-amount).toString(),
          currency: payment.currency,
          reference,
          transaction: {
            id: `payment:${reversalId}`,
            date: reversedAt,
            period: reversedAt.slice(0, 7),
            kind: 'reversal',
            reference: payment.invoice_id,
            description: `Reversal of payment ${payment.reference} for ${payment.invoice_id}: ${reason}`,
            reverses: `payment:${paymentId}`,
            postings: [
              { account: BANK_ACCOUNT, currency: payment.currency, amount: (-amount).toString() },
              { account: receivableAccount(invoice!.account_name), currency: payment.currency, amount: amount.toString() },
            ],
          },
        },
      },
      { id: `payment:${reversalId}`, actor, subject: invoice!.owner_id, at: reversedAt },
    );
    return {
      id: reversalId,
      invoice: payment.invoice_id,
      amount: formatAmount(-amount, settings.decimals),
      currency: payment.currency,
      paidAt: reversedAt,
      reference,
      outstanding: formatAmount(owed(invoice!) + amount, settings.decimals),
    };
  });
}

/**
 * A credit note: reverses an issued invoice whole, with a new journal entry dated now
 * that has the invoice's postings negated (the closed period is never edited), and
 * marks the invoice credited. Crediting it again changes nothing and answers the credit
 * note it has. An invoice with payments on it is refused: reverse them first, so that
 * a credit never leaves money owed back to the customer unaccounted.
 */
export async function creditInvoice(db: Kysely<Tables>, invoiceId: string, reason: string | undefined, actor: string): Promise<Omit<CreditNoteView, 'restarted'> & { ownerId: string }> {
  const creditedAt = new Date().toISOString();
  return writeTransaction(db, async (trx) => {
    await lock(trx, locks.invoice(invoiceId));
    const settings = await loadSettings(trx);
    const [row] = await invoiceRows(trx, { id: invoiceId });
    if (!row) throw new PledgerError('NOT_FOUND', `no invoice ${invoiceId}`, { hint: 'list the invoices with `pledger billing invoices`' });
    const existing = async (credited: boolean) => {
      const note = await trx.selectFrom('credit_notes').select(['currency', 'reason', 'credited_at', exact('amount').as('amount')]).where('invoice_id', '=', row.id).executeTakeFirstOrThrow();
      return {
        invoice: row.id,
        account: row.account_name,
        amount: formatAmount(int(note.amount), settings.decimals),
        currency: note.currency,
        reason: note.reason,
        creditedAt: note.credited_at,
        credited,
        ownerId: row.owner_id,
      };
    };
    if (row.credited !== null) return existing(false);
    const paid = int(row.paid);
    if (paid !== 0n) {
      throw new PledgerError('CONFLICT', `invoice ${row.id} has ${formatAmount(paid, settings.decimals)} ${row.currency} paid on it: a credit note reverses an unpaid invoice`, {
        hint: 'reverse its payments first with `pledger billing reverse-payment ID --reason TEXT`',
      });
    }
    const postings = await trx
      .selectFrom('journal_postings')
      .select(['account', 'currency', exact('amount').as('amount')])
      .where('transaction_id', '=', `invoice:${row.id}`)
      .orderBy('line')
      .execute();
    const note = reason ?? '';
    const transaction: JournalTransaction | null =
      postings.length === 0
        ? null
        : {
            id: `credit:${row.id}`,
            date: creditedAt,
            period: creditedAt.slice(0, 7),
            kind: 'credit',
            reference: row.id,
            description: `Credit note for ${row.id} to ${row.account_name}${note ? `: ${note}` : ''}`,
            reverses: `invoice:${row.id}`,
            postings: postings.map((p) => ({ account: p.account, currency: p.currency, amount: (-int(p.amount)).toString() })),
          };
    const recorded = await record(
      trx,
      { kind: 'invoice.credited', data: { invoiceId: row.id, ownerId: row.owner_id, amount: int(row.total).toString(), currency: row.currency, reason: note, transaction } },
      { id: `credit:${row.id}`, actor, subject: row.owner_id, at: creditedAt },
    );
    return existing(recorded);
  });
}

/** What an account owes, how much of it is overdue, and whether its instances are held. */
export async function balance(db: Kysely<Tables>, account: AccountRow, now = new Date()): Promise<BalanceView> {
  const settings = await loadSettings(db);
  const invoices = await invoiceRows(db, { ownerId: account.id });
  let total = 0n;
  let overdue = 0n;
  for (const row of invoices) {
    const outstanding = owed(row);
    total += outstanding;
    if (outstanding > 0n && Date.parse(row.due_at) < now.getTime()) overdue += outstanding;
  }
  const hold = await db.selectFrom('billing_holds').selectAll().where('account_id', '=', account.id).executeTakeFirst();
  return {
    account: account.name,
    currency: settings.currency,
    balance: formatAmount(total, settings.decimals),
    overdue: formatAmount(overdue, settings.decimals),
    hold: hold ? { invoice: hold.invoice_id, reason: hold.reason, since: hold.since, destroyed: hold.destroyed === 1 } : null,
  };
}

/** Every journal entry on the account's receivable, oldest first, with the running balance. */
export async function statement(db: Kysely<Tables>, account: AccountRow): Promise<StatementView> {
  const settings = await loadSettings(db);
  const rows = await db
    .selectFrom('journal_postings as p')
    .innerJoin('journal_transactions as t', 't.id', 'p.transaction_id')
    .select(['t.id', 't.date', 't.kind', 't.reference', 't.description', exact('p.amount').as('amount')])
    .where('p.account', '=', receivableAccount(account.name))
    .orderBy('t.date')
    .orderBy('t.id')
    .execute();
  let running = 0n;
  const entries = rows.map((r) => {
    running += int(r.amount);
    return {
      date: r.date.slice(0, 10),
      transaction: r.id,
      kind: r.kind,
      reference: r.reference,
      description: r.description,
      amount: formatAmount(int(r.amount), settings.decimals),
      balance: formatAmount(running, settings.decimals),
    };
  });
  return { account: account.name, currency: settings.currency, balance: formatAmount(running, settings.decimals), entries };
}
