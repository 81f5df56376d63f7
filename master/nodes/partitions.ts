/** The partitions a node lays out and reports. */
import type { Kysely } from 'kysely';
import type { PartitionDefinition } from '../../protocol/api.js';
import { PledgerError } from '../../protocol/errors.js';
import { writeTransaction } from '../db/group-commit.js';
import type { Tables } from '../db/tables.js';
import { lock, locks } from '../ledger/locks.js';
import { record } from '../ledger/movements.js';
import { allocatePending } from '../instances/allocation.js';
import type { NodeRow } from './registry.js';

/**
 * Records the partitions a node laid out. Formatting again with the same layout changes
 * nothing; new partitions are added; a partition in use cannot change its address.
 */
export async function formatPartitions(db: Kysely<Tables>, node: NodeRow, partitions: PartitionDefinition[]): Promise<void> {
  const references = new Set(partitions.map((p) => p.reference));
  if (references.size !== partitions.length) throw new PledgerError('BAD_REQUEST', 'a partition reference is listed twice');
  for (const p of partitions) {
    if (p.ports.first > p.ports.last) throw new PledgerError('BAD_REQUEST', `partition ${p.reference}: its first port is after its last`);
  }
  const changed = await writeTransaction(db, async (trx) => {
    await lock(trx, locks.node(node.id));
    const current = await trx.selectFrom('partitions').selectAll().where('node_id', '=', node.id).execute();
    const byReference = new Map(current.map((p) => [p.reference, p]));
    const updates = partitions.filter((p) => {
      const known = byReference.get(p.reference);
      if (!known) return true;
      const same = known.ip === p.ip && known.port_first === p.ports.first && known.port_last === p.ports.last;
      if (!same && known.instance_id !== null) {
        throw new PledgerError('CONFLICT', `partition ${p.reference} hosts an instance: its address and ports cannot change`);
      }
      return !same;
    });
    if (updates.length === 0) return false;
    await record(trx, { kind: 'node.formatted', data: { nodeId: node.id, partitions: updates } }, { actor: `node:${node.name}`, subject: node.id });
    return true;
  });
  if (changed) await allocatePending(db);
}
