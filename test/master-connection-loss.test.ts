/**
 * A real master process on the real PostgreSQL keeps serving while PostgreSQL ends its
 * connections under it (`pg_terminate_backend`, as a restart or a failover would): idle
 * pooled connections and connections in the middle of a query. Requests caught on a lost
 * connection answer 503 SERVICE_UNAVAILABLE, which the client retries; none answers 500,
 * and the process never exits.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InstanceView } from '../protocol/api.js';
import { MasterClient } from '../protocol/client.js';
import { PledgerError } from '../protocol/errors.js';
import { packSoftware } from '../protocol/software-archive.js';
import { freshDatabase, testEngines, type TestDatabase } from './helpers/databases.js';
import { startMaster, type RunningMaster } from './helpers/processes.js';
import { greeterRelease, writeTree } from './helpers/tree.js';

describe.skipIf(!testEngines().includes('postgres'))('the master on PostgreSQL when its connections are terminated', () => {
  let testDb: TestDatabase;
  let master: RunningMaster;
  let admin: pg.Client;
  let exited = false;
  let logs = '';

  /** Ends every connection to the master's database; answers how many. */
  const terminate = async () => {
    // Chosen first, ended after: in one statement PostgreSQL may call the function before it filters.
    const { rows } = await admin.query<{ pid: number }>('SELECT pid FROM pg_stat_activity WHERE datname = $1', [new URL(testDb.url).pathname.slice(1)]);
    for (const { pid } of rows) await admin.query('SELECT pg_terminate_backend($1)', [pid]);
    return rows.length;
  };

  beforeAll(async () => {
    testDb = await freshDatabase('postgres');
    master = await startMaster(testDb.url);
    master.process.stdout!.on('data', (chunk: Buffer) => (logs += chunk.toString()));
    void master.process.then(() => (exited = true));
    admin = new pg.Client({ connectionString: process.env.PLEDGER_TEST_POSTGRES_URL });
    await admin.connect();
    const operator = new MasterClient({ url: master.url, token: master.adminToken });
    await operator.raw('POST', '/api/v1/software', { body: await packSoftware(writeTree(greeterRelease())), headers: { 'content-type': 'application/gzip' } });
  });
  afterAll(async () => {
    await master?.stop();
    await admin?.end();
    await testDb?.drop();
  });

  it('survives its idle connections being ended, and answers the next requests', async () => {
    const operator = new MasterClient({ url: master.url, token: master.adminToken });
    // Several requests at once leave several idle connections in the pool.
    await Promise.all(Array.from({ length: 6 }, () => operator.call('GET', '/api/v1/software')));
    expect(await terminate()).toBeGreaterThan(0);
    // The pool learns of each ended connection when PostgreSQL's goodbye arrives.
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(exited).toBe(false);
    expect((await operator.call<unknown[]>('GET', '/api/v1/software')).length).toBeGreaterThan(0);
    expect(logs).toContain('database connection lost');
  });

  it('answers 503 SERVICE_UNAVAILABLE, never 500, for requests on a connection ended in flight, and keeps serving', async () => {
    // No retries here: every answer the master gave is seen as it was.
    const raw = new MasterClient({ url: master.url, token: master.adminToken, unavailableRetriesMs: [] });
    const statuses: (number | string)[] = [];
    let stop = false;
    const load = async (worker: number) => {
      for (let i = 0; !stop; i++) {
        try {
          await raw.call('PUT', `/api/v1/instances/load-${worker}-${i % 5}`, { software: 'greeter', parameters: { greeting: `g${i % 3}` } });
          statuses.push(200);
        } catch (error) {
          statuses.push(error instanceof PledgerError ? `${error.status} ${error.code}` : String(error));
        }
      }
    };
    const workers = [0, 1, 2, 3].map((worker) => load(worker));
    for (let round = 0; round < 15; round++) {
      await new Promise((resolve) => setTimeout(resolve, 40));
      await terminate();
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
    stop = true;
    await Promise.all(workers);
    expect(exited).toBe(false);
    expect(statuses.length).toBeGreaterThan(0);
    expect(statuses.filter((s) => s !== 200 && s !== '503 SERVICE_UNAVAILABLE')).toEqual([]);
    expect(statuses).toContain(200);
    // Some requests were caught on a connection ended under them, and told so.
    expect(statuses).toContain('503 SERVICE_UNAVAILABLE');

    // With its retries, the client sees every call succeed while connections keep being ended.
    const client = new MasterClient({ url: master.url, token: master.adminToken });
    const ending = (async () => {
      for (let round = 0; round < 5; round++) {
        await terminate();
        await new Promise((resolve) => setTimeout(resolve, 60));
      }
    })();
    const views = await Promise.all(Array.from({ length: 10 }, (_, i) => client.call<InstanceView>('PUT', `/api/v1/instances/retried-${i}`, { software: 'greeter' })));
    await ending;
    expect(views.map((v) => v.title)).toEqual(Array.from({ length: 10 }, (_, i) => `retried-${i}`));
    expect(exited).toBe(false);
    expect((await client.call<{ ok: boolean }>('GET', '/health')).ok).toBe(true);
  });
});
