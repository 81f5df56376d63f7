/** Instances as their owners read them: one, all, a tree, and the history of one in the ledger. */
import { sql, type Kysely, type RawBuilder } from 'kysely';
import type { InstanceTreeView, InstanceView, MovementView, PromiseState } from '../../protocol/api.js';
import { PledgerError } from '../../protocol/errors.js';
import type { AccountRow } from '../accounts.js';
import type { InstancesTable, Tables } from '../db/tables.js';
import { readJson } from '../db/json-columns.js';

/** An instance with its release, partition and node, the titles of its parent and root, and its host's node. */
type InstanceRow = InstancesTable & {
  software_name: string;
  software_version: string;
  software_hash: string;
  partition_reference: string | null;
  node_name: string | null;
  host_node_name: string | null;
  parent_title: string | null;
  root_title: string | null;
};

/**
 * The instances that `where` selects, as views read them. Plain SQL: every request
 * answers with its instance's view, and building this query through the query builder
 * cost more than running it.
 */
async function instanceRows(db: Kysely<Tables>, where: RawBuilder<unknown>): Promise<InstanceRow[]> {
  const { rows } = await sql<InstanceRow>`
    select instances.*, software.name as software_name, software.version as software_version, software.hash as software_hash,
      partitions.reference as partition_reference, nodes.name as node_name, host_node.name as host_node_name,
      parent.title as parent_title, root.title as root_title
    from instances
    join software on software.id = instances.software_id
    left join partitions on partitions.id = instances.partition_id
    left join nodes on nodes.id = partitions.node_id
    left join instances parent on parent.id = instances.parent_id
    left join instances root on root.id = instances.root_id
    left join instances host on host.id = instances.host_id
    left join partitions host_partition on host_partition.id = host.partition_id
    left join nodes host_node on host_node.id = host_partition.node_id
    where ${where}
    order by instances.title`.execute(db);
  return rows;
}

async function promisesOf(db: Kysely<Tables>, instanceIds: string[]): Promise<Map<string, PromiseState[]>> {
  const byInstance = new Map<string, PromiseState[]>();
  if (instanceIds.length === 0) return byInstance;
  const { rows } = await sql<Tables['instance_promises']>`
    select * from instance_promises where instance_id in (${sql.join(instanceIds)}) order by name`.execute(db);
  for (const r of rows) {
    const list = byInstance.get(r.instance_id) ?? [];
    list.push({ name: r.name, status: r.status as PromiseState['status'], message: r.message, since: r.since });
    byInstance.set(r.instance_id, list);
  }
  return byInstance;
}

/** Ready: the instance is what was asked of it (started and reported started, stopped and reported stopped...). */
export function isReady(row: { status: string; state: string }): boolean {
  return row.status === row.state;
}

function instanceView(row: InstanceRow, promises: PromiseState[] = []): InstanceView {
  // Once stopped or destroyed on its node, nothing answers at the published addresses and
  // no promise is checked: the ledger keeps the last reports, the view shows none of them.
  const gone = row.status === 'stopped' || row.status === 'destroyed';
  return {
    title: row.title,
    software: { name: row.software_name, version: row.software_version, hash: row.software_hash },
    softwareType: row.software_type,
    parameters: readJson('parameters', row.parameters),
    sla: readJson('sla', row.sla),
    resources: readJson('needs', row.needs),
    state: row.state,
    status: row.status as InstanceView['status'],
    message: row.message,
    ready: isReady(row),
    serial: row.serial,
    node: row.node_name ?? row.host_node_name,
    partition: row.partition_reference,
    connection: gone ? {} : readJson('connection', row.connection),
    promises: gone ? [] : promises,
    parent: row.parent_title,
    root: row.root_id && row.root_id !== row.id ? row.root_title : null,
    shared: row.shared === 1,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

export async function getInstance(db: Kysely<Tables>, owner: AccountRow, title: string): Promise<InstanceView> {
  const [row] = await instanceRows(db, sql`instances.owner_id = ${owner.id} and instances.title = ${title}`);
  // Another owner's instance of the same title is as absent as one that never was.
  if (!row) throw new PledgerError('INSTANCE_NOT_FOUND', `you have no instance named "${title}"`);
  return instanceView(row, (await promisesOf(db, [row.id])).get(row.id));
}

export async function listInstances(db: Kysely<Tables>, owner: AccountRow, includeDestroyed: boolean): Promise<InstanceView[]> {
  const rows = await instanceRows(db, sql`instances.owner_id = ${owner.id} ${includeDestroyed ? sql`` : sql`and instances.status != 'destroyed'`}`);
  const promises = await promisesOf(db, rows.map((r) => r.id));
  return rows.map((r) => instanceView(r, promises.get(r.id)));
}

export async function instanceHistory(db: Kysely<Tables>, owner: AccountRow, title: string): Promise<MovementView[]> {
  const instance = await db
    .selectFrom('instances')
    .select('id')
    .where('owner_id', '=', owner.id)
    .where('title', '=', title)
    .executeTakeFirst();
  if (!instance) throw new PledgerError('INSTANCE_NOT_FOUND', `you have no instance named "${title}"`);
  const rows = await db.selectFrom('movements').selectAll().where('subject', '=', instance.id).orderBy('seq').execute();
  return rows.map((r) => ({ seq: Number(r.seq), at: r.at, kind: r.kind, actor: r.actor, data: readJson('data', r.data) }));
}

/** An instance and its sub-instances, recursively (depth first, by title), without those destroyed. */
export async function instanceTree(db: Kysely<Tables>, owner: AccountRow, title: string): Promise<InstanceTreeView> {
  const [top] = await instanceRows(db, sql`instances.owner_id = ${owner.id} and instances.title = ${title}`);
  if (!top) throw new PledgerError('INSTANCE_NOT_FOUND', `you have no instance named "${title}"`);
  const rows = await instanceRows(db, sql`instances.owner_id = ${owner.id} and instances.root_id = ${top.root_id ?? top.id} and instances.status != 'destroyed'`);
  const promises = await promisesOf(db, [top.id, ...rows.map((r) => r.id)]);
  const instances: InstanceTreeView['instances'] = [];
  const visit = (row: InstanceRow, depth: number) => {
    instances.push({ depth, instance: instanceView(row, promises.get(row.id)) });
    for (const child of rows.filter((r) => r.parent_id === row.id)) visit(child, depth + 1);
  };
  visit(top, 0);
  return { instances };
}
