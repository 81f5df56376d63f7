/**
 * The billing API: settings, price lists, closing periods, invoices, credit notes,
 * payments, balances, statements, dunning and exports. Operators manage prices, close
 * periods, credit invoices, record payments and export; every account reads its own invoices, balance and
 * statement, and nobody else's.
 */
import { Readable } from 'node:stream';
import type { FastifyRequest } from 'fastify';
import { PledgerError } from '../../protocol/errors.js';
import { ROUTES } from '../../protocol/routes.js';
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
import { route } from './route.js';

const actor = (request: FastifyRequest) => `account:${request.account.name}`;
const { billing } = ROUTES;

export async function billingRoutes(app: App, database: Database): Promise<void> {
  const { db } = database;

  route(app, billing.settings, async () => loadSettings(db));
  route(app, billing.configure, async (request) => {
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

  route(app, billing.prices, async () => listPrices(db));
  route(app, billing.setPrices, async (request) => setPrice(db, request.body, actor(request)));

  route(app, billing.close, async (request) => {
    const outcome = await closePeriod(database, request.body.period, actor(request));
    const invoices = await listInvoices(db, { period: outcome.period });
    return { period: outcome.period, closed: outcome.closed, closedAt: outcome.closedAt, invoices };
  });

  route(app, billing.invoices, async (request) => {
    // A customer lists their own; an operator everyone's, or one account's.
    const { account, period } = request.query;
    if (request.account.role === 'admin' && account === undefined) return listInvoices(db, { period });
    const subject = await subjectAccount(db, request.account, account);
    return listInvoices(db, { ownerId: subject.id, period });
  });
  route(app, billing.invoice, async (request) => getInvoice(db, request.account, request.params.id));
  route(app, billing.invoicePage, async (request, reply) => {
    const invoice = await getInvoice(db, request.account, request.params.id);
    return reply.type('text/html; charset=utf-8').send(renderInvoice(invoice));
  });

  route(app, billing.credit, async (request, reply) => {
    const { ownerId, ...note } = await creditInvoice(db, request.params.id, request.body.reason, actor(request));
    // A credited invoice is owed no more: a hold it caused is lifted like after a payment.
    const restarted = await releaseIfSettled(db, ownerId);
    return reply.code(note.credited ? 201 : 200).send({ ...note, restarted });
  });

  route(app, billing.pay, async (request, reply) => {
    const { ownerId, ...payment } = await recordPayment(db, request.body, actor(request), request.headers['idempotency-key']);
    const restarted = await releaseIfSettled(db, ownerId);
    return reply.code(201).send({ ...payment, restarted });
  });

  route(app, billing.reversePayment, async (request, reply) => {
    const reversal = await reversePayment(db, request.params.id, request.body.reason, actor(request));
    return reply.code(201).send({ ...reversal, restarted: [] });
  });

  route(app, billing.balance, async (request) => balance(db, await subjectAccount(db, request.account, request.query.account)));
  route(app, billing.statement, async (request) => statement(db, await subjectAccount(db, request.account, request.query.account)));

  route(app, billing.dunning, async (request) => runDunning(db, request.body.asOf ? new Date(request.body.asOf) : new Date()));

  route(app, billing.export, async (request, reply) => {
    const { period, format } = request.query;
    return reply
      .type(EXPORT_CONTENT_TYPES[format])
      .header('content-disposition', `attachment; filename="pledger-${period}.${format === 'hledger' ? 'journal' : format === 'beancount' ? 'beancount' : format}"`)
      .send(Readable.from(exportJournal(db, period, format)));
  });
}
