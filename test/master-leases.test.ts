/**
 * The lease that lets one master process at a time do the periodic work, on every
 * engine: two processes asking at once get it once; its holder renews it; another
 * takes it over only once it has expired.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase, type Database } from '../master/db/database.js';
import { migrate } from '../master/db/migrate.js';
import { takeLease } from '../master/periodic.js';
import { freshDatabase, testEngines, type TestDatabase } from './helpers/databases.js';

describe.each(testEngines())('master leases on %s', (engine) => {
  let testDb: TestDatabase;
  // Two connections (pools), as two master processes have.
  let first: Database;
  let second: Database;

  beforeAll(async () => {
    testDb = await freshDatabase(engine);
    first = openDatabase(testDb.url);
    await migrate(first);
    second = openDatabase(testDb.url);
  });
  afterAll(async () => {
    await first.close();
    await second.close();
    await testDb.drop();
  });

  it('gives a lease asked for by many at once to exactly one of them', async () => {
    const asks = Array.from({ length: 20 }, (_, i) => takeLease(i % 2 === 0 ? first.db : second.db, 'race', `holder-${i}`, 60_000));
    const granted = (await Promise.all(asks)).filter(Boolean);
    expect(granted).toHaveLength(1);
  });

  it('lets its holder renew it, and another take it only once it has expired', async () => {
    expect(await takeLease(first.db, 'work', 'a', 60_000)).toBe(true);
    expect(await takeLease(second.db, 'work', 'b', 60_000)).toBe(false);
    expect(await takeLease(first.db, 'work', 'a', 60_000)).toBe(true);
    // `a` died: its lease runs out.
    await first.db.updateTable('master_leases').set({ expires_at: new Date(Date.now() - 1000).toISOString() }).where('name', '=', 'work').execute();
    expect(await takeLease(second.db, 'work', 'b', 60_000)).toBe(true);
    expect(await takeLease(first.db, 'work', 'a', 60_000)).toBe(false);
  });
});
