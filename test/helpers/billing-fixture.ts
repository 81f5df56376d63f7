/**
 * A master over a real database with what billing needs: an operator, customers, the
 * greeter release supplied to a node with partitions, and a way to report usage the
 * way a node does (POST /node/events).
 */
import { initMaster } from '../../master/server.js';
import { buildApp, type App } from '../../master/app.js';
import { openDatabase, type Database } from '../../master/db/database.js';
import { migrate } from '../../master/db/migrate.js';
import type { DesiredState, NodeEvent } from '../../protocol/api.js';
import { packSoftware } from '../../protocol/software-archive.js';
import { freshDatabase, type TestEngine, type TestDatabase } from './databases.js';
import { greeterRelease, writeTree } from './tree.js';

// Answers are checked field by field with expect(): typing each one adds nothing.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Body = Record<string, any>;

/** When the fixture's instances are taken to have been requested: before every month the tests bill. */
export const LONG_AGO = '2020-01-01T00:00:00.000Z';

export interface Usage {
  cpuMilliseconds?: number;
  memoryByteSeconds?: number;
  diskByteSeconds?: number;
  uptimeSeconds?: number;
}

export interface BillingFixture {
  database: Database;
  app: App;
  admin: string;
  node: string;
  call(token: string | null, method: 'GET' | 'POST' | 'PUT' | 'DELETE', url: string, payload?: unknown): Promise<{ status: number; body: Body; text: string; headers: Record<string, unknown> }>;
  /** Creates an account and answers its token. */
  customer(name: string): Promise<string>;
  /** Requests an instance and answers its id and partition. */
  instance(token: string, title: string): Promise<{ id: string; partition: string }>;
  /** Takes an instance requested through the API to have been requested at LONG_AGO, so that past months can bill it. */
  backdate(instanceId: string): Promise<void>;
  /** Backdates again every instance backdated so far (after a rebuild of the projections). */
  backdateAgain(): Promise<void>;
  /** Reports one hour of usage of an instance, as its node would. */
  report(instance: { id: string; partition: string }, hour: string, usage?: Usage, eventId?: string): Promise<Body>;
  movements(): Promise<number>;
  close(): Promise<void>;
}

export async function billingFixture(engine: TestEngine, partitions = 8): Promise<BillingFixture> {
  const testDb: TestDatabase = await freshDatabase(engine);
  const { token: admin } = await initMaster(testDb.url, 'admin');
  const database = openDatabase(testDb.url);
  await migrate(database);
  const app = buildApp({ database });
  const call: BillingFixture['call'] = async (token, method, url, payload) => {
    const response = await app.inject({
      method,
      url,
      payload: payload as string | object | Buffer | undefined,
      headers: token ? { authorization: `Bearer ${token}` } : {},
    });
    let body: Body = {};
    try {
      body = response.body ? (JSON.parse(response.body) as Body) : {};
    } catch {
      // not JSON: an HTML page or an export
    }
    return { status: response.statusCode, body, text: response.body, headers: response.headers };
  };
  const archive = await packSoftware(writeTree(greeterRelease()));
  const published = await app.inject({ method: 'POST', url: '/api/v1/software', payload: archive, headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/gzip' } });
  if (published.statusCode !== 201) throw new Error(`publish failed: ${published.body}`);
  const node = (await call(admin, 'POST', '/api/v1/nodes', { name: 'node-a' })).body.credential as string;
  await call(admin, 'POST', '/api/v1/supplies', { software: 'greeter', node: 'node-a' });
  const layout = Array.from({ length: partitions }, (_, i) => ({
    reference: `part${i}`,
    ip: `127.43.${Math.floor(i / 250)}.${(i % 250) + 1}`,
    ports: { first: 30000 + i * 10, last: 30009 + i * 10 },
  }));
  const formatted = await call(node, 'PUT', '/api/v1/node/partitions', { partitions: layout });
  if (formatted.status !== 200) throw new Error(`format failed: ${formatted.text}`);
  let eventCounter = 0;
  const backdated = new Set<string>();
  const backdate = async (instanceId: string) => {
    backdated.add(instanceId);
    await database.db.updateTable('instances').set({ created_at: LONG_AGO }).where('id', '=', instanceId).execute();
  };

  return {
    database,
    app,
    admin,
    node,
    call,
    customer: async (name) => (await call(admin, 'POST', '/api/v1/accounts', { name })).body.token as string,
    instance: async (token, title) => {
      const view = await call(token, 'PUT', `/api/v1/instances/${encodeURIComponent(title)}`, { software: 'greeter' });
      if (view.status !== 200 || !view.body.partition) throw new Error(`request failed: ${view.text}`);
      const state = (await call(node, 'GET', '/api/v1/node/desired-state')).body as DesiredState;
      const slot = state.partitions.find((p) => p.reference === view.body.partition)!;
      // Billing is tested on months that are long over: the instance is taken to have
      // been requested before them, or the master refuses their usage as outside its life.
      await backdate(slot.instance!.id);
      return { id: slot.instance!.id, partition: slot.reference };
    },
    backdate,
    // A rebuild dates each instance from its movements again: the fixture's dates are put back.
    backdateAgain: async () => {
      for (const id of backdated) await backdate(id);
    },
    report: async (instance, hour, usage = {}, eventId) => {
      const event = {
        id: eventId ?? `usage-${Date.now().toString(36)}-${(eventCounter++).toString(36)}`,
        at: new Date().toISOString(),
        type: 'instance.usage',
        partition: instance.partition,
        instance: instance.id,
        hour,
        cpuMilliseconds: usage.cpuMilliseconds ?? 0,
        memoryByteSeconds: usage.memoryByteSeconds ?? 0,
        diskByteSeconds: usage.diskByteSeconds ?? 0,
        uptimeSeconds: usage.uptimeSeconds ?? 3600,
      } as NodeEvent;
      const answer = await call(node, 'POST', '/api/v1/node/events', { events: [event] });
      if (answer.status !== 200) throw new Error(`usage refused: ${answer.text}`);
      return answer.body;
    },
    movements: async () => Number((await database.db.selectFrom('movements').select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow()).n),
    close: async () => {
      await app.close();
      await database.close();
      await testDb.drop();
    },
  };
}
