/**
 * Usage hours, as nodes metered them. An hour of an instance counts once: the table's
 * key (hour, instance) decides, whichever report, retry or master brings it, so usage
 * needs no lock of its own. Closing a month (which marks hours billed) holds the whole
 * ledger back while it runs (master/billing/close.ts).
 */
import { CompiledQuery } from 'kysely';
import { NO_LOCKS, type Db, type Projection } from '../applier.js';
import type { UsageHour } from '../movements.js';

export const usage: Projection<'usage.reported' | 'usage.received'> = {
  tables: ['usage_hours'],
  appliers: {
    'usage.reported': {
      locks: NO_LOCKS,
      apply: async (db, d, at) => {
        await db.insertInto('usage_hours').values(usageRow(d, d.nodeId, at)).execute();
      },
      applyMany: async (db, movements) => {
        for (let start = 0; start < movements.length; start += BATCH_ROWS) {
          await db
            .insertInto('usage_hours')
            .values(movements.slice(start, start + BATCH_ROWS).map(({ data, at }) => usageRow(data, data.nodeId, at)))
            .execute();
        }
      },
    },
    'usage.received': {
      locks: NO_LOCKS,
      // Its hours were new when it was recorded, so they are new again when it is replayed.
      apply: async (db, d, at) => {
        await insertUsageHours(db, d.hours.map((h) => usageRow(h, d.nodeId, at)));
      },
    },
  },
};

/** Rows per statement: under SQLite's limit of bound parameters for the widest table. */
export const BATCH_ROWS = 1000;

export type UsageRow = ReturnType<typeof usageRow>;

export function usageRow(d: UsageHour, nodeId: string, at: string) {
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

/** Inserts usage rows, skipping the hours already recorded; answers the keys (`usageKey`) of those inserted. */
export async function insertUsageHours(db: Db, unsorted: UsageRow[]): Promise<Set<string>> {
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

function usageInsertQuery(db: Db, rows: UsageRow[]) {
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
function usageInsert(db: Db, rows: UsageRow[]): CompiledQuery {
  const probe = usageInsertQuery(db, rows.slice(0, 1)).compile();
  const key = `${probe.sql.includes('$1') ? 'numbered' : 'positional'}:${rows.length}`;
  let text = usageInsertSql.get(key);
  if (text === undefined) usageInsertSql.set(key, (text = usageInsertQuery(db, rows).compile().sql));
  const columns = Object.keys(rows[0]!) as (keyof UsageRow)[];
  const parameters: unknown[] = [];
  for (const row of rows) for (const column of columns) parameters.push(row[column]);
  return CompiledQuery.raw(text, parameters);
}

export const usageKey = (instanceId: string, hour: string) => `${hour} ${instanceId}`;

/** Text order as the databases store keys (the ids and hours are ASCII). */
const compareText = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
