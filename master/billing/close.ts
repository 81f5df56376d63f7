/**
 * Closing a billing period: one invoice per customer, one line per instance, resource
 * and month of usage, each posted to the journal.
 *
 * A close bills every usage hour before the end of the period that no close billed
 * yet: the period's own hours, and the hours of earlier, closed periods that nodes
 * reported late. The `billing.closed` movement marks them billed, in the same
 * transaction, so that a closed period is never billed again and an hour is billed
 * once. Closing a period that is closed already changes nothing and answers the same
 * invoices.
 */
import { sql, type Transaction } from 'kysely';
import { PledgerError } from '../../protocol/errors.js';
import type { Database } from '../db/database.js';
import { engineOf } from '../db/engine.js';
import { writeTransaction } from '../db/group-commit.js';
import type { Tables } from '../db/tables.js';
import { record, recordMany, type MovementEntry } from '../ledger/movements.js';
import { receivableAccount, revenueAccount, TAX_ACCOUNT } from './accounts.js';
import { loadSettings, RESOURCES, type InvoiceData, type InvoiceLineData, type JournalTransaction, type Resource } from './journal.js';
import { divRound, exactSum, int, PRICE_DECIMALS } from './money.js';
import { loadPriceVersions, PriceBook } from './prices.js';

const GIB = 1024n ** 3n;

/** Start and end (exclusive) of a YYYY-MM period, as ISO timestamps. */
export function periodBounds(period: string): { start: string; end: string } {
  const [year, month] = period.split('-').map(Number) as [number, number];
  return { start: new Date(Date.UTC(year, month - 1, 1)).toISOString(), end: new Date(Date.UTC(year, month, 1)).toISOString() };
}

export function hoursInMonth(month: string): bigint {
  const { start, end } = periodBounds(month);
  return BigInt((Date.parse(end) - Date.parse(start)) / 3_600_000);
}

/**
 * How much of a resource's pricing unit a raw quantity is, as a fraction: a line's
 * amount is `unit price × numerator / denominator`, rounded once.
 */
export function unitFraction(resource: Resource, quantity: bigint, usageMonth: string): { numerator: bigint; denominator: bigint } {
  switch (resource) {
    case 'instance-month':
      return { numerator: quantity, denominator: hoursInMonth(usageMonth) };
    case 'instance-hour':
      return { numerator: quantity, denominator: 3600n };
    case 'cpu-hour':
      return { numerator: quantity, denominator: 3_600_000n };
    case 'memory-gib-hour':
      return { numerator: quantity, denominator: GIB * 3600n };
    case 'disk-gib-month':
      return { numerator: quantity, denominator: GIB * 3600n * hoursInMonth(usageMonth) };
  }
}

/** The base unit each resource's quantity is counted in. */
export const BASE_UNITS: Record<Resource, string> = {
  'instance-month': 'instance-hours',
  'instance-hour': 'uptime-seconds',
  'cpu-hour': 'cpu-milliseconds',
  'memory-gib-hour': 'memory-byte-seconds',
  'disk-gib-month': 'disk-byte-seconds',
};

export function invoiceNumber(period: string, sequence: number): string {
  return `INV-${period}-${String(sequence).padStart(5, '0')}`;
}

export interface CloseOutcome {
  period: string;
  closed: boolean;
  closedAt: string;
  invoiceIds: string[];
}

interface UsageGroup {
  owner_id: string;
  owner_name: string;
  instance_id: string;
  instance_title: string;
  software_id: string;
  software_type: string;
  month: string;
  hours: number | string;
  uptime: number | string | null;
  cpu: number | string | null;
  memory: number | string | null;
  disk: number | string | null;
}

export async function closePeriod(database: Database, period: string, actor: string, now = new Date()): Promise<CloseOutcome> {
  const { start, end } = periodBounds(period);
  if (Date.parse(end) > now.getTime()) {
    throw new PledgerError('CONFLICT', `the period ${period} is not over: it ends at ${end}`, { hint: 'close a period once it has ended' });
  }
  const engine = engineOf(database.db);
  return writeTransaction(database.db, async (trx) => {
    // Every transaction recording a movement finishes first, and new ones wait for this
    // close: the movements' order is then the order in which they were committed, so a
    // rebuild marks exactly the usage hours this close billed.
    await engine.lockLedger(trx);
    const already = await trx.selectFrom('billing_periods').selectAll().where('period', '=', period).executeTakeFirst();
    if (already) {
      const ids = await trx.selectFrom('invoices').select('id').where('period', '=', period).orderBy('id').execute();
      return { period, closed: false, closedAt: already.closed_at, invoiceIds: ids.map((r) => r.id) };
    }
    await refuseOutOfOrder(trx, period, start);

    const settings = await loadSettings(trx);
    const prices = new PriceBook(await loadPriceVersions(trx));
    await engine.allowLargeSort(trx);
    // Usage is added up per instance and month first (10,000 groups for a million
    // hours), then joined to the names and sorted.
    const sums = trx
      .selectFrom('usage_hours as u')
      .select([
        'u.owner_id',
        'u.instance_id',
        'u.software_id',
        'u.software_type',
        sql<string>`substr(u.hour, 1, 7)`.as('month'),
        (eb) => eb.fn.countAll<number | string>().as('hours'),
        exactSum('u.uptime_seconds').as('uptime'),
        exactSum('u.cpu_ms').as('cpu'),
        exactSum('u.memory_byte_seconds').as('memory'),
        exactSum('u.disk_byte_seconds').as('disk'),
      ])
      .where('u.billed_period', 'is', null)
      .where('u.hour', '<', end)
      .groupBy(['u.owner_id', 'u.instance_id', 'u.software_id', 'u.software_type', sql`substr(u.hour, 1, 7)`]);
    const groups = (await trx
      .selectFrom(sums.as('g'))
      .innerJoin('instances as i', 'i.id', 'g.instance_id')
      .innerJoin('accounts as a', 'a.id', 'g.owner_id')
      .select(['g.owner_id', 'a.name as owner_name', 'g.instance_id', 'i.title as instance_title', 'g.software_id', 'g.software_type', 'g.month', 'g.hours', 'g.uptime', 'g.cpu', 'g.memory', 'g.disk'])
      .orderBy('a.name')
      .orderBy('i.title')
      .orderBy('g.instance_id')
      .orderBy('g.month')
      .execute()) as UsageGroup[];

    const issuedAt = now.toISOString();
    const dueAt = new Date(now.getTime() + settings.paymentTermsDays * 86_400_000).toISOString();
    const invoiceIds: string[] = [];
    const issued: MovementEntry[] = [];
    let index = 0;
    while (index < groups.length) {
      const ownerId = groups[index]!.owner_id;
      const ownerName = groups[index]!.owner_name;
      const lines: InvoiceLineData[] = [];
      for (; index < groups.length && groups[index]!.owner_id === ownerId; index++) {
        lines.push(...linesOf(groups[index]!, prices, settings.currency, settings.decimals));
      }
      if (lines.length === 0) continue;
      const invoiceId = invoiceNumber(period, invoiceIds.length + 1);
      const subtotal = lines.reduce((sum, l) => sum + BigInt(l.amount), 0n);
      const tax = divRound(subtotal * BigInt(settings.taxRateBasisPoints), 10_000n);
      const invoice: InvoiceData = {
        invoiceId,
        ownerId,
        period,
        currency: settings.currency,
        subtotal: subtotal.toString(),
        tax: tax.toString(),
        total: (subtotal + tax).toString(),
        taxRateBasisPoints: settings.taxRateBasisPoints,
        issuedAt,
        dueAt,
        lines,
        transaction: invoiceTransaction(invoiceId, ownerName, period, issuedAt, settings.currency, lines, tax),
      };
      issued.push({ movement: { kind: 'invoice.issued', data: invoice }, meta: { id: `invoice:${period}:${ownerId}`, actor, subject: ownerId, at: issuedAt } });
      invoiceIds.push(invoiceId);
    }
    await recordMany(trx, issued);
    await record(trx, { kind: 'billing.closed', data: { period, until: end, invoices: invoiceIds.length } }, { id: `close:${period}`, actor, subject: `period:${period}`, at: issuedAt });
    return { period, closed: true, closedAt: issuedAt, invoiceIds };
  });
}

/**
 * Periods close in order: closing one while an earlier month has unbilled usage and
 * no close would bill that usage on the wrong invoice; closing one after a later one
 * would find nothing left to bill.
 */
async function refuseOutOfOrder(trx: Transaction<Tables>, period: string, start: string): Promise<void> {
  const later = await trx.selectFrom('billing_periods').select('period').where('period', '>', period).orderBy('period').executeTakeFirst();
  if (later) throw new PledgerError('CONFLICT', `the period ${later.period} is closed already: ${period} cannot be closed after it`);
  const earliest = await trx
    .selectFrom('usage_hours')
    .select((eb) => eb.fn.min<string | null>('hour').as('hour'))
    .where('billed_period', 'is', null)
    .where('hour', '<', start)
    .executeTakeFirst();
  if (!earliest?.hour) return;
  const month = earliest.hour.slice(0, 7);
  const closed = await trx.selectFrom('billing_periods').select('period').where('period', '>=', month).executeTakeFirst();
  if (!closed) throw new PledgerError('CONFLICT', `the period ${month} has usage and is not closed`, { hint: `close ${month} first` });
}

function linesOf(group: UsageGroup, prices: PriceBook, currency: string, decimals: number): InvoiceLineData[] {
  const [softwareName] = group.software_id.split('@') as [string];
  const price = prices.find(softwareName, group.software_type, group.month);
  if (!price) return [];
  if (price.currency !== currency) {
    throw new PledgerError('CONFLICT', `the price list of ${softwareName} ${group.software_type} is in ${price.currency}, and billing is in ${currency}`, {
      hint: 'set its prices again in the billing currency',
    });
  }
  const quantities: Record<Resource, bigint> = {
    'instance-month': int(group.hours),
    'instance-hour': int(group.uptime),
    'cpu-hour': int(group.cpu),
    'memory-gib-hour': int(group.memory),
    'disk-gib-month': int(group.disk),
  };
  const lines: InvoiceLineData[] = [];
  for (const resource of RESOURCES) {
    const unitPrice = price.prices[resource];
    const quantity = quantities[resource];
    if (unitPrice === 0n || quantity === 0n) continue;
    const { numerator, denominator } = unitFraction(resource, quantity, group.month);
    const microPerMinor = 10n ** BigInt(PRICE_DECIMALS - decimals);
    lines.push({
      instanceId: group.instance_id,
      instanceTitle: group.instance_title,
      softwareId: group.software_id,
      softwareType: group.software_type,
      usageMonth: group.month,
      resource,
      quantity: quantity.toString(),
      unit: BASE_UNITS[resource],
      unitPrice: unitPrice.toString(),
      amount: divRound(unitPrice * numerator, denominator * microPerMinor).toString(),
    });
  }
  return lines;
}

function invoiceTransaction(
  invoiceId: string,
  ownerName: string,
  period: string,
  issuedAt: string,
  currency: string,
  lines: InvoiceLineData[],
  tax: bigint,
): JournalTransaction | null {
  const revenue = new Map<Resource, bigint>();
  for (const l of lines) revenue.set(l.resource, (revenue.get(l.resource) ?? 0n) + BigInt(l.amount));
  const credits = RESOURCES.filter((r) => (revenue.get(r) ?? 0n) !== 0n).map((r) => ({ account: revenueAccount(r), currency, amount: (-revenue.get(r)!).toString() }));
  if (tax !== 0n) credits.push({ account: TAX_ACCOUNT, currency, amount: (-tax).toString() });
  const total = credits.reduce((sum, p) => sum - BigInt(p.amount), 0n);
  if (total === 0n) return null;
  return {
    id: `invoice:${invoiceId}`,
    date: issuedAt,
    period,
    kind: 'invoice',
    reference: invoiceId,
    description: `Invoice ${invoiceId} to ${ownerName} for ${period}`,
    reverses: null,
    postings: [{ account: receivableAccount(ownerName), currency, amount: total.toString() }, ...credits],
  };
}
