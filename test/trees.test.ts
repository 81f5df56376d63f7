/**
 * Instance trees on the master, on every engine of testEngines(): sub-instances that a
 * deployment requests, parents that wait for their children, tree-wide stop, destroy
 * and bang, cycles, and shared instances placed on a host. The test plays the node
 * through the node API, as a node agent would.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initMaster } from '../master/server.js';
import { buildApp, type App } from '../master/app.js';
import { openDatabase, type Database } from '../master/db/database.js';
import { migrate } from '../master/db/migrate.js';
import { rebuildProjections } from '../master/ledger/movements.js';
import { packSoftware } from '../protocol/software-archive.js';
import type { ChildRequest, DesiredInstance, DesiredState, InstanceTreeView, InstanceView, NodeEvent } from '../protocol/api.js';
import { freshDatabase, testEngines, type TestDatabase } from './helpers/databases.js';
import { writeTree } from './helpers/tree.js';

const objectSchema = (properties: object, required: string[] = []) => JSON.stringify({ type: 'object', additionalProperties: false, properties, required });

const releases: Record<string, string>[] = [
  {
    'software.yaml': [
      'name: app',
      'version: 1.0.0',
      'software-types:',
      '  default:',
      '    parameters: schema.json',
      '    secrets: [key]',
      '    requests:',
      '      db:',
      '        software: store',
      '        parameters:',
      '          size: "{{ parameters.size }}"',
      '          password: "{{ secrets.key }}"',
      '      replica:',
      '        software: store',
      '        sla: { anti-affinity: node }',
      '      far:',
      '        software: store',
      '        sla: { anti-affinity: network }',
      '    publish:',
      '      url: "{{ requests.db.connection.url }}"',
      '',
    ].join('\n'),
    'schema.json': objectSchema({ size: { type: 'integer', default: 1 } }),
  },
  {
    'software.yaml': ['name: store', 'version: 1.0.0', 'software-types:', '  default:', '    parameters: schema.json', ''].join('\n'),
    'schema.json': objectSchema({ size: { type: 'integer', minimum: 1, maximum: 10 }, password: { type: 'string' } }, ['size']),
  },
  {
    'software.yaml': ['name: loop', 'version: 1.0.0', 'software-types:', '  default:', '    requests:', '      again:', '        software: loop', ''].join('\n'),
  },
  {
    'software.yaml': [
      'name: proxy',
      'version: 1.0.0',
      'software-types:',
      '  default:',
      '    ports: [http]',
      '    shared:',
      '      parameters: shared.json',
      '      publish:',
      '        url: "http://{{ partition.ip }}:{{ ports.http }}/{{ shared.reference }}/"',
      '',
    ].join('\n'),
    'shared.json': objectSchema({ backend: { type: 'string', pattern: '^http://[a-z0-9.:]+/$' } }, ['backend']),
  },
  {
    // An older version that declared neither.
    'software.yaml': ['name: router', 'version: 0.9.0', 'software-types:', '  default:', '    ports: [http]', '    shared:', '      parameters: shared.json', ''].join('\n'),
    'shared.json': objectSchema({ backend: { type: 'string' }, host: { type: 'string' } }, ['backend']),
  },
  {
    // A host that declares what identifies a route and where its shared instances send.
    'software.yaml': [
      'name: router',
      'version: 1.0.0',
      'software-types:',
      '  default:',
      '    ports: [http]',
      '    shared:',
      '      parameters: shared.json',
      '      unique: [host]',
      '      backends: [backend]',
      '      publish:',
      '        url: "http://{{ partition.ip }}:{{ ports.http }}/{{ shared.reference }}/"',
      '',
    ].join('\n'),
    'shared.json': objectSchema({ backend: { type: 'string', pattern: '^http://[a-z0-9.:]+/$' }, host: { type: 'string', pattern: '^[a-z0-9.-]+$' } }, ['backend']),
  },
];

describe.each(testEngines())('instance trees on %s', (engine) => {
  let testDb: TestDatabase;
  let database: Database;
  let app: App;
  let admin: string;
  let alice: string;
  let bob: string;
  let node: string;

  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  type Body = Record<string, any>;
  const call = async (token: string, method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE', url: string, payload?: unknown, headers: Record<string, string> = {}) => {
    const response = await app.inject({ method, url, payload: payload as string | object | Buffer | undefined, headers: { authorization: `Bearer ${token}`, ...headers } });
    return { status: response.statusCode, body: response.body ? (JSON.parse(response.body) as Body) : {} };
  };
  const movements = async () => Number((await database.db.selectFrom('movements').select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow()).n);
  const view = async (token: string, title: string) => (await call(token, 'GET', `/api/v1/instances/${encodeURIComponent(title)}`)).body as InstanceView;
  const desired = async () => (await call(node, 'GET', '/api/v1/node/desired-state')).body as DesiredState;
  const hosted = async (title: string) => {
    const partition = (await desired()).partitions.find((p) => p.instance?.title === title);
    return partition ? { reference: partition.reference, instance: partition.instance! } : undefined;
  };
  let sequence = 0;
  const report = async (title: string, type: NodeEvent['type'], extra: Record<string, unknown> = {}) => {
    const { reference, instance } = (await hosted(title))!;
    const event = { id: `event-${++sequence}-${Date.now()}`, at: new Date().toISOString(), type, partition: reference, instance: instance.id, serial: instance.serial, ...extra };
    const answer = await call(node, 'POST', '/api/v1/node/events', { events: [event] });
    expect(answer.status, JSON.stringify(answer.body)).toBe(200);
  };
  const requestChildren = async (title: string, requests: ChildRequest[], instance?: DesiredInstance) => {
    const target = (await hosted(title))!;
    const current = instance ?? target.instance;
    return call(node, 'POST', `/api/v1/node/partitions/${target.reference}/requests`, { instance: current.id, serial: current.serial, requests });
  };

  beforeAll(async () => {
    testDb = await freshDatabase(engine);
    ({ token: admin } = await initMaster(testDb.url, 'admin'));
    database = openDatabase(testDb.url);
    await migrate(database);
    app = buildApp({ database });
    alice = (await call(admin, 'POST', '/api/v1/accounts', { name: 'alice' })).body.token;
    bob = (await call(admin, 'POST', '/api/v1/accounts', { name: 'bob' })).body.token;
    for (const files of releases) {
      const answer = await call(admin, 'POST', '/api/v1/software', await packSoftware(writeTree(files)), { 'content-type': 'application/gzip' });
      expect(answer.status, JSON.stringify(answer.body)).toBe(201);
    }
    node = (await call(admin, 'POST', '/api/v1/nodes', { name: 'node-a' })).body.credential;
    for (const software of ['app', 'store', 'loop', 'proxy', 'router']) await call(admin, 'POST', '/api/v1/supplies', { software, node: 'node-a' });
    const partitions = Array.from({ length: 12 }, (_, i) => ({ reference: `part${i}`, ip: `127.43.0.${i + 1}`, ports: { first: 31000 + i * 10, last: 31009 + i * 10 } }));
    expect((await call(node, 'PUT', '/api/v1/node/partitions', { partitions })).status).toBe(200);
  });
  afterAll(async () => {
    await app?.close();
    await database?.close();
    await testDb?.drop();
  });

  it('creates the children a deployment requests, named PARENT/NAME, with parameters typed by their schema', async () => {
    const shop = await call(alice, 'PUT', '/api/v1/instances/shop', { software: 'app', parameters: { size: 3 } });
    expect(shop.status).toBe(200);
    const answer = await requestChildren('shop', [{ name: 'db', software: 'store', parameters: { size: '3', password: 's3cret' } }]);
    expect(answer.status, JSON.stringify(answer.body)).toBe(200);
    expect(answer.body.children.db).toMatchObject({ title: 'shop/db', status: 'allocated', ready: false, connection: {} });
    const child = await view(alice, 'shop/db');
    expect(child).toMatchObject({ parent: 'shop', root: 'shop', parameters: { size: 3, password: 's3cret' }, status: 'allocated' });
    expect((await hosted('shop/db'))?.instance.parameters).toEqual({ size: 3, password: 's3cret' });
  });

  it('asks again and changes nothing when the requests are the same', async () => {
    const before = await movements();
    expect((await requestChildren('shop', [{ name: 'db', software: 'store', parameters: { size: '3', password: 's3cret' } }])).status).toBe(200);
    expect(await movements()).toBe(before);
  });

  it('shows a waiting parent, then deploys it again when the child publishes', async () => {
    await report('shop', 'instance.waiting', { message: 'waiting for db (shop/db: allocated)' });
    expect(await view(alice, 'shop')).toMatchObject({ status: 'waiting', message: 'waiting for db (shop/db: allocated)', ready: false });
    const serial = (await hosted('shop'))!.instance.serial;
    await report('shop/db', 'instance.started', { connection: { url: 'store://127.43.0.2' } });
    expect(await view(alice, 'shop/db')).toMatchObject({ ready: true, connection: { url: 'store://127.43.0.2' } });
    expect((await hosted('shop'))!.instance.serial).toBe(serial + 1);
    const answer = await requestChildren('shop', [{ name: 'db', software: 'store', parameters: { size: '3', password: 's3cret' } }]);
    expect(answer.body.children.db).toMatchObject({ ready: true, connection: { url: 'store://127.43.0.2' } });
    await report('shop', 'instance.started', { connection: { url: 'store://127.43.0.2' } });
    expect(await view(alice, 'shop')).toMatchObject({ status: 'started', ready: true });
  });

  it('does not redeploy a started parent when its child publishes the same values again', async () => {
    const serial = (await hosted('shop'))!.instance.serial;
    await report('shop/db', 'instance.started', { connection: { url: 'store://127.43.0.2' } });
    expect((await hosted('shop'))!.instance.serial).toBe(serial);
  });

  it('shows the tree with each instance, its node and state', async () => {
    const tree = (await call(alice, 'GET', '/api/v1/instances/shop/tree')).body as InstanceTreeView;
    expect(tree.instances.map((i) => [i.depth, i.instance.title, i.instance.node, i.instance.status])).toEqual([
      [0, 'shop', 'node-a', 'started'],
      [1, 'shop/db', 'node-a', 'started'],
    ]);
  });

  it('keeps a child to its parent: its owner cannot change it', async () => {
    const before = await movements();
    const change = await call(alice, 'PUT', `/api/v1/instances/${encodeURIComponent('shop/db')}`, { software: 'store', parameters: { size: 5 } });
    expect(change.status).toBe(409);
    expect(change.body.error.message).toMatch(/sub-instance of "shop"/);
    expect(await movements()).toBe(before);
  });

  it('refuses children that break their schema, a cycle, or a stale serial, changing nothing', async () => {
    const before = await movements();
    const bad = await requestChildren('shop', [{ name: 'db', software: 'store', parameters: { size: 'many' } }]);
    expect(bad.status).toBe(422);
    expect(bad.body.error.message).toMatch(/invalid parameters for store@1.0.0 default: size must be integer/);
    await call(alice, 'PUT', '/api/v1/instances/looping', { software: 'loop' });
    const cycle = await requestChildren('looping', [{ name: 'again', software: 'loop', parameters: {} }]);
    expect(cycle.status).toBe(400);
    expect(cycle.body.error.message).toMatch(/cycle: "looping" requests loop default/);
    const shop = (await hosted('shop'))!.instance;
    const stale = await requestChildren('shop', [], { ...shop, serial: shop.serial - 1 });
    expect(stale.status).toBe(409);
    await call(alice, 'DELETE', '/api/v1/instances/looping');
    expect((await view(alice, 'shop/db')).state).toBe('started');
    expect(await movements()).toBe(before + 3); // looping: requested, allocated, then destroyed on request
  });

  it('refuses a request the release does not declare, changing nothing', async () => {
    const before = await movements();
    const undeclared = await requestChildren('shop', [{ name: 'db', software: 'store', parameters: { size: '3' } }, { name: 'extra', software: 'store', parameters: { size: '1' } }]);
    expect(undeclared.status).toBe(403);
    expect(undeclared.body.error.message).toMatch(/declares no request "extra" of store/);
    const otherSoftware = await requestChildren('shop', [{ name: 'db', software: 'app', parameters: {} }]);
    expect(otherSoftware.status).toBe(403);
    expect(await movements()).toBe(before);
  });

  it('refuses a child whose title would be longer than a title may be, changing nothing', async () => {
    const long = 'l'.repeat(199);
    expect((await call(alice, 'PUT', `/api/v1/instances/${long}`, { software: 'app', parameters: { size: 1 } })).status).toBe(200);
    const before = await movements();
    const answer = await requestChildren(long, [{ name: 'db', software: 'store', parameters: { size: '1' } }]);
    expect(answer.status).toBe(400);
    expect(answer.body.error.message).toMatch(/would be 202 characters long, over 200/);
    expect(await movements()).toBe(before);
    expect(((await call(alice, 'GET', '/api/v1/instances')).body as { title: string }[]).map((i) => i.title)).not.toContain(`${long}/db`);
    await call(alice, 'DELETE', `/api/v1/instances/${long}`);
  });

  it('refuses a node asking for an instance it does not host', async () => {
    const other = await call(admin, 'POST', '/api/v1/nodes', { name: 'node-z' });
    const shop = (await hosted('shop'))!;
    const answer = await call(other.body.credential, 'POST', `/api/v1/node/partitions/${shop.reference}/requests`, { instance: shop.instance.id, serial: shop.instance.serial, requests: [] });
    expect(answer.status).toBe(403);
  });

  it('redeploys the whole tree when one of its instances bangs', async () => {
    const serials = { shop: (await hosted('shop'))!.instance.serial, db: (await hosted('shop/db'))!.instance.serial };
    await report('shop/db', 'instance.bang', { message: 'data file corrupted' });
    expect((await hosted('shop'))!.instance.serial).toBe(serials.shop + 1);
    expect((await hosted('shop/db'))!.instance.serial).toBe(serials.db + 1);
    const history = (await call(alice, 'GET', '/api/v1/instances/shop/history')).body as { kind: string; data: { reason?: string } }[];
    expect(history.at(-1)).toMatchObject({ kind: 'instance.redeploy', data: { reason: 'bang from shop/db: data file corrupted' } });
  });

  it('stops and starts the whole tree with its root', async () => {
    await call(alice, 'PUT', '/api/v1/instances/shop', { software: 'app', state: 'stopped' });
    expect((await hosted('shop/db'))!.instance.state).toBe('stopped');
    await call(alice, 'PUT', '/api/v1/instances/shop', { software: 'app', state: 'started' });
    expect((await hosted('shop/db'))!.instance.state).toBe('started');
  });

  it('destroys a child the latest deployment no longer requests', async () => {
    const shop = (await hosted('shop'))!;
    expect((await requestChildren('shop', [])).status).toBe(200);
    expect((await view(alice, 'shop/db')).state).toBe('destroyed');
    // Requested again later: the same title names the same child, started again.
    await requestChildren('shop', [{ name: 'db', software: 'store', parameters: { size: '2' } }], shop.instance);
    expect(await view(alice, 'shop/db')).toMatchObject({ state: 'started', parameters: { size: 2 } });
  });

  it('destroys the whole tree with its root', async () => {
    await call(alice, 'DELETE', '/api/v1/instances/shop');
    expect((await view(alice, 'shop/db')).state).toBe('destroyed');
  });

  describe('shared instances', () => {
    it('waits for a host, saying why', async () => {
      const route = await call(bob, 'PUT', '/api/v1/instances/route', { software: 'proxy', shared: true, parameters: { backend: 'http://127.0.0.9:80/' } });
      expect(route.status).toBe(200);
      expect(route.body).toMatchObject({ status: 'unallocated', message: 'no started proxy instance open to you hosts shared instances', shared: true, partition: null });
    });

    it('checks a shared instance against the schema its host declares for them', async () => {
      const before = await movements();
      const bad = await call(bob, 'PUT', '/api/v1/instances/bad-route', { software: 'proxy', shared: true, parameters: { backend: 'ftp://x/' } });
      expect(bad.status).toBe(422);
      expect(bad.body.error.message).toMatch(/invalid parameters for proxy@1.0.0 shared default: backend must match pattern/);
      const notHost = await call(bob, 'PUT', '/api/v1/instances/bad-route', { software: 'store', shared: true, parameters: {} });
      expect(notHost.status).toBe(400);
      expect(notHost.body.error.message).toMatch(/does not host shared instances/);
      expect(await movements()).toBe(before);
    });

    it('never puts a customer on another customer’s host', async () => {
      await call(alice, 'PUT', '/api/v1/instances/alices-proxy', { software: 'proxy' });
      expect((await view(bob, 'route')).status).toBe('unallocated');
      const host = (await hosted('alices-proxy'))!.instance;
      expect(host.shared).toBeUndefined();
    });

    it('goes to an operator’s host once it starts, which then carries it', async () => {
      await call(admin, 'PUT', '/api/v1/instances/edge', { software: 'proxy' });
      const route = await view(bob, 'route');
      expect(route).toMatchObject({ status: 'allocated', node: 'node-a', partition: null });
      const host = (await hosted('edge'))!.instance;
      const routeId = host.shared![0]!.reference;
      expect(host.shared).toEqual([{ reference: routeId, parameters: { backend: 'http://127.0.0.9:80/' }, serial: 1 }]);
      await report('edge', 'instance.started', { connection: { url: 'http://127.43.0.5:31040/' }, shared: { [routeId]: { serial: 1, connection: { url: `http://127.43.0.5:31040/${routeId}/` } } } });
      expect(await view(bob, 'route')).toMatchObject({ status: 'started', ready: true, connection: { url: `http://127.43.0.5:31040/${routeId}/` } });
    });

    it('redeploys the host without the shared instance destroyed, and only that one', async () => {
      await call(bob, 'PUT', '/api/v1/instances/route-2', { software: 'proxy', shared: true, parameters: { backend: 'http://127.0.0.8:80/' } });
      expect((await hosted('edge'))!.instance.shared).toHaveLength(2);
      const serial = (await hosted('edge'))!.instance.serial;
      await call(bob, 'DELETE', '/api/v1/instances/route');
      expect(await view(bob, 'route')).toMatchObject({ state: 'destroyed', status: 'destroyed' });
      const host = (await hosted('edge'))!.instance;
      expect(host.serial).toBe(serial + 1);
      expect(host.shared!.map((s) => s.parameters.backend)).toEqual(['http://127.0.0.8:80/']);
    });

    it('moves shared instances to another host when theirs is destroyed', async () => {
      await call(admin, 'PUT', '/api/v1/instances/edge-2', { software: 'proxy' });
      await call(admin, 'DELETE', '/api/v1/instances/edge');
      expect((await hosted('edge-2'))!.instance.shared!.map((s) => s.parameters.backend)).toEqual(['http://127.0.0.8:80/']);
    });
  });

  it('keeps a child off the nodes of the rest of its tree, or off their network, as its SLA asks', async () => {
    expect((await call(admin, 'PATCH', '/api/v1/nodes/node-a', { labels: { network: 'lan1' } })).status).toBe(200);
    for (const [name, network, ip] of [['node-b', 'lan2', '127.43.1.1'], ['node-c', 'lan1', '127.43.2.1']] as const) {
      const credential = (await call(admin, 'POST', '/api/v1/nodes', { name, labels: { network } })).body.credential as string;
      await call(admin, 'POST', '/api/v1/supplies', { software: 'store', node: name });
      expect((await call(credential, 'PUT', '/api/v1/node/partitions', { partitions: [{ reference: 'p0', ip, ports: { first: 32000, last: 32009 } }] })).status).toBe(200);
      expect((await call(credential, 'GET', '/api/v1/node/desired-state')).status).toBe(200);
    }
    await call(alice, 'PUT', '/api/v1/instances/spread', { software: 'app', sla: { node: 'node-a' } });
    const answer = await requestChildren('spread', [
      { name: 'replica', software: 'store', parameters: { size: '1' }, sla: { 'anti-affinity': 'node' } },
      { name: 'far', software: 'store', parameters: { size: '1' }, sla: { 'anti-affinity': 'network' } },
    ]);
    expect(answer.status, JSON.stringify(answer.body)).toBe(200);
    // node-a holds the parent: the first other node by name takes the replica.
    expect(await view(alice, 'spread/replica')).toMatchObject({ node: 'node-b', status: 'allocated' });
    // lan1 (node-a) and lan2 (node-b) are taken by the tree: node-c is on lan1.
    expect(await view(alice, 'spread/far')).toMatchObject({
      status: 'unallocated',
      node: null,
      message: 'no node that has store@1.0.0 supplied is apart from the rest of its tree (another network)',
    });
  });

  describe('routes on a host shared by several customers', () => {
    /** The address of the first port of the partition an instance got, as its backend. */
    const backendOf = async (title: string) => {
      const partition = (await desired()).partitions.find((p) => p.instance?.title === title)!;
      return `http://${partition.ip}:${partition.ports.first}/`;
    };
    const routes = async () => ((await hosted('gateway'))!.instance.shared ?? []).map((s) => s.parameters);
    let aliceSite: string;
    let bobSite: string;

    beforeAll(async () => {
      await call(admin, 'PUT', '/api/v1/instances/gateway', { software: 'router' });
      await call(alice, 'PUT', '/api/v1/instances/alice-site', { software: 'store', parameters: { size: 1 } });
      await call(bob, 'PUT', '/api/v1/instances/bob-site', { software: 'store', parameters: { size: 1 } });
      aliceSite = await backendOf('alice-site');
      bobSite = await backendOf('bob-site');
    });

    it('refuses a second customer’s route on a host name another holds, recording nothing, and keeps the holder’s', async () => {
      const first = await call(alice, 'PUT', '/api/v1/instances/shop-route', { software: 'router', shared: true, parameters: { backend: aliceSite, host: 'shop.example' } });
      expect(first.body).toMatchObject({ status: 'allocated', shared: true });
      const before = await movements();
      const second = await call(bob, 'PUT', '/api/v1/instances/my-shop', { software: 'router', shared: true, parameters: { backend: bobSite, host: 'shop.example' } });
      expect(second.status).toBe(409);
      expect(second.body.error.message).toBe('the route host=shop.example is taken on gateway: another shared instance holds it');
      expect(JSON.stringify(second.body)).not.toMatch(/alice|shop-route/);
      expect(await movements()).toBe(before);
      expect((await call(bob, 'GET', '/api/v1/instances/my-shop')).status).toBe(404);
      expect(await routes()).toEqual([{ backend: aliceSite, host: 'shop.example' }]);
    });

    it('refuses a host name taken by another instance of the same owner, and lets a route without one share the host', async () => {
      const before = await movements();
      const again = await call(alice, 'PUT', '/api/v1/instances/shop-route-2', { software: 'router', shared: true, parameters: { backend: aliceSite, host: 'shop.example' } });
      expect(again.status).toBe(409);
      expect(await movements()).toBe(before);
      const byPath = await call(bob, 'PUT', '/api/v1/instances/bob-path', { software: 'router', shared: true, parameters: { backend: bobSite } });
      expect(byPath.body).toMatchObject({ status: 'allocated' });
      expect(await routes()).toHaveLength(2);
    });

    it('lets the holder request its route again, move it, and so free the host name for another', async () => {
      const before = await movements();
      const same = await call(alice, 'PUT', '/api/v1/instances/shop-route', { software: 'router', shared: true, parameters: { backend: aliceSite, host: 'shop.example' } });
      expect(same.status).toBe(200);
      expect(await movements()).toBe(before);
      // Stopped, the route keeps its host name.
      expect((await call(alice, 'PUT', '/api/v1/instances/shop-route', { software: 'router', state: 'stopped' })).status).toBe(200);
      expect((await call(bob, 'PUT', '/api/v1/instances/my-shop', { software: 'router', shared: true, parameters: { backend: bobSite, host: 'shop.example' } })).status).toBe(409);
      const moved = await call(alice, 'PUT', '/api/v1/instances/shop-route', { software: 'router', state: 'started', parameters: { backend: aliceSite, host: 'www.shop.example' } });
      expect(moved.body).toMatchObject({ status: 'allocated', parameters: { host: 'www.shop.example' } });
      const taken = await call(bob, 'PUT', '/api/v1/instances/my-shop', { software: 'router', shared: true, parameters: { backend: bobSite, host: 'shop.example' } });
      expect(taken.body).toMatchObject({ status: 'allocated' });
      // Nor can the holder move onto a host name another holds.
      const back = await call(alice, 'PUT', '/api/v1/instances/shop-route', { software: 'router', parameters: { backend: aliceSite, host: 'shop.example' } });
      expect(back.status).toBe(409);
      expect((await view(alice, 'shop-route')).parameters).toEqual({ backend: aliceSite, host: 'www.shop.example' });
    });

    it('refuses a backend of another customer, of the master or of nobody, recording nothing', async () => {
      const before = await movements();
      const free = (await desired()).partitions.find((p) => p.instance === null)!;
      for (const backend of [aliceSite, 'http://127.0.0.1:8080/', `http://${free.ip}:${free.ports.first}/`, 'http://10.9.9.9:80/']) {
        const answer = await call(bob, 'PUT', '/api/v1/instances/sneaky', { software: 'router', shared: true, parameters: { backend } });
        expect(answer.status, backend).toBe(403);
        expect(answer.body.error.message).toBe(`backend ${backend} is not an address of one of your instances`);
      }
      // Nor may a route already on the host turn to one.
      const turned = await call(bob, 'PUT', '/api/v1/instances/bob-path', { software: 'router', parameters: { backend: aliceSite } });
      expect(turned.status).toBe(403);
      expect(await movements()).toBe(before);
      expect((await call(bob, 'GET', '/api/v1/instances/sneaky')).status).toBe(404);
      expect((await routes()).map((r) => r.backend)).not.toContain('http://127.0.0.1:8080/');
      expect((await view(bob, 'bob-path')).parameters).toEqual({ backend: bobSite });
    });

    it('takes a route off its host when its backend’s partition goes to another customer', async () => {
      const reference = (await hosted('bob-site'))!.reference;
      await call(bob, 'DELETE', '/api/v1/instances/bob-site');
      await report('bob-site', 'instance.destroyed');
      // Alice's instances fill node-a until one gets the partition Bob's had.
      let landed = false;
      for (let i = 0; i < 12 && !landed; i++) {
        await call(alice, 'PUT', `/api/v1/instances/filler-${i}`, { software: 'store', parameters: { size: 1 } });
        landed = (await hosted(`filler-${i}`))?.reference === reference;
      }
      expect(landed).toBe(true);
      for (const title of ['bob-path', 'my-shop']) {
        expect(await view(bob, title)).toMatchObject({ status: 'unallocated', node: null, message: 'its backend is no longer an address of one of your instances: request it again with one of yours' });
      }
      expect((await routes()).map((r) => r.backend)).toEqual([aliceSite]);
    });

    it('checks a shared instance by what its host’s release declares, whatever version it names', async () => {
      const before = await movements();
      const older = { software: 'router@0.9.0', shared: true, sla: { host: 'gateway' } };
      expect((await call(bob, 'PUT', '/api/v1/instances/old-route', { ...older, parameters: { backend: aliceSite } })).status).toBe(403);
      expect(await movements()).toBe(before);
      await call(bob, 'PUT', '/api/v1/instances/bob-site-2', { software: 'store', parameters: { size: 1 } });
      const bobSite2 = await backendOf('bob-site-2');
      const between = await movements();
      const taken = await call(bob, 'PUT', '/api/v1/instances/old-route', { ...older, parameters: { backend: bobSite2, host: 'www.shop.example' } });
      expect(taken.status).toBe(409);
      expect(await movements()).toBe(between);
    });

    it('checks a shared instance’s parameters against its host’s schema, not the looser one of the version it names, recording nothing', async () => {
      const bobSite2 = await backendOf('bob-site-2');
      const before = await movements();
      // router@0.9.0 takes any string: the gateway runs 1.0.0, whose pattern would let none of these into its configuration.
      for (const host of ['evil.example; include /etc/passwd', 'Shop.Example\n}']) {
        const answer = await call(bob, 'PUT', '/api/v1/instances/loose-route', { software: 'router@0.9.0', shared: true, sla: { host: 'gateway' }, parameters: { backend: bobSite2, host } });
        expect(answer.status, host).toBe(422);
        expect(answer.body.error.message).toBe('invalid parameters for router@1.0.0 shared default on gateway: host must match pattern "^[a-z0-9.-]+$"');
      }
      expect(await movements()).toBe(before);
      expect((await call(bob, 'GET', '/api/v1/instances/loose-route')).status).toBe(404);
      expect((await routes()).map((r) => r.host)).not.toContain('evil.example; include /etc/passwd');
    });

    it('passes over a host whose schema refuses a shared instance for one whose schema takes it', async () => {
      // node-a is full: node-c takes the older host.
      expect((await call(admin, 'POST', '/api/v1/supplies', { software: 'router@0.9.0', node: 'node-c' })).status).toBeLessThan(300);
      expect((await call(admin, 'PUT', '/api/v1/instances/old-gateway', { software: 'router@0.9.0', sla: { node: 'node-c' } })).body).toMatchObject({ node: 'node-c' });
      const answer = await call(bob, 'PUT', '/api/v1/instances/loose-route', { software: 'router@0.9.0', shared: true, parameters: { backend: 'http://10.1.1.1:80/', host: 'Old_Style' } });
      expect(answer.status, JSON.stringify(answer.body)).toBe(200);
      expect(answer.body).toMatchObject({ status: 'allocated' });
      expect(answer.body).toMatchObject({ node: 'node-c' });
      expect((await routes()).map((r) => r.host)).not.toContain('Old_Style');
    });

    it('takes a shared instance off a host that moves to a release whose schema refuses it', async () => {
      const upgraded = await call(admin, 'PUT', '/api/v1/instances/old-gateway', { software: 'router@1.0.0' });
      expect(upgraded.status, JSON.stringify(upgraded.body)).toBe(200);
      const route = await view(bob, 'loose-route');
      expect(route).toMatchObject({ status: 'unallocated', node: null });
      expect(route.message).toBe('invalid parameters for router@1.0.0 shared default on gateway: host must match pattern "^[a-z0-9.-]+$"');
      await call(admin, 'DELETE', '/api/v1/instances/old-gateway');
    });

    it('has the database refuse a second holder of a route, whatever process writes it', async () => {
      const holder = await database.db.selectFrom('instances').select(['host_id', 'shared_route']).where('title', '=', 'shop-route').executeTakeFirstOrThrow();
      expect(holder.shared_route).toBe(JSON.stringify(['www.shop.example']));
      const other = database.db.updateTable('instances').set({ host_id: holder.host_id, shared_route: holder.shared_route }).where('title', '=', 'my-shop');
      await expect(other.execute()).rejects.toThrow(/unique|duplicate/i);
    });
  });

  it('rebuilds the same projections from the movements', async () => {
    const snapshot = async () => database.db.selectFrom('instances').selectAll().orderBy('id').execute();
    const live = await snapshot();
    await rebuildProjections(database.db);
    expect(await snapshot()).toEqual(live);
  });
});
