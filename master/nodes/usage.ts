/** Usage reports: the hours a node metered, checked against each instance's life, recorded once each. */
import type { Kysely } from 'kysely';
import {
USAGE_CLOCK_SKEW_MS, type EventsReceipt, type NodeEvent, type UsageEvent
} from '../../protocol/api.js';
import { PledgerError } from '../../protocol/errors.js';
import { writeTransaction } from '../db/group-commit.js';
import type { Tables } from '../db/tables.js';
import { recordUsage, type UsageHour, type UsageReport } from '../ledger/movements.js';
import { partitionId } from '../ledger/ids.js';
import { eventContext, receiptOf, type EventContext } from './event-context.js';
import type { NodeRow } from './registry.js';

interface WaitingReport {
  node: NodeRow;
  events: NodeEvent[];
  resolve(receipt: EventsReceipt): void;
  reject(error: unknown): void;
}

/** Usage reports waiting for the next shared transaction, per database. */
const usageQueues = new WeakMap<Kysely<Tables>, { waiting: WaitingReport[]; draining: boolean }>();

/** Events per shared transaction: 20 full reports. */
const SHARED_TRANSACTION_EVENTS = 10_000;

const HOUR_MS = 3_600_000;

/**
 * Usage reports arriving together (a fleet reports at the top of every hour) are
 * recorded in one transaction: a durable commit (a sync to disk) costs more than the
 * records it writes. Each report is still checked whole and answered on its own; when
 * the shared transaction fails, each report is tried in its own, so that one bad
 * report refuses nothing but itself. Usage only inserts, and no report's check
 * depends on another's usage, so the result is the one of applying them in turn.
 */
export function applyUsage(db: Kysely<Tables>, node: NodeRow, events: NodeEvent[]): Promise<EventsReceipt> {
  let queue = usageQueues.get(db);
  if (!queue) usageQueues.set(db, (queue = { waiting: [], draining: false }));
  const answer = new Promise<EventsReceipt>((resolve, reject) => queue.waiting.push({ node, events, resolve, reject }));
  if (!queue.draining) void drainUsage(db, queue);
  return answer;
}

async function drainUsage(db: Kysely<Tables>, queue: { waiting: WaitingReport[]; draining: boolean }): Promise<void> {
  queue.draining = true;
  try {
    // Reports that arrive while a transaction runs wait for the next one.
    await new Promise((resolve) => setImmediate(resolve));
    while (queue.waiting.length > 0) {
      let events = 0;
      let count = 0;
      while (count < queue.waiting.length && (count === 0 || events + queue.waiting[count]!.events.length <= SHARED_TRANSACTION_EVENTS)) {
        events += queue.waiting[count]!.events.length;
        count++;
      }
      await applyUsageTogether(db, queue.waiting.splice(0, count));
    }
  } finally {
    queue.draining = false;
  }
}

async function applyUsageTogether(db: Kysely<Tables>, reports: WaitingReport[]): Promise<void> {
  try {
    const receipts = await writeTransaction(db, async (trx) => {
      const checked: UsageReport[] = [];
      for (const { node, events } of reports) {
        const context = await eventContext(trx, node, events);
        const now = Date.now();
        checked.push({ nodeId: node.id, actor: `node:${node.name}`, hours: events.map((event) => usageHour(context, node, event, now)) });
      }
      const counted = await recordUsage(trx, checked);
      return reports.map(({ events }, i) => receiptOf(events, new Map(events.map((event, j) => [event, counted[i]![j]!]))));
    });
    reports.forEach((report, i) => report.resolve(receipts[i]!));
  } catch (error) {
    if (reports.length === 1) return reports[0]!.reject(error);
    for (const report of reports) await applyUsageTogether(db, [report]);
  }
}

/** Checks a usage event, and turns it into the hour it reports. */
export function usageHour(context: EventContext, node: NodeRow, event: NodeEvent, now: number): UsageHour {
  if (event.type !== 'instance.usage') throw new PledgerError('INTERNAL', `${event.type} is not a usage event`);
  checkHourEnded(event, now);
  const pid = partitionId(node.id, event.partition);
  const instance = context.instances.get(event.instance);
  // Usage may follow an instance out of its partition: the node meters the last hour
  // after it has destroyed it. (A partition id names its node: another node's never matches.)
  if (!instance || (instance.partition_id !== pid && instance.last_partition_id !== pid)) {
    throw new PledgerError('FORBIDDEN', `instance ${event.instance} is not allocated to partition ${event.partition} of node ${node.name}`);
  }
  // An hour is billed only within the instance's life: one that ended before it was
  // requested, or began after its node reported it destroyed, never ran there (with the
  // same leeway as above for a node's clock that is off by a few minutes).
  const start = Date.parse(event.hour);
  const destroyedAt = instance.partition_id !== pid || instance.status === 'destroyed' ? Date.parse(instance.updated_at) : Number.POSITIVE_INFINITY;
  if (start + HOUR_MS + USAGE_CLOCK_SKEW_MS <= Date.parse(instance.created_at) || start > destroyedAt + USAGE_CLOCK_SKEW_MS) {
    const life = `${instance.created_at} to ${Number.isFinite(destroyedAt) ? instance.updated_at : 'now'}`;
    throw new PledgerError('BAD_REQUEST', `usage event ${event.id}: the hour ${event.hour} is outside the life of instance ${event.instance} (${life})`, {
      details: { event: event.id },
    });
  }
  return {
    instanceId: instance.id,
    hour: event.hour,
    ownerId: instance.owner_id,
    softwareId: instance.software_id,
    softwareType: instance.software_type,
    cpuMs: event.cpuMilliseconds,
    memoryByteSeconds: event.memoryByteSeconds,
    diskByteSeconds: event.diskByteSeconds,
    uptimeSeconds: event.uptimeSeconds,
  };
}

/**
 * A node bills only hours that are over: an hour still running, or to come, could be
 * billed again with other figures or for time that never happened. The schema has
 * fixed the shape of `hour` and the bounds of each quantity; this checks that it names
 * a real hour and that the hour has ended by the master's clock, with some leeway for a
 * node's clock running ahead.
 */
function checkHourEnded(event: UsageEvent, now: number): void {
  const start = Date.parse(event.hour);
  if (Number.isNaN(start) || new Date(start).toISOString() !== event.hour) {
    throw new PledgerError('BAD_REQUEST', `usage event ${event.id}: ${event.hour} is not the start of a UTC hour`);
  }
  if (start + HOUR_MS > now + USAGE_CLOCK_SKEW_MS) {
    throw new PledgerError('TOO_EARLY', `usage event ${event.id}: the hour ${event.hour} has not ended yet by the master's clock (${new Date(now).toISOString()})`, {
      details: { event: event.id },
    });
  }
}
