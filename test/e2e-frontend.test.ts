/**
 * Shared instances and a composite release end to end, with real parts: a master
 * process, the real CLI, the node agent as an ordinary user, nginx, Redis and Python
 * from Debian's packages.
 *
 * An operator's `frontend` hosts two routes of a customer, each to its own `hello`
 * instance and reachable at its own published URL; destroying one removes only its
 * route. Then one request of `webapp` brings up its Redis child and its route on the
 * frontend, and the page counts visits through the frontend.
 */
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InstanceView } from '../protocol/api.js';
import { freshDatabase, type TestDatabase } from './helpers/databases.js';
import { accountEnv, countMovements, pledger, processesMentioning, startMaster, startNode, type RunningMaster, type TestNode } from './helpers/processes.js';

describe('a frontend hosting shared instances, and a composite webapp', () => {
  let db: TestDatabase;
  let master: RunningMaster;
  let edge: TestNode;
  let asAlice: Record<string, string>;
  let asAdmin: Record<string, string>;

  const node = (command: string) => edge.run(command);
  const info = async (title: string, env = asAlice) => (await pledger(['info', title, '--json'], { env })).json<InstanceView>();
  const request = async (args: string[], env = asAlice) => {
    const answer = await pledger(['request', ...args, '--json'], { env });
    expect(answer.exitCode, answer.stderr).toBe(0);
    return answer.json<InstanceView>();
  };
  /** Runs the node's instance cycle until every title is ready, at most `runs` times. */
  const converge = async (titles: string[], runs = 6, env = asAlice) => {
    for (let i = 0; i < runs; i++) {
      const run = await node('instance');
      expect([0, 2], run.stderr).toContain(run.exitCode);
      const views = await Promise.all(titles.map((t) => info(t, env)));
      if (views.every((v) => v.ready)) return views;
    }
    const views = await Promise.all(titles.map((t) => info(t, env)));
    throw new Error(`not ready after ${runs} runs: ${views.map((v) => `${v.title} ${v.status} ${v.message ?? ''}`).join('; ')}`);
  };
  /** A GET with node:http, which (unlike fetch) sends the Host header it is given. */
  const get = (url: string, headers: Record<string, string> = {}) =>
    new Promise<{ status: number; text: string }>((resolve, reject) => {
      http
        .get(url, { headers }, (response) => {
          let text = '';
          response.setEncoding('utf8');
          response.on('data', (chunk: string) => (text += chunk));
          response.on('end', () => resolve({ status: response.statusCode ?? 0, text }));
        })
        .on('error', reject);
    });

  beforeAll(async () => {
    db = await freshDatabase('sqlite');
    master = await startMaster(db.url);
    asAdmin = { PLEDGER_MASTER_URL: master.url, PLEDGER_TOKEN: master.adminToken };
    asAlice = await accountEnv(master, 'alice');
    edge = await startNode(master, 'edge-f', { partitions: 6, ipBase: '127.48.0.1' });
    for (const software of ['hello', 'frontend', 'redis', 'webapp']) expect((await pledger(['supply', software, 'edge-f'], { env: asAdmin })).exitCode).toBe(0);
    const built = await node('software');
    expect(built.exitCode, built.stdout).toBe(0);
  }, 900_000);

  afterAll(async () => {
    if (edge) for (const p of processesMentioning(edge.root)) process.kill(p.pid, 'SIGKILL');
    await master?.stop();
    await db?.drop();
  });

  let sites: Record<'a' | 'b', string>;

  it('routes two shared instances to two hello instances, each at its own URL', async () => {
    await request(['edge', 'frontend'], asAdmin);
    await request(['site-a', 'hello', '--parameters', 'greeting=from site A']);
    await request(['site-b', 'hello', '--parameters', 'greeting=from site B']);
    const [a, b] = await converge(['site-a', 'site-b']);
    sites = { a: a!.connection.url!, b: b!.connection.url! };
    await converge(['edge'], 3, asAdmin);

    const routeA = await request(['route-a', 'frontend', '--shared', '--parameters', `backend=${sites.a}`]);
    expect(routeA).toMatchObject({ shared: true, partition: null, node: 'edge-f', status: 'allocated' });
    await request(['route-b', 'frontend', '--shared', '--parameters', `backend=${sites.b}`, 'host=b.example']);
    const [viewA, viewB] = await converge(['route-a', 'route-b']);
    const edge = await info('edge', asAdmin);
    expect(viewA!.connection.url).toMatch(new RegExp(`^${edge.connection.url}[0-9a-f-]{36}/$`));
    expect(viewA!.connection['host-url']).toBeUndefined();
    expect(viewB!.connection['host-url']).toMatch(/^http:\/\/b\.example:\d+\/$/);

    expect(await get(viewA!.connection.url!)).toEqual({ status: 200, text: 'from site A\n' });
    expect(await get(viewB!.connection.url!)).toEqual({ status: 200, text: 'from site B\n' });
    // By host name, at the frontend's root.
    expect(await get(edge.connection.url!, { host: 'b.example' })).toEqual({ status: 200, text: 'from site B\n' });
    // Anything else is nobody's: never the first backend.
    expect((await get(`${edge.connection.url}nothing-here/`)).status).toBe(404);
  });

  it('refuses another customer a host name routed already, and a backend that is not theirs, and keeps the first route serving', async () => {
    const asBob = await accountEnv(master, 'bob');
    const bobSite = await request(['bob-site', 'hello', '--parameters', 'greeting=from Bob'], asBob);
    expect(bobSite.status).toBe('allocated');
    const [bobReady] = await converge(['bob-site'], 3, asBob);
    const before = countMovements(db.url);
    const hijack = await pledger(['request', 'bob-route', 'frontend', '--shared', '--parameters', `backend=${bobReady!.connection.url}`, 'host=b.example'], { env: asBob });
    expect(hijack.exitCode).not.toBe(0);
    expect(hijack.stderr).toMatch(/the route host=b\.example is taken on edge: another shared instance holds it/);
    expect(hijack.stderr).not.toMatch(/alice|route-b/);
    // Alice's site, and the master itself.
    for (const backend of [sites.a, `${master.url}/`]) {
      const ssrf = await pledger(['request', 'bob-route', 'frontend', '--shared', '--parameters', `backend=${backend}`], { env: asBob });
      expect(ssrf.exitCode, backend).not.toBe(0);
      expect(ssrf.stderr).toContain(`backend ${backend} is not an address of one of your instances`);
    }
    expect((await pledger(['info', 'bob-route', '--json'], { env: asBob })).exitCode).not.toBe(0);
    expect(countMovements(db.url)).toBe(before);
    await converge(['edge'], 3, asAdmin);
    const edgeUrl = (await info('edge', asAdmin)).connection.url!;
    expect(await get(edgeUrl, { host: 'b.example' })).toEqual({ status: 200, text: 'from site B\n' });
  });

  it('removes only the route of the shared instance destroyed', async () => {
    const urlA = (await info('route-a')).connection.url!;
    const urlB = (await info('route-b')).connection.url!;
    expect((await pledger(['destroy', 'route-a'], { env: asAlice })).exitCode).toBe(0);
    expect(await info('route-a')).toMatchObject({ state: 'destroyed', status: 'destroyed' });
    await converge(['edge'], 3, asAdmin);
    expect((await get(urlA)).status).toBe(404);
    expect(await get(urlB)).toEqual({ status: 200, text: 'from site B\n' });
  });

  it('brings up a webapp, its Redis and its route from one request, and counts visits through the frontend', async () => {
    await request(['shop', 'webapp', '--parameters', 'greeting=Welcome to the shop']);
    const [shop] = await converge(['shop'], 8);
    const tree = await pledger(['info', 'shop', '--tree', '--json'], { env: asAlice });
    const members = tree.json<{ instances: { depth: number; instance: InstanceView }[] }>().instances;
    expect(members.map((m) => [m.depth, m.instance.title, m.instance.software.name, m.instance.shared, m.instance.status])).toEqual([
      [0, 'shop', 'webapp', false, 'started'],
      [1, 'shop/cache', 'redis', false, 'started'],
      [1, 'shop/route', 'frontend', true, 'started'],
    ]);
    expect(shop!.connection.url).toBe((await info('shop/route')).connection.url);
    expect(shop!.connection.url?.startsWith((await info('edge', asAdmin)).connection.url!)).toBe(true);
    expect(await get(shop!.connection.url!)).toEqual({ status: 200, text: 'Welcome to the shop: visit 1\n' });
    expect(await get(shop!.connection.url!)).toEqual({ status: 200, text: 'Welcome to the shop: visit 2\n' });
  });

  it('destroys the webapp with its Redis and its route', async () => {
    const url = (await info('shop')).connection.url!;
    expect((await pledger(['destroy', 'shop'], { env: asAlice })).exitCode).toBe(0);
    for (let i = 0; i < 3; i++) await node('instance');
    for (const title of ['shop', 'shop/cache', 'shop/route']) expect((await info(title)).status).toBe('destroyed');
    expect((await get(url)).status).toBe(404);
    expect(processesMentioning('redis-server').filter((p) => p.cmdline.includes(edge.root))).toEqual([]);
  });
});
