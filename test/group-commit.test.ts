/**
 * Group commit on SQLite: concurrent requests share one transaction and one fsync, each
 * in a savepoint of its own, and each gets its own answer or its own error.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAccount, type AccountRow } from '../master/accounts.js';
import { openDatabase, type Database } from '../master/db/database.js';
import { groupCommitStats, writeTransaction } from '../master/db/group-commit.js';
import { migrate } from '../master/db/migrate.js';
import { requestInstance } from '../master/instances/request.js';
import { record } from '../master/ledger/movements.js';
import { PledgerError } from '../protocol/errors.js';
import { freshDatabase, type TestDatabase } from './helpers/databases.js';

describe('group commit on sqlite', () => {
  let testDb: TestDatabase;
  let database: Database;
  let owner: AccountRow;

  const movements = async (db = database) => Number((await db.db.selectFrom('movements').select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow()).n);

  beforeAll(async () => {
    testDb = await freshDatabase('sqlite');
    database = openDatabase(testDb.url);
    await migrate(database);
    await createAccount(database.db, { name: 'alice', role: 'user' }, 'master');
    owner = await database.db.selectFrom('accounts').selectAll().where('name', '=', 'alice').executeTakeFirstOrThrow();
    await database.db.transaction().execute(async (trx) => {
      await record(
        trx,
        {
          kind: 'software.published',
          data: {
            softwareId: 'echo@1.0.0',
            name: 'echo',
            version: '1.0.0',
            hash: 'e'.repeat(64),
            description: 'test',
            definition: { name: 'echo', version: '1.0.0', 'software-types': { default: {} } },
            parameterSchemas: { default: { type: 'object', additionalProperties: false, properties: { size: { type: 'integer' } } } },
          },
        },
        { actor: 'master', subject: 'echo@1.0.0' },
      );
    });
  });
  afterAll(async () => {
    await database?.close();
    await testDb?.drop();
  });

  it('answers each of many concurrent requests, failing only the bad ones, with fewer commits than requests', async () => {
    const before = groupCommitStats(database.db)!;
    const movementsBefore = await movements();
    const outcomes = await Promise.allSettled(
      Array.from({ length: 40 }, (_, i) => {
        if (i === 7) return requestInstance(database.db, owner, 'bad-parameters', { software: 'echo', parameters: { size: 'large' } });
        if (i === 23) return requestInstance(database.db, owner, 'never-requested', { software: 'echo', state: 'destroyed' });
        return requestInstance(database.db, owner, `echo-${i}`, { software: 'echo', parameters: { size: i } });
      }),
    );
    const failed = outcomes.flatMap((o, i) => (o.status === 'rejected' ? [[i, (o.reason as PledgerError).code]] : []));
    expect(failed).toEqual([
      [7, 'INVALID_PARAMETERS'],
      [23, 'INSTANCE_NOT_FOUND'],
    ]);
    const answered = outcomes.flatMap((o) => (o.status === 'fulfilled' ? [o.value] : []));
    expect(answered).toHaveLength(38);
    for (const view of answered) expect(view.parameters).toEqual({ size: Number(view.title.slice('echo-'.length)) });

    const after = groupCommitStats(database.db)!;
    expect(after.requests - before.requests).toBe(40);
    expect(after.groups - before.groups).toBeLessThan(40);
    expect(after.largest).toBeGreaterThan(1);

    // What was answered is on disk: another connection reads it, and only it.
    const other = openDatabase(testDb.url);
    try {
      const titles = await other.db.selectFrom('instances').select('title').where('title', 'like', 'echo-%').execute();
      expect(titles).toHaveLength(38);
      expect(await other.db.selectFrom('instances').select('id').where('title', 'in', ['bad-parameters', 'never-requested']).execute()).toEqual([]);
      // Each good request recorded itself and the reason it waits for a node: two movements.
      expect((await movements(other)) - movementsBefore).toBe(38 * 2);
    } finally {
      await other.close();
    }
  });

  it('rolls back only the writes of the request that failed, in the middle of its group', async () => {
    const before = await movements();
    const groupsBefore = groupCommitStats(database.db)!.groups;
    const recordOne = (subject: string) => (trx: Parameters<Parameters<typeof writeTransaction>[1]>[0]) =>
      record(trx, { kind: 'account.created', data: { accountId: subject, name: subject, role: 'user' } }, { actor: 'master', subject });
    const outcomes = await Promise.allSettled([
      writeTransaction(database.db, recordOne('first')),
      writeTransaction(database.db, async (trx) => {
        await recordOne('broken')(trx);
        throw new PledgerError('CONFLICT', 'changed its mind after writing');
      }),
      writeTransaction(database.db, recordOne('last')),
    ]);
    expect(outcomes.map((o) => o.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    // The three arrived together: one transaction, one commit.
    expect(groupCommitStats(database.db)!.groups - groupsBefore).toBe(1);
    expect((outcomes[1] as PromiseRejectedResult).reason).toMatchObject({ message: 'changed its mind after writing' });
    const names = (await database.db.selectFrom('accounts').select('name').where('name', 'in', ['first', 'broken', 'last']).orderBy('name').execute()).map((a) => a.name);
    expect(names).toEqual(['first', 'last']);
    expect((await movements()) - before).toBe(2);
  });
});
