/**
 * The ledger benchmark: ingest usage records, close a month, export it; on SQLite and,
 * when a server is given, on PostgreSQL beside it.
 *
 *   npm run bench:ledger                                   # 10,000 customers, 1,000,000 records
 *   npm run bench:ledger -- --customers 1000 --hours 100   # smaller
 *   npm run bench:ledger -- --batch 100                    # events per node report
 *   PLEDGER_BENCH_POSTGRES_URL=postgres://... npm run bench:ledger
 *
 * (PLEDGER_TEST_POSTGRES_URL is used when PLEDGER_BENCH_POSTGRES_URL is not set.)
 * Each customer has one instance that reports `--hours` hours of October 2026. The
 * instances are spread over nodes of `--batch` partitions; hour after hour, each node
 * reports the usage of its partitions in one batch, through `applyEvents`, the function
 * behind the node API's `POST /events`: every node at the same time, as a fleet does at
 * the top of the hour, or one node after the other with `--sequential`.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { closePeriod } from '../master/billing/close.js';
import { exportJournal } from '../master/billing/export.js';
import { setPrice } from '../master/billing/prices.js';
import { openDatabase, type Database } from '../master/db/database.js';
import { migrate } from '../master/db/migrate.js';
import { record, recordMany, type MovementEntry } from '../master/ledger/movements.js';
import { partitionId } from '../master/ledger/ids.js';
import { applyEvents } from '../master/nodes/events.js';
import { type NodeRow } from '../master/nodes/registry.js';
import type { ExportFormat, NodeEvent } from '../protocol/api.js';

const { values: options } = parseArgs({
  options: {
    customers: { type: 'string', default: '10000' },
    hours: { type: 'string', default: '100' },
    engines: { type: 'string', default: 'sqlite,postgres' },
    batch: { type: 'string', default: '500' },
    sequential: { type: 'boolean', default: false },
  },
});
const CUSTOMERS = Number(options.customers);
const HOURS = Number(options.hours);
const OCTOBER = Date.UTC(2026, 9, 1);
/**
 * Events per node report: 500 is the most a node sends at once (its outbox's batch,
 * and the node API's limit), and what a node with 500 partitions sends every hour.
 */
const EVENTS_PER_REPORT = Number(options.batch);
const NODES = Math.ceil(CUSTOMERS / EVENTS_PER_REPORT);
/** One report at a time, instead of every node's report of an hour at once as a fleet sends them. */
const SEQUENTIAL = options.sequential;
/** Random, as the master gives them: a node's instances are scattered over any index keyed by instance. */
const INSTANCE_IDS = Array.from({ length: CUSTOMERS }, () => randomUUID());

interface Figures {
  engine: string;
  records: number;
  ingestSeconds: number;
  /** The benchmark's own CPU time while ingesting: a figure less sensitive to a busy machine. */
  ingestCpuSeconds: number;
  recordsPerSecond: number;
  closeSeconds: number;
  invoices: number;
  exports: { format: ExportFormat; seconds: number; bytes: number; rssBeforeMiB: number; rssPeakMiB: number }[];
}

const mib = (bytes: number) => Math.round(bytes / 1024 / 1024);

async function bench(engine: 'sqlite' | 'postgres', url: string): Promise<Figures> {
  const database = openDatabase(url);
  try {
    await migrate(database);
    await setup(database);
    const records = CUSTOMERS * HOURS;

    const nodes = await database.db.selectFrom('nodes').selectAll().orderBy('name').execute();
    let started = performance.now();
    const cpuBefore = process.cpuUsage();
    for (let hour = 0; hour < HOURS; hour++) {
      const at = new Date(OCTOBER + hour * 3_600_000).toISOString();
      if (SEQUENTIAL) {
        for (const node of nodes) await applyEvents(database.db, node, usageReport(node, at));
      } else {
        await Promise.all(nodes.map((node) => applyEvents(database.db, node, usageReport(node, at))));
      }
    }
    const ingestSeconds = (performance.now() - started) / 1000;
    const cpu = process.cpuUsage(cpuBefore);
    const ingestCpuSeconds = (cpu.user + cpu.system) / 1e6;

    started = performance.now();
    const closed = await closePeriod(database, '2026-10', 'account:bench', new Date(Date.UTC(2026, 10, 2)));
    const closeSeconds = (performance.now() - started) / 1000;

    const exports: Figures['exports'] = [];
    for (const format of ['csv', 'json', 'hledger', 'beancount'] as const) {
      global.gc?.();
      const rssBefore = process.memoryUsage.rss();
      let peak = rssBefore;
      const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage.rss())), 20);
      started = performance.now();
      let bytes = 0;
      for await (const chunk of exportJournal(database.db, '2026-10', format)) bytes += Buffer.byteLength(chunk);
      clearInterval(sampler);
      peak = Math.max(peak, process.memoryUsage.rss());
      exports.push({ format, seconds: (performance.now() - started) / 1000, bytes, rssBeforeMiB: mib(rssBefore), rssPeakMiB: mib(peak) });
    }
    return { engine, records, ingestSeconds, ingestCpuSeconds, recordsPerSecond: Math.round(records / ingestSeconds), closeSeconds, invoices: closed.invoiceIds.length, exports };
  } finally {
    await database.close();
  }
}

/** One node's usage report for one hour: one event per instance it hosts. */
function usageReport(node: NodeRow, hour: string): NodeEvent[] {
  const first = Number(node.name.slice('node-'.length)) * EVENTS_PER_REPORT;
  const events: NodeEvent[] = [];
  for (let customer = first; customer < Math.min(CUSTOMERS, first + EVENTS_PER_REPORT); customer++) {
    const n = customer + Date.parse(hour) / 3_600_000;
    events.push({
      id: `usage-${customer}-${hour}`,
      at: hour,
      type: 'instance.usage',
      partition: `p${customer - first}`,
      instance: INSTANCE_IDS[customer]!,
      hour,
      cpuMilliseconds: 1000 + (n % 997) * 3600,
      memoryByteSeconds: (256 + (n % 1024)) * 1024 * 1024 * 3600,
      diskByteSeconds: 10 * 1024 ** 3 * 3600,
      uptimeSeconds: 3600,
    });
  }
  return events;
}

/** The customers, their instances on the nodes' partitions and a price list, recorded as an operator would. */
async function setup(database: Database): Promise<void> {
  const { db } = database;
  await db.transaction().execute(async (trx) => {
    const meta = { actor: 'master', subject: 'bench' };
    await record(trx, { kind: 'account.created', data: { accountId: 'bench', name: 'bench', role: 'admin' } }, meta);
    await record(
      trx,
      { kind: 'software.published', data: { softwareId: 'bench@1.0.0', name: 'bench', version: '1.0.0', hash: '0'.repeat(64), description: 'benchmark', definition: {}, parameterSchemas: {} } },
      meta,
    );
    const entries: MovementEntry[] = [];
    for (let n = 0; n < NODES; n++) {
      const nodeId = `node-${n}`;
      const partitions = [];
      for (let p = 0; p < Math.min(EVENTS_PER_REPORT, CUSTOMERS - n * EVENTS_PER_REPORT); p++) {
        partitions.push({ reference: `p${p}`, ip: `127.${1 + Math.floor(p / 250)}.${1 + (p % 250)}.1`, ports: { first: 10_000, last: 10_009 } });
      }
      entries.push({ movement: { kind: 'node.registered', data: { nodeId, name: nodeId, credentialHash: randomBytes(16).toString('hex') } }, meta });
      entries.push({ movement: { kind: 'node.formatted', data: { nodeId, partitions } }, meta });
    }
    for (let c = 0; c < CUSTOMERS; c++) {
      const instanceId = INSTANCE_IDS[c]!;
      const nodeId = `node-${Math.floor(c / EVENTS_PER_REPORT)}`;
      const reference = `p${c % EVENTS_PER_REPORT}`;
      entries.push({ movement: { kind: 'account.created', data: { accountId: `account-${c}`, name: `customer-${c}`, role: 'user' } }, meta });
      entries.push({
        movement: {
          kind: 'instance.requested',
          data: { instanceId, ownerId: `account-${c}`, title: 'service', softwareId: 'bench@1.0.0', softwareType: 'default', parameters: {}, state: 'started', serial: 1 },
        },
        // Requested before October: the master takes usage only within an instance's life.
        meta: { ...meta, at: '2026-09-01T00:00:00.000Z' },
      });
      entries.push({ movement: { kind: 'instance.allocated', data: { instanceId, partitionId: partitionId(nodeId, reference), node: nodeId, partition: reference } }, meta });
    }
    await recordMany(trx, entries);
  });
  await setPrice(
    db,
    { software: 'bench', softwareType: 'default', validFrom: '2026-01', prices: { 'instance-month': '20.00', 'instance-hour': '0.01', 'cpu-hour': '0.04', 'memory-gib-hour': '0.005', 'disk-gib-month': '0.10' } },
    'account:bench',
  );
}

async function postgresDatabase(adminUrl: string): Promise<{ url: string; drop(): Promise<void> }> {
  const name = `pledger_bench_${randomBytes(4).toString('hex')}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    drop: async () => {
      const client = new pg.Client({ connectionString: adminUrl });
      await client.connect();
      await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await client.end();
    },
  };
}

function report(f: Figures): void {
  console.log(`\n${f.engine}: ${f.records.toLocaleString('en')} usage records, ${CUSTOMERS.toLocaleString('en')} customers, ${NODES.toLocaleString('en')} nodes reporting ${EVENTS_PER_REPORT.toLocaleString('en')} events at once, ${SEQUENTIAL ? 'one node after the other' : 'all nodes together'}`);
  console.log(`  ingest   ${f.ingestSeconds.toFixed(1)} s   ${f.recordsPerSecond.toLocaleString('en')} records/s   (${f.ingestCpuSeconds.toFixed(1)} s of CPU in this process)`);
  console.log(`  close    ${f.closeSeconds.toFixed(1)} s   ${f.invoices.toLocaleString('en')} invoices`);
  for (const e of f.exports) {
    console.log(`  export ${e.format.padEnd(9)} ${e.seconds.toFixed(1)} s   ${mib(e.bytes)} MiB   RSS ${e.rssBeforeMiB} MiB before, ${e.rssPeakMiB} MiB peak`);
  }
}

const engines = options.engines.split(',');
const results: Figures[] = [];
if (engines.includes('sqlite')) {
  const dir = mkdtempSync(path.join(tmpdir(), 'pledger-bench-'));
  try {
    results.push(await bench('sqlite', `sqlite:${path.join(dir, 'master.db')}`));
    report(results.at(-1)!);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
const postgresUrl = process.env.PLEDGER_BENCH_POSTGRES_URL ?? process.env.PLEDGER_TEST_POSTGRES_URL;
if (engines.includes('postgres')) {
  if (!postgresUrl) {
    console.log('\npostgres: skipped (set PLEDGER_BENCH_POSTGRES_URL)');
  } else {
    const database = await postgresDatabase(postgresUrl);
    try {
      results.push(await bench('postgres', database.url));
      report(results.at(-1)!);
    } finally {
      await database.drop();
    }
  }
}
