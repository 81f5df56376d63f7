/**
 * recordMany, the batch form of record, on every engine: the same movements recorded
 * in bulk, repeated within a batch or across batches, leave the same ledger and the
 * same projections as recording them one by one.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase, type Database } from '../master/db/database.js';
import { migrate } from '../master/db/migrate.js';
import { rebuildProjections, record, recordMany, type MovementEntry } from '../master/ledger/movements.js';
import { freshDatabase, testEngines, type TestDatabase } from './helpers/databases.js';

function usage(instance: number, hour: number, cpuMs: number): MovementEntry {
  const instanceId = `instance-${instance}`;
  const at = new Date(Date.UTC(2026, 9, 1) + hour * 3_600_000).toISOString();
  return {
    movement: {
      kind: 'usage.reported',
      data: { instanceId, hour: at, ownerId: 'owner', softwareId: 'batch@1.0.0', softwareType: 'default', nodeId: 'node', cpuMs, memoryByteSeconds: 2 ** 40, diskByteSeconds: 0, uptimeSeconds: 3600 },
    },
    meta: { id: `usage:${instanceId}:${at}`, actor: 'node:node', subject: instanceId },
  };
}

describe.each(testEngines())('recordMany on %s', (engine) => {
  const databases: { test: TestDatabase; database: Database }[] = [];

  async function ledger(): Promise<Database> {
    const test = await freshDatabase(engine);
    const database = openDatabase(test.url);
    await migrate(database);
    databases.push({ test, database });
    await database.db.transaction().execute(async (trx) => {
      const meta = { actor: 'master', subject: 'setup' };
      await record(trx, { kind: 'account.created', data: { accountId: 'owner', name: 'owner', role: 'user' } }, meta);
      await record(trx, { kind: 'software.published', data: { softwareId: 'batch@1.0.0', name: 'batch', version: '1.0.0', hash: '0'.repeat(64), description: '', definition: {}, parameterSchemas: {} } }, meta);
      for (let i = 0; i < 3; i++) {
        await record(
          trx,
          { kind: 'instance.requested', data: { instanceId: `instance-${i}`, ownerId: 'owner', title: `t${i}`, softwareId: 'batch@1.0.0', softwareType: 'default', parameters: {}, state: 'started', serial: 1 } },
          meta,
        );
      }
    });
    return database;
  }
  const usageRows = (database: Database) =>
    database.db.selectFrom('usage_hours').select(['instance_id', 'hour', 'cpu_ms', 'memory_byte_seconds']).orderBy('instance_id').orderBy('hour').execute();

  let batched: Database;
  let single: Database;
  beforeAll(async () => {
    batched = await ledger();
    single = await ledger();
  });
  afterAll(async () => {
    for (const { database } of databases) await database.close();
    for (const { test } of databases) await test.drop();
  });

  it('records each id once and applies what one-by-one recording applies', async () => {
    const entries: MovementEntry[] = [];
    for (let hour = 0; hour < 1500; hour++) entries.push(usage(hour % 3, Math.floor(hour / 3), hour * 7));
    // Repeated within the batch: the first one counts, as with record().
    const withRepeats = [...entries.slice(0, 10), usage(0, 0, 999_999), ...entries.slice(10), entries[5]!];
    expect((await batched.db.transaction().execute((trx) => recordMany(trx, withRepeats))).size).toBe(1500);
    expect((await batched.db.transaction().execute((trx) => recordMany(trx, entries.slice(100, 200)))).size).toBe(0);

    await single.db.transaction().execute(async (trx) => {
      for (const e of withRepeats) await record(trx, e.movement, e.meta);
    });
    expect(await usageRows(batched)).toEqual(await usageRows(single));
    const live = await usageRows(batched);
    await rebuildProjections(batched.db);
    expect(await usageRows(batched)).toEqual(live);
  });
});
