/**
 * The nodes a master knows: registering them, their settings (labels, resources, scope,
 * owner), who they are by their credential, when they last called, and how they are listed.
 */
import { randomUUID } from 'node:crypto';
import type { Kysely } from 'kysely';
import type { Labels, NodeCredential, NodeRegister, NodeUpdate, NodeView, Resources } from '../../protocol/api.js';
import { PledgerError } from '../../protocol/errors.js';
import type { AccountRow } from '../accounts.js';
import { writeTransaction } from '../db/group-commit.js';
import type { NodesTable, Tables } from '../db/tables.js';
import { lock, locks } from '../ledger/locks.js';
import { record } from '../ledger/movements.js';
import { hashSecret, newSecret } from '../secrets.js';
import { SILENT_AFTER_MS, allocatePending } from '../instances/allocation.js';

export type NodeRow = NodesTable;

/**
 * Registers a node and returns its credential, shown this once. By default the node is
 * open to every account, owned by the operator who registered it, without labels.
 */
export async function registerNode(db: Kysely<Tables>, request: NodeRegister, registrar: AccountRow): Promise<NodeCredential> {
  const credential = newSecret('plg_n');
  const { name } = request;
  // Two registrations of one name: the database keeps names unique, and the one that
  // loses runs again and is refused here.
  await writeTransaction(db, async (trx) => {
    const taken = await trx.selectFrom('nodes').select('id').where('name', '=', name).executeTakeFirst();
    if (taken) throw new PledgerError('CONFLICT', `a node named "${name}" is already registered`);
    const ownerId = request.owner === undefined ? registrar.id : await accountId(trx, request.owner);
    const nodeId = randomUUID();
    await record(
      trx,
      { kind: 'node.registered', data: { nodeId, name, credentialHash: hashSecret(credential), scope: request.scope ?? 'open', ownerId, labels: request.labels ?? {}, resources: request.resources ?? {} } },
      { actor: `account:${registrar.name}`, subject: nodeId },
    );
  });
  return { name, credential };
}

/**
 * Changes a node's labels or resources (each the whole set), scope, owner, or whether
 * it may file built parts in the binary cache; instances waiting for a partition are
 * tried again.
 */
export async function updateNode(db: Kysely<Tables>, name: string, update: NodeUpdate, actor: string): Promise<NodeView> {
  await writeTransaction(db, async (trx) => {
    const found = await trx.selectFrom('nodes').select('id').where('name', '=', name).executeTakeFirst();
    if (!found) throw new PledgerError('NODE_NOT_FOUND', `no node named "${name}"`);
    await lock(trx, locks.node(found.id));
    const node = await trx.selectFrom('nodes').selectAll().where('id', '=', found.id).executeTakeFirstOrThrow();
    const labels = update.labels ?? (await labelsOf(trx, [node.id])).get(node.id) ?? {};
    const ownerId = update.owner === undefined ? node.owner_id : update.owner === null ? null : await accountId(trx, update.owner);
    const resources = update.resources ?? declaredResources((await resourcesOf(trx, [node.id])).get(node.id));
    const binaryCacheUpload = update.binaryCacheUpload ?? node.binary_cache_upload === 1;
    await record(
      trx,
      { kind: 'node.updated', data: { nodeId: node.id, scope: update.scope ?? node.scope, ownerId, labels, resources, binaryCacheUpload } },
      { actor, subject: node.id },
    );
  });
  await allocatePending(db);
  return (await listNodes(db)).find((n) => n.name === name)!;
}

async function accountId(db: Kysely<Tables>, name: string): Promise<string> {
  const account = await db.selectFrom('accounts').select('id').where('name', '=', name).executeTakeFirst();
  if (!account) throw new PledgerError('ACCOUNT_NOT_FOUND', `no account named "${name}"`);
  return account.id;
}

async function labelsOf(db: Kysely<Tables>, nodeIds: string[]): Promise<Map<string, Labels>> {
  const byNode = new Map<string, Labels>();
  if (nodeIds.length === 0) return byNode;
  const rows = await db.selectFrom('node_labels').selectAll().where('node_id', 'in', nodeIds).orderBy('key').execute();
  for (const r of rows) byNode.set(r.node_id, { ...byNode.get(r.node_id), [r.key]: r.value });
  return byNode;
}

type ResourceUse = NodeView['resources'];

/** The resources each node declares, with what its instances take of them. */
async function resourcesOf(db: Kysely<Tables>, nodeIds: string[]): Promise<Map<string, ResourceUse>> {
  const byNode = new Map<string, ResourceUse>();
  if (nodeIds.length === 0) return byNode;
  const rows = await db.selectFrom('node_resources').selectAll().where('node_id', 'in', nodeIds).where('capacity', 'is not', null).orderBy('name').execute();
  for (const r of rows) byNode.set(r.node_id, { ...byNode.get(r.node_id), [r.name]: { capacity: Number(r.capacity), used: Number(r.used) } });
  return byNode;
}

function declaredResources(use: ResourceUse | undefined): Resources {
  return Object.fromEntries(Object.entries(use ?? {}).map(([name, { capacity }]) => [name, capacity]));
}

export async function nodeById(db: Kysely<Tables>, id: string): Promise<NodeRow | undefined> {
  return db.selectFrom('nodes').selectAll().where('id', '=', id).executeTakeFirst();
}

/** The node a credential names, with when it last called (read with it: every node call needs both). */
export async function nodeByCredential(db: Kysely<Tables>, credential: string): Promise<(NodeRow & { last_seen_at: string | null }) | undefined> {
  return db
    .selectFrom('nodes')
    .leftJoin('node_heartbeats', 'node_heartbeats.node_id', 'nodes.id')
    .selectAll('nodes')
    .select('node_heartbeats.last_seen_at')
    .where('nodes.credential_hash', '=', hashSecret(credential))
    .executeTakeFirst();
}

/**
 * Notes that a node called; written at most once a minute per node. Answers whether the
 * node is back from silence: it may take instances again, and those waiting for a
 * partition should be tried again.
 */
export async function touchNode(db: Kysely<Tables>, nodeId: string, lastSeenAt: string | null): Promise<boolean> {
  const now = Date.now();
  // Most calls come within the minute: nothing to write.
  if (lastSeenAt !== null && lastSeenAt >= new Date(now - 60_000).toISOString()) return false;
  const at = new Date(now).toISOString();
  // With the other writes of the moment: a fleet's heartbeats would otherwise cost a
  // sync to disk each on SQLite.
  await writeTransaction(db, (trx) =>
    trx
      .insertInto('node_heartbeats')
      .values({ node_id: nodeId, last_seen_at: at })
      .onConflict((oc) => oc.column('node_id').doUpdateSet({ last_seen_at: at }).where('node_heartbeats.last_seen_at', '<', at))
      .execute(),
  );
  return lastSeenAt !== null && lastSeenAt < new Date(now - SILENT_AFTER_MS).toISOString();
}

export async function listNodes(db: Kysely<Tables>): Promise<NodeView[]> {
  const nodes = await db
    .selectFrom('nodes')
    .leftJoin('node_heartbeats', 'node_heartbeats.node_id', 'nodes.id')
    .leftJoin('accounts', 'accounts.id', 'nodes.owner_id')
    .select(['nodes.id', 'nodes.name', 'nodes.registered_at', 'nodes.scope', 'nodes.binary_cache_upload', 'accounts.name as owner', 'node_heartbeats.last_seen_at'])
    .orderBy('nodes.name')
    .execute();
  const labels = await labelsOf(db, nodes.map((n) => n.id));
  const resources = await resourcesOf(db, nodes.map((n) => n.id));
  const partitions = await db.selectFrom('partitions').select(['node_id', 'instance_id']).execute();
  const supplies = await db
    .selectFrom('supplies')
    .innerJoin('software', 'software.id', 'supplies.software_id')
    .select(['supplies.node_id', 'software.name', 'software.version', 'software.hash', 'supplies.state', 'supplies.status', 'supplies.message'])
    .orderBy('software.name')
    .execute();
  return nodes.map((n) => {
    const own = partitions.filter((p) => p.node_id === n.id);
    return {
      name: n.name,
      labels: labels.get(n.id) ?? {},
      scope: n.scope,
      binaryCacheUpload: Number(n.binary_cache_upload) === 1,
      owner: n.owner,
      registeredAt: n.registered_at,
      lastSeenAt: n.last_seen_at,
      partitions: own.length,
      freePartitions: own.filter((p) => p.instance_id === null).length,
      resources: resources.get(n.id) ?? {},
      software: supplies
        .filter((s) => s.node_id === n.id)
        .map((s) => ({ name: s.name, version: s.version, hash: s.hash, state: s.state, status: s.status, message: s.message })),
    };
  });
}
