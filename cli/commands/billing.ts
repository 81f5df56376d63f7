/**
 * `pledger billing`: settings and price lists, closing periods, invoices, payments,
 * balances, statements, dunning and exports. Amounts are decimals in the operator's
 * currency, exactly as written ("12.34"): never turned into floating point.
 */
import { createHash, randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { InvalidArgumentError, type Command } from '@commander-js/extra-typings';
import type { BillingSettingsUpdate, ExportFormat, InvoiceSummary, PriceListSet } from '../../protocol/api.js';
import { PledgerError } from '../../protocol/errors.js';
import { fields, print, table } from '../output.js';
import { userClient } from '../settings.js';
import { globals } from './globals.js';

const RESOURCE_OPTIONS = [
  ['instance-month', 'per instance and month, prorated by the hours it existed'],
  ['instance-hour', 'per hour an instance runs'],
  ['cpu-hour', 'per hour of CPU time'],
  ['memory-gib-hour', 'per GiB of memory during an hour'],
  ['disk-gib-month', 'per GiB of disk during a month'],
] as const;

function days(value: string): number {
  if (!/^\d{1,4}$/.test(value)) throw new InvalidArgumentError('expected a whole number of days');
  return Number(value);
}

/** "20" or "5.5" percent as basis points, exactly. */
function percent(value: string): number {
  const match = /^(\d{1,3})(?:\.(\d{1,2}))?$/.exec(value);
  if (!match) throw new InvalidArgumentError('expected a percentage such as 20 or 5.5');
  return Number(match[1]) * 100 + Number((match[2] ?? '').padEnd(2, '0'));
}

const money = (amount: string, currency: string) => `${amount} ${currency}`;

export function registerBillingCommands(program: Command): void {
  const billing = program.command('billing').description('prices, invoices, payments and exports');

  billing
    .command('settings')
    .description('show the billing settings, or change them (operators)')
    .option('--currency <code>', 'the operator currency (ISO 4217), before any price or invoice exists')
    .option('--decimals <n>', 'minor digits of the currency', days)
    .option('--tax-rate <percent>', 'tax added to invoices, e.g. 20', percent)
    .option('--payment-terms <days>', 'days from an invoice to its due date', days)
    .option('--grace-days <days>', 'days past due before instances are stopped', days)
    // commander turns a parser's null into '', so `never` stays a word until the request is built.
    .option('--destroy-after-days <days|never>', 'days past due before instances are destroyed', (v): number | 'never' => (v === 'never' ? 'never' : days(v)))
    .action(async (options, command) => {
      const g = globals(command);
      const client = await userClient(g);
      const update: BillingSettingsUpdate = {};
      if (options.currency !== undefined) update.currency = options.currency;
      if (options.decimals !== undefined) update.decimals = options.decimals;
      if (options.taxRate !== undefined) update.taxRateBasisPoints = options.taxRate;
      if (options.paymentTerms !== undefined) update.paymentTermsDays = options.paymentTerms;
      if (options.graceDays !== undefined) update.graceDays = options.graceDays;
      if (options.destroyAfterDays !== undefined) update.destroyAfterDays = options.destroyAfterDays === 'never' ? null : options.destroyAfterDays;
      const settings =
        Object.keys(update).length > 0
          ? await client.billing.configure(update)
          : await client.billing.settings();
      print(g, settings, (s) =>
        fields([
          ['currency', `${s.currency} (${s.decimals} decimals)`],
          ['tax rate', `${s.taxRateBasisPoints / 100} %`],
          ['payment terms', `${s.paymentTermsDays} days`],
          ['stop after', `${s.graceDays} days overdue`],
          ['destroy after', s.destroyAfterDays === null ? 'never' : `${s.destroyAfterDays} days overdue`],
        ]),
      );
    });

  const price = billing.command('price').description('price lists per software release and software type');
  const set = price
    .command('set')
    .description('set the prices of a release and software type from a month on (operators); unnamed resources cost nothing')
    .argument('<software>', 'the release NAME')
    .option('--type <software-type>', 'the software type', 'default')
    .requiredOption('--from <YYYY-MM>', 'the first billing month these prices apply to');
  for (const [resource, meaning] of RESOURCE_OPTIONS) set.option(`--${resource} <amount>`, meaning);
  set.action(async (software, options, command) => {
    const g = globals(command);
    const all = options as Record<string, string | undefined>;
    const prices: PriceListSet['prices'] = {};
    for (const [resource] of RESOURCE_OPTIONS) {
      const key = resource.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase());
      if (all[key] !== undefined) prices[resource] = all[key];
    }
    if (Object.keys(prices).length === 0) throw new PledgerError('BAD_REQUEST', 'name at least one price', { hint: 'e.g. --instance-month 30.00 --cpu-hour 0.05' });
    const body: PriceListSet = { software, softwareType: options.type, validFrom: options.from, prices };
    const list = await (await userClient(g)).billing.setPrices(body);
    print(g, list, (p) => `${p.software} ${p.softwareType} from ${p.validFrom}: ${Object.entries(p.prices).map(([r, a]) => `${r} ${money(a, p.currency)}`).join(', ')}`);
  });
  price
    .command('list')
    .description('list the price lists and their versions')
    .action(async (_options, command) => {
      const g = globals(command);
      const list = await (await userClient(g)).billing.prices();
      print(g, list, (l) =>
        l.length === 0
          ? 'no prices'
          : table(
              ['SOFTWARE', 'TYPE', 'FROM', 'CURRENCY', ...RESOURCE_OPTIONS.map(([r]) => r.toUpperCase())],
              l.map((p) => [p.software, p.softwareType, p.validFrom, p.currency, ...RESOURCE_OPTIONS.map(([r]) => p.prices[r])]),
            ),
      );
    });

  billing
    .command('close')
    .description('close a billing month: one invoice per customer, posted to the journal (operators); closing again changes nothing')
    .requiredOption('--period <YYYY-MM>', 'the month to close')
    .action(async (options, command) => {
      const g = globals(command);
      const result = await (await userClient(g)).billing.close({ period: options.period });
      print(g, result, (r) =>
        [`${r.period} ${r.closed ? 'closed now' : `was closed at ${r.closedAt}`}: ${r.invoices.length} invoice(s)`, ...(r.invoices.length > 0 ? [invoiceTable(r.invoices)] : [])].join('\n'),
      );
    });

  billing
    .command('invoices')
    .description('list your invoices (operators: everyone’s, or --account)')
    .option('--period <YYYY-MM>')
    .option('--account <name>')
    .action(async (options, command) => {
      const g = globals(command);
      const list = await (await userClient(g)).billing.invoices({ query: { period: options.period || undefined, account: options.account || undefined } });
      print(g, list, (l) => (l.length === 0 ? 'no invoices' : invoiceTable(l)));
    });

  billing
    .command('invoice')
    .description('show an invoice and its lines; --html prints the printable page')
    .argument('<invoice>', 'INV-YYYY-MM-NNNNN')
    .option('--html', 'print the invoice as an HTML page')
    .action(async (id, options, command) => {
      const g = globals(command);
      const client = await userClient(g);
      if (options.html) {
        process.stdout.write(await client.billing.invoicePage(id));
        return;
      }
      const invoice = await client.billing.invoice(id);
      print(g, invoice, (v) =>
        [
          fields([['invoice', v.id], ['account', v.account], ['period', v.period], ['issued', v.issuedAt], ['due', v.dueAt], ['status', v.status]]),
          '',
          table(['INSTANCE', 'USAGE', 'RESOURCE', 'QUANTITY', 'UNIT PRICE', 'AMOUNT'], v.lines.map((l) => [l.instance, l.usageMonth, l.resource, l.quantity, l.unitPrice, l.amount])),
          '',
          fields([
            ['subtotal', money(v.subtotal, v.currency)],
            [`tax ${v.taxRateBasisPoints / 100} %`, money(v.tax, v.currency)],
            ['total', money(v.total, v.currency)],
            ['paid', money(v.paid, v.currency)],
            ...(v.status === 'credited' ? [['credited', money(v.credited, v.currency)] as [string, string]] : []),
            ['outstanding', money(v.outstanding, v.currency)],
          ]),
        ].join('\n'),
      );
    });

  billing
    .command('pay')
    .description('record a payment against an invoice (operators)')
    .argument('<invoice>', 'INV-YYYY-MM-NNNNN')
    .argument('<amount>', 'in the billing currency, e.g. 12.34')
    .option('--reference <text>', 'the bank reference')
    .option('--idempotency-key <key>', 'names this payment: the same key again records nothing and shows the payment it recorded (default: the bank reference, else a new key)')
    .action(async (invoice, amount, options, command) => {
      const g = globals(command);
      // A payment retried after a timeout must not be recorded twice: the bank
      // reference names one transfer, so it is the natural key when given.
      const key = options.idempotencyKey ?? (options.reference ? `reference-${createHash('sha256').update(`${invoice}\n${options.reference}`).digest('hex')}` : randomUUID());
      const payment = await (await userClient(g)).billing.pay(
        { invoice, amount, ...(options.reference ? { reference: options.reference } : {}) },
        { headers: { 'idempotency-key': key } },
      );
      print(g, payment, (p) =>
        [`paid ${money(p.amount, p.currency)} on ${p.invoice}; outstanding ${money(p.outstanding, p.currency)}`, ...(p.restarted.length > 0 ? [`started again: ${p.restarted.join(', ')}`] : [])].join('\n'),
      );
    });

  billing
    .command('reverse-payment')
    .description('reverse a payment recorded by mistake (operators): a reversing entry, nothing is edited')
    .argument('<payment>', 'the payment id (after `payment:` in the statement)')
    .requiredOption('--reason <text>', 'why, kept in the journal')
    .action(async (payment, options, command) => {
      const g = globals(command);
      const reversal = await (await userClient(g)).billing.reversePayment(payment, { reason: options.reason });
      print(g, reversal, (r) => `reversed: ${money(r.amount, r.currency)} on ${r.invoice}; outstanding ${money(r.outstanding, r.currency)}`);
    });

  billing
    .command('credit')
    .description('reverse an unpaid invoice whole with a credit note (operators): a reversing entry dated now; crediting again changes nothing')
    .argument('<invoice>', 'INV-YYYY-MM-NNNNN')
    .option('--reason <text>', 'why, kept in the journal')
    .action(async (invoice, options, command) => {
      const g = globals(command);
      const note = await (await userClient(g)).billing.credit(invoice, {
        ...(options.reason !== undefined ? { reason: options.reason } : {}),
      });
      print(g, note, (n) =>
        [
          n.credited ? `credited ${n.invoice} to ${n.account}: ${money(n.amount, n.currency)} taken off` : `${n.invoice} was credited already at ${n.creditedAt}: nothing changed`,
          ...(n.restarted.length > 0 ? [`started again: ${n.restarted.join(', ')}`] : []),
        ].join('\n'),
      );
    });

  billing
    .command('balance')
    .description('what you owe, what is overdue, and whether your instances are stopped for it')
    .option('--account <name>', 'another account (operators)')
    .action(async (options, command) => {
      const g = globals(command);
      const view = await (await userClient(g)).billing.balance({ query: { account: options.account || undefined } });
      print(g, view, (b) =>
        fields([
          ['account', b.account],
          ['balance', money(b.balance, b.currency)],
          ['overdue', money(b.overdue, b.currency)],
          ['instances', b.hold ? `${b.hold.destroyed ? 'destroyed' : 'stopped'} since ${b.hold.since}: ${b.hold.reason}` : 'running normally'],
        ]),
      );
    });

  billing
    .command('statement')
    .description('every invoice and payment on your account, with the running balance')
    .option('--account <name>', 'another account (operators)')
    .action(async (options, command) => {
      const g = globals(command);
      const view = await (await userClient(g)).billing.statement({ query: { account: options.account || undefined } });
      print(g, view, (s) =>
        [table(['DATE', 'KIND', 'REFERENCE', 'AMOUNT', 'BALANCE'], s.entries.map((e) => [e.date, e.kind, e.reference, e.amount, e.balance])), `balance: ${money(s.balance, s.currency)}`].join('\n'),
      );
    });

  billing
    .command('dunning')
    .description('stop the instances of customers overdue past the grace period (operators; run it daily from cron)')
    .option('--as-of <timestamp>', 'judge overdue invoices as of this time instead of now')
    .action(async (options, command) => {
      const g = globals(command);
      const result = await (await userClient(g)).billing.dunning(options.asOf ? { asOf: options.asOf } : {});
      print(g, result, (r) =>
        fields([
          ['held now', r.held.join(', ') || 'nobody'],
          ['destroyed now', r.destroyed.join(', ') || 'nobody'],
          ['instances', r.instances.join(', ') || 'none'],
        ]),
      );
    });

  billing
    .command('export')
    .description('export a month of the journal (operators), streamed as it is read')
    .requiredOption('--period <YYYY-MM>')
    .requiredOption('--format <format>', 'csv, json, hledger or beancount')
    .option('--output <file>', 'write to this file instead of stdout')
    .action(async (options, command) => {
      const g = globals(command);
      // The master checks the format, as it checks every query: an unknown one is its 400.
      const journal = await (await userClient(g)).billing.export({ query: { period: options.period, format: options.format as ExportFormat } });
      const sink = options.output ? createWriteStream(options.output) : stdoutSink();
      await pipeline(journal, sink);
    });
}

function invoiceTable(list: InvoiceSummary[]): string {
  return table(
    ['INVOICE', 'ACCOUNT', 'PERIOD', 'TOTAL', 'OUTSTANDING', 'DUE', 'STATUS'],
    list.map((i) => [i.id, i.account, i.period, money(i.total, i.currency), i.outstanding, i.dueAt.slice(0, 10), i.status]),
  );
}

/** stdout as a pipeline destination that is not closed at the end. */
function stdoutSink(): Writable {
  return new Writable({
    write(chunk: Buffer, _encoding, callback) {
      if (process.stdout.write(chunk)) callback();
      else process.stdout.once('drain', () => callback());
    },
  });
}
