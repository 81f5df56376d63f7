/**
 * The master's API over a real database, on every engine of testEngines(): ordering,
 * allocation, node reports, isolation between tenants and nodes, and the rule that a
 * refused request changes nothing in the ledger.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initMaster } from '../master/server.js';
import { buildApp, type App } from '../master/app.js';
import { openDatabase, type Database } from '../master/db/database.js';
import { migrate } from '../master/db/migrate.js';
import { storeSource } from '../master/cache.js';
import { rebuildProjections } from '../master/ledger/movements.js';
import { packSoftware } from '../protocol/software-archive.js';
import type { DesiredState, EventsReceipt, InstanceView, NodeEvent, NodeView } from '../protocol/api.js';
import { freshDatabase, testEngines, type TestDatabase } from './helpers/databases.js';
import { greeterRelease, writeTree } from './helpers/tree.js';

describe.each(testEngines())('master API on %s', (engine) => {
  let testDb: TestDatabase;
  let database: Database;
  let app: App;
  let admin: string;
  let alice: string;
  let bob: string;
  let nodeA: string;
  let nodeB: string;

  // Answers are checked field by field with expect(): typing each one adds nothing.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  type Body = Record<string, any>;
  const call = async (token: string | null, method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE', url: string, payload?: unknown, headers: Record<string, string> = {}) => {
    const response = await app.inject({
      method,
      url,
      payload: payload as string | object | Buffer | undefined,
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...headers },
    });
    return { status: response.statusCode, body: response.body ? (JSON.parse(response.body) as Body) : {}, headers: response.headers };
  };
  const movements = async () => Number((await database.db.selectFrom('movements').select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow()).n);
  const expectUnchanged = async (action: () => Promise<unknown>) => {
    const before = await movements();
    await action();
    expect(await movements()).toBe(before);
  };
  const event = (fields: Partial<NodeEvent> & Pick<NodeEvent, 'type'>): NodeEvent =>
    ({ id: `ev${Math.random().toString(36).slice(2, 12)}`, at: new Date().toISOString(), ...fields }) as NodeEvent;

  const bobsPartition = async () => {
    const state = (await call(nodeA, 'GET', '/api/v1/node/desired-state')).body as DesiredState;
    const partition = state.partitions.find((p) => p.instance?.title === 'default-greeting')!;
    return { reference: partition.reference, instance: partition.instance! };
  };

  beforeAll(async () => {
    testDb = await freshDatabase(engine);
    ({ token: admin } = await initMaster(testDb.url, 'admin'));
    database = openDatabase(testDb.url);
    await migrate(database);
    app = buildApp({ database });
    alice = (await call(admin, 'POST', '/api/v1/accounts', { name: 'alice' })).body.token;
    bob = (await call(admin, 'POST', '/api/v1/accounts', { name: 'bob' })).body.token;
    const archive = await packSoftware(writeTree(greeterRelease()));
    expect((await call(admin, 'POST', '/api/v1/software', archive, { 'content-type': 'application/gzip' })).status).toBe(201);
    nodeA = (await call(admin, 'POST', '/api/v1/nodes', { name: 'node-a' })).body.credential;
    nodeB = (await call(admin, 'POST', '/api/v1/nodes', { name: 'node-b' })).body.credential;
  });
  afterAll(async () => {
    await app?.close();
    await database?.close();
    await testDb?.drop();
  });

  it('refuses to initialize a database twice', async () => {
    await expect(initMaster(testDb.url, 'admin')).rejects.toThrow(/already initialized/);
  });

  it('stores tokens hashed, never as given', async () => {
    const rows = await database.db.selectFrom('tokens').select('hash').execute();
    expect(rows.length).toBe(3);
    for (const token of [admin, alice, bob]) expect(rows.map((r) => r.hash)).not.toContain(token);
    const movementText = (await database.db.selectFrom('movements').select('data').execute()).map((r) => r.data).join('\n');
    expect(movementText).not.toContain(alice);
  });

  it('refuses a missing or unknown token with 401 and an operator-only call with 403', async () => {
    expect((await call(null, 'GET', '/api/v1/whoami')).body.error.code).toBe('UNAUTHENTICATED');
    expect((await call('plg_u_forged', 'GET', '/api/v1/whoami')).status).toBe(401);
    await expectUnchanged(async () => {
      const refused = await call(alice, 'POST', '/api/v1/accounts', { name: 'mallory' });
      expect(refused.status).toBe(403);
      expect(refused.body.error.message).toMatch(/operator/);
    });
    expect((await call(alice, 'GET', '/api/v1/whoami')).body).toMatchObject({ name: 'alice', role: 'user' });
  });

  it('publishes a release once per content and refuses other content under the same version', async () => {
    await expectUnchanged(async () => {
      const again = await call(admin, 'POST', '/api/v1/software', await packSoftware(writeTree(greeterRelease())), { 'content-type': 'application/gzip' });
      expect(again.status).toBe(200);
      const changed = await call(admin, 'POST', '/api/v1/software', await packSoftware(writeTree(greeterRelease('1.0.0', { 'README.md': 'x' }))), {
        'content-type': 'application/gzip',
      });
      expect(changed.status).toBe(409);
      expect(changed.body.error.message).toMatch(/already published with other content/);
    });
  });

  it('refuses an invalid release with every problem and its place', async () => {
    const broken = greeterRelease('2.0.0');
    broken['software.yaml'] += '    services:\n      web: []\n';
    delete broken['greeting.njk'];
    await expectUnchanged(async () => {
      const refused = await call(admin, 'POST', '/api/v1/software', await packSoftware(writeTree(broken)), { 'content-type': 'application/gzip' });
      expect(refused.status).toBe(422);
      expect(refused.body.error.message).toMatch(/software-types\.default\.services\.web/);
    });
  });

  it('refuses an unknown release, parameters that break the schema and malformed bodies, recording nothing', async () => {
    await expectUnchanged(async () => {
      const unknown = await call(alice, 'PUT', '/api/v1/instances/web', { software: 'nosuch' });
      expect(unknown.status).toBe(404);
      expect(unknown.body.error).toMatchObject({ code: 'SOFTWARE_NOT_FOUND', message: 'no software release nosuch is published' });

      const tooLong = await call(alice, 'PUT', '/api/v1/instances/web', { software: 'greeter', parameters: { greeting: 'x'.repeat(30) } });
      expect(tooLong.status).toBe(422);
      expect(tooLong.body.error.message).toMatch(/greeting must NOT have more than 20 characters/);
      const extra = await call(alice, 'PUT', '/api/v1/instances/web', { software: 'greeter', parameters: { colour: 'red' } });
      expect(extra.body.error.message).toMatch(/must NOT have additional properties \(colour\)/);

      const malformed = await call(alice, 'PUT', '/api/v1/instances/web', '{"software": ', { 'content-type': 'application/json' });
      expect(malformed.status).toBe(400);
      expect(malformed.body.error.code).toBe('BAD_REQUEST');
      const unknownField = await call(alice, 'PUT', '/api/v1/instances/web', { software: 'greeter', colour: 'red' });
      expect(unknownField.status).toBe(400);
      expect(unknownField.body.error.message).toMatch(/colour/);
      const badState = await call(alice, 'PUT', '/api/v1/instances/web', { software: 'greeter', state: 'running' });
      expect(badState.status).toBe(400);
    });
    expect((await call(alice, 'GET', '/api/v1/instances')).body).toEqual([]);
  });

  it('takes archives only on the routes that receive them, and names at most ten problems of a bad body', async () => {
    await expectUnchanged(async () => {
      // Bytes sent to a JSON route are refused by their type, not parsed and checked byte by byte.
      const bytes = await call(alice, 'PUT', '/api/v1/instances/web', Buffer.alloc(64 * 1024, 1), { 'content-type': 'application/octet-stream' });
      expect(bytes.status).toBe(400);
      expect(bytes.body.error.message).toBe('invalid request: this route does not take application/octet-stream');
      const supply = await call(admin, 'POST', '/api/v1/supplies', Buffer.alloc(1024), { 'content-type': 'application/gzip' });
      expect(supply.status).toBe(400);

      // A body breaking its schema in thousands of places gets a short answer.
      const keys = Object.fromEntries(Array.from({ length: 5000 }, (_, i) => [`extra${i}`, i]));
      const response = await app.inject({ method: 'PUT', url: '/api/v1/instances/web', payload: { software: 'greeter', ...keys }, headers: { authorization: `Bearer ${alice}` } });
      expect(response.statusCode).toBe(400);
      expect(response.body.length).toBeLessThan(8 * 1024);
      const error = (JSON.parse(response.body) as Body).error;
      expect(error.message).toMatch(/\(extra0\).*; and 4990 more$/);
      expect(error.details).toHaveLength(10);

      // Only operators publish, and a user is refused before the archive is read.
      const publish = await call(alice, 'POST', '/api/v1/software', Buffer.alloc(1024), { 'content-type': 'application/gzip' });
      expect(publish.status).toBe(403);
    });
  });

  it('keeps an instance unallocated, with the reason, until a node has its release and a free partition', async () => {
    const requested = await call(alice, 'PUT', '/api/v1/instances/web', { software: 'greeter', parameters: { greeting: 'hi' } });
    expect(requested.status).toBe(200);
    expect(requested.body).toMatchObject({ status: 'unallocated', message: 'no node has greeter@1.0.0 supplied', serial: 1, ready: false });
    expect(requested.body.parameters).toEqual({ greeting: 'hi' });

    await call(admin, 'POST', '/api/v1/supplies', { software: 'greeter', node: 'node-a' });
    const partitions = [0, 1].map((i) => ({ reference: `part${i}`, ip: `127.42.0.${i + 1}`, ports: { first: 30000 + i * 10, last: 30009 + i * 10 } }));
    expect((await call(nodeA, 'PUT', '/api/v1/node/partitions', { partitions })).status).toBe(200);
    const allocated = (await call(alice, 'GET', '/api/v1/instances/web')).body;
    expect(allocated).toMatchObject({ status: 'allocated', node: 'node-a', partition: 'part0', message: null });
  });

  it('treats the same request as the same instance, and a change as a new serial', async () => {
    await expectUnchanged(async () => {
      const same = await call(alice, 'PUT', '/api/v1/instances/web', { software: 'greeter', parameters: { greeting: 'hi' } });
      expect(same.body.serial).toBe(1);
      const keepsParameters = await call(alice, 'PUT', '/api/v1/instances/web', { software: 'greeter' });
      expect(keepsParameters.body.parameters).toEqual({ greeting: 'hi' });
    });
    const changed = await call(alice, 'PUT', '/api/v1/instances/web', { software: 'greeter', parameters: { greeting: 'hey' } });
    expect(changed.body).toMatchObject({ serial: 2, partition: 'part0', parameters: { greeting: 'hey' } });
  });

  it('fills in parameter defaults from the schema', async () => {
    const view = (await call(bob, 'PUT', '/api/v1/instances/default-greeting', { software: 'greeter' })).body;
    expect(view.parameters).toEqual({ greeting: 'hello' });
  });

  it('shows each account its own instances only', async () => {
    expect((await call(bob, 'GET', '/api/v1/instances/web')).status).toBe(404);
    expect((await call(bob, 'GET', '/api/v1/instances/web/history')).status).toBe(404);
    await expectUnchanged(async () => {
      expect((await call(bob, 'DELETE', '/api/v1/instances/web')).status).toBe(404);
    });
    expect((await call(bob, 'GET', '/api/v1/instances')).body.map((i: InstanceView) => i.title)).toEqual(['default-greeting']);
    expect((await call(alice, 'GET', '/api/v1/instances/web')).body.state).toBe('started');
  });

  it('gives a node one snapshot of its desired state, with an ETag', async () => {
    const first = await call(nodeA, 'GET', '/api/v1/node/desired-state');
    const state = first.body as DesiredState;
    expect(state.node).toBe('node-a');
    expect(state.software).toEqual([expect.objectContaining({ name: 'greeter', state: 'available' })]);
    expect(state.partitions[0]!.instance).toMatchObject({ title: 'web', serial: 2, parameters: { greeting: 'hey' }, state: 'started' });
    const again = await call(nodeA, 'GET', '/api/v1/node/desired-state', undefined, { 'if-none-match': String(first.headers.etag) });
    expect(again.status).toBe(304);
    const other = (await call(nodeB, 'GET', '/api/v1/node/desired-state')).body as DesiredState;
    expect(other.partitions).toEqual([]);
    expect((await call(alice, 'GET', '/api/v1/node/desired-state')).status).toBe(401);
  });

  it('applies each node event once and publishes connection parameters', async () => {
    const state = (await call(nodeA, 'GET', '/api/v1/node/desired-state')).body as DesiredState;
    const instance = state.partitions[0]!.instance!;
    const started = event({ type: 'instance.started', partition: 'part0', instance: instance.id, serial: 2, connection: { url: 'http://127.42.0.1:30000/' } });
    const first = (await call(nodeA, 'POST', '/api/v1/node/events', { events: [started] })).body as EventsReceipt;
    expect(first).toEqual({ applied: [started.id], duplicates: [] });
    await expectUnchanged(async () => {
      const again = (await call(nodeA, 'POST', '/api/v1/node/events', { events: [started] })).body as EventsReceipt;
      expect(again).toEqual({ applied: [], duplicates: [started.id] });
    });
    const view = (await call(alice, 'GET', '/api/v1/instances/web')).body;
    expect(view).toMatchObject({ status: 'started', ready: true, connection: { url: 'http://127.42.0.1:30000/' } });
  });

  it('refuses a node reporting on a partition of another node, changing nothing', async () => {
    const state = (await call(nodeA, 'GET', '/api/v1/node/desired-state')).body as DesiredState;
    const instance = state.partitions[0]!.instance!;
    await expectUnchanged(async () => {
      const forged = event({ type: 'instance.error', partition: 'part0', instance: instance.id, serial: 2, message: 'forged' });
      const refused = await call(nodeB, 'POST', '/api/v1/node/events', { events: [forged] });
      expect(refused.status).toBe(403);
      expect(refused.body.error.message).toMatch(/not a partition of node node-b/);
      // A batch with one bad event is refused whole.
      const good = event({ type: 'instance.started', partition: 'part0', instance: instance.id, serial: 2 });
      const mixed = await call(nodeA, 'POST', '/api/v1/node/events', { events: [good, { ...good, id: 'other-event-1', partition: 'part9' }] });
      expect(mixed.status).toBe(403);
      const malformed = await call(nodeA, 'POST', '/api/v1/node/events', { events: [{ ...good, serial: 'two' }] });
      expect(malformed.status).toBe(400);
    });
    expect((await call(alice, 'GET', '/api/v1/instances/web')).body.status).toBe('started');
  });

  it('frees the partition once the node reports the instance destroyed', async () => {
    const destroying = (await call(alice, 'DELETE', '/api/v1/instances/web')).body;
    expect(destroying).toMatchObject({ state: 'destroyed', status: 'allocated', ready: false, serial: 3 });
    const instance = ((await call(nodeA, 'GET', '/api/v1/node/desired-state')).body as DesiredState).partitions[0]!.instance!;
    expect(instance.state).toBe('destroyed');
    await call(nodeA, 'POST', '/api/v1/node/events', { events: [event({ type: 'instance.destroyed', partition: 'part0', instance: instance.id, serial: 3 })] });
    const destroyed = (await call(alice, 'GET', '/api/v1/instances/web')).body;
    expect(destroyed).toMatchObject({ status: 'destroyed', ready: true, partition: null, node: null });
    expect((await call(alice, 'GET', '/api/v1/instances')).body).toEqual([]);
    const nodes = (await call(admin, 'GET', '/api/v1/nodes')).body as unknown as NodeView[];
    expect(nodes.find((n) => n.name === 'node-a')).toMatchObject({ partitions: 2, freePartitions: 1 });
  });

  it('lists every step of an instance in its history', async () => {
    const history = (await call(alice, 'GET', '/api/v1/instances/web/history')).body as unknown as { kind: string; actor: string }[];
    expect(history.map((m) => m.kind)).toEqual([
      'instance.requested',
      'instance.unallocated', // no node has the release
      'instance.unallocated', // supplied, but the node has not called yet
      'instance.allocated',
      'instance.requested',
      'instance.started',
      'instance.requested',
      'instance.destroyed',
    ]);
    expect(history[0]!.actor).toBe('account:alice');
    expect(history[5]!.actor).toBe('node:node-a');
    expect(history[2]!).toMatchObject({ data: { reason: 'no node that has greeter@1.0.0 supplied has called the master in the last 10 minutes' } });
  });

  it('keeps the latest promise states, never overwritten by an older report', async () => {
    const { instance } = await bobsPartition();
    const { reference } = await bobsPartition();
    const report = (at: string, status: 'ok' | 'critical') =>
      event({ type: 'instance.promises', at, partition: reference, instance: instance.id, serial: instance.serial, promises: [{ name: 'answers', status, message: `it is ${status}`, since: at }] });
    await call(nodeA, 'POST', '/api/v1/node/events', { events: [report('2026-11-22T10:00:00.000Z', 'critical')] });
    await call(nodeA, 'POST', '/api/v1/node/events', { events: [report('2026-11-22T09:00:00.000Z', 'ok')] });
    const view = (await call(bob, 'GET', '/api/v1/instances/default-greeting')).body as InstanceView;
    expect(view.promises).toEqual([{ name: 'answers', status: 'critical', message: 'it is critical', since: '2026-11-22T10:00:00.000Z' }]);
    expect(((await call(bob, 'GET', '/api/v1/instances')).body as unknown as InstanceView[])[0]!.promises).toHaveLength(1);
  });

  it('redeploys an instance that bangs, once per serial', async () => {
    const { instance, reference } = await bobsPartition();
    const bang = () => event({ type: 'instance.bang', partition: reference, instance: instance.id, serial: instance.serial, message: 'service hello keeps crashing' });
    await call(nodeA, 'POST', '/api/v1/node/events', { events: [bang()] });
    const after = (await call(bob, 'GET', '/api/v1/instances/default-greeting')).body;
    expect(after).toMatchObject({ serial: instance.serial + 1, status: 'allocated', ready: false });
    await call(nodeA, 'POST', '/api/v1/node/events', { events: [bang()] });
    expect((await call(bob, 'GET', '/api/v1/instances/default-greeting')).body.serial).toBe(instance.serial + 1);
    const kinds = ((await call(bob, 'GET', '/api/v1/instances/default-greeting/history')).body as unknown as { kind: string }[]).map((m) => m.kind);
    expect(kinds.filter((k) => k === 'instance.banged')).toHaveLength(2);
  });

  it('counts each hour of usage once, even after the instance left its partition, and only from its node', async () => {
    const { instance, reference } = await bobsPartition();
    // The hours below are before today: the instance is taken to have been requested before
    // them while they are reported (its date is put back after, as its movements give it).
    const { created_at: requestedAt } = await database.db.selectFrom('instances').select('created_at').where('id', '=', instance.id).executeTakeFirstOrThrow();
    await database.db.updateTable('instances').set({ created_at: '2026-11-01T00:00:00.000Z' }).where('id', '=', instance.id).execute();
    const usage = (hour: string, cpu: number) =>
      event({ type: 'instance.usage', partition: reference, instance: instance.id, hour, cpuMilliseconds: cpu, memoryByteSeconds: 3600 * 2 ** 20, diskByteSeconds: 3600 * 4096, uptimeSeconds: 3600 });
    const first = (await call(nodeA, 'POST', '/api/v1/node/events', { events: [usage('2026-11-22T10:00:00.000Z', 1500)] })).body as EventsReceipt;
    expect(first.applied).toHaveLength(1);
    // The same hour under another event id is the same record.
    const again = (await call(nodeA, 'POST', '/api/v1/node/events', { events: [usage('2026-11-22T10:00:00.000Z', 9999)] })).body as EventsReceipt;
    expect(again.duplicates).toHaveLength(1);
    await expectUnchanged(async () => {
      expect((await call(nodeB, 'POST', '/api/v1/node/events', { events: [usage('2026-11-22T11:00:00.000Z', 1)] })).status).toBe(403);
      const badHour = await call(nodeA, 'POST', '/api/v1/node/events', { events: [usage('2026-11-22T11:30:00.000Z', 1)] });
      expect(badHour.status).toBe(400);
    });

    await call(bob, 'DELETE', '/api/v1/instances/default-greeting');
    const { serial } = (await bobsPartition()).instance;
    await call(nodeA, 'POST', '/api/v1/node/events', { events: [event({ type: 'instance.destroyed', partition: reference, instance: instance.id, serial })] });
    const late = (await call(nodeA, 'POST', '/api/v1/node/events', { events: [usage('2026-11-22T11:00:00.000Z', 700)] })).body as EventsReceipt;
    expect(late.applied).toHaveLength(1);
    const rows = await database.db.selectFrom('usage_hours').selectAll().where('instance_id', '=', instance.id).orderBy('hour').execute();
    expect(rows.map((r) => [r.hour, Number(r.cpu_ms), Number(r.memory_byte_seconds), r.uptime_seconds])).toEqual([
      ['2026-11-22T10:00:00.000Z', 1500, 3600 * 2 ** 20, 3600],
      ['2026-11-22T11:00:00.000Z', 700, 3600 * 2 ** 20, 3600],
    ]);
    expect(rows[0]).toMatchObject({ software_id: 'greeter@1.0.0', software_type: 'default' });
    await database.db.updateTable('instances').set({ created_at: requestedAt }).where('id', '=', instance.id).execute();
  });

  it('rebuilds projections from the movements equal to the live ones', async () => {
    const sortKey = {
      accounts: 'id',
      tokens: 'hash',
      nodes: 'id',
      partitions: 'id',
      software: 'id',
      supplies: 'node_id',
      instances: 'id',
      instance_promises: 'instance_id',
      usage_hours: 'hour',
    } as const;
    const snapshot = async () =>
      Object.fromEntries(
        await Promise.all(
          (['accounts', 'tokens', 'nodes', 'partitions', 'software', 'supplies', 'instances', 'instance_promises', 'usage_hours'] as const).map(async (table) => [
            table,
            await database.db.selectFrom(table).selectAll().orderBy(sortKey[table]).execute(),
          ]),
        ),
      );
    const live = await snapshot();
    await rebuildProjections(database.db);
    expect(await snapshot()).toEqual(live);
  });

  it('rebuilds with source and binary cache entries present, and keeps those entries', async () => {
    const upload = async (url: string, body: Buffer, type: string) => {
      const response = await app.inject({ method: 'PUT', url, payload: body, headers: { authorization: `Bearer ${nodeA}`, 'content-type': type } });
      expect(response.statusCode).toBe(201);
    };
    // Filed as the source route files what a supplied release names (that route's own checks are tested with the parts).
    const source = Buffer.from('a source archive');
    const nodeAId = (await database.db.selectFrom('nodes').select('id').where('name', '=', 'node-a').executeTakeFirstOrThrow()).id;
    expect(await storeSource(database.db as never, nodeAId, createHash('sha256').update(source).digest('hex'), source)).toBe(true);
    expect((await call(admin, 'PATCH', '/api/v1/nodes/node-a', { binaryCacheUpload: true })).status).toBe(200);
    const part = await packSoftware(writeTree({ 'bin/tool': 'a built part' }));
    const query = new URLSearchParams({ platform: 'debian-12/x86_64', prefix: '', sha256: createHash('sha256').update(part).digest('hex') });
    await upload(`/api/v1/node/binaries/${'b'.repeat(64)}?${query}`, part, 'application/gzip');
    const caches = async () => ({
      sources: await database.db.selectFrom('source_cache' as never).selectAll().execute(),
      binaries: await database.db.selectFrom('binary_cache' as never).selectAll().execute(),
    });
    const before = await caches();
    expect(before.sources).toHaveLength(1);
    expect(before.binaries).toHaveLength(1);
    const nodes = await database.db.selectFrom('nodes').selectAll().orderBy('id').execute();
    await rebuildProjections(database.db);
    expect(await caches()).toEqual(before);
    expect(await database.db.selectFrom('nodes').selectAll().orderBy('id').execute()).toEqual(nodes);
  });
});
