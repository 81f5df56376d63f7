/**
 * Instances: what was requested of each, where it runs, what its node reported, the
 * promises it keeps, and the shared instances hosted in it. Each movement holds its
 * instance's lock; one that takes or frees a partition holds its node's too.
 */
import { sql } from 'kysely';
import type { Db, Projection } from '../applier.js';
import { locks, type LockKey } from '../locks.js';
import type { InstanceReportKind } from '../movements.js';
import { nodeOf } from '../ids.js';
import { countFreePartitions, takeResources } from './nodes.js';
import { readJson } from '../../db/json-columns.js';

type InstanceKinds =
  | 'instance.requested'
  | 'instance.allocated'
  | 'instance.unallocated'
  | 'instance.hosted'
  | 'instance.redeploy'
  | 'instance.promises'
  | 'instance.banged'
  | InstanceReportKind;

const instanceLock = (d: { instanceId: string }): LockKey[] => [locks.instance(d.instanceId)];

/** A node's report about an instance: its status for the serial it names. */
const report = { locks: instanceLock, apply: applyReport };

export const instances: Projection<InstanceKinds> = {
  tables: ['instance_promises', 'shared_backends', 'instances'],
  appliers: {
    'instance.requested': {
      locks: instanceLock,
      apply: async (db, d, at) => {
        // Plain SQL: one of these follows every request, and building it cost more than running it.
        const parameters = JSON.stringify(d.parameters);
        const sla = JSON.stringify(d.sla ?? {});
        const resources = JSON.stringify(d.resources ?? {});
        const needs = JSON.stringify(d.needs ?? {});
        const updated = await sql`
          update instances set software_id = ${d.softwareId}, software_type = ${d.softwareType}, parameters = ${parameters}, sla = ${sla},
            resources = ${resources}, needs = ${needs}, state = ${d.state}, serial = ${d.serial},
            status = case when partition_id is null and host_id is null then 'unallocated' else 'allocated' end, message = null, updated_at = ${at}
          where id = ${d.instanceId}`.execute(db);
        if (Number(updated.numAffectedRows) === 0) {
          await sql`
            insert into instances (id, owner_id, title, partition_id, last_partition_id, connection, created_at, root_id, parent_id, shared, host_id,
              software_id, software_type, parameters, sla, resources, needs, state, serial, status, message, updated_at)
            values (${d.instanceId}, ${d.ownerId}, ${d.title}, null, null, '{}', ${at}, ${d.rootId ?? d.instanceId}, ${d.parentId ?? null}, ${d.shared ? 1 : 0}, null,
              ${d.softwareId}, ${d.softwareType}, ${parameters}, ${sla}, ${resources}, ${needs}, ${d.state}, ${d.serial}, 'unallocated', null, ${at})`.execute(db);
        } else {
          await shownChanged(db, d.instanceId);
        }
      },
    },
    'instance.allocated': {
      locks: (d) => [locks.instance(d.instanceId), locks.node(nodeOf(d.partitionId))],
      apply: async (db, { instanceId, partitionId, resources = {} }, at) => {
        // Conditional, as a last guard: the node's lock already keeps two masters from taking one partition.
        const taken = await sql`update partitions set instance_id = ${instanceId} where id = ${partitionId} and instance_id is null`.execute(db);
        if (Number(taken.numAffectedRows) !== 1) throw new Error(`partition ${partitionId} is not free: the allocation did not hold its node's lock`);
        const nodeId = nodeOf(partitionId);
        await sql`update nodes set free_partitions = free_partitions - 1, desired_version = desired_version + 1 where id = ${nodeId}`.execute(db);
        await takeResources(db, nodeId, resources, 1);
        await sql`
          update instances set partition_id = ${partitionId}, last_partition_id = ${partitionId}, status = 'allocated', message = null, updated_at = ${at}
          where id = ${instanceId}`.execute(db);
      },
    },
    'instance.unallocated': {
      locks: instanceLock,
      apply: async (db, { instanceId, reason }, at) => {
        await shownChanged(db, instanceId);
        await db.updateTable('instances').set({ status: 'unallocated', message: reason, host_id: null, shared_route: null, updated_at: at }).where('id', '=', instanceId).execute();
        await db.deleteFrom('shared_backends').where('instance_id', '=', instanceId).execute();
      },
    },
    'instance.hosted': {
      // Not the host's: the route it takes there is held by a unique key, and the host's
      // redeployment that follows takes the host's lock.
      locks: instanceLock,
      apply: async (db, { instanceId, hostId, route = null, backends = [] }, at) => {
        // Its previous host, if any, and its new one.
        await shownChanged(db, instanceId);
        await db.updateTable('instances').set({ host_id: hostId, shared_route: route, status: 'allocated', message: null, updated_at: at }).where('id', '=', instanceId).execute();
        await shownChanged(db, instanceId);
        await db.deleteFrom('shared_backends').where('instance_id', '=', instanceId).execute();
        if (backends.length > 0) await db.insertInto('shared_backends').values(backends.map((partition_id) => ({ instance_id: instanceId, partition_id }))).execute();
      },
    },
    'instance.redeploy': {
      locks: instanceLock,
      apply: async (db, { instanceId, serial }, at) => {
        await db.updateTable('instances').set({ serial, status: 'allocated', message: null, updated_at: at }).where('id', '=', instanceId).execute();
        await shownChanged(db, instanceId);
      },
    },
    'instance.promises': {
      locks: instanceLock,
      apply: async (db, { instanceId, reportedAt, promises }) => {
        const newer = await db.selectFrom('instance_promises').select('name').where('instance_id', '=', instanceId).where('reported_at', '>', reportedAt).executeTakeFirst();
        if (newer) return;
        await db.deleteFrom('instance_promises').where('instance_id', '=', instanceId).execute();
        if (promises.length > 0) {
          await db
            .insertInto('instance_promises')
            .values(promises.map((p) => ({ instance_id: instanceId, name: p.name, status: p.status, message: p.message, since: p.since, reported_at: reportedAt })))
            .execute();
        }
      },
    },
    'instance.banged': {
      locks: instanceLock,
      apply: async (db, { instanceId, serial }, at) => {
        if (serial === null) return;
        await db.updateTable('instances').set({ serial, status: 'allocated', message: null, updated_at: at }).where('id', '=', instanceId).execute();
        await shownChanged(db, instanceId);
      },
    },
    'instance.deployed': report,
    'instance.started': report,
    'instance.stopped': report,
    // Its partition's node too: a destroyed instance frees its partition.
    'instance.destroyed': { locks: (d) => [locks.instance(d.instanceId), ...(d.partitionId ? [locks.node(nodeOf(d.partitionId))] : [])], apply: applyReport },
    'instance.error': report,
    'instance.waiting': report,
  },
};

async function applyReport(db: Db, data: { instanceId: string; serial: number; message: string | null; connection?: Record<string, string> }, at: string, kind: InstanceReportKind): Promise<void> {
  const { instanceId, serial, message, connection } = data;
  const status = kind.slice('instance.'.length);
  const current = await db.selectFrom('instances').select(['serial', 'state', 'needs']).where('id', '=', instanceId).executeTakeFirstOrThrow();
  if (status === 'destroyed' && current.state === 'destroyed') {
    // The partition is free again, and what the instance took: the node wiped it.
    await shownChanged(db, instanceId);
    const freed = await db.selectFrom('partitions').select('node_id').where('instance_id', '=', instanceId).executeTakeFirst();
    await db.updateTable('partitions').set({ instance_id: null }).where('instance_id', '=', instanceId).execute();
    if (freed) {
      await countFreePartitions(db, freed.node_id);
      await takeResources(db, freed.node_id, readJson('needs', current.needs), -1);
    }
    await db.updateTable('instances').set({ partition_id: null, host_id: null, shared_route: null }).where('id', '=', instanceId).execute();
    await db.deleteFrom('shared_backends').where('instance_id', '=', instanceId).execute();
  }
  // A report about an older request is history, not the current status.
  if (serial !== current.serial) return;
  await db
    .updateTable('instances')
    .set({
      status,
      message: status === 'error' || status === 'waiting' ? message : null,
      ...(connection ? { connection: JSON.stringify(connection) } : {}),
      updated_at: at,
    })
    .where('id', '=', instanceId)
    .execute();
}

/**
 * What the nodes are asked to run changed for this instance: the desired state of the
 * node it runs on, and of the node of the instance hosting it, moves on.
 */
async function shownChanged(db: Db, instanceId: string): Promise<void> {
  await sql`
    update nodes set desired_version = desired_version + 1
    where id in (select node_id from partitions where instance_id = ${instanceId}
      or instance_id = (select host_id from instances where id = ${instanceId}))`.execute(db);
}
