/**
 * The ledger's movements: what can happen, recorded once each.
 *
 * Every write of the master goes through `record`: it takes the locks the movement's
 * applier names (./locks.ts), appends the movement and applies it to the projection
 * tables in the same transaction. Because the appliers (./appliers.ts) are the only code
 * that writes projections, replaying the movements in order rebuilds them exactly
 * (`rebuildProjections`).
 */
import { createHash, randomUUID } from 'node:crypto';
import { sql, type Kysely, type Transaction } from 'kysely';
import type { ConnectionParameters, Labels, NodeScope, Parameters, PartitionDefinition, PromiseState, RequestedState, Resources, Sla } from '../../protocol/api.js';
import type { BillingMovement } from '../billing/journal.js';
import { engineOf } from '../db/engine.js';
import type { Tables } from '../db/tables.js';
import { applierOf, PROJECTION_TABLES } from './appliers.js';
import { lock, type LockKey } from './locks.js';
import { insertUsageHours, usageKey, usageRow } from './projections/usage.js';

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

/** What a node reports of an instance's deployment. */
export type InstanceReportKind = `instance.${ReportedStatus}`;

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
  const id = meta.id ?? randomUUID();
  return (await recordMany(trx, [{ movement, meta: { ...meta, id } }])).has(id);
}

export interface MovementEntry {
  movement: Movement;
  meta: MovementRecord;
}

/** Rows per statement: under SQLite's limit of bound parameters for the widest table. */
const BATCH_ROWS = 1000;

/**
 * Records movements in order, in the caller's transaction: takes the locks their
 * appliers name, appends those whose id is not recorded yet (nor repeated in the
 * batch), and applies them, several of one kind to a statement where the kind can.
 * Answers the ids it recorded now. The result is the same as recording them one by one.
 */
export async function recordMany(trx: Transaction<Tables>, entries: MovementEntry[]): Promise<Set<string>> {
  const seen = new Set<string>();
  const rows: { movement: Movement; row: { id: string; at: string; actor: string; kind: string; subject: string; data: string } }[] = [];
  const keys: LockKey[] = [];
  for (const { movement, meta } of entries) {
    const id = meta.id ?? randomUUID();
    if (seen.has(id)) continue;
    seen.add(id);
    keys.push(...applierOf(movement.kind).locks(movement.data as never));
    rows.push({ movement, row: { id, at: meta.at ?? new Date().toISOString(), actor: meta.actor, kind: movement.kind, subject: meta.subject, data: JSON.stringify(movement.data) } });
  }
  // Before appending: a conflicting transaction then appends after this one commits.
  await lock(trx, ...keys);
  const fresh = new Set<string>();
  for (let start = 0; start < rows.length; start += BATCH_ROWS) {
    // Plain SQL rather than the query builder: every write of the master passes here,
    // and building this statement cost several times what running it does.
    const values = rows.slice(start, start + BATCH_ROWS).map(({ row: r }) => sql`(${r.id}, ${r.at}, ${r.actor}, ${r.kind}, ${r.subject}, ${r.data})`);
    const { rows: inserted } = await sql<{ id: string }>`
      insert into movements (id, at, actor, kind, subject, data) values ${sql.join(values)}
      on conflict (id) do nothing returning id`.execute(trx);
    for (const r of inserted) fresh.add(r.id);
  }
  const toApply = rows.filter((r) => fresh.has(r.row.id));
  for (let i = 0; i < toApply.length; ) {
    const { kind } = toApply[i]!.movement;
    const applier = applierOf(kind);
    let j = i + 1;
    if (applier.applyMany) {
      while (j < toApply.length && toApply[j]!.movement.kind === kind && j - i < BATCH_ROWS) j++;
    }
    if (j - i > 1) await applier.applyMany!(trx, toApply.slice(i, j).map(({ movement, row }) => ({ data: movement.data as never, at: row.at })));
    else await applier.apply(trx, toApply[i]!.movement.data as never, toApply[i]!.row.at, kind as never);
    i = j;
  }
  return fresh;
}

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

/**
 * Empties the projections and replays every movement in order. The result equals the
 * live projections: a test compares the two.
 */
export async function rebuildProjections(db: Kysely<Tables>): Promise<number> {
  return db.transaction().execute(async (trx) => {
    const engine = engineOf(trx);
    // Nothing else is recorded meanwhile, and no other rebuild runs.
    await engine.lockLedger(trx);
    // The source and binary caches are content, not projections, and point at the nodes
    // that uploaded them: their foreign keys are checked at commit, when every node is
    // back under its own id (deferrable on PostgreSQL since migration 0012).
    await engine.deferForeignKeys(trx);
    // Instances and partitions point at each other: break the cycle before deleting.
    await trx.updateTable('instances').set({ partition_id: null }).execute();
    for (const table of PROJECTION_TABLES) await trx.deleteFrom(table as keyof Tables).execute();
    let replayed = 0;
    let after = 0;
    for (;;) {
      const batch = await trx.selectFrom('movements').selectAll().where('seq', '>', after).orderBy('seq').limit(1000).execute();
      if (batch.length === 0) return replayed;
      for (const row of batch) {
        await applierOf(row.kind as MovementKind).apply(trx, JSON.parse(row.data) as never, row.at, row.kind as never);
        after = Number(row.seq);
        replayed++;
      }
    }
  });
}
