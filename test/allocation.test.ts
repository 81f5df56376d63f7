/**
 * SLA-aware allocation over a real database, on every engine of testEngines(): node
 * labels and names, allocation scopes, silent nodes, full nodes, and the reason kept on
 * an instance when nothing fits.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApp, type App } from '../master/app.js';
import { openDatabase, type Database } from '../master/db/database.js';
import { initMaster } from '../master/server.js';
import type { InstanceView, NodeView } from '../protocol/api.js';
import { packSoftware } from '../protocol/software-archive.js';
import { freshDatabase, testEngines, type TestDatabase } from './helpers/databases.js';
import { greeterRelease, writeTree } from './helpers/tree.js';

describe.each(testEngines())('allocation on %s', (engine) => {
  let testDb: TestDatabase;
  let database: Database;
  let app: App;
  let admin: string;
  let alice: string;
  let bob: string;
  const credentials: Record<string, string> = {};

  const call = async <T = Record<string, unknown>>(token: string, method: 'GET' | 'POST' | 'PUT' | 'PATCH', url: string, payload?: object) => {
    const response = await app.inject({ method, url, payload, headers: { authorization: `Bearer ${token}` } });
    return { status: response.statusCode, body: JSON.parse(response.body) as T };
  };
  const request = (token: string, title: string, sla: Record<string, string>) =>
    call<InstanceView>(token, 'PUT', `/api/v1/instances/${title}`, { software: 'greeter', sla });
  const movements = async () => Number((await database.db.selectFrom('movements').select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow()).n);

  /** Registers a node with settings, lays out its partitions, and supplies greeter to it. */
  async function addNode(name: string, labels: Record<string, string>, partitions = 2, index = 0) {
    credentials[name] = (await call<{ credential: string }>(admin, 'POST', '/api/v1/nodes', { name, labels })).body.credential;
    const layout = Array.from({ length: partitions }, (_, i) => ({ reference: `part${i}`, ip: `127.50.${index}.${i + 1}`, ports: { first: 40000 + i * 10, last: 40009 + i * 10 } }));
    expect((await call(credentials[name], 'PUT', '/api/v1/node/partitions', { partitions: layout })).status).toBe(200);
    await call(admin, 'POST', '/api/v1/supplies', { software: 'greeter', node: name });
  }

  beforeAll(async () => {
    testDb = await freshDatabase(engine);
    ({ token: admin } = await initMaster(testDb.url, 'admin'));
    database = openDatabase(testDb.url);
    app = buildApp({ database });
    alice = (await call<{ token: string }>(admin, 'POST', '/api/v1/accounts', { name: 'alice' })).body.token;
    bob = (await call<{ token: string }>(admin, 'POST', '/api/v1/accounts', { name: 'bob' })).body.token;
    await app.inject({
      method: 'POST',
      url: '/api/v1/software',
      payload: await packSoftware(writeTree(greeterRelease())),
      headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/gzip' },
    });
    await addNode('eu-1', { region: 'eu', network: 'lan' }, 2, 1);
    await addNode('eu-2', { region: 'eu' }, 2, 2);
    await addNode('us-1', { region: 'us' }, 1, 3);
  });
  afterAll(async () => {
    await app?.close();
    await database?.close();
    await testDb?.drop();
  });

  it('places an instance on the first node, by name, that carries every label of its SLA', async () => {
    expect((await request(alice, 'in-us', { region: 'us' })).body).toMatchObject({ node: 'us-1', partition: 'part0', sla: { region: 'us' } });
    expect((await request(alice, 'in-eu', { region: 'eu' })).body).toMatchObject({ node: 'eu-1', partition: 'part0' });
    expect((await request(alice, 'on-lan', { network: 'lan', region: 'eu' })).body).toMatchObject({ node: 'eu-1', partition: 'part1' });
    expect((await request(alice, 'on-eu-2', { node: 'eu-2' })).body).toMatchObject({ node: 'eu-2', partition: 'part0' });
  });

  it('keeps the reason on the instance when no node matches, and allocates once one does', async () => {
    const asia = (await request(bob, 'in-asia', { region: 'asia' })).body;
    expect(asia).toMatchObject({ status: 'unallocated', node: null, message: 'no node matches region=asia' });
    expect((await call<InstanceView>(bob, 'GET', '/api/v1/instances/in-asia')).body.message).toBe('no node matches region=asia');
    const labelled = await call<NodeView>(admin, 'PATCH', '/api/v1/nodes/eu-2', { labels: { region: 'asia' } });
    expect(labelled.body).toMatchObject({ name: 'eu-2', labels: { region: 'asia' } });
    expect((await call<InstanceView>(bob, 'GET', '/api/v1/instances/in-asia')).body).toMatchObject({ status: 'allocated', node: 'eu-2', partition: 'part1' });
  });

  it('says when every matching node is full', async () => {
    const full = (await request(bob, 'another-in-us', { region: 'us' })).body;
    expect(full.message).toBe('no node with region=us that has greeter@1.0.0 supplied has a free partition');
  });

  it("gives an owner's node to its owner's instances only, and a closed node to nobody", async () => {
    await call(admin, 'POST', '/api/v1/nodes', { name: 'alices', labels: { region: 'home' }, scope: 'owner', owner: 'alice' });
    const nodes = (await call<NodeView[]>(admin, 'GET', '/api/v1/nodes')).body;
    expect(nodes.find((n) => n.name === 'alices')).toMatchObject({ scope: 'owner', owner: 'alice', labels: { region: 'home' } });
    expect((await request(bob, 'at-alices', { region: 'home' })).body.message).toBe('no node with region=home is open to you');
    expect((await request(alice, 'at-alices', { region: 'home' })).body.message).toBe('no node with region=home has greeter@1.0.0 supplied');

    await call(admin, 'PATCH', '/api/v1/nodes/eu-1', { scope: 'closed' });
    expect((await request(alice, 'closed-eu', { node: 'eu-1' })).body.message).toBe('no node with node=eu-1 is open to you');
    await call(admin, 'PATCH', '/api/v1/nodes/eu-1', { scope: 'open' });
    expect((await call<InstanceView>(alice, 'GET', '/api/v1/instances/closed-eu')).body.message).toMatch(/has a free partition$/);
  });

  it('gives nothing new to a node silent for more than 10 minutes, until it calls again', async () => {
    await addNode('quiet', { region: 'quiet' }, 1, 4);
    const longAgo = new Date(Date.now() - 11 * 60_000).toISOString();
    const quietId = (await database.db.selectFrom('nodes').select('id').where('name', '=', 'quiet').executeTakeFirstOrThrow()).id;
    await database.db.updateTable('node_heartbeats').set({ last_seen_at: longAgo }).where('node_id', '=', quietId).execute();

    const waiting = (await request(alice, 'on-quiet', { region: 'quiet' })).body;
    expect(waiting.message).toBe('no node with region=quiet that has greeter@1.0.0 supplied has called the master in the last 10 minutes');
    expect((await call(credentials.quiet!, 'GET', '/api/v1/node/desired-state')).status).toBe(200);
    expect((await call<InstanceView>(alice, 'GET', '/api/v1/instances/on-quiet')).body).toMatchObject({ status: 'allocated', node: 'quiet' });
  });

  it('refuses to change the SLA of an allocated instance, and bad node settings, changing nothing', async () => {
    const before = await movements();
    const moved = await request(alice, 'in-us', { region: 'eu' });
    expect(moved.status).toBe(409);
    expect(moved.body).toMatchObject({ error: { message: 'instance "in-us" is already allocated: its SLA cannot change' } });
    expect((await call(admin, 'PATCH', '/api/v1/nodes/eu-1', { scope: 'sometimes' })).status).toBe(400);
    expect((await call(admin, 'PATCH', '/api/v1/nodes/eu-1', { labels: { 'Bad Key': 'x' } })).status).toBe(400);
    expect((await call(admin, 'PATCH', '/api/v1/nodes/eu-1', {})).status).toBe(400);
    expect((await call(admin, 'PATCH', '/api/v1/nodes/nosuch', { scope: 'open' })).status).toBe(404);
    expect((await call(admin, 'PATCH', '/api/v1/nodes/eu-1', { owner: 'nosuch' })).status).toBe(404);
    expect((await call(alice, 'PATCH', '/api/v1/nodes/eu-1', { scope: 'closed' })).status).toBe(403);
    expect((await request(alice, 'bad-sla', { 'Not A Label': 'x' })).status).toBe(400);
    expect(await movements()).toBe(before);
  });
});
