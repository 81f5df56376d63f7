/**
 * The ledger benchmark: ingest usage records, close a month, export it; on SQLite and,
 * when a server is given, on PostgreSQL beside it.
 *
 *   npm run bench:ledger                                   # 10,000 customers, 1,000,000 records
 *   npm run bench:ledger -- --customers 1000 --hours 100   # smaller
 *   npm run bench:ledger -- --batch 10000                  # records per ingest transaction
 *   PLEDGER_BENCH_POSTGRES_URL=postgres://... npm run bench:ledger
 *
 * (PLEDGER_TEST_POSTGRES_URL is used when PLEDGER_BENCH_POSTGRES_URL is not set.)
 * Each customer has one instance that reports `--hours` hours of October 2026.
 */
import { randomBytes } from 'node:crypto';
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
import type { ExportFormat } from '../protocol/api.js';

const { values: options } = parseArgs({
  options: {
    customers: { type: 'string', default: '10000' },
    hours: { type: 'string', default: '100' },
    engines: { type: 'string', default: 'sqlite,postgres' },
    batch: { type: 'string', default: '10000' },
  },
});
const CUSTOMERS = Number(options.customers);
const HOURS = Number(options.hours);
const OCTOBER = Date.UTC(2026, 9, 1);
/**
 * Usage records per transaction while ingesting. Reports arrive hour by hour across
 * every instance, and the ledger's indexes are keyed by instance: a transaction writes
 * one page per instance and index whatever its size: larger ones write fewer pages
 * per record on SQLite (on PostgreSQL they were slower: see docs/billing.md).
 */
const INGEST_TRANSACTION = Number(options.batch);

interface Figures {
  engine: string;
  records: number;
  ingestSeconds: number;
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

    let started = performance.now();
    for (let first = 0; first < records; first += INGEST_TRANSACTION) {
      const entries: MovementEntry[] = [];
      for (let n = first; n < Math.min(records, first + INGEST_TRANSACTION); n++) {
        // Hour by hour across all instances, as reports arrive from a fleet.
        const customer = n % CUSTOMERS;
        const hour = new Date(OCTOBER + Math.floor(n / CUSTOMERS) * 3_600_000).toISOString();
        const instanceId = `instance-${customer}`;
        entries.push({
          movement: {
            kind: 'usage.reported',
            data: {
              instanceId,
              hour,
              ownerId: `account-${customer}`,
              softwareId: 'bench@1.0.0',
              softwareType: 'default',
              nodeId: 'node-bench',
              cpuMs: 1000 + (n % 997) * 3600,
              memoryByteSeconds: (256 + (n % 1024)) * 1024 * 1024 * 3600,
              diskByteSeconds: 10 * 1024 ** 3 * 3600,
              uptimeSeconds: 3600,
            },
          },
          meta: { id: `usage:${instanceId}:${hour}`, actor: 'node:node-bench', subject: instanceId },
        });
      }
      await database.db.transaction().execute((trx) => recordMany(trx, entries));
    }
    const ingestSeconds = (performance.now() - started) / 1000;

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
    return { engine, records, ingestSeconds, recordsPerSecond: Math.round(records / ingestSeconds), closeSeconds, invoices: closed.invoiceIds.length, exports };
  } finally {
    await database.close();
  }
}

/** The customers, their instances and a price list, recorded as an operator would. */
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
    for (let c = 0; c < CUSTOMERS; c++) {
      entries.push({ movement: { kind: 'account.created', data: { accountId: `account-${c}`, name: `customer-${c}`, role: 'user' } }, meta });
      entries.push({
        movement: {
          kind: 'instance.requested',
          data: { instanceId: `instance-${c}`, ownerId: `account-${c}`, title: 'service', softwareId: 'bench@1.0.0', softwareType: 'default', parameters: {}, state: 'started', serial: 1 },
        },
        meta,
      });
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
  console.log(`\n${f.engine}: ${f.records.toLocaleString('en')} usage records, ${CUSTOMERS.toLocaleString('en')} customers, ${INGEST_TRANSACTION.toLocaleString('en')} records per ingest transaction`);
  console.log(`  ingest   ${f.ingestSeconds.toFixed(1)} s   ${f.recordsPerSecond.toLocaleString('en')} records/s`);
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
