/**
 * Allocation: giving an instance a free partition on a node that has its software and
 * satisfies its SLA.
 *
 * A node fits when it carries every label of the SLA (and has the name the SLA's `node`
 * gives), takes the instance's owner (its scope is open, or owner and the owner is
 * the instance's), called the master in the last 10 minutes, has the release supplied,
 * has enough of each declared resource the instance needs left over, and has a free
 * partition. Among the fitting partitions the first by node name, then by partition
 * reference, wins: allocation is deterministic. It is safe with several master
 * processes: the partition is taken with a conditional update, so two masters never
 * give the same partition twice.
 */
import { sql, type Kysely, type SelectQueryBuilder, type Transaction } from 'kysely';
import type { Resources, Sla } from '../protocol/api.js';
import type { SoftwareDefinition } from '../protocol/software-release.js';
import type { Tables } from './db/tables.js';
import { record } from './ledger/movements.js';

/** A node silent for longer gets nothing new. */
export const SILENT_AFTER_MS = 10 * 60_000;

interface Allocatable {
  id: string;
  software_id: string;
  owner_id: string;
  /** JSON of the instance's SLA. */
  sla: string;
  /** What it takes of the resources nodes declare. */
  needs: Resources;
  message: string | null;
}

/**
 * What one instance of a software type takes of each declared resource: what the type
 * needs, or more when the request asks for more.
 */
export function resourceNeeds(definition: SoftwareDefinition, softwareType: string, asked: Resources): Resources {
  const needs: Resources = { ...definition['software-types'][softwareType]?.resources };
  for (const [name, amount] of Object.entries(asked)) needs[name] = Math.max(needs[name] ?? 0, amount);
  return Object.fromEntries(Object.entries(needs).sort(([a], [b]) => a.localeCompare(b)));
}

type NodeQuery = SelectQueryBuilder<Tables, 'nodes', object>;

/** Allocates `instance` inside the caller's transaction, or records why it cannot. */
export async function allocate(trx: Transaction<Tables>, instance: Allocatable, actor: string): Promise<boolean> {
  const sla = JSON.parse(instance.sla) as Sla;
  const cutoff = new Date(Date.now() - SILENT_AFTER_MS).toISOString();
  // The first fitting node by name, walking only nodes with a free partition (an
  // index), then its first free partition.
  // The conditions are the same as whyNothingFits narrows, in another order: the most
  // selective first. (Anti-affinity, which keeps the instances of one tree apart, will
  // be one more condition here and one more step there.)
  const node = await withResources(supplied(open(alive(matching(trx.selectFrom('nodes'), sla), cutoff), instance.owner_id), instance.software_id), instance.needs)
    .select(['nodes.id', 'nodes.name'])
    // A literal, not a bound parameter: SQLite uses the partial index of nodes with a
    // free partition only when it can see the query asks for exactly those. With a
    // parameter it walks every node in name order, the full ones first.
    .where('nodes.free_partitions', '>', sql.lit(0))
    .orderBy('nodes.name')
    .limit(1)
    .executeTakeFirst();
  // A node has few partitions: reading them all by (node, reference) beats letting the
  // database pick the free ones through the instance index, which spans the fleet.
  const partition =
    node &&
    (
      await trx
        .selectFrom('partitions')
        .select(['partitions.id', 'partitions.reference', 'partitions.instance_id'])
        .where('partitions.node_id', '=', node.id)
        .orderBy('partitions.reference')
        .execute()
    ).find((p) => p.instance_id === null);
  if (partition) {
    await record(
      trx,
      {
        kind: 'instance.allocated',
        data: { instanceId: instance.id, partitionId: partition.id, node: node.name, partition: partition.reference, resources: instance.needs },
      },
      { actor, subject: instance.id },
    );
    return true;
  }
  const reason = await whyNothingFits(trx, instance, sla, cutoff);
  if (reason !== instance.message) {
    await record(trx, { kind: 'instance.unallocated', data: { instanceId: instance.id, reason } }, { actor, subject: instance.id });
  }
  return false;
}

/** Nodes that carry every label of the SLA, and the name it gives. */
function matching(query: NodeQuery, sla: Sla): NodeQuery {
  for (const [key, value] of Object.entries(sla)) {
    if (key === 'node') {
      query = query.where('nodes.name', '=', value);
      continue;
    }
    query = query.where((eb) =>
      eb.exists(
        eb
          .selectFrom('node_labels')
          .select('node_labels.node_id')
          .whereRef('node_labels.node_id', '=', 'nodes.id')
          .where('node_labels.key', '=', key)
          .where('node_labels.value', '=', value),
      ),
    );
  }
  return query;
}

/** Nodes that take instances of `ownerId`. */
function open(query: NodeQuery, ownerId: string): NodeQuery {
  return query.where((eb) => eb.or([eb('nodes.scope', '=', 'open'), eb.and([eb('nodes.scope', '=', 'owner'), eb('nodes.owner_id', '=', ownerId)])]));
}

/** Nodes that have the release supplied. */
function supplied(query: NodeQuery, softwareId: string): NodeQuery {
  return query.where((eb) =>
    eb.exists(
      eb
        .selectFrom('supplies')
        .select('supplies.node_id')
        .whereRef('supplies.node_id', '=', 'nodes.id')
        .where('supplies.software_id', '=', softwareId)
        .where('supplies.state', '=', 'available'),
    ),
  );
}

/** Nodes that have at least `amount` of the resource `name` left over. */
function withResource(query: NodeQuery, name: string, amount: number): NodeQuery {
  if (amount === 0) return query;
  return query.where((eb) =>
    eb.exists(
      eb
        .selectFrom('node_resources')
        .select('node_resources.node_id')
        .whereRef('node_resources.node_id', '=', 'nodes.id')
        .where('node_resources.name', '=', name)
        .where((r) => r(r('node_resources.capacity', '-', r.ref('node_resources.used')), '>=', amount)),
    ),
  );
}

function withResources(query: NodeQuery, needs: Resources): NodeQuery {
  for (const [name, amount] of Object.entries(needs)) query = withResource(query, name, amount);
  return query;
}

/** "2048 MiB of memory": an amount in the unit its resource is counted in. */
export function describeResource(name: string, amount: number): string {
  switch (name) {
    case 'cpu':
      return `${amount} CPU ${amount === 1 ? 'core' : 'cores'}`;
    case 'memory':
      return `${amount} MiB of memory`;
    case 'disk':
      return `${amount} GiB of disk`;
    default:
      return `${amount} of ${name}`;
  }
}

/** Nodes that called the master since `cutoff`. */
function alive(query: NodeQuery, cutoff: string): NodeQuery {
  return query.where((eb) =>
    eb.exists(
      eb
        .selectFrom('node_heartbeats')
        .select('node_heartbeats.node_id')
        .whereRef('node_heartbeats.node_id', '=', 'nodes.id')
        .where('node_heartbeats.last_seen_at', '>=', cutoff),
    ),
  );
}

/** Narrows the nodes one condition at a time and says at which step none is left. */
async function whyNothingFits(trx: Transaction<Tables>, instance: Allocatable, sla: Sla, cutoff: string): Promise<string> {
  const count = async (query: NodeQuery) => Number((await query.select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow()).n);
  const constraints = Object.entries(sla)
    .map(([key, value]) => `${key}=${value}`)
    .join(', ');
  const subject = constraints ? `node with ${constraints}` : 'node';
  let nodes = matching(trx.selectFrom('nodes'), sla);
  if ((await count(nodes)) === 0) return constraints ? `no node matches ${constraints}` : 'no node is registered';
  nodes = open(nodes, instance.owner_id);
  if ((await count(nodes)) === 0) return `no ${subject} is open to you`;
  nodes = supplied(nodes, instance.software_id);
  if ((await count(nodes)) === 0) return `no ${subject} has ${instance.software_id} supplied`;
  const withRelease = `${subject} that has ${instance.software_id} supplied`;
  nodes = alive(nodes, cutoff);
  if ((await count(nodes)) === 0) return `no ${withRelease} has called the master in the last ${SILENT_AFTER_MS / 60_000} minutes`;
  for (const [name, amount] of Object.entries(instance.needs)) {
    nodes = withResource(nodes, name, amount);
    if ((await count(nodes)) === 0) return `no ${withRelease} has ${describeResource(name, amount)} free`;
  }
  return `no ${withRelease} has a free partition`;
}

/**
 * Retries every instance that waits for a partition: called when partitions,
 * supplies or node settings change, a partition is freed, or a silent node is back.
 */
export async function allocatePending(db: Kysely<Tables>): Promise<void> {
  const waiting = await db.selectFrom('instances').select('id').where('partition_id', 'is', null).where('state', '!=', 'destroyed').orderBy('created_at').execute();
  for (const { id } of waiting) {
    await db.transaction().execute(async (trx) => {
      // Read again inside the transaction: another master may have allocated it.
      const current = await trx
        .selectFrom('instances')
        .select(['id', 'software_id', 'owner_id', 'sla', 'needs', 'message'])
        .where('id', '=', id)
        .where('partition_id', 'is', null)
        .where('state', '!=', 'destroyed')
        .executeTakeFirst();
      if (current) await allocate(trx, { ...current, needs: JSON.parse(current.needs) as Resources }, 'master');
    });
  }
}
