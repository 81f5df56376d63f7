/**
 * Allocation through the real CLI and a real master process: an operator registers
 * nodes with labels and scopes and changes them, users request with an SLA, and the
 * master places each instance where its SLA says, keeps the reason when nothing fits,
 * and puts a shared instance on the host its SLA names. The nodes report their
 * partitions through the node API: what is under test is the master's choice, which
 * needs no agent running.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DesiredState, InstanceView, NodeView } from '../protocol/api.js';
import { freshDatabase, type TestDatabase } from './helpers/databases.js';
import { accountEnv, expectLedgerUnchanged, pledger, type RunningMaster, startMaster } from './helpers/processes.js';

/** Each node's partitions: part0..part3 on 127.46.N.1..4, ten ports each. */
const layout = (n: number) => [0, 1, 2, 3].map((i) => ({ reference: `part${i}`, ip: `127.46.${n}.${i + 1}`, ports: { first: 33000 + n * 100 + i * 10, last: 33009 + n * 100 + i * 10 } }));

describe('allocation through the CLI', () => {
  let db: TestDatabase;
  let master: RunningMaster;
  let asAdmin: Record<string, string>;
  let asAlice: Record<string, string>;
  let asBob: Record<string, string>;
  const nodes = ['eu-1', 'us-1', 'private-1'];
  const credentials = new Map<string, string>();

  const info = async (env: Record<string, string>, title: string) => {
    const shown = await pledger(['info', title, '--json'], { env });
    expect(shown.exitCode, shown.stderr).toBe(0);
    return shown.json<InstanceView>();
  };
  const request = async (env: Record<string, string>, args: string[]) => {
    const answer = await pledger(['request', ...args], { env });
    expect(answer.exitCode, answer.stderr).toBe(0);
    return answer;
  };

  beforeAll(async () => {
    db = await freshDatabase('sqlite');
    master = await startMaster(db.url);
    asAdmin = { PLEDGER_MASTER_URL: master.url, PLEDGER_TOKEN: master.adminToken };
    asAlice = await accountEnv(master, 'alice');
    asBob = await accountEnv(master, 'bob');
    const registrations = [
      ['eu-1', '--label', 'region=eu', 'network=lan1'],
      ['us-1', '--label', 'region=us'],
      ['private-1', '--label', 'region=eu', '--scope', 'owner', '--owner', 'alice'],
    ];
    for (const [index, [name, ...options]] of registrations.entries()) {
      const registered = await pledger(['node', 'register', name!, ...options, '--json'], { env: asAdmin });
      expect(registered.exitCode, registered.stderr).toBe(0);
      const credential = registered.json<{ credential: string }>().credential;
      credentials.set(name!, credential);
      const reported = await fetch(`${master.url}/api/v1/node/partitions`, {
        method: 'PUT',
        headers: { authorization: `Bearer ${credential}`, 'content-type': 'application/json' },
        body: JSON.stringify({ partitions: layout(index) }),
      });
      expect(reported.status).toBe(200);
      for (const software of ['hello', 'frontend']) expect((await pledger(['supply', software, name!], { env: asAdmin })).exitCode).toBe(0);
    }
  });
  afterAll(async () => {
    await master?.stop();
    await db?.drop();
  });

  it('registers nodes with their labels, scope and owner', async () => {
    const listed = (await pledger(['node', 'list', '--json'], { env: asAdmin })).json<NodeView[]>();
    expect(listed.filter((n) => nodes.includes(n.name)).map((n) => ({ name: n.name, labels: n.labels, scope: n.scope, owner: n.owner }))).toEqual([
      { name: 'eu-1', labels: { network: 'lan1', region: 'eu' }, scope: 'open', owner: 'admin' },
      { name: 'private-1', labels: { region: 'eu' }, scope: 'owner', owner: 'alice' },
      { name: 'us-1', labels: { region: 'us' }, scope: 'open', owner: 'admin' },
    ]);
  });

  it('places a request on the node whose labels its --sla names', async () => {
    await request(asBob, ['web', 'hello', '--sla', 'region=us', '--json']);
    expect(await info(asBob, 'web')).toMatchObject({ status: 'allocated', node: 'us-1', sla: { region: 'us' } });
    await request(asBob, ['web-eu', 'hello', '--sla', 'region=eu', 'network=lan1', '--json']);
    expect(await info(asBob, 'web-eu')).toMatchObject({ status: 'allocated', node: 'eu-1' });
  });

  it('prints why nothing fits, keeps the reason, and places the instance once a node is labelled to fit', async () => {
    const answer = await request(asBob, ['far', 'hello', '--sla', 'region=asia']);
    expect(answer.stdout).toMatch(/status:\s+unallocated/);
    expect(answer.stdout).toMatch(/message:\s+no node open to you matches region=asia/);
    expect(await info(asBob, 'far')).toMatchObject({ status: 'unallocated', node: null, message: 'no node open to you matches region=asia' });
    const set = await pledger(['node', 'set', 'us-1', '--label', 'region=asia'], { env: asAdmin });
    expect(set.exitCode, set.stderr).toBe(0);
    expect(await info(asBob, 'far')).toMatchObject({ status: 'allocated', node: 'us-1', message: null });
    // An allocated instance keeps its partition when its node's labels change.
    expect(await info(asBob, 'web')).toMatchObject({ status: 'allocated', node: 'us-1' });
  });

  it('keeps a node of scope owner to its owner’s instances, and opens it with node set --scope', async () => {
    const refused = await request(asBob, ['mine', 'hello', '--sla', 'node=private-1', '--json']);
    expect(refused.json<InstanceView>()).toMatchObject({ status: 'unallocated', node: null, message: 'no node open to you matches node=private-1' });
    // A node of another customer answers as a node that does not exist: nothing tells them apart.
    const none = await request(asBob, ['nowhere', 'hello', '--sla', 'node=private-2', '--json']);
    expect(none.json<InstanceView>().message).toBe('no node open to you matches node=private-2');
    // And so does a label only such a node carries.
    expect((await pledger(['node', 'set', 'private-1', '--label', 'tier=gold'], { env: asAdmin })).exitCode).toBe(0);
    const gold = await request(asBob, ['gold', 'hello', '--sla', 'tier=gold', '--json']);
    const platinum = await request(asBob, ['platinum', 'hello', '--sla', 'tier=platinum', '--json']);
    expect([gold.json<InstanceView>().message, platinum.json<InstanceView>().message]).toEqual(['no node open to you matches tier=gold', 'no node open to you matches tier=platinum']);
    expect((await pledger(['node', 'set', 'private-1', '--unlabel', 'tier'], { env: asAdmin })).exitCode).toBe(0);
    await request(asAlice, ['mine', 'hello', '--sla', 'node=private-1', '--json']);
    expect(await info(asAlice, 'mine')).toMatchObject({ status: 'allocated', node: 'private-1' });
    expect((await info(asBob, 'mine')).status).toBe('unallocated');
    const opened = await pledger(['node', 'set', 'private-1', '--scope', 'open'], { env: asAdmin });
    expect(opened.exitCode, opened.stderr).toBe(0);
    expect(await info(asBob, 'mine')).toMatchObject({ status: 'allocated', node: 'private-1' });
  });

  it('refuses a malformed --sla or --scope, changing nothing', async () => {
    await expectLedgerUnchanged(db.url, async () => {
      const sla = await pledger(['request', 'odd', 'hello', '--sla', 'region'], { env: asBob });
      expect(sla.exitCode).toBe(2);
      expect(sla.stderr).toMatch(/--sla/);
      const scope = await pledger(['node', 'set', 'eu-1', '--scope', 'everyone'], { env: asAdmin });
      expect(scope.exitCode).toBe(2);
      expect(scope.stderr).toMatch(/open, owner or closed/);
    });
  });

  it('puts a shared instance on the host its --sla host=TITLE names, of two frontends', async () => {
    await request(asAdmin, ['edge-a', 'frontend', '--sla', 'node=eu-1', '--json']);
    await request(asAdmin, ['edge-b', 'frontend', '--sla', 'node=eu-1', '--json']);
    // web-eu is bob's, on eu-1 with both hosts: an address of his either may send to.
    const web = await info(asBob, 'web-eu');
    const partition = layout(0).find((p) => p.reference === web.partition)!;
    const backend = (path: string) => `backend=http://${partition.ip}:${partition.ports.first}/${path}`;
    await request(asBob, ['route-b', 'frontend', '--shared', '--sla', 'host=edge-b', '--parameters', backend('b'), '--json']);
    expect(await info(asBob, 'route-b')).toMatchObject({ shared: true, status: 'allocated', node: 'eu-1', partition: null });
    // Without the SLA, the first host by creation takes it.
    await request(asBob, ['route-a', 'frontend', '--shared', '--parameters', backend('a'), '--json']);
    expect(await info(asBob, 'route-a')).toMatchObject({ shared: true, status: 'allocated', node: 'eu-1' });
    // What each host is asked to carry, as its node reads it.
    const desired = await fetch(`${master.url}/api/v1/node/desired-state`, { headers: { authorization: `Bearer ${credentials.get('eu-1')!}` } });
    const { partitions } = (await desired.json()) as DesiredState;
    const carried = (title: string) => (partitions.find((p) => p.instance?.title === title)?.instance?.shared ?? []).map((s) => s.parameters.backend);
    expect(carried('edge-a')).toEqual([backend('a').slice('backend='.length)]);
    expect(carried('edge-b')).toEqual([backend('b').slice('backend='.length)]);
    const nowhere = await request(asBob, ['route-c', 'frontend', '--shared', '--sla', 'host=edge-c', '--parameters', backend('c')]);
    expect(nowhere.stdout).toMatch(/message:\s+no started frontend instance open to you hosts shared instances with host=edge-c/);
  });
});
