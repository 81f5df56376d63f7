/**
 * Events a node set aside: the master refused them for good, so the node keeps them in
 * a table of its own instead of resending them forever ahead of everything else (see
 * slave/outbox.ts). The node reports how many and the last one's reason; operators see
 * it in `pledger node list`. One row per node, replaced at each report.
 */
import type { Kysely } from 'kysely';
import type { SetAsideReport, SetAsideView } from '../../protocol/api.js';
import { storable } from '../../protocol/storable.js';
import type { Tables } from '../db/tables.js';

export async function noteSetAside(db: Kysely<Tables>, nodeId: string, report: SetAsideReport): Promise<void> {
  // The reason is the master's own message about the node's event: evidence, kept as it is, made storable.
  const last = report.last ? storable(report.last) : undefined;
  const row = {
    count: report.count,
    last_event: last?.event ?? null,
    last_type: last?.type ?? null,
    last_reason: last?.reason ?? null,
    last_at: last?.at ?? null,
    reported_at: new Date().toISOString(),
  };
  await db
    .insertInto('node_set_aside')
    .values({ node_id: nodeId, ...row })
    .onConflict((oc) => oc.column('node_id').doUpdateSet(row))
    .execute();
}

/** Each node's report, by node name, for the nodes that set anything aside. */
export async function setAsideByNode(db: Kysely<Tables>): Promise<Map<string, SetAsideView>> {
  const rows = await db
    .selectFrom('node_set_aside')
    .innerJoin('nodes', 'nodes.id', 'node_set_aside.node_id')
    .select(['nodes.name', 'count', 'last_event', 'last_type', 'last_reason', 'last_at', 'reported_at'])
    .where('count', '>', 0)
    .execute();
  return new Map(
    rows.map((r) => [
      r.name,
      { count: Number(r.count), lastEvent: r.last_event, lastType: r.last_type, lastReason: r.last_reason, lastAt: r.last_at, reportedAt: r.reported_at },
    ]),
  );
}
