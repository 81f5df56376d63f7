/**
 * Declared resources through the real CLI and a real master process: an operator
 * declares what a node offers, a user asks for more than a release needs, and the
 * master places instances where it fits and says what is short.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InstanceView, NodeView } from '../protocol/api.js';
import { freshDatabase, type TestDatabase } from './helpers/databases.js';
import { accountEnv, expectLedgerUnchanged, pledger, type RunningMaster, startMaster } from './helpers/processes.js';

describe('declared resources through the CLI', () => {
  let db: TestDatabase;
  let master: RunningMaster;
  let asAdmin: Record<string, string>;
  let asAlice: Record<string, string>;

  const nodeView = async () => (await pledger(['node', 'list', '--json'], { env: asAdmin })).json<NodeView[]>().find((n) => n.name === 'sized-1')!;

  beforeAll(async () => {
    db = await freshDatabase('sqlite');
    master = await startMaster(db.url);
    asAdmin = { PLEDGER_MASTER_URL: master.url, PLEDGER_TOKEN: master.adminToken };
    asAlice = await accountEnv(master, 'alice');
    const registered = await pledger(['node', 'register', 'sized-1', '--resource', 'cpu=4', 'memory=4096', '--json'], { env: asAdmin });
    expect(registered.exitCode).toBe(0);
    const credential = registered.json<{ credential: string }>().credential;
    const layout = await fetch(`${master.url}/api/v1/node/partitions`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${credential}`, 'content-type': 'application/json' },
      body: JSON.stringify({ partitions: [0, 1, 2].map((i) => ({ reference: `part${i}`, ip: `127.45.0.${i + 1}`, ports: { first: 32000 + i * 10, last: 32009 + i * 10 } })) }),
    });
    expect(layout.status).toBe(200);
    expect((await pledger(['supply', 'hello', 'sized-1'], { env: asAdmin })).exitCode).toBe(0);
  });
  afterAll(async () => {
    await master?.stop();
    await db?.drop();
  });

  it('registers a node with resources and lists what is used of them', async () => {
    expect((await nodeView()).resources).toEqual({ cpu: { capacity: 4, used: 0 }, memory: { capacity: 4096, used: 0 } });
    const table = await pledger(['node', 'list'], { env: asAdmin });
    expect(table.stdout).toMatch(/sized-1 .*cpu=0\/4,memory=0\/4096/);
  });

  it('takes what a request asks for, and says what is short', async () => {
    const first = await pledger(['request', 'big', 'hello', '--resource', 'memory=3072', '--json'], { env: asAlice });
    expect(first.json<InstanceView>()).toMatchObject({ node: 'sized-1', resources: { memory: 3072 } });
    expect((await pledger(['info', 'big'], { env: asAlice })).stdout).toMatch(/resources:\s+memory=3072/);
    const second = await pledger(['request', 'bigger', 'hello', '--resource', 'memory=2048', '--json'], { env: asAlice });
    expect(second.json<InstanceView>()).toMatchObject({
      status: 'unallocated',
      message: 'no node that has hello@1.0.0 supplied has 2048 MiB of memory free',
    });
  });

  it('changes what a node declares, and places what waited', async () => {
    const set = await pledger(['node', 'set', 'sized-1', '--resource', 'memory=8192', '--remove-resource', 'cpu'], { env: asAdmin });
    expect(set.exitCode).toBe(0);
    expect(set.stdout).toMatch(/resources:\s+memory=5120\/8192/);
    expect((await nodeView()).resources).toEqual({ memory: { capacity: 8192, used: 3072 + 2048 } });
    expect((await pledger(['info', 'bigger', '--json'], { env: asAlice })).json<InstanceView>()).toMatchObject({ status: 'allocated', node: 'sized-1' });
  });

  it('refuses amounts that are not whole numbers, changing nothing', async () => {
    await expectLedgerUnchanged(db.url, async () => {
      const request = await pledger(['request', 'odd', 'hello', '--resource', 'memory=lots'], { env: asAlice });
      expect(request.exitCode).toBe(2);
      expect(request.stderr).toMatch(/--resource memory=lots: expected NAME=AMOUNT, a whole number/);
      const node = await pledger(['node', 'set', 'sized-1', '--resource', 'disk=-5'], { env: asAdmin });
      expect(node.exitCode).toBe(2);
      const badName = await pledger(['node', 'set', 'sized-1', '--resource', 'Disk Space=5'], { env: asAdmin });
      expect(badName.exitCode).toBe(2);
      expect(badName.stderr).toMatch(/invalid request/);
    });
  });
});
