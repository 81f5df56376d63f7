/**
 * What a ledger must hold after any concurrent load, read straight from its database
 * (SQLite file or PostgreSQL) once the masters are stopped: projections equal to a
 * rebuild from the movements, row by row; invoices never paid past their total nor paid
 * and credited; no partition held twice; a journal that balances.
 */
import Sqlite from 'better-sqlite3';
import pg from 'pg';

export type Row = Record<string, unknown>;

/** Not projections: the ledger itself, and content that a rebuild keeps as it is. */
const NOT_PROJECTIONS = new Set(['movements', 'software_archives', 'source_cache', 'binary_cache', 'kysely_migration', 'kysely_migration_lock']);

export async function query(database: string, text: string): Promise<Row[]> {
  if (database.startsWith('sqlite:')) {
    const sqlite = new Sqlite(database.slice('sqlite:'.length), { readonly: true, fileMustExist: true });
    try {
      return sqlite.prepare(text).all() as Row[];
    } finally {
      sqlite.close();
    }
  }
  const client = new pg.Client({ connectionString: database });
  await client.connect();
  try {
    return (await client.query(text)).rows as Row[];
  } finally {
    await client.end();
  }
}

/**
 * Takes these instances (all of them when no ids are given) to have been requested at
 * `createdAt`, and answers their ids. The master bills only hours within an instance's
 * life, and the tests bill months that are over: their instances must be older than
 * those months. A rebuild dates each instance from its first movement again, so a test
 * that compares a rebuild dates the same instances again before reading it.
 */
export async function backdateInstances(database: string, createdAt: string, ids?: readonly string[]): Promise<string[]> {
  const chosen: string[] = ids ? [...ids] : (await query(database, 'select id from instances')).map((r) => String(r.id));
  if (chosen.length === 0) return [];
  if (database.startsWith('sqlite:')) {
    const sqlite = new Sqlite(database.slice('sqlite:'.length), { fileMustExist: true });
    try {
      sqlite.pragma('busy_timeout = 5000');
      const update = sqlite.prepare('update instances set created_at = ? where id = ?');
      sqlite.transaction(() => chosen.forEach((id) => update.run(createdAt, id)))();
    } finally {
      sqlite.close();
    }
    return chosen;
  }
  const client = new pg.Client({ connectionString: database });
  await client.connect();
  try {
    await client.query('update instances set created_at = $1 where id = any($2)', [createdAt, chosen]);
  } finally {
    await client.end();
  }
  return chosen;
}

async function tables(database: string): Promise<string[]> {
  const rows = database.startsWith('sqlite:')
    ? await query(database, "select name from sqlite_master where type = 'table' and name not like 'sqlite_%' order by name")
    : await query(database, "select table_name as name from information_schema.tables where table_schema = 'public' and table_type = 'BASE TABLE' order by table_name");
  return rows.map((r) => String(r.name)).filter((t) => !NOT_PROJECTIONS.has(t));
}

/** One canonical line per row (columns sorted, bytes as hex), sorted: a table compares as a list of lines. */
function canonical(row: Row): string {
  const ordered = Object.keys(row)
    .sort()
    .map((k) => {
      const v = row[k];
      return [k, Buffer.isBuffer(v) ? `hex:${v.toString('hex')}` : typeof v === 'bigint' ? v.toString() : v === null || v === undefined ? null : String(v)];
    });
  return JSON.stringify(ordered);
}

export type Snapshot = Record<string, string[]>;

/** Every table but the ledger and the content stores, each as its sorted canonical rows. */
export async function snapshotProjections(database: string): Promise<Snapshot> {
  const snapshot: Snapshot = {};
  for (const table of await tables(database)) {
    snapshot[table] = (await query(database, `select * from ${table}`)).map(canonical).sort();
  }
  return snapshot;
}

/** The rows that differ between two snapshots, table by table: an empty list when they are equal. */
export function snapshotDifferences(live: Snapshot, rebuilt: Snapshot, limit = 20): string[] {
  const differences: string[] = [];
  for (const table of [...new Set([...Object.keys(live), ...Object.keys(rebuilt)])].sort()) {
    const a = new Set(live[table] ?? []);
    const b = new Set(rebuilt[table] ?? []);
    const onlyLive = [...a].filter((r) => !b.has(r));
    const onlyRebuilt = [...b].filter((r) => !a.has(r));
    if (onlyLive.length + onlyRebuilt.length === 0) continue;
    differences.push(`${table}: ${onlyLive.length} live rows not in the rebuild, ${onlyRebuilt.length} rebuilt rows not live`);
    // Rows with the same key (`id`, or the whole row but its changing columns) are shown
    // as the columns that differ: what a reader needs to see the race.
    const keyOf = (row: string) => {
      const fields = Object.fromEntries(JSON.parse(row) as [string, unknown][]);
      return 'id' in fields ? `id=${String(fields.id)}` : null;
    };
    const rebuiltByKey = new Map(onlyRebuilt.map((r) => [keyOf(r), r]));
    const paired = new Set<string>();
    for (const row of onlyLive.slice(0, limit)) {
      const key = keyOf(row);
      const other = key === null ? undefined : rebuiltByKey.get(key);
      if (!other) {
        differences.push(`  live only:    ${row}`);
        continue;
      }
      paired.add(other);
      const a = Object.fromEntries(JSON.parse(row) as [string, unknown][]);
      const b = Object.fromEntries(JSON.parse(other) as [string, unknown][]);
      const changed = Object.keys({ ...a, ...b }).filter((k) => JSON.stringify(a[k]) !== JSON.stringify(b[k]));
      differences.push(`  ${key}: ${changed.map((k) => `${k} live ${JSON.stringify(a[k])}, rebuilt ${JSON.stringify(b[k])}`).join('; ')}`);
    }
    for (const row of onlyRebuilt.slice(0, limit)) if (!paired.has(row)) differences.push(`  rebuilt only: ${row}`);
  }
  return differences;
}

const big = (v: unknown): bigint => BigInt(String(v ?? 0));

export interface InvoiceState {
  id: string;
  total: bigint;
  paid: bigint;
  credited: boolean;
  payments: number;
}

export async function invoiceStates(database: string): Promise<InvoiceState[]> {
  const invoices = await query(database, 'select id, total from invoices order by id');
  const payments = await query(database, 'select invoice_id, amount from payments');
  const credits = await query(database, 'select invoice_id from credit_notes');
  const credited = new Set(credits.map((c) => String(c.invoice_id)));
  return invoices.map((i) => {
    const mine = payments.filter((p) => p.invoice_id === i.id);
    return {
      id: String(i.id),
      total: big(i.total),
      paid: mine.reduce((sum, p) => sum + big(p.amount), 0n),
      credited: credited.has(String(i.id)),
      payments: mine.filter((p) => big(p.amount) > 0n).length,
    };
  });
}

/** Each invoice overpaid, or both paid and credited, as a sentence. */
export async function invoiceViolations(database: string): Promise<string[]> {
  const found: string[] = [];
  for (const i of await invoiceStates(database)) {
    if (i.paid > i.total) found.push(`${i.id}: paid ${i.paid} of a total of ${i.total} (${i.payments} payments)`);
    if (i.paid < 0n) found.push(`${i.id}: paid ${i.paid}, less than nothing (a payment reversed twice?)`);
    if (i.credited && i.paid > 0n) found.push(`${i.id}: credited and paid ${i.paid}`);
  }
  return found;
}

/** Partitions holding two instances, instances on two partitions, and the two sides disagreeing. */
export async function partitionViolations(database: string): Promise<string[]> {
  const found: string[] = [];
  const partitions = await query(database, 'select id, instance_id from partitions');
  const instances = await query(database, 'select id, title, partition_id, state from instances');
  const byPartition = new Map<string, string[]>();
  for (const i of instances) {
    if (i.partition_id === null) continue;
    const list = byPartition.get(String(i.partition_id)) ?? [];
    list.push(String(i.id));
    byPartition.set(String(i.partition_id), list);
  }
  for (const [partition, list] of byPartition) if (list.length > 1) found.push(`partition ${partition} is the partition of ${list.length} instances: ${list.join(', ')}`);
  const byInstance = new Map<string, string[]>();
  for (const p of partitions) {
    if (p.instance_id === null) continue;
    const list = byInstance.get(String(p.instance_id)) ?? [];
    list.push(String(p.id));
    byInstance.set(String(p.instance_id), list);
  }
  for (const [instance, list] of byInstance) if (list.length > 1) found.push(`instance ${instance} holds ${list.length} partitions: ${list.join(', ')}`);
  const instanceById = new Map(instances.map((i) => [String(i.id), i]));
  for (const p of partitions) {
    if (p.instance_id === null) continue;
    const i = instanceById.get(String(p.instance_id));
    if (!i || i.partition_id !== p.id) found.push(`partition ${p.id} names instance ${p.instance_id}, which names partition ${i?.partition_id ?? '(no such instance)'}`);
  }
  return found;
}

/** Currencies whose postings do not sum to zero, and transactions that do not. */
export async function journalViolations(database: string): Promise<string[]> {
  const found: string[] = [];
  const postings = await query(database, 'select transaction_id, currency, amount from journal_postings');
  const byCurrency = new Map<string, bigint>();
  const byTransaction = new Map<string, bigint>();
  for (const p of postings) {
    byCurrency.set(String(p.currency), (byCurrency.get(String(p.currency)) ?? 0n) + big(p.amount));
    const key = `${p.transaction_id} ${p.currency}`;
    byTransaction.set(key, (byTransaction.get(key) ?? 0n) + big(p.amount));
  }
  for (const [currency, sum] of byCurrency) if (sum !== 0n) found.push(`the journal sums to ${sum} ${currency}`);
  for (const [key, sum] of byTransaction) if (sum !== 0n) found.push(`transaction ${key} sums to ${sum}`);
  return found;
}
