/**
 * What an applied node event sets off beyond its own movement: the connection
 * parameters a host published for its shared instances, the parent of a child that
 * published, the rest of a tree that banged.
 */
import type { Transaction } from 'kysely';
import type { NodeEvent } from '../../protocol/api.js';
import type { Tables } from '../db/tables.js';
import { lock, locks } from '../ledger/locks.js';
import { record, type Movement } from '../ledger/movements.js';
import { redeploy } from '../instances/redeploy.js';
import type { NodeRow } from './registry.js';
import { isReady } from '../instances/views.js';

/**
 * What an applied node event sets off beyond its own movement: the connection
 * parameters a host published for its shared instances, the parent of a child that
 * published, the rest of a tree that banged.
 */
export async function afterNodeEvent(
  trx: Transaction<Tables>,
  node: NodeRow,
  event: NodeEvent,
  movement: Movement,
  before: { connection: string } | undefined,
): Promise<void> {
  if (event.type === 'instance.bang') {
    // A bang about an older serial was answered already.
    if (movement.kind !== 'instance.banged' || movement.data.serial === null) return;
    const row = await trx.selectFrom('instances').select(['id', 'title', 'root_id']).where('id', '=', event.instance).executeTakeFirstOrThrow();
    const tree = await trx
      .selectFrom('instances')
      .select('id')
      .where('root_id', '=', row.root_id ?? row.id)
      .where('id', '!=', row.id)
      .where('state', '=', 'started')
      .orderBy('title')
      .execute();
    for (const member of tree) await redeploy(trx, member.id, `bang from ${row.title}: ${event.message}`);
    return;
  }
  if (event.type !== 'instance.started') return;
  for (const [reference, shared] of Object.entries(event.shared ?? {})) {
    await lock(trx, locks.instance(reference));
    const row = await trx.selectFrom('instances').select(['host_id', 'connection']).where('id', '=', reference).executeTakeFirst();
    // A shared instance detached meanwhile is no longer this host's to report.
    if (row?.host_id !== event.instance) continue;
    const applied = await record(
      trx,
      { kind: 'instance.started', data: { instanceId: reference, serial: shared.serial, partitionId: null, message: null, connection: shared.connection } },
      { id: `node:${node.id}:${event.id}:${reference}`, actor: `node:${node.name}`, subject: reference },
    );
    if (applied) await childPublished(trx, reference, row.connection);
  }
  await childPublished(trx, event.instance, before?.connection ?? '{}');
}

/**
 * A child that published: its parent is deployed again if it waits for it, or if the
 * values changed. Comparing the values keeps a parent and a child from redeploying
 * each other forever.
 */
async function childPublished(trx: Transaction<Tables>, childId: string, previousConnection: string): Promise<void> {
  const child = await trx.selectFrom('instances').select(['title', 'parent_id', 'connection', 'status', 'state']).where('id', '=', childId).executeTakeFirst();
  if (!child?.parent_id || !isReady(child)) return;
  const parent = await trx.selectFrom('instances').select(['id', 'status']).where('id', '=', child.parent_id).executeTakeFirst();
  if (!parent) return;
  if (parent.status === 'waiting' || child.connection !== previousConnection) {
    await redeploy(trx, parent.id, `${child.title} published its connection parameters`);
  }
}
