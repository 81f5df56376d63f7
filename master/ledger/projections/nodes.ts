/** Nodes: their settings, labels, resources, partitions and supplies. Each is guarded by its node's lock. */
import type { Labels, Resources } from '../../../protocol/api.js';
import type { Db, Projection } from '../applier.js';
import { locks } from '../locks.js';
import { partitionId } from '../ids.js';

type NodeKinds = 'node.registered' | 'node.updated' | 'node.formatted' | 'supply.requested' | 'supply.reported';

export const nodes: Projection<NodeKinds> = {
  tables: ['supplies', 'partitions', 'node_labels', 'node_resources', 'nodes'],
  appliers: {
    'node.registered': {
      locks: (d) => [locks.node(d.nodeId)],
      apply: async (db, d, at) => {
        const { nodeId, name, credentialHash, scope = 'open', ownerId = null, labels = {}, resources = {} } = d;
        await db.insertInto('nodes').values({ id: nodeId, name, credential_hash: credentialHash, registered_at: at, scope, owner_id: ownerId, free_partitions: 0, binary_cache_upload: 0, desired_version: 0 }).execute();
        await setLabels(db, nodeId, labels);
        await setResources(db, nodeId, resources);
      },
    },
    'node.updated': {
      locks: (d) => [locks.node(d.nodeId)],
      apply: async (db, { nodeId, scope, ownerId, labels, resources, binaryCacheUpload }) => {
        await db
          .updateTable('nodes')
          .set({ scope, owner_id: ownerId, ...(binaryCacheUpload === undefined ? {} : { binary_cache_upload: binaryCacheUpload ? 1 : 0 }) })
          .where('id', '=', nodeId)
          .execute();
        await setLabels(db, nodeId, labels);
        if (resources) await setResources(db, nodeId, resources);
      },
    },
    'node.formatted': {
      locks: (d) => [locks.node(d.nodeId)],
      apply: async (db, { nodeId, partitions }) => {
        for (const p of partitions) {
          await db
            .insertInto('partitions')
            .values({ id: partitionId(nodeId, p.reference), node_id: nodeId, reference: p.reference, ip: p.ip, port_first: p.ports.first, port_last: p.ports.last, instance_id: null })
            .onConflict((oc) => oc.column('id').doUpdateSet({ ip: p.ip, port_first: p.ports.first, port_last: p.ports.last }))
            .execute();
        }
        await countFreePartitions(db, nodeId);
        await desiredStateChanged(db, nodeId);
      },
    },
    'supply.requested': {
      locks: (d) => [locks.node(d.nodeId)],
      apply: async (db, { nodeId, softwareId, state }) => {
        await db
          .insertInto('supplies')
          .values({ node_id: nodeId, software_id: softwareId, state, status: 'pending', message: null })
          .onConflict((oc) => oc.columns(['node_id', 'software_id']).doUpdateSet({ state, status: 'pending', message: null }))
          .execute();
        await desiredStateChanged(db, nodeId);
      },
    },
    'supply.reported': {
      locks: (d) => [locks.node(d.nodeId)],
      apply: async (db, { nodeId, softwareId, status, message }) => {
        await db.updateTable('supplies').set({ status, message }).where('node_id', '=', nodeId).where('software_id', '=', softwareId).execute();
      },
    },
  },
};

/**
 * The node's desired state changed: its version moves on, so that its next poll gets
 * the new state while an unchanged poll is answered from the version alone.
 */
export async function desiredStateChanged(db: Db, nodeId: string): Promise<void> {
  await db.updateTable('nodes').set((eb) => ({ desired_version: eb('desired_version', '+', 1) })).where('id', '=', nodeId).execute();
}

async function setLabels(db: Db, nodeId: string, labels: Labels): Promise<void> {
  await db.deleteFrom('node_labels').where('node_id', '=', nodeId).execute();
  const rows = Object.entries(labels).map(([key, value]) => ({ node_id: nodeId, key, value }));
  if (rows.length > 0) await db.insertInto('node_labels').values(rows).execute();
}

/**
 * Declares a node's resources (the whole set). Rows of resources no longer declared keep
 * what instances take of them, with no capacity: nothing new goes there for them.
 */
async function setResources(db: Db, nodeId: string, resources: Resources): Promise<void> {
  await db.updateTable('node_resources').set({ capacity: null }).where('node_id', '=', nodeId).execute();
  for (const [name, capacity] of Object.entries(resources)) {
    await db
      .insertInto('node_resources')
      .values({ node_id: nodeId, name, capacity, used: 0 })
      .onConflict((oc) => oc.columns(['node_id', 'name']).doUpdateSet({ capacity }))
      .execute();
  }
}

/** Adds (`sign` 1) or gives back (`sign` -1) what an instance takes of a node's resources. */
export async function takeResources(db: Db, nodeId: string, resources: Resources, sign: 1 | -1): Promise<void> {
  for (const [name, amount] of Object.entries(resources)) {
    if (amount === 0) continue;
    await db
      .insertInto('node_resources')
      .values({ node_id: nodeId, name, capacity: null, used: sign * amount })
      .onConflict((oc) => oc.columns(['node_id', 'name']).doUpdateSet((eb) => ({ used: eb('node_resources.used', '+', sign * amount) })))
      .execute();
  }
}

export async function countFreePartitions(db: Db, nodeId: string): Promise<void> {
  await db
    .updateTable('nodes')
    .set((eb) => ({
      // Counted over the node's own partitions: with `instance_id is null` in the WHERE
      // clause, SQLite walks the free partitions of the whole fleet instead.
      free_partitions: eb
        .selectFrom('partitions')
        .select((sub) => sub.fn.coalesce(sub.fn.sum<number>(sub.case().when('partitions.instance_id', 'is', null).then(1).else(0).end()), sub.lit(0)).as('n'))
        .where('partitions.node_id', '=', nodeId),
    }))
    .where('id', '=', nodeId)
    .execute();
}
