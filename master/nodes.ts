/**
 * Nodes and what they tell the master: registration, partitions, the desired-state
 * snapshot they pull, and the events they report.
 */
import { createHash, randomUUID } from 'node:crypto';
import type { Kysely, Transaction } from 'kysely';
import {
  USAGE_CLOCK_SKEW_MS,
  type DesiredState,
  type EventsReceipt,
  type Labels,
  type NodeCredential,
  type NodeEvent,
  type NodeRegister,
  type NodeUpdate,
  type NodeView,
  type PartitionDefinition,
  type Parameters,
  type Resources,
  type UsageEvent,
} from '../protocol/api.js';
import { PledgerError } from '../protocol/errors.js';
import type { AccountRow } from './accounts.js';
import { allocatePending, SILENT_AFTER_MS } from './allocation.js';
import type { NodesTable, Tables } from './db/tables.js';
import { partitionId, record, recordNew, recordUsage, type Movement, type MovementRecord, type UsageHour, type UsageReport } from './ledger/movements.js';
import { hashSecret, newSecret } from './secrets.js';
import { afterNodeEvent, sharedOf } from './trees.js';

export type NodeRow = NodesTable;

/**
 * Registers a node and returns its credential, shown this once. By default the node is
 * open to every account, owned by the operator who registered it, without labels.
 */
export async function registerNode(db: Kysely<Tables>, request: NodeRegister, registrar: AccountRow): Promise<NodeCredential> {
  const credential = newSecret('plg_n');
  const { name } = request;
  await db.transaction().execute(async (trx) => {
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
  await db.transaction().execute(async (trx) => {
    const node = await trx.selectFrom('nodes').selectAll().where('name', '=', name).executeTakeFirst();
    if (!node) throw new PledgerError('NODE_NOT_FOUND', `no node named "${name}"`);
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

export async function nodeByCredential(db: Kysely<Tables>, credential: string): Promise<NodeRow | undefined> {
  return db.selectFrom('nodes').selectAll().where('credential_hash', '=', hashSecret(credential)).executeTakeFirst();
}

/**
 * Notes that a node called; written at most once a minute per node. A node back from
 * silence may take instances again: those waiting for a partition are tried again.
 */
export async function touchNode(db: Kysely<Tables>, nodeId: string): Promise<void> {
  const now = new Date();
  const staleBefore = new Date(now.getTime() - 60_000).toISOString();
  const previous = await db.selectFrom('node_heartbeats').select('last_seen_at').where('node_id', '=', nodeId).executeTakeFirst();
  await db
    .insertInto('node_heartbeats')
    .values({ node_id: nodeId, last_seen_at: now.toISOString() })
    .onConflict((oc) =>
      oc
        .column('node_id')
        .doUpdateSet({ last_seen_at: now.toISOString() })
        .where('node_heartbeats.last_seen_at', '<', staleBefore),
    )
    .execute();
  if (previous && previous.last_seen_at < new Date(now.getTime() - SILENT_AFTER_MS).toISOString()) await allocatePending(db);
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
  const changed = await db.transaction().execute(async (trx) => {
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

/** The one snapshot a node pulls, and its ETag. */
export async function desiredState(db: Kysely<Tables>, node: NodeRow): Promise<{ state: DesiredState; etag: string }> {
  const software = await db
    .selectFrom('supplies')
    .innerJoin('software', 'software.id', 'supplies.software_id')
    .select(['software.name', 'software.version', 'software.hash', 'supplies.state'])
    .where('supplies.node_id', '=', node.id)
    .orderBy('software.id')
    .execute();
  const rows = await db
    .selectFrom('partitions')
    .leftJoin('instances', 'instances.id', 'partitions.instance_id')
    .leftJoin('software', 'software.id', 'instances.software_id')
    .select(['partitions.reference', 'partitions.ip', 'partitions.port_first', 'partitions.port_last'])
    .select(['instances.id', 'instances.title', 'instances.software_type', 'instances.parameters', 'instances.state', 'instances.serial'])
    .select(['software.name', 'software.version', 'software.hash'])
    .where('partitions.node_id', '=', node.id)
    .orderBy('partitions.reference')
    .execute();
  const shared = await sharedOf(db, rows.flatMap((r) => (r.id === null ? [] : [r.id])));
  const state: DesiredState = {
    node: node.name,
    software,
    partitions: rows.map((r) => ({
      reference: r.reference,
      ip: r.ip,
      ports: { first: r.port_first, last: r.port_last },
      instance:
        r.id === null
          ? null
          : {
              id: r.id,
              title: r.title!,
              software: { name: r.name!, version: r.version!, hash: r.hash! },
              softwareType: r.software_type!,
              parameters: JSON.parse(r.parameters!) as Parameters,
              state: r.state!,
              serial: r.serial!,
              ...(shared.has(r.id) ? { shared: shared.get(r.id) } : {}),
            },
    })),
  };
  const etag = `"${createHash('sha256').update(JSON.stringify(state)).digest('base64url')}"`;
  return { state, etag };
}

/**
 * Applies a batch of node events, each once: an event already applied is listed as a
 * duplicate and changes nothing. The batch is checked whole before anything is
 * written, so a bad event refuses the batch and changes nothing. A batch costs a few
 * statements whatever its size (a node sends up to 500 events, mostly usage): what
 * the events refer to is read in one query per table, and their movements are
 * recorded together.
 */
export async function applyEvents(db: Kysely<Tables>, node: NodeRow, events: NodeEvent[]): Promise<EventsReceipt> {
  if (events.every((event) => event.type === 'instance.usage')) return applyUsage(db, node, events);
  let freed = false;
  const receipt = await db.transaction().execute(async (trx) => {
    const context = await eventContext(trx, node, events);
    // Every event is checked before anything is written.
    const usage = events.filter((event) => event.type === 'instance.usage');
    const now = Date.now();
    const hours = usage.map((event) => usageHour(context, node, event, now));
    const planned = events.filter((event) => event.type !== 'instance.usage').map((event) => ({ event, ...planEvent(context, node, event) }));
    const recorded = await recordNew(trx, planned);
    const [counted] = usage.length === 0 ? [[]] : await recordUsage(trx, [{ nodeId: node.id, actor: `node:${node.name}`, hours }]);
    freed = planned.some(({ movement, meta }) => movement.kind === 'instance.destroyed' && recorded.has(meta.id));
    const counts = new Map<NodeEvent, boolean>();
    // Two events may record the same movement: the first one counts.
    for (const { event, meta } of planned) counts.set(event, recorded.delete(meta.id));
    usage.forEach((event, i) => counts.set(event, counted![i]!));
    const answer = receiptOf(events, counts);
    // What a start or a bang sets off in its tree, once the batch's own movements are in.
    const applied = new Set(answer.applied);
    for (const { event, movement } of planned) {
      if (!applied.has(event.id) || (event.type !== 'instance.started' && event.type !== 'instance.bang')) continue;
      await afterNodeEvent(trx, node, event, movement, context.instances.get(event.instance));
    }
    return answer;
  });
  if (freed) await allocatePending(db);
  return receipt;
}

/** The receipt of a batch, in its order, given whether each event counted. */
function receiptOf(events: NodeEvent[], counted: Map<NodeEvent, boolean>): EventsReceipt {
  const receipt: EventsReceipt = { applied: [], duplicates: [] };
  for (const event of events) (counted.get(event) ? receipt.applied : receipt.duplicates).push(event.id);
  return receipt;
}

interface WaitingReport {
  node: NodeRow;
  events: NodeEvent[];
  resolve(receipt: EventsReceipt): void;
  reject(error: unknown): void;
}

/** Usage reports waiting for the next shared transaction, per database. */
const usageQueues = new WeakMap<Kysely<Tables>, { waiting: WaitingReport[]; draining: boolean }>();

/** Events per shared transaction: 20 full reports. */
const SHARED_TRANSACTION_EVENTS = 10_000;
const HOUR_MS = 3_600_000;

/**
 * Usage reports arriving together (a fleet reports at the top of every hour) are
 * recorded in one transaction: a durable commit (a sync to disk) costs more than the
 * records it writes. Each report is still checked whole and answered on its own; when
 * the shared transaction fails, each report is tried in its own, so that one bad
 * report refuses nothing but itself. Usage only inserts, and no report's check
 * depends on another's usage, so the result is the one of applying them in turn.
 */
function applyUsage(db: Kysely<Tables>, node: NodeRow, events: NodeEvent[]): Promise<EventsReceipt> {
  let queue = usageQueues.get(db);
  if (!queue) usageQueues.set(db, (queue = { waiting: [], draining: false }));
  const answer = new Promise<EventsReceipt>((resolve, reject) => queue.waiting.push({ node, events, resolve, reject }));
  if (!queue.draining) void drainUsage(db, queue);
  return answer;
}

async function drainUsage(db: Kysely<Tables>, queue: { waiting: WaitingReport[]; draining: boolean }): Promise<void> {
  queue.draining = true;
  try {
    // Reports that arrive while a transaction runs wait for the next one.
    await new Promise((resolve) => setImmediate(resolve));
    while (queue.waiting.length > 0) {
      let events = 0;
      let count = 0;
      while (count < queue.waiting.length && (count === 0 || events + queue.waiting[count]!.events.length <= SHARED_TRANSACTION_EVENTS)) {
        events += queue.waiting[count]!.events.length;
        count++;
      }
      await applyUsageTogether(db, queue.waiting.splice(0, count));
    }
  } finally {
    queue.draining = false;
  }
}

async function applyUsageTogether(db: Kysely<Tables>, reports: WaitingReport[]): Promise<void> {
  try {
    const receipts = await db.transaction().execute(async (trx) => {
      const checked: UsageReport[] = [];
      for (const { node, events } of reports) {
        const context = await eventContext(trx, node, events);
        const now = Date.now();
        checked.push({ nodeId: node.id, actor: `node:${node.name}`, hours: events.map((event) => usageHour(context, node, event, now)) });
      }
      const counted = await recordUsage(trx, checked);
      return reports.map(({ events }, i) => receiptOf(events, new Map(events.map((event, j) => [event, counted[i]![j]!]))));
    });
    reports.forEach((report, i) => report.resolve(receipts[i]!));
  } catch (error) {
    if (reports.length === 1) return reports[0]!.reject(error);
    for (const report of reports) await applyUsageTogether(db, [report]);
  }
}

interface EventContext {
  /** The node's software, by hash. */
  softwareByHash: Map<string, string>;
  partitions: Map<string, { id: string; instance_id: string | null }>;
  /** `connection`: what each instance had published before the batch (a parent redeploys when it changes). */
  instances: Map<
    string,
    Pick<Tables['instances'], 'id' | 'serial' | 'state' | 'status' | 'owner_id' | 'software_id' | 'software_type' | 'partition_id' | 'last_partition_id' | 'connection' | 'created_at' | 'updated_at'>
  >;
}

/** Everything a batch of events refers to, read in one query per table. */
async function eventContext(trx: Transaction<Tables>, node: NodeRow, events: NodeEvent[]): Promise<EventContext> {
  const hashes = new Set<string>();
  const partitionIds = new Set<string>();
  const instanceIds = new Set<string>();
  for (const event of events) {
    if ('software' in event) {
      hashes.add(event.software);
    } else {
      // Usage is checked against the instance alone (`usageHour`).
      if (event.type !== 'instance.usage') partitionIds.add(partitionId(node.id, event.partition));
      instanceIds.add(event.instance);
    }
  }
  const software =
    hashes.size === 0
      ? []
      : await trx
          .selectFrom('supplies')
          .innerJoin('software', 'software.id', 'supplies.software_id')
          .select(['software.id', 'software.hash'])
          .where('supplies.node_id', '=', node.id)
          .where('software.hash', 'in', [...hashes])
          .execute();
  const partitions =
    partitionIds.size === 0 ? [] : await trx.selectFrom('partitions').select(['id', 'instance_id']).where('id', 'in', [...partitionIds]).execute();
  const instances =
    instanceIds.size === 0
      ? []
      : await trx
          .selectFrom('instances')
          .select(['id', 'serial', 'state', 'status', 'owner_id', 'software_id', 'software_type', 'partition_id', 'last_partition_id', 'connection', 'created_at', 'updated_at'])
          .where('id', 'in', [...instanceIds])
          .execute();
  return {
    softwareByHash: new Map(software.map((s) => [s.hash, s.id])),
    partitions: new Map(partitions.map((p) => [p.id, p])),
    instances: new Map(instances.map((i) => [i.id, i])),
  };
}

/** The instance an event is about, checked to be in the event's partition of this node. */
function hostedInstance(context: EventContext, node: NodeRow, event: Exclude<NodeEvent, { software: string }>) {
  const pid = partitionId(node.id, event.partition);
  const partition = context.partitions.get(pid);
  if (!partition) throw new PledgerError('FORBIDDEN', `partition ${event.partition} is not a partition of node ${node.name}`);
  const instance = context.instances.get(event.instance);
  if (!instance || partition.instance_id !== instance.id) {
    throw new PledgerError('FORBIDDEN', `instance ${event.instance} is not allocated to partition ${event.partition} of node ${node.name}`);
  }
  return { instance, pid };
}

/** Checks a usage event, and turns it into the hour it reports. */
function usageHour(context: EventContext, node: NodeRow, event: NodeEvent, now: number): UsageHour {
  if (event.type !== 'instance.usage') throw new PledgerError('INTERNAL', `${event.type} is not a usage event`);
  checkHourEnded(event, now);
  const pid = partitionId(node.id, event.partition);
  const instance = context.instances.get(event.instance);
  // Usage may follow an instance out of its partition: the node meters the last hour
  // after it has destroyed it. (A partition id names its node: another node's never matches.)
  if (!instance || (instance.partition_id !== pid && instance.last_partition_id !== pid)) {
    throw new PledgerError('FORBIDDEN', `instance ${event.instance} is not allocated to partition ${event.partition} of node ${node.name}`);
  }
  // An hour is billed only within the instance's life: one that ended before it was
  // requested, or began after its node reported it destroyed, never ran there (with the
  // same leeway as above for a node's clock that is off by a few minutes).
  const start = Date.parse(event.hour);
  const destroyedAt = instance.partition_id !== pid || instance.status === 'destroyed' ? Date.parse(instance.updated_at) : Number.POSITIVE_INFINITY;
  if (start + HOUR_MS + USAGE_CLOCK_SKEW_MS <= Date.parse(instance.created_at) || start > destroyedAt + USAGE_CLOCK_SKEW_MS) {
    const life = `${instance.created_at} to ${Number.isFinite(destroyedAt) ? instance.updated_at : 'now'}`;
    throw new PledgerError('BAD_REQUEST', `usage event ${event.id}: the hour ${event.hour} is outside the life of instance ${event.instance} (${life})`, {
      details: { event: event.id },
    });
  }
  return {
    instanceId: instance.id,
    hour: event.hour,
    ownerId: instance.owner_id,
    softwareId: instance.software_id,
    softwareType: instance.software_type,
    cpuMs: event.cpuMilliseconds,
    memoryByteSeconds: event.memoryByteSeconds,
    diskByteSeconds: event.diskByteSeconds,
    uptimeSeconds: event.uptimeSeconds,
  };
}

/**
 * A node bills only hours that are over: an hour still running, or to come, could be
 * billed again with other figures or for time that never happened. The schema has
 * fixed the shape of `hour` and the bounds of each quantity; this checks that it names
 * a real hour and that the hour has ended by the master's clock, with some leeway for a
 * node's clock running ahead.
 */
function checkHourEnded(event: UsageEvent, now: number): void {
  const start = Date.parse(event.hour);
  if (Number.isNaN(start) || new Date(start).toISOString() !== event.hour) {
    throw new PledgerError('BAD_REQUEST', `usage event ${event.id}: ${event.hour} is not the start of a UTC hour`);
  }
  if (start + HOUR_MS > now + USAGE_CLOCK_SKEW_MS) {
    throw new PledgerError('TOO_EARLY', `usage event ${event.id}: the hour ${event.hour} has not ended yet by the master's clock (${new Date(now).toISOString()})`, {
      details: { event: event.id },
    });
  }
}

/** Checks that an event (other than usage) is this node's to send, and turns it into the movement it records. */
function planEvent(context: EventContext, node: NodeRow, event: NodeEvent): { movement: Movement; meta: MovementRecord & { id: string } } {
  const actor = `node:${node.name}`;
  if ('software' in event) {
    const softwareId = context.softwareByHash.get(event.software);
    if (!softwareId) throw new PledgerError('FORBIDDEN', `software ${event.software} is not supplied to node ${node.name}`);
    const status = event.type === 'software.built' ? 'built' : event.type === 'software.error' ? 'error' : 'removed';
    return {
      movement: { kind: 'supply.reported', data: { nodeId: node.id, softwareId, status, message: event.message ?? null } },
      meta: { id: `node:${node.id}:${event.id}`, actor, subject: node.id },
    };
  }

  const { instance, pid } = hostedInstance(context, node, event);
  const meta = { id: `node:${node.id}:${event.id}`, actor, subject: instance.id };

  switch (event.type) {
    case 'instance.usage':
      throw new PledgerError('INTERNAL', 'usage is recorded by recordUsage');
    case 'instance.promises':
      checkSerial(event.serial, instance);
      return { movement: { kind: 'instance.promises', data: { instanceId: instance.id, serial: event.serial, reportedAt: event.at, promises: event.promises } }, meta };
    case 'instance.bang': {
      checkSerial(event.serial, instance);
      // One redeployment per serial: a bang about an older serial was already answered.
      const redeploy = event.serial === instance.serial && instance.state === 'started';
      return {
        movement: { kind: 'instance.banged', data: { instanceId: instance.id, reportedSerial: event.serial, serial: redeploy ? instance.serial + 1 : null, message: event.message } },
        meta,
      };
    }
    default:
      checkSerial(event.serial, instance);
      return {
        movement: { kind: event.type, data: { instanceId: instance.id, serial: event.serial, partitionId: pid, message: event.message ?? null, connection: event.connection } },
        meta,
      };
  }
}

function checkSerial(serial: number, instance: { id: string; serial: number }): void {
  if (serial > instance.serial) throw new PledgerError('BAD_REQUEST', `instance ${instance.id} has no serial ${serial} yet`);
}
