/**
 * The billing API: settings, price lists, closing periods, invoices, credit notes,
 * payments, balances, statements, dunning and exports. Operators manage prices, close
 * periods, credit invoices, record payments and export; every account reads its own invoices, balance and
 * statement, and nobody else's.
 */
import { Readable } from 'node:stream';
import type { FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import {
  BalanceView,
  BillingAccountQuery,
  BillingClose,
  BillingCloseResult,
  BillingSettingsUpdate,
  BillingSettingsView,
  CreditNoteCreate,
  CreditNoteView,
  DunningResult,
  DunningRun,
  ExportQuery,
  InvoiceId,
  InvoiceListQuery,
  InvoiceSummary,
  InvoiceView,
  OneLineText,
  PaymentCreate,
  PaymentView,
  PriceList,
  PriceListSet,
  StatementView,
} from '../../protocol/api.js';
import { PledgerError } from '../../protocol/errors.js';
import type { App } from '../app.js';
import { closePeriod } from '../billing/close.js';
import { releaseIfSettled, runDunning } from '../billing/dunning.js';
import { exportJournal, EXPORT_CONTENT_TYPES } from '../billing/export.js';
import { renderInvoice } from '../billing/html.js';
import { balance, creditInvoice, getInvoice, listInvoices, recordPayment, reversePayment, statement, subjectAccount } from '../billing/invoices.js';
import { loadSettings } from '../billing/journal.js';
import { listPrices, setPrice } from '../billing/prices.js';
import type { Database } from '../db/database.js';
import { writeTransaction } from '../db/group-commit.js';
import { record } from '../ledger/movements.js';

function requireAdmin(request: FastifyRequest): void {
  if (request.account.role !== 'admin') throw new PledgerError('FORBIDDEN', 'only an operator (admin account) may do this');
}

const actor = (request: FastifyRequest) => `account:${request.account.name}`;
const InvoiceParams = Type.Object({ id: InvoiceId });
const PaymentParams = Type.Object({ id: Type.String({ pattern: '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' }) });
const PaymentReversal = Type.Object({ reason: OneLineText(200) }, { additionalProperties: false });

/**
 * A payment's idempotency key: the same key sent again answers the payment it recorded
 * first (printable ASCII, as HTTP headers carry it).
 */
const PaymentHeaders = Type.Object({ 'idempotency-key': Type.Optional(Type.String({ minLength: 1, maxLength: 200, pattern: '^[\\x21-\\x7e]+$' })) });

export async function billingRoutes(app: App, database: Database): Promise<void> {
  const { db } = database;

  app.get('/billing/settings', { schema: { response: { 200: BillingSettingsView } } }, async () => loadSettings(db));
  app.put('/billing/settings', { schema: { body: BillingSettingsUpdate, response: { 200: BillingSettingsView } } }, async (request) => {
    requireAdmin(request);
    await writeTransaction(db, async (trx) => {
      const current = await loadSettings(trx);
      const next = { ...current, ...request.body };
      const moneyChanged = next.currency !== current.currency || next.decimals !== current.decimals;
      if (moneyChanged) {
        const used = (await trx.selectFrom('prices').select('software_name').executeTakeFirst()) ?? (await trx.selectFrom('invoices').select('id').executeTakeFirst());
        if (used) throw new PledgerError('CONFLICT', 'the currency and its decimals cannot change once prices or invoices exist');
      }
      await record(trx, { kind: 'billing.configured', data: { settings: next } }, { actor: actor(request), subject: 'billing' });
    });
    return loadSettings(db);
  });

  app.get('/billing/prices', { schema: { response: { 200: Type.Array(PriceList) } } }, async () => listPrices(db));
  app.put('/billing/prices', { schema: { body: PriceListSet, response: { 200: PriceList } } }, async (request) => {
    requireAdmin(request);
    return setPrice(db, request.body, actor(request));
  });

  app.post('/billing/close', { schema: { body: BillingClose, response: { 200: BillingCloseResult } } }, async (request) => {
    requireAdmin(request);
    const outcome = await closePeriod(database, request.body.period, actor(request));
    const invoices = await listInvoices(db, { period: outcome.period });
    return { period: outcome.period, closed: outcome.closed, closedAt: outcome.closedAt, invoices };
  });

  app.get('/billing/invoices', { schema: { querystring: InvoiceListQuery, response: { 200: Type.Array(InvoiceSummary) } } }, async (request) => {
    // A customer lists their own; an operator everyone's, or one account's.
    const { account, period } = request.query;
    if (request.account.role === 'admin' && account === undefined) return listInvoices(db, { period });
    const subject = await subjectAccount(db, request.account, account);
    return listInvoices(db, { ownerId: subject.id, period });
  });
  app.get('/billing/invoices/:id', { schema: { params: InvoiceParams, response: { 200: InvoiceView } } }, async (request) =>
    getInvoice(db, request.account, request.params.id),
  );
  app.get('/billing/invoices/:id/html', { schema: { params: InvoiceParams } }, async (request, reply) => {
    const invoice = await getInvoice(db, request.account, request.params.id);
    return reply.type('text/html; charset=utf-8').send(renderInvoice(invoice));
  });

  app.post('/billing/invoices/:id/credit', { schema: { params: InvoiceParams, body: CreditNoteCreate, response: { 200: CreditNoteView, 201: CreditNoteView } } }, async (request, reply) => {
    requireAdmin(request);
    const { ownerId, ...note } = await creditInvoice(db, request.params.id, request.body.reason, actor(request));
    // A credited invoice is owed no more: a hold it caused is lifted like after a payment.
    const restarted = await releaseIfSettled(db, ownerId);
    return reply.code(note.credited ? 201 : 200).send({ ...note, restarted });
  });

  app.post('/billing/payments', { schema: { body: PaymentCreate, headers: PaymentHeaders, response: { 201: PaymentView } } }, async (request, reply) => {
    requireAdmin(request);
    const { ownerId, ...payment } = await recordPayment(db, request.body, actor(request), request.headers['idempotency-key']);
    const restarted = await releaseIfSettled(db, ownerId);
    return reply.code(201).send({ ...payment, restarted });
  });

  app.post('/billing/payments/:id/reverse', { schema: { params: PaymentParams, body: PaymentReversal, response: { 201: PaymentView } } }, async (request, reply) => {
    requireAdmin(request);
    const reversal = await reversePayment(db, request.params.id, request.body.reason, actor(request));
    return reply.code(201).send({ ...reversal, restarted: [] });
  });

  app.get('/billing/balance', { schema: { querystring: BillingAccountQuery, response: { 200: BalanceView } } }, async (request) =>
    balance(db, await subjectAccount(db, request.account, request.query.account)),
  );
  app.get('/billing/statement', { schema: { querystring: BillingAccountQuery, response: { 200: StatementView } } }, async (request) =>
    statement(db, await subjectAccount(db, request.account, request.query.account)),
  );

  app.post('/billing/dunning', { schema: { body: DunningRun, response: { 200: DunningResult } } }, async (request) => {
    requireAdmin(request);
    return runDunning(db, request.body.asOf ? new Date(request.body.asOf) : new Date());
  });

  app.get('/billing/export', { schema: { querystring: ExportQuery } }, async (request, reply) => {
    requireAdmin(request);
    const { period, format } = request.query;
    return reply
      .type(EXPORT_CONTENT_TYPES[format])
      .header('content-disposition', `attachment; filename="pledger-${period}.${format === 'hledger' ? 'journal' : format === 'beancount' ? 'beancount' : format}"`)
      .send(Readable.from(exportJournal(db, period, format)));
  });
}
