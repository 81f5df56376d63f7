/**
 * Allocation: giving an instance a free partition on a node that has its software.
 *
 * Deterministic: among the fitting partitions the first by node name, then by partition
 * reference. Safe with several master processes: the partition is taken with a
 * conditional update, so two masters can never give the same partition twice.
 */
import type { Kysely, Transaction } from 'kysely';
import type { Tables } from './db/tables.js';
import { record } from './ledger/movements.js';

interface Allocatable {
  id: string;
  software_id: string;
  message: string | null;
}

/** Allocates `instance` inside the caller's transaction, or records why it cannot. */
export async function allocate(trx: Transaction<Tables>, instance: Allocatable, actor: string): Promise<boolean> {
  const partition = await trx
    .selectFrom('partitions')
    .innerJoin('nodes', 'nodes.id', 'partitions.node_id')
    .innerJoin('supplies', (join) =>
      join
        .onRef('supplies.node_id', '=', 'partitions.node_id')
        .on('supplies.software_id', '=', instance.software_id)
        .on('supplies.state', '=', 'available'),
    )
    .select(['partitions.id', 'partitions.reference', 'nodes.name'])
    .where('partitions.instance_id', 'is', null)
    .orderBy('nodes.name')
    .orderBy('partitions.reference')
    .executeTakeFirst();
  if (partition) {
    await record(
      trx,
      { kind: 'instance.allocated', data: { instanceId: instance.id, partitionId: partition.id, node: partition.name, partition: partition.reference } },
      { actor, subject: instance.id },
    );
    return true;
  }
  const reason = await whyUnallocatable(trx, instance.software_id);
  if (reason !== instance.message) {
    await record(trx, { kind: 'instance.unallocated', data: { instanceId: instance.id, reason } }, { actor, subject: instance.id });
  }
  return false;
}

async function whyUnallocatable(trx: Transaction<Tables>, softwareId: string): Promise<string> {
  const supplied = await trx
    .selectFrom('supplies')
    .select((eb) => eb.fn.countAll().as('n'))
    .where('software_id', '=', softwareId)
    .where('state', '=', 'available')
    .executeTakeFirstOrThrow();
  if (Number(supplied.n) === 0) return `no node has ${softwareId} supplied`;
  return `no node that has ${softwareId} supplied has a free partition`;
}

/**
 * Retries every instance that waits for a partition: called when partitions or
 * supplies appear, or a partition is freed.
 */
export async function allocatePending(db: Kysely<Tables>): Promise<void> {
  const waiting = await db
    .selectFrom('instances')
    .select(['id', 'software_id', 'message'])
    .where('partition_id', 'is', null)
    .where('state', '!=', 'destroyed')
    .orderBy('created_at')
    .execute();
  for (const instance of waiting) {
    await db.transaction().execute(async (trx) => {
      // Read again inside the transaction: another master may have allocated it.
      const current = await trx
        .selectFrom('instances')
        .select(['id', 'software_id', 'message'])
        .where('id', '=', instance.id)
        .where('partition_id', 'is', null)
        .where('state', '!=', 'destroyed')
        .executeTakeFirst();
      if (current) await allocate(trx, current, 'master');
    });
  }
}
