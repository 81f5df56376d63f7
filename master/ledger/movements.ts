/**
 * The ledger's movements: what can happen, and how each one changes the projections.
 *
 * Every write of the master goes through `record`: it appends the movement and applies
 * it to the projection tables in the same transaction. Because `apply` is the only code
 * that writes projections, replaying the movements in order rebuilds them exactly
 * (`rebuildProjections`).
 */
import { createHash, randomUUID } from 'node:crypto';
import { CompiledQuery, sql, SqliteAdapter, type Kysely, type Transaction } from 'kysely';
import type { ConnectionParameters, Labels, NodeScope, Parameters, PartitionDefinition, PromiseState, RequestedState, Resources, Sla } from '../../protocol/api.js';
import { PledgerError } from '../../protocol/errors.js';
import type { Tables } from '../db/tables.js';
import { applyBilling, applyIssuedInvoices, BILLING_PROJECTIONS, isBillingMovement, type BillingMovement, type InvoiceData } from '../billing/journal.js';

type Db = Kysely<Tables> | Transaction<Tables>;

export type ReportedStatus = 'deployed' | 'started' | 'stopped' | 'destroyed' | 'error' | 'waiting';

/** Every kind of movement and the data it carries. */
export type Movement =
  | { kind: 'account.created'; data: { accountId: string; name: string; role: 'admin' | 'user' } }
  | { kind: 'token.issued'; data: { accountId: string; hash: string } }
  | {
      kind: 'node.registered';
      // Settings added later: a movement recorded before them means an open node without labels.
      data: { nodeId: string; name: string; credentialHash: string; scope?: NodeScope; ownerId?: string | null; labels?: Labels; resources?: Resources };
    }
  // `resources` or `binaryCacheUpload` absent: recorded before that setting existed, which stays as it was.
  | { kind: 'node.updated'; data: { nodeId: string; scope: NodeScope; ownerId: string | null; labels: Labels; resources?: Resources; binaryCacheUpload?: boolean } }
  | { kind: 'node.formatted'; data: { nodeId: string; partitions: PartitionDefinition[] } }
  | {
      kind: 'software.published';
      data: {
        softwareId: string;
        name: string;
        version: string;
        hash: string;
        description: string;
        definition: unknown;
        parameterSchemas: Record<string, object>;
      };
    }
  | { kind: 'supply.requested'; data: { nodeId: string; softwareId: string; state: 'available' | 'destroyed' } }
  | { kind: 'supply.reported'; data: { nodeId: string; softwareId: string; status: 'built' | 'error' | 'removed'; message: string | null } }
  | {
      kind: 'instance.requested';
      data: {
        instanceId: string;
        ownerId: string;
        title: string;
        softwareId: string;
        softwareType: string;
        parameters: Parameters;
        /** Absent in movements recorded before SLAs existed: no constraint. */
        sla?: Sla;
        /** Absent in movements recorded before declared resources: none asked, none needed. */
        resources?: Resources;
        needs?: Resources;
        state: RequestedState;
        serial: number;
        /** Set on a sub-instance's first request: the instance that requested it and its tree's root. */
        parentId?: string | null;
        rootId?: string;
        /** A shared instance: it gets a host instance instead of a partition. */
        shared?: boolean;
      };
    }
  | {
      kind: 'instance.allocated';
      /** `resources`: what the instance takes on the node (absent before declared resources). */
      data: { instanceId: string; partitionId: string; node: string; partition: string; resources?: Resources };
    }
  | { kind: 'instance.unallocated'; data: { instanceId: string; reason: string } }
  /**
   * A shared instance attached to the instance that hosts it, or whose route or backends
   * changed there: `route` is what it holds on the host (null: nothing), `backends` the
   * partitions its backends point into. Both absent in movements recorded before them.
   */
  | { kind: 'instance.hosted'; data: { instanceId: string; hostId: string; route?: string | null; backends?: string[] } }
  /** The node must deploy the instance again (new serial) because something it depends on changed. */
  | { kind: 'instance.redeploy'; data: { instanceId: string; serial: number; reason: string } }
  | { kind: 'instance.promises'; data: { instanceId: string; serial: number; reportedAt: string; promises: PromiseState[] } }
  | {
      kind: 'instance.banged';
      /** `serial` is the new serial the node must deploy, or null when the bang was about an older one. */
      data: { instanceId: string; reportedSerial: number; serial: number | null; message: string };
    }
  /** One hour of one instance: how usage was recorded before a node's report became one movement. Still replayed. */
  | { kind: 'usage.reported'; data: UsageHour & { nodeId: string } }
  /** A node's usage report: the hours in it that no report had brought before (`recordUsage`). */
  | { kind: 'usage.received'; data: { nodeId: string; hours: UsageHour[] } }
  | {
      kind: `instance.${ReportedStatus}`;
      data: {
        instanceId: string;
        serial: number;
        partitionId: string | null;
        message: string | null;
        connection?: ConnectionParameters;
      };
    }
  | BillingMovement;

export type MovementKind = Movement['kind'];

/** One completed hour of one instance, as its node metered it. */
export interface UsageHour {
  instanceId: string;
  /** The hour's start, ISO-8601 UTC. */
  hour: string;
  ownerId: string;
  softwareId: string;
  softwareType: string;
  cpuMs: number;
  memoryByteSeconds: number;
  diskByteSeconds: number;
  uptimeSeconds: number;
}

export interface MovementRecord {
  /** Idempotency key; a random one when the movement has no natural key. */
  id?: string;
  /** Who: `account:<id>`, `node:<id>` or `master`. */
  actor: string;
  /** What it is about, for history queries: an instance, node, account or software id. */
  subject: string;
  at?: string;
}

/**
 * Appends a movement and applies it. Returns false, changing nothing, when a movement
 * with the same id was already recorded: that is how a re-sent report is counted once.
 */
export async function record(trx: Transaction<Tables>, movement: Movement, meta: MovementRecord): Promise<boolean> {
  const at = meta.at ?? new Date().toISOString();
  // Plain SQL rather than the query builder: every write of the master passes here, and
  // building this statement cost several times what running it does.
  const { rows: inserted } = await sql<{ seq: number }>`
    insert into movements (id, at, actor, kind, subject, data)
    values (${meta.id ?? randomUUID()}, ${at}, ${meta.actor}, ${movement.kind}, ${meta.subject}, ${JSON.stringify(movement.data)})
    on conflict (id) do nothing returning seq`.execute(trx);
  if (inserted.length === 0) return false;
  await apply(trx, movement, at);
  return true;
}

/** The projection of one movement. The only code that writes projection tables. */
async function apply(db: Db, movement: Movement, at: string): Promise<void> {
  if (isBillingMovement(movement)) return applyBilling(db, movement, at);
  switch (movement.kind) {
    case 'account.created': {
      const { accountId, name, role } = movement.data;
      await db.insertInto('accounts').values({ id: accountId, name, role, created_at: at }).execute();
      return;
    }
    case 'token.issued': {
      const { accountId, hash } = movement.data;
      await db.insertInto('tokens').values({ hash, account_id: accountId, created_at: at }).execute();
      return;
    }
    case 'node.registered': {
      const { nodeId, name, credentialHash, scope = 'open', ownerId = null, labels = {}, resources = {} } = movement.data;
      await db.insertInto('nodes').values({ id: nodeId, name, credential_hash: credentialHash, registered_at: at, scope, owner_id: ownerId, free_partitions: 0, binary_cache_upload: 0 }).execute();
      await setLabels(db, nodeId, labels);
      await setResources(db, nodeId, resources);
      return;
    }
    case 'node.updated': {
      const { nodeId, scope, ownerId, labels, resources, binaryCacheUpload } = movement.data;
      await db
        .updateTable('nodes')
        .set({ scope, owner_id: ownerId, ...(binaryCacheUpload === undefined ? {} : { binary_cache_upload: binaryCacheUpload ? 1 : 0 }) })
        .where('id', '=', nodeId)
        .execute();
      await setLabels(db, nodeId, labels);
      if (resources) await setResources(db, nodeId, resources);
      return;
    }
    case 'node.formatted': {
      const { nodeId, partitions } = movement.data;
      for (const p of partitions) {
        await db
          .insertInto('partitions')
          .values({
            id: partitionId(nodeId, p.reference),
            node_id: nodeId,
            reference: p.reference,
            ip: p.ip,
            port_first: p.ports.first,
            port_last: p.ports.last,
            instance_id: null,
          })
          .onConflict((oc) =>
            oc.column('id').doUpdateSet({ ip: p.ip, port_first: p.ports.first, port_last: p.ports.last }),
          )
          .execute();
      }
      await countFreePartitions(db, nodeId);
      return;
    }
    case 'software.published': {
      const d = movement.data;
      await db
        .insertInto('software')
        .values({
          id: d.softwareId,
          name: d.name,
          version: d.version,
          hash: d.hash,
          description: d.description,
          definition: JSON.stringify(d.definition),
          parameter_schemas: JSON.stringify(d.parameterSchemas),
          published_at: at,
        })
        .execute();
      return;
    }
    case 'supply.requested': {
      const { nodeId, softwareId, state } = movement.data;
      await db
        .insertInto('supplies')
        .values({ node_id: nodeId, software_id: softwareId, state, status: 'pending', message: null })
        .onConflict((oc) => oc.columns(['node_id', 'software_id']).doUpdateSet({ state, status: 'pending', message: null }))
        .execute();
      return;
    }
    case 'supply.reported': {
      const { nodeId, softwareId, status, message } = movement.data;
      await db
        .updateTable('supplies')
        .set({ status, message })
        .where('node_id', '=', nodeId)
        .where('software_id', '=', softwareId)
        .execute();
      return;
    }
    case 'instance.requested': {
      // Plain SQL, like `record`: one of these follows every request.
      const d = movement.data;
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
      }
      return;
    }
    case 'instance.hosted': {
      const { instanceId, hostId, route = null, backends = [] } = movement.data;
      await db.updateTable('instances').set({ host_id: hostId, shared_route: route, status: 'allocated', message: null, updated_at: at }).where('id', '=', instanceId).execute();
      await db.deleteFrom('shared_backends').where('instance_id', '=', instanceId).execute();
      if (backends.length > 0) await db.insertInto('shared_backends').values(backends.map((partition_id) => ({ instance_id: instanceId, partition_id }))).execute();
      return;
    }
    case 'instance.redeploy': {
      const { instanceId, serial } = movement.data;
      await db.updateTable('instances').set({ serial, status: 'allocated', message: null, updated_at: at }).where('id', '=', instanceId).execute();
      return;
    }
    case 'instance.allocated': {
      const { instanceId, partitionId, resources = {} } = movement.data;
      // Plain SQL, like `record`: an allocation follows nearly every request.
      // Conditional, so that two master processes can never take the same partition.
      const taken = await sql`update partitions set instance_id = ${instanceId} where id = ${partitionId} and instance_id is null`.execute(db);
      if (Number(taken.numAffectedRows) !== 1) throw new PledgerError('CONFLICT', `partition ${partitionId} was taken meanwhile: try again`);
      await sql`update nodes set free_partitions = free_partitions - 1 where id = ${nodeOf(partitionId)}`.execute(db);
      await takeResources(db, nodeOf(partitionId), resources, 1);
      await sql`
        update instances set partition_id = ${partitionId}, last_partition_id = ${partitionId}, status = 'allocated', message = null, updated_at = ${at}
        where id = ${instanceId}`.execute(db);
      return;
    }
    case 'instance.unallocated': {
      const { instanceId, reason } = movement.data;
      await db.updateTable('instances').set({ status: 'unallocated', message: reason, host_id: null, shared_route: null, updated_at: at }).where('id', '=', instanceId).execute();
      await db.deleteFrom('shared_backends').where('instance_id', '=', instanceId).execute();
      return;
    }
    case 'instance.promises': {
      const { instanceId, reportedAt, promises } = movement.data;
      const newer = await db
        .selectFrom('instance_promises')
        .select('name')
        .where('instance_id', '=', instanceId)
        .where('reported_at', '>', reportedAt)
        .executeTakeFirst();
      if (newer) return;
      await db.deleteFrom('instance_promises').where('instance_id', '=', instanceId).execute();
      if (promises.length > 0) {
        await db
          .insertInto('instance_promises')
          .values(promises.map((p) => ({ instance_id: instanceId, name: p.name, status: p.status, message: p.message, since: p.since, reported_at: reportedAt })))
          .execute();
      }
      return;
    }
    case 'instance.banged': {
      const { instanceId, serial } = movement.data;
      if (serial === null) return;
      await db.updateTable('instances').set({ serial, status: 'allocated', message: null, updated_at: at }).where('id', '=', instanceId).execute();
      return;
    }
    case 'usage.reported':
      await db.insertInto('usage_hours').values(usageRow(movement.data, movement.data.nodeId, at)).execute();
      return;
    case 'usage.received':
      // Its hours were new when it was recorded, so they are new again when it is replayed.
      await insertUsageHours(db, movement.data.hours.map((h) => usageRow(h, movement.data.nodeId, at)));
      return;
    case 'instance.deployed':
    case 'instance.started':
    case 'instance.stopped':
    case 'instance.destroyed':
    case 'instance.error':
    case 'instance.waiting': {
      const { instanceId, serial, message, connection } = movement.data;
      const status = movement.kind.slice('instance.'.length) as ReportedStatus;
      const current = await db.selectFrom('instances').select(['serial', 'state', 'needs']).where('id', '=', instanceId).executeTakeFirstOrThrow();
      if (status === 'destroyed' && current.state === 'destroyed') {
        // The partition is free again, and what the instance took: the node wiped it.
        const freed = await db.selectFrom('partitions').select('node_id').where('instance_id', '=', instanceId).executeTakeFirst();
        await db.updateTable('partitions').set({ instance_id: null }).where('instance_id', '=', instanceId).execute();
        if (freed) {
          await countFreePartitions(db, freed.node_id);
          await takeResources(db, freed.node_id, JSON.parse(current.needs) as Resources, -1);
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
      return;
    }
  }
}

type UsageReported = Extract<Movement, { kind: 'usage.reported' }>;

function usageRow(d: UsageHour, nodeId: string, at: string) {
  return {
    instance_id: d.instanceId,
    hour: d.hour,
    owner_id: d.ownerId,
    software_id: d.softwareId,
    software_type: d.softwareType,
    node_id: nodeId,
    cpu_ms: d.cpuMs,
    memory_byte_seconds: d.memoryByteSeconds,
    disk_byte_seconds: d.diskByteSeconds,
    uptime_seconds: d.uptimeSeconds,
    recorded_at: at,
  };
}

export interface MovementEntry {
  movement: Movement;
  meta: MovementRecord;
}

/** Rows per statement: under SQLite's limit of bound parameters for the widest table. */
const BATCH_ROWS = 1000;

/**
 * The batch form of `record`, for bulk arrivals such as usage reports: appends the
 * movements in order, skips those whose id is recorded already (or repeated in the
 * batch), and applies the new ones, several usage reports to one statement. Answers
 * how many were new. The result is the same as recording them one by one.
 */
export async function recordMany(trx: Transaction<Tables>, entries: MovementEntry[]): Promise<number> {
  return (await recordNew(trx, entries)).size;
}

/** `recordMany`, answering the ids of the movements it recorded now (not those recorded already). */
export async function recordNew(trx: Transaction<Tables>, entries: MovementEntry[]): Promise<Set<string>> {
  const seen = new Set<string>();
  const rows = [];
  for (const { movement, meta } of entries) {
    const id = meta.id ?? randomUUID();
    if (seen.has(id)) continue;
    seen.add(id);
    rows.push({ movement, row: { id, at: meta.at ?? new Date().toISOString(), actor: meta.actor, kind: movement.kind, subject: meta.subject, data: JSON.stringify(movement.data) } });
  }
  const fresh = new Set<string>();
  for (let start = 0; start < rows.length; start += BATCH_ROWS) {
    const inserted = await trx
      .insertInto('movements')
      .values(rows.slice(start, start + BATCH_ROWS).map((r) => r.row))
      .onConflict((oc) => oc.column('id').doNothing())
      .returning('id')
      .execute();
    for (const r of inserted) fresh.add(r.id);
  }
  const toApply = rows.filter((r) => fresh.has(r.row.id));
  for (let i = 0; i < toApply.length; ) {
    const kind = toApply[i]!.movement.kind;
    if (kind === 'usage.reported') {
      const usage = [];
      for (; i < toApply.length && toApply[i]!.movement.kind === kind && usage.length < BATCH_ROWS; i++) {
        const { data } = toApply[i]!.movement as UsageReported;
        usage.push(usageRow(data, data.nodeId, toApply[i]!.row.at));
      }
      await trx.insertInto('usage_hours').values(usage).execute();
    } else if (kind === 'invoice.issued') {
      const invoices: InvoiceData[] = [];
      for (; i < toApply.length && toApply[i]!.movement.kind === kind && invoices.length < BATCH_ROWS; i++) {
        invoices.push(toApply[i]!.movement.data as InvoiceData);
      }
      await applyIssuedInvoices(trx, invoices);
    } else {
      await apply(trx, toApply[i]!.movement, toApply[i]!.row.at);
      i++;
    }
  }
  return fresh;
}

/** Inserts usage rows, skipping the hours already recorded; answers the keys (`usageKey`) of those inserted. */
async function insertUsageHours(db: Db, unsorted: ReturnType<typeof usageRow>[]): Promise<Set<string>> {
  // In the table's key order: each row then lands after the one before instead of on a
  // random page of the hour, half the work for SQLite and half the pages written. The
  // sort is stable: of two rows with one key, the first is still the one inserted.
  const rows = unsorted.toSorted((a, b) => compareText(a.hour, b.hour) || compareText(a.instance_id, b.instance_id));
  const inserted = new Set<string>();
  for (let start = 0; start < rows.length; start += BATCH_ROWS) {
    const { rows: fresh } = await db.executeQuery<{ instance_id: string; hour: string }>(usageInsert(db, rows.slice(start, start + BATCH_ROWS)));
    for (const row of fresh) inserted.add(usageKey(row.instance_id, row.hour));
  }
  return inserted;
}

function usageInsertQuery(db: Db, rows: ReturnType<typeof usageRow>[]) {
  return db
    .insertInto('usage_hours')
    .values(rows)
    .onConflict((oc) => oc.columns(['hour', 'instance_id']).doNothing())
    .returning(['instance_id', 'hour']);
}

/** The SQL of a usage insert, per engine (told apart by their placeholders) and number of rows. */
const usageInsertSql = new Map<string, string>();

/**
 * The usage insert, compiled. Building a thousand-row insert with the query builder costs
 * as much as SQLite takes to run it; its text depends only on the engine and the number
 * of rows, so it is built once per pair and given the values as they are, in the order
 * the builder binds them (row by row, in the columns' order).
 */
function usageInsert(db: Db, rows: ReturnType<typeof usageRow>[]): CompiledQuery {
  const probe = usageInsertQuery(db, rows.slice(0, 1)).compile();
  const key = `${probe.sql.includes('$1') ? 'numbered' : 'positional'}:${rows.length}`;
  let text = usageInsertSql.get(key);
  if (text === undefined) usageInsertSql.set(key, (text = usageInsertQuery(db, rows).compile().sql));
  const columns = Object.keys(rows[0]!) as (keyof ReturnType<typeof usageRow>)[];
  const parameters: unknown[] = [];
  for (const row of rows) for (const column of columns) parameters.push(row[column]);
  return CompiledQuery.raw(text, parameters);
}

const usageKey = (instanceId: string, hour: string) => `${hour} ${instanceId}`;

/** Text order as the databases store keys (the ids and hours are ASCII). */
const compareText = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/** A node's usage report, checked: every hour is of an instance the node hosts or hosted. */
export interface UsageReport {
  nodeId: string;
  /** `node:<name>`. */
  actor: string;
  hours: UsageHour[];
}

/**
 * Records usage reports (several nodes' at once, in the caller's transaction). An hour
 * of an instance counts once, whichever report, retry or master process brings it: the
 * usage table's key (hour, instance) decides, in the same statement that inserts it.
 * Each report then becomes one movement holding the hours it brought first, so that
 * replaying the ledger inserts exactly those again.
 *
 * One movement per report rather than per hour: a fleet reports every instance every
 * hour, and a movement per hour put an entry keyed by instance into each of the
 * ledger's indexes, on a page of its own, for every record (see docs/billing.md).
 *
 * Answers, for each report, which of its hours were new (in the report's order; of two
 * equal hours, the first counts).
 */
export async function recordUsage(trx: Transaction<Tables>, reports: UsageReport[]): Promise<boolean[][]> {
  const at = new Date().toISOString();
  const fresh = await insertUsageHours(
    trx,
    reports.flatMap((report) => report.hours.map((h) => usageRow(h, report.nodeId, at))),
  );
  const answers: boolean[][] = [];
  for (const report of reports) {
    const counted = report.hours.map((h) => fresh.delete(usageKey(h.instanceId, h.hour)));
    answers.push(counted);
    const hours = report.hours.filter((_, i) => counted[i]);
    if (hours.length === 0) continue;
    // Named by what it brought: no two reports bring the same hour, so no two share an id.
    const digest = createHash('sha256');
    for (const h of hours) digest.update(`${usageKey(h.instanceId, h.hour)}\n`);
    const id = `usage:${report.nodeId}:${digest.digest('base64url')}`;
    const movement: Movement = { kind: 'usage.received', data: { nodeId: report.nodeId, hours } };
    await sql`
      insert into movements (id, at, actor, kind, subject, data)
      values (${id}, ${at}, ${report.actor}, ${movement.kind}, ${report.nodeId}, ${JSON.stringify(movement.data)})`.execute(trx);
  }
  return answers;
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
async function takeResources(db: Db, nodeId: string, resources: Resources, sign: 1 | -1): Promise<void> {
  for (const [name, amount] of Object.entries(resources)) {
    if (amount === 0) continue;
    await db
      .insertInto('node_resources')
      .values({ node_id: nodeId, name, capacity: null, used: sign * amount })
      .onConflict((oc) => oc.columns(['node_id', 'name']).doUpdateSet((eb) => ({ used: eb('node_resources.used', '+', sign * amount) })))
      .execute();
  }
}

async function countFreePartitions(db: Db, nodeId: string): Promise<void> {
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

/** Partition ids are `<node id>:<reference>`. */
function nodeOf(partitionId: string): string {
  return partitionId.slice(0, partitionId.lastIndexOf(':'));
}

export function partitionId(nodeId: string, reference: string): string {
  return `${nodeId}:${reference}`;
}

const PROJECTIONS = [...BILLING_PROJECTIONS, 'usage_hours', 'instance_promises', 'shared_backends', 'instances', 'supplies', 'partitions', 'software', 'tokens', 'node_labels', 'node_resources', 'nodes', 'accounts'] as const;

/**
 * Empties the projections and replays every movement in order. The result equals the
 * live projections: a test compares the two.
 */
export async function rebuildProjections(db: Kysely<Tables>): Promise<number> {
  return db.transaction().execute(async (trx) => {
    // The source and binary caches are content, not projections, and point at the nodes
    // that uploaded them: their foreign keys are checked at commit, when every node is
    // back under its own id (deferrable on PostgreSQL since migration 0012).
    if (trx.getExecutor().adapter instanceof SqliteAdapter) await sql`PRAGMA defer_foreign_keys = ON`.execute(trx);
    else await sql`SET CONSTRAINTS ALL DEFERRED`.execute(trx);
    // Instances and partitions point at each other: break the cycle before deleting.
    await trx.updateTable('instances').set({ partition_id: null }).execute();
    for (const table of PROJECTIONS) await trx.deleteFrom(table).execute();
    let replayed = 0;
    let after = 0;
    for (;;) {
      const batch = await trx.selectFrom('movements').selectAll().where('seq', '>', after).orderBy('seq').limit(1000).execute();
      if (batch.length === 0) return replayed;
      for (const row of batch) {
        await apply(trx, { kind: row.kind, data: JSON.parse(row.data) } as Movement, row.at);
        after = Number(row.seq);
        replayed++;
      }
    }
  });
}
