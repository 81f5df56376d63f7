/**
 * Default prices carried by a software release folder (prices.yaml), on every engine:
 * recorded as the first version of a price list that has none, in the operator's
 * currency only; a bad file refuses the release and records nothing.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initMaster } from '../master/server.js';
import { buildApp, type App } from '../master/app.js';
import { openDatabase, type Database } from '../master/db/database.js';
import { migrate } from '../master/db/migrate.js';
import { packSoftware } from '../protocol/software-archive.js';
import { freshDatabase, testEngines, type TestDatabase } from './helpers/databases.js';
import { greeterRelease, writeTree } from './helpers/tree.js';

describe.each(testEngines())('release default prices on %s', (engine) => {
  let testDb: TestDatabase;
  let database: Database;
  let app: App;
  let admin: string;

  const publish = async (version: string, prices: string) => {
    const archive = await packSoftware(writeTree(greeterRelease(version, { 'prices.yaml': prices })));
    const response = await app.inject({ method: 'POST', url: '/api/v1/software', payload: archive, headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/gzip' } });
    return { status: response.statusCode, body: JSON.parse(response.body) as { error?: { code: string; message: string } } };
  };
  const prices = async () => JSON.parse((await app.inject({ method: 'GET', url: '/api/v1/billing/prices', headers: { authorization: `Bearer ${admin}` } })).body) as { validFrom: string; prices: Record<string, string> }[];
  const movements = async () => Number((await database.db.selectFrom('movements').select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow()).n);

  beforeAll(async () => {
    testDb = await freshDatabase(engine);
    ({ token: admin } = await initMaster(testDb.url, 'admin'));
    database = openDatabase(testDb.url);
    await migrate(database);
    app = buildApp({ database });
  });
  afterAll(async () => {
    await app?.close();
    await database?.close();
    await testDb?.drop();
  });

  it('refuses a release whose prices.yaml is wrong, recording nothing', async () => {
    const before = await movements();
    for (const [file, message] of [
      ['currency: EUR\ndefault:\n  cpu-hour: 0.05\n', 'prices.yaml: default.cpu-hour must be a quoted decimal such as "0.05", not a YAML number'],
      ['currency: EUR\nreplica:\n  cpu-hour: "0.05"\n', 'prices.yaml: the release has no software type "replica"'],
      ['currency: EUR\ndefault:\n  gpu-hour: "1"\n', 'prices.yaml: default.gpu-hour is not a resource (instance-month, instance-hour, cpu-hour, memory-gib-hour, disk-gib-month)'],
      ['currency: euro\n', 'prices.yaml: `currency` must be an ISO 4217 code such as EUR'],
    ] as const) {
      const refused = await publish('0.9.0', file);
      expect(refused.status).toBe(422);
      expect(refused.body.error).toEqual(expect.objectContaining({ code: 'SOFTWARE_INVALID', message }));
    }
    expect(await movements()).toBe(before);
    expect(await prices()).toEqual([]);
  });

  it('ignores default prices in another currency than the operator’s', async () => {
    expect((await publish('0.9.1', 'currency: USD\ndefault:\n  cpu-hour: "0.05"\n')).status).toBe(201);
    expect(await prices()).toEqual([]);
  });

  it('records them as the first version of the price list, and never over the operator’s', async () => {
    expect((await publish('1.0.0', 'currency: EUR\ndefault:\n  instance-month: "30.00"\n  memory-gib-hour: "0.0045"\n')).status).toBe(201);
    const list = await prices();
    expect(list).toEqual([
      {
        software: 'greeter',
        softwareType: 'default',
        validFrom: new Date().toISOString().slice(0, 7),
        currency: 'EUR',
        prices: { 'instance-month': '30.00', 'instance-hour': '0.00', 'cpu-hour': '0.00', 'memory-gib-hour': '0.0045', 'disk-gib-month': '0.00' },
      },
    ]);
    expect((await publish('1.1.0', 'currency: EUR\ndefault:\n  instance-month: "99.00"\n')).status).toBe(201);
    expect(await prices()).toEqual(list);
  });
});
