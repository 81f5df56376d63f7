/**
 * The request benchmark: real `pledger master serve` processes answering over HTTP,
 * on SQLite with one master, and on PostgreSQL with one and with three (behind haproxy,
 * round-robin), as an operator runs them.
 *
 *   npm run bench:requests                          # everything (about 8 minutes on 2 cores)
 *   npm run bench:requests -- --seconds 3 --fleet-seconds 20 --fleet-nodes 2000
 *
 * For each setup it prints:
 * - requests per second for new instance requests (each allocates a partition) and for
 *   unchanged idempotent ones (the same request again), at 1, 4 and 16 concurrent
 *   keep-alive connections, with the masters' CPU time per request;
 * - with one master: the master's CPU time per desired-state poll answered 304 (the
 *   node's ETag unchanged) and per full answer, at 100 partitions, read from
 *   /proc/PID/stat before and after;
 * and then a fleet of --fleet-nodes nodes (10,000) polling every 60 s with jitter, each
 * with one instance, sending its events (usage of the last hour and a promise summary)
 * at the hourly rate a node sends them, for --fleet-seconds of real time: the masters'
 * CPU as a share of one core, and p50/p99 latency of the polls and of the event reports.
 *
 * The load generators run in this process (node:http, no dependencies); the masters are
 * other processes, so what this process spends is not counted in their CPU time, but it
 * shares the machine's cores with them. Each phase is bounded by its time and by a count.
 * PostgreSQL is the server named by PLEDGER_TEST_POSTGRES_URL (a fresh database per
 * setup): `scripts/bench-requests.sh` starts a throwaway one when it is not set.
 */
import http from 'node:http';
import { parseArgs } from 'node:util';
import { createAccount } from '../master/accounts.js';
import { openDatabase } from '../master/db/database.js';
import { requestInstance } from '../master/instances/request.js';
import { desiredState, desiredStateTag } from '../master/nodes/desired-state.js';
import { initMaster } from '../master/server.js';
import { freshDatabase, type TestEngine } from '../test/helpers/databases.js';
import { startMasterFleet, type MasterFleet } from '../test/helpers/master-fleet.js';
import { processCpuMs, publishBenchSoftware, writeFleet } from './fleet.js';

const { values: options } = parseArgs({
  options: {
    seconds: { type: 'string', default: '5' },
    'fleet-nodes': { type: 'string', default: '10000' },
    'fleet-seconds': { type: 'string', default: '60' },
    'poll-count': { type: 'string', default: '2000' },
    'log-level': { type: 'string', default: 'info' },
  },
});
const SECONDS = Number(options.seconds);
const FLEET_NODES = Number(options['fleet-nodes']);
const FLEET_SECONDS = Number(options['fleet-seconds']);
const POLLS = Number(options['poll-count']);
const LOG_LEVEL = options['log-level'];
const LEVELS = [1, 4, 16];
/** Partitions for the new requests: 100 nodes of 100, enough for 5 s at 2,000/s per level. */
const CAPACITY_NODES = 100;
const PARTITIONS_PER_NODE = 100;
const POSTGRES = Boolean(process.env.PLEDGER_TEST_POSTGRES_URL);

interface Request {
  method: string;
  path: string;
  token: string;
  body?: string;
  headers?: Record<string, string>;
}

interface Driven {
  count: number;
  failures: number;
  firstFailure: string | null;
  latencies: number[];
  wallMs: number;
}

/** One HTTP request; answers its status and body. `agent` false: a connection of its own, closed after. */
function send(base: URL, agent: http.Agent | false, request: Request): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { authorization: `Bearer ${request.token}`, ...request.headers };
    if (request.body !== undefined) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = String(Buffer.byteLength(request.body));
    }
    const req = http.request({ host: base.hostname, port: base.port, method: request.method, path: request.path, headers, agent }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (c: Buffer) => chunks.push(c));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
      response.on('error', reject);
    });
    req.on('error', reject);
    req.end(request.body);
  });
}

/**
 * `connections` clients, each sending its next request once the previous one is answered,
 * over keep-alive connections, until `seconds` have passed or `max` requests were sent.
 */
async function drive(url: string, connections: number, seconds: number, max: number, next: (connection: number, i: number) => Request, ok: (status: number, body: string) => boolean): Promise<Driven> {
  const base = new URL(url);
  const agent = new http.Agent({ keepAlive: true, maxSockets: connections });
  const latencies: number[] = [];
  let failures = 0;
  let firstFailure: string | null = null;
  let issued = 0;
  const started = performance.now();
  const end = started + seconds * 1000;
  await Promise.all(
    Array.from({ length: connections }, async (_, connection) => {
      for (let i = 0; performance.now() < end && issued < max; i++) {
        issued++;
        const request = next(connection, i);
        const sent = performance.now();
        const answer = await send(base, agent, request);
        latencies.push(performance.now() - sent);
        if (!ok(answer.status, answer.body)) {
          failures++;
          firstFailure ??= `${request.method} ${request.path}: ${answer.status} ${answer.body.slice(0, 300)}`;
        }
      }
    }),
  );
  agent.destroy();
  return { count: latencies.length, failures, firstFailure, latencies, wallMs: performance.now() - started };
}

function percentile(sorted: number[], p: number): string {
  if (sorted.length === 0) return '-';
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!.toFixed(1);
}

const mastersCpu = (fleet: MasterFleet) => fleet.masters.reduce((sum, m) => sum + processCpuMs(m.pid), 0);
const pad = (s: string | number, n: number) => String(s).padStart(n);

interface Prepared {
  database: string;
  adminToken: string;
  customers: string[];
  pollNode: string | null;
  drop(): Promise<void>;
}

/** A database with the bench release, 100 nodes of 100 partitions, 16 customers each with one instance `same`, and a node of 100 partitions all taken. */
async function prepareThroughput(engine: TestEngine): Promise<Prepared> {
  const testDb = await freshDatabase(engine);
  const { token: adminToken } = await initMaster(testDb.url, 'admin');
  const database = openDatabase(testDb.url);
  try {
    const { db } = database;
    const admin = await db.selectFrom('accounts').selectAll().where('name', '=', 'admin').executeTakeFirstOrThrow();
    const softwareId = await publishBenchSoftware(db);
    await writeFleet(db, { nodes: CAPACITY_NODES, partitions: PARTITIONS_PER_NODE, softwareId, ownerId: admin.id });
    const [poll] = await writeFleet(db, { nodes: 1, partitions: 100, softwareId, ownerId: admin.id, name: () => 'poll100' });
    const customers: string[] = [];
    for (let c = 0; c < 16; c++) {
      const { token } = await createAccount(db, { name: `customer-${c}`, role: 'user' }, 'master');
      customers.push(token);
      const owner = await db.selectFrom('accounts').selectAll().where('name', '=', `customer-${c}`).executeTakeFirstOrThrow();
      await requestInstance(db, owner, 'same', { software: 'bench' });
    }
    for (let i = 0; i < 100; i++) await requestInstance(db, admin, `poll-${i}`, { software: 'bench', sla: { node: 'poll100' } });
    return { database: testDb.url, adminToken, customers, pollNode: poll!.credential, drop: () => testDb.drop() };
  } finally {
    await database.close();
  }
}

async function throughput(engine: TestEngine, masters: number): Promise<string[]> {
  const label = `${engine === 'sqlite' ? 'SQLite' : 'PostgreSQL'}, ${masters} master${masters > 1 ? 's behind haproxy' : ''}`;
  const prepared = await prepareThroughput(engine);
  const fleet = await startMasterFleet({ engine, masters, balancer: masters > 1, database: prepared.database, adminToken: prepared.adminToken, lifetimeMs: 30 * 60_000, logLevel: LOG_LEVEL });
  const lines: string[] = [];
  try {
    const capacity = CAPACITY_NODES * PARTITIONS_PER_NODE;
    for (const level of LEVELS) {
      const cpuBefore = mastersCpu(fleet);
      const fresh = await drive(
        fleet.url,
        level,
        SECONDS,
        Math.floor(capacity / LEVELS.length),
        (c, i) => ({ method: 'PUT', path: `/api/v1/instances/new-${level}-${c}-${i}`, token: prepared.customers[c]!, body: '{"software":"bench"}' }),
        (status, body) => status === 200 && body.includes('"status":"allocated"'),
      );
      const cpuMiddle = mastersCpu(fleet);
      const same = await drive(
        fleet.url,
        level,
        SECONDS,
        1_000_000,
        (c) => ({ method: 'PUT', path: '/api/v1/instances/same', token: prepared.customers[c]!, body: '{"software":"bench"}' }),
        (status) => status === 200,
      );
      const cpuAfter = mastersCpu(fleet);
      const row = (name: string, d: Driven, cpu: number) => {
        const sorted = d.latencies.sort((a, b) => a - b);
        return (
          // Only accepted requests count towards the rate: a refusal is cheap, and no answer.
          `  ${name.padEnd(10)} ${pad(level, 2)} conn: ${pad(Math.round((d.count - d.failures) / (d.wallMs / 1000)), 6)}/s, ` +
          `p50 ${pad(percentile(sorted, 50), 6)} ms, p99 ${pad(percentile(sorted, 99), 6)} ms, ` +
          `master CPU ${pad((cpu / Math.max(1, d.count)).toFixed(2), 6)} ms/request` +
          (d.failures ? `; ${d.failures} of ${d.count} refused, not counted (first: ${d.firstFailure})` : '')
        );
      };
      lines.push(row('new', fresh, cpuMiddle - cpuBefore), row('idempotent', same, cpuAfter - cpuMiddle));
      console.log(`${label}: ${lines.at(-2)!.trim()}\n${label}: ${lines.at(-1)!.trim()}`);
    }
    if (masters === 1 && prepared.pollNode) {
      const poll = await pollCost(fleet, prepared.pollNode);
      console.log(`${label}: ${poll.trim()}`);
      lines.push(poll);
    }
  } finally {
    await fleet.close();
    await prepared.drop();
  }
  return [label, ...lines];
}

/** The master's CPU per desired-state poll of a node with 100 partitions, each with an instance: 304 and full. */
async function pollCost(fleet: MasterFleet, credential: string): Promise<string> {
  const master = fleet.masters[0]!;
  const base = new URL(master.url);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const first = await new Promise<{ etag: string; bytes: number }>((resolve, reject) => {
    http
      .get({ host: base.hostname, port: base.port, path: '/api/v1/node/desired-state', headers: { authorization: `Bearer ${credential}` }, agent }, (response) => {
        let bytes = 0;
        response.on('data', (c: Buffer) => (bytes += c.length));
        response.on('end', () => resolve({ etag: String(response.headers.etag), bytes }));
      })
      .on('error', reject);
  });
  const measure = async (conditional: boolean) => {
    const before = processCpuMs(master.pid);
    let unexpected = 0;
    for (let i = 0; i < POLLS; i++) {
      const answer = await send(base, agent, { method: 'GET', path: '/api/v1/node/desired-state', token: credential, headers: conditional ? { 'if-none-match': first.etag } : {} });
      if (answer.status !== (conditional ? 304 : 200)) unexpected++;
    }
    return { ms: (processCpuMs(master.pid) - before) / POLLS, unexpected };
  };
  const notModified = await measure(true);
  const full = await measure(false);
  agent.destroy();
  const warn = (u: number) => (u ? ` (${u} answers were not the status expected)` : '');
  return (
    `  desired-state poll at 100 partitions (${POLLS} polls each, one connection): ` +
    `304 ${notModified.ms.toFixed(3)} ms of master CPU${warn(notModified.unexpected)}; full answer (${first.bytes} bytes) ${full.ms.toFixed(3)} ms${warn(full.unexpected)}`
  );
}

interface FleetNode {
  credential: string;
  etag: string;
  instance: string;
  serial: number;
}

/** A database with `count` nodes of one partition, each with one started instance, and what each node knows (ETag, instance). */
async function prepareFleet(engine: TestEngine, count: number): Promise<{ database: string; adminToken: string; nodes: FleetNode[]; drop(): Promise<void> }> {
  const testDb = await freshDatabase(engine);
  const { token: adminToken } = await initMaster(testDb.url, 'admin');
  const database = openDatabase(testDb.url);
  try {
    const { db } = database;
    const admin = await db.selectFrom('accounts').selectAll().where('name', '=', 'admin').executeTakeFirstOrThrow();
    const softwareId = await publishBenchSoftware(db);
    const written = await writeFleet(db, { nodes: count, partitions: 1, softwareId, ownerId: admin.id });
    // Requested as customers would, 64 at a time, so that requests commit in groups.
    let next = 0;
    await Promise.all(
      Array.from({ length: 64 }, async () => {
        while (next < written.length) {
          const node = written[next++]!;
          await settled(() => requestInstance(db, admin, `i-${node.name}`, { software: 'bench', sla: { node: node.name } }));
        }
      }),
    );
    // The nodes report the last hour that is over; the master bills only hours within an
    // instance's life, so the instances are taken to have been requested before it.
    await db.updateTable('instances').set({ created_at: new Date(Date.now() - 3 * 3_600_000).toISOString() }).execute();
    // What each node learnt from its last poll: the state's ETag and its instance.
    const rows = new Map((await db.selectFrom('nodes').selectAll().execute()).map((r) => [r.id, r]));
    const nodes: FleetNode[] = [];
    for (const w of written) {
      const row = rows.get(w.id)!;
      const state = await desiredState(db, row);
      const etag = desiredStateTag(row);
      const instance = state.partitions[0]!.instance!;
      nodes.push({ credential: w.credential, etag, instance: instance.id, serial: instance.serial });
    }
    return { database: testDb.url, adminToken, nodes, drop: () => testDb.drop() };
  } finally {
    await database.close();
  }
}

/**
 * Runs a setup step again while it loses a race to another one (PostgreSQL may refuse a
 * concurrent allocation with a conflict): the setup is not what is measured.
 */
async function settled<T>(step: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await step();
    } catch (error) {
      if ((error as { code?: string }).code !== 'CONFLICT' || attempt >= 50) throw error;
    }
  }
}

async function fleetSimulation(engine: TestEngine, masters: number): Promise<string[]> {
  const label = `fleet of ${FLEET_NODES} nodes, ${engine === 'sqlite' ? 'SQLite' : 'PostgreSQL'}, ${masters} master${masters > 1 ? 's behind haproxy' : ''}`;
  const setupStarted = performance.now();
  const prepared = await prepareFleet(engine, FLEET_NODES);
  const setupSeconds = ((performance.now() - setupStarted) / 1000).toFixed(0);
  const fleet = await startMasterFleet({ engine, masters, balancer: masters > 1, database: prepared.database, adminToken: prepared.adminToken, lifetimeMs: 30 * 60_000, logLevel: LOG_LEVEL });
  try {
    const base = new URL(fleet.url);
    const PERIOD_MS = 60_000;
    const JITTER_MS = 5_000;
    const polls: number[] = [];
    const reports: number[] = [];
    let unexpected = 0;
    let firstUnexpected: string | null = null;
    let inFlight = 0;
    let mostInFlight = 0;
    const started = performance.now();
    const end = started + FLEET_SECONDS * 1000;
    // The hour before the one under way: over, so the master takes it.
    const hour = new Date(Math.floor(Date.now() / 3_600_000) * 3_600_000 - 3_600_000).toISOString();
    const at = (ms: number) => new Promise((resolve) => setTimeout(resolve, Math.max(0, started + ms - performance.now())));
    const timed = async (into: number[], request: Request, expect: number) => {
      inFlight++;
      mostInFlight = Math.max(mostInFlight, inFlight);
      const sent = performance.now();
      try {
        // A connection per request, as a node that polls once a minute opens one.
        const answer = await send(base, false, request);
        into.push(performance.now() - sent);
        if (answer.status !== expect) {
          unexpected++;
          firstUnexpected ??= `${request.method} ${request.path}: ${answer.status} ${answer.body.slice(0, 300)}`;
        }
      } catch (error) {
        unexpected++;
        firstUnexpected ??= `${request.method} ${request.path}: ${(error as Error).message}`;
      } finally {
        inFlight--;
      }
    };
    const cpuBefore = mastersCpu(fleet);
    const balancerBefore = fleet.balancerPid ? processCpuMs(fleet.balancerPid) : 0;
    await Promise.all(
      prepared.nodes.map(async (node, n) => {
        // Each node polls every minute at its own offset, moved by up to 5 s each time
        // (node-cron's random delay); it reports its hour of usage and its promises once an
        // hour, at a moment of its own: within this run, the share of nodes whose moment falls in it.
        const reportAt = Math.random() * 3_600_000;
        const work: Promise<void>[] = [];
        for (let t = Math.random() * PERIOD_MS; t < FLEET_SECONDS * 1000; t += PERIOD_MS) {
          const when = t + Math.random() * JITTER_MS;
          if (when >= FLEET_SECONDS * 1000) break;
          work.push(at(when).then(() => timed(polls, { method: 'GET', path: '/api/v1/node/desired-state', token: node.credential, headers: { 'if-none-match': node.etag } }, 304)));
        }
        if (reportAt < FLEET_SECONDS * 1000) {
          const events = [
            { id: `usage-${n}-0000`, at: new Date().toISOString(), type: 'instance.usage', partition: 'part0', instance: node.instance, hour, cpuMilliseconds: 1200, memoryByteSeconds: 3600 * 2 ** 26, diskByteSeconds: 3600 * 2 ** 24, uptimeSeconds: 3600 },
            {
              id: `promises-${n}-0000`,
              at: new Date().toISOString(),
              type: 'instance.promises',
              partition: 'part0',
              instance: node.instance,
              serial: node.serial,
              promises: [{ name: 'listening', status: 'ok', message: 'tcp port open', since: new Date(Date.now() - 86_400_000).toISOString() }],
            },
          ];
          work.push(at(reportAt).then(() => timed(reports, { method: 'POST', path: '/api/v1/node/events', token: node.credential, body: JSON.stringify({ events }) }, 200)));
        }
        await Promise.all(work);
      }),
    );
    const wall = Math.max(performance.now(), end) - started;
    const cpu = mastersCpu(fleet) - cpuBefore;
    const balancerCpu = fleet.balancerPid ? processCpuMs(fleet.balancerPid) - balancerBefore : 0;
    polls.sort((a, b) => a - b);
    reports.sort((a, b) => a - b);
    return [
      `${label} (written in ${setupSeconds} s), ${FLEET_SECONDS} s of polls every 60 s with up to 5 s of jitter, a connection each:`,
      `  ${polls.length} polls (${(polls.length / (wall / 1000)).toFixed(0)}/s): p50 ${percentile(polls, 50)} ms, p99 ${percentile(polls, 99)} ms, max ${percentile(polls, 100)} ms`,
      `  ${reports.length} event reports (usage + promises, hourly per node): p50 ${percentile(reports, 50)} ms, p99 ${percentile(reports, 99)} ms`,
      `  masters' CPU: ${((cpu / wall) * 100).toFixed(1)}% of one core${masters > 1 ? ` (all ${masters} together)` : ''}` +
        (fleet.balancerPid ? `; haproxy ${((balancerCpu / wall) * 100).toFixed(1)}%` : '') +
        `; at most ${mostInFlight} requests in flight` +
        (unexpected ? `; ${unexpected} unexpected answers (first: ${firstUnexpected})` : ''),
    ];
  } finally {
    await fleet.close();
    await prepared.drop();
  }
}

const report: string[] = [];
const setups: [TestEngine, number][] = [['sqlite', 1], ...(POSTGRES ? ([['postgres', 1], ['postgres', 3]] as [TestEngine, number][]) : [])];
if (!POSTGRES) console.log('PLEDGER_TEST_POSTGRES_URL is not set: SQLite only');
console.log(`requests over HTTP, ${SECONDS} s per measure (masters log at ${LOG_LEVEL})`);
for (const [engine, masters] of setups) report.push(...(await throughput(engine, masters)));
for (const [engine, masters] of [['sqlite', 1], ...(POSTGRES ? [['postgres', 3]] : [])] as [TestEngine, number][]) {
  const lines = await fleetSimulation(engine, masters);
  for (const line of lines) console.log(line);
  report.push(...lines);
}
console.log(`\nsummary\n${report.join('\n')}`);
