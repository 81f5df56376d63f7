/**
 * What a node reports of its instances and releases: each event checked to be this
 * node's to send, applied once, under the locks of what it is about.
 */
import type { Kysely } from 'kysely';
import type { EventsReceipt, NodeEvent } from '../../protocol/api.js';
import { PledgerError } from '../../protocol/errors.js';
import { writeTransaction } from '../db/group-commit.js';
import type { Tables } from '../db/tables.js';
import { lock, locks } from '../ledger/locks.js';
import { recordMany, recordUsage, type Movement, type MovementRecord } from '../ledger/movements.js';
import { partitionId } from '../ledger/ids.js';
import { allocatePending } from '../instances/allocation.js';
import { afterNodeEvent } from './reactions.js';
import { eventContext, receiptOf, type EventContext } from './event-context.js';
import type { NodeRow } from './registry.js';
import { applyUsage, usageHour } from './usage.js';

/**
 * Applies a batch of node events, each once: an event already applied is listed as a
 * duplicate and changes nothing. The batch is checked whole before anything is
 * written, so a bad event refuses the batch and changes nothing. A batch costs a few
 * statements whatever its size (a node sends up to 500 events, mostly usage): what
 * the events refer to is read in one query per table, and their movements are
 * recorded together.
 */
export async function applyEvents(db: Kysely<Tables>, node: NodeRow, events: NodeEvent[]): Promise<EventsReceipt> {
  if (events.every((event) => event.type === 'instance.usage')) return applyUsage(db, node, events);
  let freed = false;
  const receipt = await writeTransaction(db, async (trx) => {
    // What the events decide on, before reading it: the instances they are about.
    const instanceIds = events.flatMap((event) => (event.type !== 'instance.usage' && 'instance' in event ? [event.instance] : []));
    await lock(trx, ...instanceIds.map(locks.instance));
    const context = await eventContext(trx, node, events);
    // Every event is checked before anything is written.
    const usage = events.filter((event) => event.type === 'instance.usage');
    const now = Date.now();
    const hours = usage.map((event) => usageHour(context, node, event, now));
    const planned = events.filter((event) => event.type !== 'instance.usage').map((event) => ({ event, ...planEvent(context, node, event) }));
    const recorded = await recordMany(trx, planned);
    const [counted] = usage.length === 0 ? [[]] : await recordUsage(trx, [{ nodeId: node.id, actor: `node:${node.name}`, hours }]);
    freed = planned.some(({ movement, meta }) => movement.kind === 'instance.destroyed' && recorded.has(meta.id));
    const counts = new Map<NodeEvent, boolean>();
    // Two events may record the same movement: the first one counts.
    for (const { event, meta } of planned) counts.set(event, recorded.delete(meta.id));
    usage.forEach((event, i) => counts.set(event, counted![i]!));
    const answer = receiptOf(events, counts);
    // What a start or a bang sets off in its tree, once the batch's own movements are in.
    const applied = new Set(answer.applied);
    for (const { event, movement } of planned) {
      if (!applied.has(event.id) || (event.type !== 'instance.started' && event.type !== 'instance.bang')) continue;
      await afterNodeEvent(trx, node, event, movement, context.instances.get(event.instance));
    }
    return answer;
  });
  if (freed) await allocatePending(db);
  return receipt;
}

/** The instance an event is about, checked to be in the event's partition of this node. */
function hostedInstance(context: EventContext, node: NodeRow, event: Exclude<NodeEvent, { software: string }>) {
  const pid = partitionId(node.id, event.partition);
  const partition = context.partitions.get(pid);
  if (!partition) throw new PledgerError('FORBIDDEN', `partition ${event.partition} is not a partition of node ${node.name}`);
  const instance = context.instances.get(event.instance);
  if (!instance || partition.instance_id !== instance.id) {
    throw new PledgerError('FORBIDDEN', `instance ${event.instance} is not allocated to partition ${event.partition} of node ${node.name}`);
  }
  return { instance, pid };
}

/** Checks that an event (other than usage) is this node's to send, and turns it into the movement it records. */
function planEvent(context: EventContext, node: NodeRow, event: NodeEvent): { movement: Movement; meta: MovementRecord & { id: string } } {
  const actor = `node:${node.name}`;
  if ('software' in event) {
    const softwareId = context.softwareByHash.get(event.software);
    if (!softwareId) throw new PledgerError('FORBIDDEN', `software ${event.software} is not supplied to node ${node.name}`);
    const status = event.type === 'software.built' ? 'built' : event.type === 'software.error' ? 'error' : 'removed';
    return {
      movement: { kind: 'supply.reported', data: { nodeId: node.id, softwareId, status, message: event.message ?? null } },
      meta: { id: `node:${node.id}:${event.id}`, actor, subject: node.id },
    };
  }

  const { instance, pid } = hostedInstance(context, node, event);
  const meta = { id: `node:${node.id}:${event.id}`, actor, subject: instance.id };

  switch (event.type) {
    case 'instance.usage':
      throw new PledgerError('INTERNAL', 'usage is recorded by recordUsage');
    case 'instance.promises':
      checkSerial(event.serial, instance);
      return { movement: { kind: 'instance.promises', data: { instanceId: instance.id, serial: event.serial, reportedAt: event.at, promises: event.promises } }, meta };
    case 'instance.bang': {
      checkSerial(event.serial, instance);
      // One redeployment per serial: a bang about an older serial was already answered.
      const redeploy = event.serial === instance.serial && instance.state === 'started';
      return {
        movement: { kind: 'instance.banged', data: { instanceId: instance.id, reportedSerial: event.serial, serial: redeploy ? instance.serial + 1 : null, message: event.message } },
        meta,
      };
    }
    default:
      checkSerial(event.serial, instance);
      return {
        movement: { kind: event.type, data: { instanceId: instance.id, serial: event.serial, partitionId: pid, message: event.message ?? null, connection: event.connection } },
        meta,
      };
  }
}

function checkSerial(serial: number, instance: { id: string; serial: number }): void {
  if (serial > instance.serial) throw new PledgerError('BAD_REQUEST', `instance ${instance.id} has no serial ${serial} yet`);
}
