/**
 * Dunning: a customer with an invoice overdue by more than the grace period has their
 * started instances stopped, through the ordinary request path, with the reason on
 * each instance's history; paying what is overdue starts those same instances again.
 * Destroying for non-payment happens only when the operator set `destroyAfterDays`.
 *
 * Each step is recorded before it is carried out and is idempotent, so a run that was
 * interrupted is completed by the next one.
 */
import type { Kysely } from 'kysely';
import type { DunningResult } from '../../protocol/api.js';
import type { AccountRow } from '../accounts.js';
import type { Tables } from '../db/tables.js';
import { requestInstance } from '../instances/request.js';
import { writeTransaction } from '../db/group-commit.js';
import { lock, locks } from '../ledger/locks.js';
import { record } from '../ledger/movements.js';
import { loadSettings } from './journal.js';
import { exact, exactSum, formatAmount, int } from './money.js';
import { readJson } from '../db/json-columns.js';

const DAY = 86_400_000;

interface OverdueInvoice {
  id: string;
  ownerId: string;
  dueAt: string;
  outstanding: bigint;
}

/** The oldest invoice of each account still unpaid `days` after its due date. */
async function overdueBy(db: Kysely<Tables>, days: number, asOf: Date): Promise<Map<string, OverdueInvoice>> {
  const cutoff = new Date(asOf.getTime() - days * DAY).toISOString();
  const rows = await db
    .selectFrom('invoices as v')
    .select(['v.id', 'v.owner_id', 'v.due_at', exact('v.total').as('total')])
    .select((eb) => eb.selectFrom('payments as p').select(exactSum('p.amount').as('paid')).whereRef('p.invoice_id', '=', 'v.id').as('paid'))
    .select((eb) => eb.selectFrom('credit_notes as c').select(exact('c.amount').as('credited')).whereRef('c.invoice_id', '=', 'v.id').as('credited'))
    .where('v.due_at', '<', cutoff)
    .orderBy('v.due_at')
    .orderBy('v.id')
    .execute();
  const found = new Map<string, OverdueInvoice>();
  for (const r of rows) {
    const outstanding = int(r.total) - int(r.paid) - int(r.credited);
    if (outstanding > 0n && !found.has(r.owner_id)) found.set(r.owner_id, { id: r.id, ownerId: r.owner_id, dueAt: r.due_at, outstanding });
  }
  return found;
}

export async function runDunning(db: Kysely<Tables>, asOf = new Date()): Promise<DunningResult> {
  const settings = await loadSettings(db);
  const result: DunningResult = { asOf: asOf.toISOString(), held: [], destroyed: [], instances: [] };
  const overdue = await overdueBy(db, settings.graceDays, asOf);
  for (const invoice of overdue.values()) {
    const owner = await db.selectFrom('accounts').selectAll().where('id', '=', invoice.ownerId).executeTakeFirstOrThrow();
    const reason =
      `invoice ${invoice.id} was due on ${invoice.dueAt.slice(0, 10)} and ${formatAmount(invoice.outstanding, settings.decimals)} ${settings.currency} ` +
      'of it is unpaid: the instances are stopped until it is paid';
    const hold = await writeTransaction(db, async (trx) => {
      // Under the account's lock, which its requests hold shared: none starts anything
      // between the list of its started instances and the hold.
      await lock(trx, locks.account(owner.id));
      const existing = await trx.selectFrom('billing_holds').selectAll().where('account_id', '=', owner.id).executeTakeFirst();
      if (existing) return { instanceIds: readJson('instances', existing.instances), created: false };
      const started = await trx.selectFrom('instances').select('id').where('owner_id', '=', owner.id).where('state', '=', 'started').orderBy('title').execute();
      const instanceIds = started.map((r) => r.id);
      await record(trx, { kind: 'billing.held', data: { accountId: owner.id, invoiceId: invoice.id, reason, instanceIds } }, { actor: 'master', subject: owner.id, at: asOf.toISOString() });
      for (const instanceId of instanceIds) {
        await record(trx, { kind: 'instance.held', data: { instanceId, reason } }, { actor: 'master', subject: instanceId, at: asOf.toISOString() });
      }
      return { instanceIds, created: true };
    });
    if (hold.created) result.held.push(owner.name);
    result.instances.push(...(await requestState(db, owner, hold.instanceIds, 'started', 'stopped')));
  }

  if (settings.destroyAfterDays !== null) {
    for (const invoice of (await overdueBy(db, settings.destroyAfterDays, asOf)).values()) {
      const owner = await db.selectFrom('accounts').selectAll().where('id', '=', invoice.ownerId).executeTakeFirstOrThrow();
      const hold = await db.selectFrom('billing_holds').selectAll().where('account_id', '=', owner.id).executeTakeFirst();
      if (!hold) continue;
      const instanceIds = readJson('instances', hold.instances);
      if (hold.destroyed === 0) {
        const reason = `invoice ${invoice.id} is unpaid ${settings.destroyAfterDays} days after it was due: the instances are destroyed`;
        await writeTransaction(db, async (trx) => {
          await record(trx, { kind: 'billing.destroyed', data: { accountId: owner.id, invoiceId: invoice.id, reason, instanceIds } }, { actor: 'master', subject: owner.id });
          for (const instanceId of instanceIds) await record(trx, { kind: 'instance.held', data: { instanceId, reason } }, { actor: 'master', subject: instanceId });
        });
        result.destroyed.push(owner.name);
      }
      result.instances.push(...(await requestState(db, owner, instanceIds, null, 'destroyed')));
    }
  }
  return result;
}

/**
 * Lifts an account's hold once nothing of it is overdue past the grace period, and
 * starts again the instances the hold stopped (not those destroyed since, nor any the
 * customer stopped themselves before). Answers the titles started.
 */
export async function releaseIfSettled(db: Kysely<Tables>, ownerId: string, asOf = new Date()): Promise<string[]> {
  const settings = await loadSettings(db);
  const hold = await db.selectFrom('billing_holds').selectAll().where('account_id', '=', ownerId).executeTakeFirst();
  if (!hold) return [];
  if ((await overdueBy(db, settings.graceDays, asOf)).has(ownerId)) return [];
  const owner = await db.selectFrom('accounts').selectAll().where('id', '=', ownerId).executeTakeFirstOrThrow();
  const instanceIds = readJson('instances', hold.instances);
  const reason = 'the overdue invoices are paid: the instances are started again';
  const released = await writeTransaction(db, async (trx) => {
    await lock(trx, locks.account(ownerId));
    // Another payment may have released it meanwhile.
    if (!(await trx.selectFrom('billing_holds').select('account_id').where('account_id', '=', ownerId).executeTakeFirst())) return false;
    await record(trx, { kind: 'billing.released', data: { accountId: ownerId, reason } }, { actor: 'master', subject: ownerId });
    for (const instanceId of instanceIds) await record(trx, { kind: 'instance.released', data: { instanceId, reason } }, { actor: 'master', subject: instanceId });
    return true;
  });
  if (!released) return [];
  return (await requestState(db, owner, instanceIds, 'stopped', 'started')).map((t) => t.slice(owner.name.length + 1));
}

/** Requests `to` for each listed instance currently in state `from` (any but destroyed when null). */
async function requestState(db: Kysely<Tables>, owner: AccountRow, instanceIds: string[], from: 'started' | 'stopped' | null, to: 'started' | 'stopped' | 'destroyed'): Promise<string[]> {
  if (instanceIds.length === 0) return [];
  const rows = await db.selectFrom('instances').select(['title', 'software_id', 'state']).where('id', 'in', instanceIds).orderBy('title').execute();
  const changed: string[] = [];
  for (const row of rows) {
    if (row.state === 'destroyed' || (from !== null && row.state !== from)) continue;
    await requestInstance(db, owner, row.title, { software: row.software_id, state: to }, 'master');
    changed.push(`${owner.name}/${row.title}`);
  }
  return changed;
}
