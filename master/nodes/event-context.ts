/** What a batch of node events refers to, read once for the whole batch, and the receipt that answers it. */
import type { Transaction } from 'kysely';
import type { EventsReceipt, NodeEvent } from '../../protocol/api.js';
import type { Tables } from '../db/tables.js';
import { partitionId } from '../ledger/ids.js';
import type { NodeRow } from './registry.js';

export interface EventContext {
  /** The node's software, by hash. */
  softwareByHash: Map<string, string>;
  partitions: Map<string, { id: string; instance_id: string | null }>;
  /** `connection`: what each instance had published before the batch (a parent redeploys when it changes). */
  instances: Map<
    string,
    Pick<Tables['instances'], 'id' | 'serial' | 'state' | 'status' | 'owner_id' | 'software_id' | 'software_type' | 'partition_id' | 'last_partition_id' | 'connection' | 'created_at' | 'updated_at'>
  >;
}

/** Everything a batch of events refers to, read in one query per table. */
export async function eventContext(trx: Transaction<Tables>, node: NodeRow, events: NodeEvent[]): Promise<EventContext> {
  const hashes = new Set<string>();
  const partitionIds = new Set<string>();
  const instanceIds = new Set<string>();
  for (const event of events) {
    if ('software' in event) {
      hashes.add(event.software);
    } else {
      // Usage is checked against the instance alone (`usageHour`).
      if (event.type !== 'instance.usage') partitionIds.add(partitionId(node.id, event.partition));
      instanceIds.add(event.instance);
    }
  }
  const software =
    hashes.size === 0
      ? []
      : await trx
          .selectFrom('supplies')
          .innerJoin('software', 'software.id', 'supplies.software_id')
          .select(['software.id', 'software.hash'])
          .where('supplies.node_id', '=', node.id)
          .where('software.hash', 'in', [...hashes])
          .execute();
  const partitions =
    partitionIds.size === 0 ? [] : await trx.selectFrom('partitions').select(['id', 'instance_id']).where('id', 'in', [...partitionIds]).execute();
  const instances =
    instanceIds.size === 0
      ? []
      : await trx
          .selectFrom('instances')
          .select(['id', 'serial', 'state', 'status', 'owner_id', 'software_id', 'software_type', 'partition_id', 'last_partition_id', 'connection', 'created_at', 'updated_at'])
          .where('id', 'in', [...instanceIds])
          .execute();
  return {
    softwareByHash: new Map(software.map((s) => [s.hash, s.id])),
    partitions: new Map(partitions.map((p) => [p.id, p])),
    instances: new Map(instances.map((i) => [i.id, i])),
  };
}

/** The receipt of a batch, in its order, given whether each event counted. */
export function receiptOf(events: NodeEvent[], counted: Map<NodeEvent, boolean>): EventsReceipt {
  const receipt: EventsReceipt = { applied: [], duplicates: [] };
  for (const event of events) (counted.get(event) ? receipt.applied : receipt.duplicates).push(event.id);
  return receipt;
}
