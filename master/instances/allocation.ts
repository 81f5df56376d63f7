/**
 * Allocation: giving an instance a free partition on a node that has its software and
 * satisfies its SLA.
 *
 * A node fits when it carries every label of the SLA (and has the name the SLA's `node`
 * gives), takes the instance's owner (its scope is open, or owner and the owner is
 * the instance's), called the master in the last 10 minutes, has the release supplied,
 * has enough of each declared resource the instance needs left over, and has a free
 * partition. Among the fitting partitions the first by node name, then by partition
 * reference, wins: one request at a time, allocation is deterministic. It is safe with
 * several master processes: a node's partitions and resources are taken under the
 * node's lock, so two masters never give the same partition twice nor more than a node
 * has; requests allocated at the same moment take the first nodes that no other one
 * holds.
 */
import { sql, type Kysely, type RawBuilder, type Transaction } from 'kysely';
import type { Resources, Sla } from '../../protocol/api.js';
import type { SoftwareDefinition } from '../../protocol/software-release.js';
import { writeTransaction } from '../db/group-commit.js';
import type { Tables } from '../db/tables.js';
import { lock, locks, tryLock } from '../ledger/locks.js';
import { record } from '../ledger/movements.js';
import { partitionTaken } from './shared.js';
import { readJson } from '../db/json-columns.js';

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
  /** The root of its tree, for anti-affinity. */
  root_id: string | null;
}

/**
 * The SLA key that keeps an instance away from the nodes of the rest of its tree:
 * `anti-affinity: node` (another node), or a label key (`anti-affinity: network`: a
 * node whose `network` differs from theirs). Every other key is a label to match.
 */
export const ANTI_AFFINITY = 'anti-affinity';

/**
 * What one instance of a software type takes of each declared resource: what the type
 * needs, or more when the request asks for more.
 */
export function resourceNeeds(definition: SoftwareDefinition, softwareType: string, asked: Resources): Resources {
  const needs: Resources = { ...definition['software-types'][softwareType]?.resources };
  for (const [name, amount] of Object.entries(asked)) needs[name] = Math.max(needs[name] ?? 0, amount);
  return Object.fromEntries(Object.entries(needs).sort(([a], [b]) => a.localeCompare(b)));
}

/**
 * One condition on the `nodes` table, as SQL. Conditions are written as SQL fragments
 * rather than with the query builder: allocation runs at every request, and building
 * the query through the builder cost more than running it. Values are bound
 * parameters, never spliced into the SQL.
 */
type NodeCondition = RawBuilder<unknown>;

/** Nodes looked at before an allocation only waits for those another one held. */
const MAX_NODES_TRIED = 16;

/**
 * Allocates `instance` inside the caller's transaction, or records why it cannot. The
 * caller holds the instance's lock.
 *
 * The first fitting node by name is taken under its lock and checked again: another
 * master may have taken its last partition or resource meanwhile, and then the next
 * node is tried. A node another allocation holds at that moment is passed over for the
 * next fitting one, so that concurrent requests spread over the fleet instead of
 * queueing for one node; only when no other node fits does the allocation wait for it.
 */
export async function allocate(trx: Transaction<Tables>, instance: Allocatable, actor: string): Promise<boolean> {
  const sla = readJson('sla', instance.sla);
  const cutoff = new Date(Date.now() - SILENT_AFTER_MS).toISOString();
  const conditions = [...matching(sla), open(instance.owner_id), supplied(instance.software_id), alive(cutoff), ...apart(instance, sla), ...withResources(instance.needs)];
  // Nodes that no longer fit once locked, and nodes another allocation holds right now.
  const tried: string[] = [];
  const busy: string[] = [];
  for (;;) {
    let node: { id: string } | undefined;
    const skipped = [...tried, ...busy];
    if (skipped.length < MAX_NODES_TRIED) {
      const notTried = skipped.length > 0 ? [sql`nodes.id not in (${sql.join(skipped)})`] : [];
      // The first fitting node by name, walking only nodes with a free partition (a partial
      // index: `> 0` is a literal, not a parameter, or SQLite cannot use it and walks every
      // node, the full ones first).
      const { rows } = await sql<{ id: string }>`
        select nodes.id from nodes
        where ${sql.join([...conditions, ...notTried], sql` and `)} and nodes.free_partitions > 0
        order by nodes.name limit 1`.execute(trx);
      node = rows[0];
    }
    if (node) {
      // Concurrent requests would all queue for the first node by name: one that another
      // allocation holds is left for the next fitting one.
      if (!(await tryLock(trx, locks.node(node.id)))) {
        busy.push(node.id);
        continue;
      }
    } else {
      // Nothing else fits: wait for the nodes other allocations held, in turn.
      const waitFor = busy.shift();
      if (waitFor === undefined) break;
      node = { id: waitFor };
      await lock(trx, locks.node(node.id));
    }
    // Under the lock, read again: its first free partition (one entry of a partial index),
    // if the node still fits.
    const { rows: partitions } = await sql<{ id: string; reference: string; name: string }>`
      select partitions.id, partitions.reference, nodes.name from nodes
      join partitions on partitions.node_id = nodes.id and partitions.instance_id is null
      where nodes.id = ${node.id} and ${sql.join(conditions, sql` and `)}
      order by partitions.reference limit 1`.execute(trx);
    const partition = partitions[0];
    if (!partition) {
      tried.push(node.id);
      continue;
    }
    await record(
      trx,
      {
        kind: 'instance.allocated',
        data: { instanceId: instance.id, partitionId: partition.id, node: partition.name, partition: partition.reference, resources: instance.needs },
      },
      { actor, subject: instance.id },
    );
    await partitionTaken(trx, partition.id, instance.owner_id);
    return true;
  }
  const reason = await whyNothingFits(trx, instance, sla, cutoff);
  if (reason !== instance.message) {
    await record(trx, { kind: 'instance.unallocated', data: { instanceId: instance.id, reason } }, { actor, subject: instance.id });
  }
  return false;
}

/** Nodes that carry every label of the SLA, and the name it gives. */
function matching(sla: Sla): NodeCondition[] {
  return placement(sla).map(([key, value]) =>
    key === 'node'
      ? sql`nodes.name = ${value}`
      : sql`exists (select 1 from node_labels where node_labels.node_id = nodes.id and node_labels.key = ${key} and node_labels.value = ${value})`,
  );
}

/** The SLA's node name and labels: every key but anti-affinity. */
function placement(sla: Sla): [string, string][] {
  return Object.entries(sla).filter(([key]) => key !== ANTI_AFFINITY);
}

/**
 * Nodes apart from those of the other instances of its tree, as the SLA's anti-affinity
 * asks: another node, or a node whose label differs from all of theirs (and that
 * carries the label: a node that does not say its network is in no known network).
 */
function apart(instance: Allocatable, sla: Sla): NodeCondition[] {
  const by = sla[ANTI_AFFINITY];
  if (by === undefined) return [];
  const rootId = instance.root_id ?? instance.id;
  const treeNodes = sql`select partitions.node_id from instances join partitions on partitions.id = instances.partition_id
    where instances.root_id = ${rootId} and instances.id != ${instance.id}`;
  if (by === 'node') return [sql`nodes.id not in (${treeNodes})`];
  return [
    sql`exists (select 1 from node_labels where node_labels.node_id = nodes.id and node_labels.key = ${by})`,
    sql`not exists (select 1 from node_labels mine where mine.node_id = nodes.id and mine.key = ${by} and mine.value in (
      select node_labels.value from node_labels where node_labels.key = ${by} and node_labels.node_id in (${treeNodes})))`,
  ];
}

/** Nodes that take instances of `ownerId`. */
export function open(ownerId: string): NodeCondition {
  return sql`(nodes.scope = 'open' or (nodes.scope = 'owner' and nodes.owner_id = ${ownerId}))`;
}

/** Nodes that have the release supplied. */
export function supplied(softwareId: string): NodeCondition {
  return sql`exists (select 1 from supplies where supplies.node_id = nodes.id and supplies.software_id = ${softwareId} and supplies.state = 'available')`;
}

/** Nodes that called the master since `cutoff`. */
function alive(cutoff: string): NodeCondition {
  return sql`exists (select 1 from node_heartbeats where node_heartbeats.node_id = nodes.id and node_heartbeats.last_seen_at >= ${cutoff})`;
}

/** Nodes that have at least `amount` of the resource `name` left over. */
function withResource(name: string, amount: number): NodeCondition {
  return sql`exists (select 1 from node_resources where node_resources.node_id = nodes.id and node_resources.name = ${name} and node_resources.capacity - node_resources.used >= ${amount})`;
}

/** One condition per resource the instance needs some of. */
function withResources(needs: Resources): NodeCondition[] {
  return Object.entries(needs)
    .filter(([, amount]) => amount > 0)
    .map(([name, amount]) => withResource(name, amount));
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

/** Narrows the nodes one condition at a time and says at which step none is left. */
async function whyNothingFits(trx: Transaction<Tables>, instance: Allocatable, sla: Sla, cutoff: string): Promise<string> {
  const conditions: NodeCondition[] = [];
  // Whether any node meets every condition so far, and `more`.
  const someNodeMeets = async (...more: NodeCondition[]) => {
    conditions.push(...more);
    const where = conditions.length > 0 ? sql.join(conditions, sql` and `) : sql`1 = 1`;
    return (await sql`select 1 from nodes where ${where} limit 1`.execute(trx)).rows.length > 0;
  };
  const constraints = placement(sla)
    .map(([key, value]) => `${key}=${value}`)
    .join(', ');
  const subject = constraints ? `node with ${constraints}` : 'node';
  // Nodes closed to the owner are left out first: whether one of them exists, or carries
  // a label, is another customer's business, so the reason never tells.
  if (!(await someNodeMeets(open(instance.owner_id), ...matching(sla)))) return constraints ? `no node open to you matches ${constraints}` : 'no node open to you is registered';
  if (!(await someNodeMeets(supplied(instance.software_id)))) return `no ${subject} has ${instance.software_id} supplied`;
  const withRelease = `${subject} that has ${instance.software_id} supplied`;
  if (!(await someNodeMeets(alive(cutoff)))) return `no ${withRelease} has called the master in the last ${SILENT_AFTER_MS / 60_000} minutes`;
  if (!(await someNodeMeets(...apart(instance, sla)))) {
    const by = sla[ANTI_AFFINITY]!;
    return `no ${withRelease} is apart from the rest of its tree (${by === 'node' ? 'another node' : `another ${by}`})`;
  }
  for (const [name, amount] of Object.entries(instance.needs)) {
    if (amount > 0 && !(await someNodeMeets(withResource(name, amount)))) return `no ${withRelease} has ${describeResource(name, amount)} free`;
  }
  return `no ${withRelease} has a free partition`;
}

/**
 * Retries every instance that waits for a partition: called when partitions,
 * supplies or node settings change, a partition is freed, or a silent node is back,
 * and periodically (master/periodic.ts).
 */
export async function allocatePending(db: Kysely<Tables>): Promise<void> {
  // Shared instances wait for a host, not a partition (./shared.ts).
  const waiting = await db
    .selectFrom('instances')
    .select('id')
    .where('partition_id', 'is', null)
    .where('state', '!=', 'destroyed')
    .where('shared', '=', 0)
    .orderBy('created_at')
    .execute();
  for (const { id } of waiting) {
    await writeTransaction(db, async (trx) => {
      await lock(trx, locks.instance(id));
      // Read again under its lock: another master may have allocated it.
      const current = await trx
        .selectFrom('instances')
        .select(['id', 'software_id', 'owner_id', 'sla', 'needs', 'message', 'root_id'])
        .where('id', '=', id)
        .where('partition_id', 'is', null)
        .where('state', '!=', 'destroyed')
        .executeTakeFirst();
      if (current) await allocate(trx, { ...current, needs: readJson('needs', current.needs) }, 'master');
    });
  }
}

/** Per database: whether a background `allocatePending` runs, and whether another was asked for meanwhile. */
const pendingRuns = new WeakMap<Kysely<Tables>, { again: boolean }>();

/**
 * Runs `allocatePending` soon, in the background: for what happens on a request's path
 * (a node back from silence) that should not make the request wait. Asks made while
 * one runs are served by one more run after it.
 */
export function allocateSoon(db: Kysely<Tables>, onError: (error: unknown) => void): void {
  const running = pendingRuns.get(db);
  if (running) {
    running.again = true;
    return;
  }
  const run = { again: false };
  pendingRuns.set(db, run);
  void (async () => {
    do {
      run.again = false;
      try {
        await allocatePending(db);
      } catch (error) {
        onError(error);
      }
    } while (run.again);
    pendingRuns.delete(db);
  })();
}
