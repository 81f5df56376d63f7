/**
 * SLA-aware allocation over a real database, on every engine of testEngines(): node
 * labels and names, allocation scopes, silent nodes, full nodes, declared resources, and
 * the reason kept on an instance when nothing fits.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApp, type App } from '../master/app.js';
import { openDatabase, type Database } from '../master/db/database.js';
import { rebuildProjections } from '../master/ledger/movements.js';
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
    expect(asia).toMatchObject({ status: 'unallocated', node: null, message: 'no node open to you matches region=asia' });
    expect((await call<InstanceView>(bob, 'GET', '/api/v1/instances/in-asia')).body.message).toBe('no node open to you matches region=asia');
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
    expect((await request(bob, 'at-alices', { region: 'home' })).body.message).toBe('no node open to you matches region=home');
    expect((await request(alice, 'at-alices', { region: 'home' })).body.message).toBe('no node with region=home has greeter@1.0.0 supplied');

    await call(admin, 'PATCH', '/api/v1/nodes/eu-1', { scope: 'closed' });
    expect((await request(alice, 'closed-eu', { node: 'eu-1' })).body.message).toBe('no node open to you matches node=eu-1');
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

/** A release whose software types declare what one instance needs. */
function sizedRelease(): Record<string, string> {
  return {
    'software.yaml': [
      'name: sized',
      'version: 1.0.0',
      'software-types:',
      '  default:',
      '    resources: { cpu: 1, memory: 1024 }',
      '  big:',
      '    resources: { memory: 4096 }',
      '  tiny: {}',
      '',
    ].join('\n'),
  };
}

describe.each(testEngines())('declared-resource capacity on %s', (engine) => {
  let testDb: TestDatabase;
  let database: Database;
  let app: App;
  let admin: string;
  let alice: string;
  const credentials: Record<string, string> = {};

  const call = async <T = Record<string, unknown>>(token: string, method: 'GET' | 'POST' | 'PUT' | 'PATCH', url: string, payload?: object) => {
    const response = await app.inject({ method, url, payload, headers: { authorization: `Bearer ${token}` } });
    return { status: response.statusCode, body: JSON.parse(response.body) as T };
  };
  const request = (title: string, body: object = {}) => call<InstanceView>(alice, 'PUT', `/api/v1/instances/${title}`, { software: 'sized', ...body });
  const node = async (name: string) => (await call<NodeView[]>(admin, 'GET', '/api/v1/nodes')).body.find((n) => n.name === name)!;
  const movements = async () => Number((await database.db.selectFrom('movements').select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow()).n);

  async function addNode(name: string, index: number, settings: object) {
    const registered = await call<{ credential: string }>(admin, 'POST', '/api/v1/nodes', { name, ...settings });
    expect(registered.status).toBe(201);
    credentials[name] = registered.body.credential;
    const layout = Array.from({ length: 4 }, (_, i) => ({ reference: `part${i}`, ip: `127.51.${index}.${i + 1}`, ports: { first: 41000 + i * 10, last: 41009 + i * 10 } }));
    expect((await call(credentials[name], 'PUT', '/api/v1/node/partitions', { partitions: layout })).status).toBe(200);
    await call(admin, 'POST', '/api/v1/supplies', { software: 'sized', node: name });
  }

  beforeAll(async () => {
    testDb = await freshDatabase(engine);
    ({ token: admin } = await initMaster(testDb.url, 'admin'));
    database = openDatabase(testDb.url);
    app = buildApp({ database });
    alice = (await call<{ token: string }>(admin, 'POST', '/api/v1/accounts', { name: 'alice' })).body.token;
    const published = await app.inject({
      method: 'POST',
      url: '/api/v1/software',
      payload: await packSoftware(writeTree(sizedRelease())),
      headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/gzip' },
    });
    expect(published.statusCode).toBeLessThan(300);
    await addNode('eu-a', 1, { labels: { region: 'eu' }, resources: { cpu: 2, memory: 4096 } });
    await addNode('eu-b', 2, { labels: { region: 'eu' }, resources: { cpu: 8, memory: 16384, disk: 100 } });
    await addNode('eu-bare', 3, { labels: { region: 'bare' } });
  });
  afterAll(async () => {
    await app?.close();
    await database?.close();
    await testDb?.drop();
  });

  it('shows what a node declares and what its instances take', async () => {
    expect((await node('eu-a')).resources).toEqual({ cpu: { capacity: 2, used: 0 }, memory: { capacity: 4096, used: 0 } });
    expect((await node('eu-bare')).resources).toEqual({});
  });

  it("places instances only where their software type's needs fit, and counts what they take", async () => {
    expect((await request('one', { sla: { region: 'eu' } })).body).toMatchObject({ node: 'eu-a', resources: { cpu: 1, memory: 1024 } });
    expect((await request('two', { sla: { region: 'eu' } })).body).toMatchObject({ node: 'eu-a', partition: 'part1' });
    // eu-a has partitions left, but no CPU.
    expect((await request('three', { sla: { region: 'eu' } })).body).toMatchObject({ node: 'eu-b', partition: 'part0' });
    expect((await node('eu-a')).resources).toEqual({ cpu: { capacity: 2, used: 2 }, memory: { capacity: 4096, used: 2048 } });
    expect((await node('eu-b')).resources).toMatchObject({ cpu: { capacity: 8, used: 1 }, memory: { capacity: 16384, used: 1024 } });
  });

  it('takes more when the request asks for more, never less', async () => {
    const more = (await request('more', { sla: { region: 'eu' }, resources: { memory: 8192, disk: 10 } })).body;
    expect(more).toMatchObject({ node: 'eu-b', resources: { cpu: 1, disk: 10, memory: 8192 } });
    const less = (await request('less', { sla: { region: 'eu' }, softwareType: 'big', resources: { memory: 512 } })).body;
    expect(less).toMatchObject({ node: 'eu-b', resources: { memory: 4096 } });
    expect((await node('eu-b')).resources).toEqual({
      cpu: { capacity: 8, used: 2 },
      disk: { capacity: 100, used: 10 },
      memory: { capacity: 16384, used: 1024 + 8192 + 4096 },
    });
  });

  it('says which resource no node has enough of, and allocates once a node declares more', async () => {
    const waiting = (await request('huge', { sla: { region: 'eu' }, resources: { memory: 8192 } })).body;
    expect(waiting).toMatchObject({ status: 'unallocated', node: null, message: 'no node with region=eu that has sized@1.0.0 supplied has 8192 MiB of memory free' });
    expect((await request('cores', { sla: { region: 'eu' }, resources: { cpu: 7 } })).body.message).toBe(
      'no node with region=eu that has sized@1.0.0 supplied has 7 CPU cores free',
    );
    const raised = await call<NodeView>(admin, 'PATCH', '/api/v1/nodes/eu-a', { resources: { cpu: 4, memory: 12288 } });
    // The waiting instance was placed before the answer, and counts in it.
    expect(raised.body.resources).toEqual({ cpu: { capacity: 4, used: 3 }, memory: { capacity: 12288, used: 2048 + 8192 } });
    expect((await call<InstanceView>(alice, 'GET', '/api/v1/instances/huge')).body).toMatchObject({ status: 'allocated', node: 'eu-a' });
    expect((await call<InstanceView>(alice, 'GET', '/api/v1/instances/cores')).body.message).toBe(
      'no node with region=eu that has sized@1.0.0 supplied has 7 CPU cores free',
    );
  });

  it('gives nothing that needs a resource to a node that does not declare it', async () => {
    expect((await request('on-bare', { sla: { region: 'bare' } })).body.message).toBe(
      'no node with region=bare that has sized@1.0.0 supplied has 1 CPU core free',
    );
    expect((await request('tiny-on-bare', { sla: { region: 'bare' }, softwareType: 'tiny' })).body).toMatchObject({ node: 'eu-bare', resources: {} });
  });

  it('gives back what a destroyed instance took, and a waiting instance gets it', async () => {
    const desired = (await call<{ partitions: { reference: string; instance: { id: string; title: string } | null }[] }>(credentials['eu-a']!, 'GET', '/api/v1/node/desired-state')).body;
    const one = desired.partitions.find((p) => p.instance?.title === 'one')!;
    const destroyed = await call<InstanceView>(alice, 'PUT', '/api/v1/instances/one', { software: 'sized', state: 'destroyed' });
    const report = await call(credentials['eu-a']!, 'POST', '/api/v1/node/events', {
      events: [{ id: 'one-gone', at: new Date().toISOString(), type: 'instance.destroyed', partition: one.reference, instance: one.instance!.id, serial: destroyed.body.serial }],
    });
    expect(report.status).toBe(200);
    // eu-a had 4 cores, 3 taken (one, two, huge): with one gone, 2 are free.
    expect((await node('eu-a')).resources.cpu).toEqual({ capacity: 4, used: 2 });
    expect((await request('two-cores', { sla: { node: 'eu-a' }, resources: { cpu: 2 } })).body).toMatchObject({ status: 'allocated', node: 'eu-a' });
  });

  it('keeps the counts when the projections are rebuilt from the movements', async () => {
    const counts = () => database.db.selectFrom('node_resources').selectAll().orderBy('node_id').orderBy('name').execute();
    const before = await counts();
    await rebuildProjections(database.db);
    expect(await counts()).toEqual(before);
  });

  it('refuses bad amounts and changing what an allocated instance asks, changing nothing', async () => {
    const before = await movements();
    expect((await request('bad', { resources: { memory: -1 } })).status).toBe(400);
    expect((await request('bad', { resources: { memory: 1.5 } })).status).toBe(400);
    expect((await request('bad', { resources: { 'Not A Name': 1 } })).status).toBe(400);
    expect((await call(admin, 'PATCH', '/api/v1/nodes/eu-a', { resources: { cpu: 'many' } })).status).toBe(400);
    expect((await call(admin, 'POST', '/api/v1/nodes', { name: 'bad-node', resources: { cpu: -2 } })).status).toBe(400);
    const moved = await request('two', { resources: { memory: 2048 } });
    expect(moved.status).toBe(409);
    expect(moved.body).toMatchObject({ error: { message: 'instance "two" is already allocated: its SLA cannot change' } });
    expect(await movements()).toBe(before);
  });
});
