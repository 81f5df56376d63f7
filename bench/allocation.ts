/**
 * The allocation benchmark: a fleet of nodes with labels, then instances requested
 * with label SLAs through the real request path until every partition is taken.
 *
 *   npm run bench:allocation                                  # 10,000 nodes of 10 partitions, 100,000 instances
 *   npm run bench:allocation -- --nodes 1000 --rate 50        # smaller
 *
 * First, requests arrive over HTTP at a steady rate (--rate per second, for --seconds),
 * sent by a load generator in a worker thread, and the latency of each is measured on
 * the empty fleet; then --clients concurrent clients (default 256; each sends its next
 * request once the previous one is answered) request in process all but as many
 * instances as the HTTP phase sends, and the allocation throughput is measured; then
 * the HTTP phase runs again on the nearly full fleet (99% of partitions taken at the
 * default sizes), where a request must find one of the last free partitions. Both
 * latency figures (p50, p99, max) are printed at the end. SQLite, as the embedded default runs it: WAL,
 * synchronous FULL, requests committed in groups. The figures include the CPU time the
 * process used: on a shared machine, wall time also counts the waits for others.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import { createAccount } from '../master/accounts.js';
import { buildApp } from '../master/app.js';
import { openDatabase } from '../master/db/database.js';
import { groupCommitStats } from '../master/db/group-commit.js';
import { migrate } from '../master/db/migrate.js';
import { requestInstance } from '../master/instances/request.js';
import type { LoadOptions, LoadResult } from './allocation-load.js';
import { cpuSeconds, fsyncMilliseconds, publishBenchSoftware, seconds, writeFleet } from './fleet.js';

const { values: options } = parseArgs({
  options: {
    nodes: { type: 'string', default: '10000' },
    partitions: { type: 'string', default: '10' },
    rate: { type: 'string', default: '100' },
    seconds: { type: 'string', default: '10' },
    clients: { type: 'string', default: '256' },
  },
});
const NODES = Number(options.nodes);
const PARTITIONS = Number(options.partitions);
const RATE = Number(options.rate);
const SECONDS = Number(options.seconds);
const CLIENTS = Number(options.clients);
const REGIONS = ['eu', 'us', 'asia', 'africa'];
const NETWORKS = ['lan', 'wan'];

const dir = mkdtempSync(path.join(tmpdir(), 'pledger-bench-allocation-'));
console.log(`disk: one fsync takes ${fsyncMilliseconds(dir)} ms (median of 20) where the database is`);
const database = openDatabase(`sqlite:${path.join(dir, 'master.db')}`);
await migrate(database);
const { db } = database;

// The fleet, written through the ledger as registrations and layouts would be.
let started = performance.now();
const { token } = await createAccount(db, { name: 'bench', role: 'admin' }, 'master');
const owner = await db.selectFrom('accounts').selectAll().where('name', '=', 'bench').executeTakeFirstOrThrow();
const softwareId = await publishBenchSoftware(db);
await writeFleet(db, {
  nodes: NODES,
  partitions: PARTITIONS,
  softwareId,
  ownerId: owner.id,
  labels: (n) => ({ region: REGIONS[n % REGIONS.length]!, network: NETWORKS[Math.floor(n / REGIONS.length) % NETWORKS.length]! }),
});
console.log(`fleet: ${NODES} nodes x ${PARTITIONS} partitions written in ${seconds(started)} s`);

const sla = (i: number) => ({ region: REGIONS[i % REGIONS.length]!, network: NETWORKS[Math.floor(i / REGIONS.length) % NETWORKS.length]! });
const total = NODES * PARTITIONS;
let next = 0;

// Requests over HTTP at a steady rate: the latency one user sees while others order.
// Measured twice: on the empty fleet, and once the bulk has filled it but for the
// partitions the second measure takes, where each request must find one of the last free ones.
const app = buildApp({ database });
await app.listen({ host: '127.0.0.1', port: 0 });
const address = app.server.address() as { port: number };
const count = Math.min(RATE * SECONDS, Math.floor(total / 2));
const measured: string[] = [];
const overHttp = async (phase: string) => {
  const groupsBefore = groupCommitStats(db)!;
  const cpuBefore = process.cpuUsage();
  const taken = next;
  const start = performance.now();
  const load = new Worker(new URL('./allocation-load.js', import.meta.url), {
    workerData: {
      url: `http://127.0.0.1:${address.port}`,
      token,
      rate: RATE,
      requests: Array.from({ length: count }, () => ({ title: `i-${next}`, sla: sla(next++) })),
    } satisfies LoadOptions,
  });
  const { latencies, failures } = await new Promise<LoadResult>((resolve, reject) => {
    load.once('message', resolve);
    load.once('error', reject);
  });
  if (failures.length > 0) throw new Error(`${failures.length} requests not allocated, first: ${failures[0]}`);
  latencies.sort((x, y) => x - y);
  const percentile = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))]!.toFixed(1);
  const figures = `p50 ${percentile(50)} ms, p99 ${percentile(99)} ms, max ${latencies.at(-1)!.toFixed(1)} ms`;
  const fill = `${((taken / total) * 100).toFixed(1)}% of partitions taken`;
  measured.push(`  ${phase} (${fill}): ${figures}`);
  console.log(
    `HTTP, ${phase}, ${fill}: ${count} requests at ${RATE}/s: latency ${figures}; ` +
      `${groupCommitStats(db)!.groups - groupsBefore.groups} commits; ${cpuSeconds(cpuBefore)} s of CPU in this process (the master and the load thread) over ${seconds(start)} s`,
  );
};
await overHttp('empty fleet');

// The rest but the last `count`, by CLIENTS concurrent clients that each send their
// next request once the previous one is answered: allocation throughput as the fleet fills.
const cpuBefore = process.cpuUsage();
started = performance.now();
const bulkFirst = next;
const bulkLast = total - count;
const groupsBefore = groupCommitStats(db)!;
const client = async () => {
  while (next < bulkLast) {
    const index = next++;
    const view = await requestInstance(db, owner, `i-${index}`, { software: 'bench', sla: sla(index) });
    if (view.status !== 'allocated') throw new Error(`instance ${index} not allocated: ${view.message}`);
  }
};
await Promise.all(Array.from({ length: CLIENTS }, client));
const bulk = bulkLast - bulkFirst;
const bulkSeconds = seconds(started);
const groups = groupCommitStats(db)!;
const groupCount = groups.groups - groupsBefore.groups;
console.log(
  `in process, ${CLIENTS} concurrent clients: ${bulk} instances allocated in ${bulkSeconds} s (${Math.round(bulk / Number(bulkSeconds))}/s), ` +
    `${groupCount} commits (${(bulk / groupCount).toFixed(1)} requests per commit on average, ${groups.largest} at most); ${cpuSeconds(cpuBefore)} s of CPU`,
);

// The last free partitions, over HTTP again.
await overHttp('nearly full fleet');
await app.close();
console.log(`request latency at ${RATE}/s:\n${measured.join('\n')}`);
const full = await requestInstance(db, owner, 'one-too-many', { software: 'bench', sla: sla(0) });
console.log(`one more: ${full.status}, "${full.message}"`);

await database.close();
rmSync(dir, { recursive: true, force: true });
