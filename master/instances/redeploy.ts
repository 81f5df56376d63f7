/** Asking a node to deploy an instance again, because something it depends on changed. */
import type { Transaction } from 'kysely';
import type { Tables } from '../db/tables.js';
import { lock, locks } from '../ledger/locks.js';
import { record } from '../ledger/movements.js';

/** Records a new serial for a started instance, so that its node deploys it again. */
export async function redeploy(trx: Transaction<Tables>, instanceId: string, reason: string): Promise<void> {
  await lock(trx, locks.instance(instanceId));
  const row = await trx.selectFrom('instances').select(['serial', 'state']).where('id', '=', instanceId).executeTakeFirst();
  if (!row || row.state !== 'started') return;
  await record(trx, { kind: 'instance.redeploy', data: { instanceId, serial: row.serial + 1, reason } }, { actor: 'master', subject: instanceId });
}
