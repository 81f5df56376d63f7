/**
 * The walking skeleton end to end, with real parts only: a master process on
 * 127.0.0.1 over a fresh SQLite file, the real CLI, and the node agent running as an
 * ordinary user, deploying the bundled `hello` release.
 */
import { existsSync, readdirSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InstanceView, MovementView, NodeView } from '../protocol/api.js';
import type { RunReport } from '../slave/result.js';
import { freshDatabase, type TestDatabase } from './helpers/databases.js';
import { agentUser, type AgentUser, asAccount, createCustomer, pledger, portBase, processesMentioning, type RunningMaster, startMaster } from './helpers/processes.js';

describe('hello, from request to a running, promised instance', () => {
  let db: TestDatabase;
  let master: RunningMaster;
  let agent: AgentUser;
  let nodeConfig: string;
  let root: string;
  let asAlice: Record<string, string>;
  let asAdmin: Record<string, string>;

  const node = (command: string) => pledger(['node', command, '--config', nodeConfig, '--json'], { user: agent });
  const info = async () => (await pledger(['info', 'greet', '--json'], { env: asAlice })).json<InstanceView>();
  const helloProcesses = () => processesMentioning(path.join(root, 'software'));

  beforeAll(async () => {
    db = await freshDatabase('sqlite');
    master = await startMaster(db.url);
    asAdmin = asAccount(master, master.adminToken);
    asAlice = await createCustomer(master, 'alice');

    agent = agentUser();
    root = path.join(agent.home, 'root');
    nodeConfig = path.join(agent.home, 'node.json');
    const registered = await pledger(['node', 'register', 'edge-1', '--json'], { env: asAdmin });
    expect(registered.exitCode).toBe(0);
    const configure = await pledger(
      ['node', 'configure', '--master', master.url, '--credential', registered.json<{ credential: string }>().credential, '--root', root, '--config', nodeConfig,
        '--partitions', '2', '--ip-base', '127.43.0.1', '--port-base', String(portBase())],
      { user: agent },
    );
    expect(configure.stderr).toBe('');
    expect(configure.exitCode).toBe(0);
  });

  afterAll(async () => {
    // Leave nothing running, whatever happened above.
    if (root) for (const p of helloProcesses()) process.kill(p.pid, 'SIGKILL');
    await master?.stop();
    await db?.drop();
  });

  it('runs the node agent as an ordinary user', () => {
    expect(agent.uid === 0).toBe(false);
  });

  it('formats the node and reports its partitions', async () => {
    const formatted = await node('format');
    expect(formatted.exitCode).toBe(0);
    expect(formatted.json()).toEqual([
      expect.objectContaining({ reference: 'part0', ip: '127.43.0.1' }),
      expect.objectContaining({ reference: 'part1', ip: '127.43.0.2' }),
    ]);
    const nodes = (await pledger(['node', 'list', '--json'], { env: asAdmin })).json<NodeView[]>();
    expect(nodes).toEqual([expect.objectContaining({ name: 'edge-1', partitions: 2, freePartitions: 2 })]);
  });

  it('builds the supplied release once', async () => {
    expect((await pledger(['supply', 'hello', 'edge-1'], { env: asAdmin })).exitCode).toBe(0);
    const first = await node('software');
    expect(first.exitCode).toBe(0);
    expect(first.json<RunReport>().results).toEqual([expect.objectContaining({ status: 'done' })]);
    const second = await node('software');
    expect(second.json<RunReport>().results.map((r) => r.status)).toEqual(['unchanged']);
    const nodes = (await pledger(['node', 'list', '--json'], { env: asAdmin })).json<NodeView[]>();
    expect(nodes[0]!.software).toEqual([expect.objectContaining({ name: 'hello', status: 'built' })]);
  });

  it('deploys a requested instance that answers with its greeting, and publishes its URL', async () => {
    const requested = await pledger(['request', 'greet', 'hello', '--parameters', 'greeting=Bonjour {{ 7*7 }}', '--json'], { env: asAlice });
    expect(requested.exitCode).toBe(0);
    expect(requested.json()).toMatchObject({ status: 'allocated', node: 'edge-1', partition: 'part0', ready: false });

    const run = await node('instance');
    expect(run.exitCode).toBe(0);
    const view = await info();
    expect(view).toMatchObject({ status: 'started', ready: true });
    expect(view.connection.url).toMatch(/^http:\/\/127\.43\.0\.1:\d+\/$/);
    // A parameter that looks like a template is data: printed as it is.
    expect(await (await fetch(view.connection.url!)).text()).toBe('Bonjour {{ 7*7 }}\n');

    const processes = helloProcesses();
    expect(processes.length).toBeGreaterThan(0);
    for (const p of processes) expect(p.uid).toBe(agent.uid);
  });

  it('waits with --wait and prints the connection parameters', async () => {
    const waited = await pledger(['request', 'greet', 'hello', '--wait', '--timeout', '10'], { env: asAlice });
    expect(waited.exitCode).toBe(0);
    expect(waited.stdout).toMatch(/connection\.url: +http:\/\/127\.43\.0\.1:\d+\//);
  });

  it('leaves a running instance alone on the next run', async () => {
    const before = helloProcesses().map((p) => p.pid);
    const run = await node('instance');
    expect(run.exitCode).toBe(0);
    expect(run.json<RunReport>().results.map((r) => r.status)).toEqual(['unchanged']);
    expect(helloProcesses().map((p) => p.pid)).toEqual(before);
  });

  it('serves the new greeting after a parameter change and the next run', async () => {
    const changed = await pledger(['request', 'greet', 'hello', '--parameters', 'greeting=Hola', '--json'], { env: asAlice });
    expect(changed.json()).toMatchObject({ serial: 2, ready: false });
    expect((await node('instance')).exitCode).toBe(0);
    const view = await info();
    expect(view).toMatchObject({ serial: 2, status: 'started', ready: true });
    expect(await (await fetch(view.connection.url!)).text()).toBe('Hola\n');
  });

  it('stops the instance: its port closes', async () => {
    const { connection } = await info();
    const url = new URL(connection.url!);
    expect((await pledger(['request', 'greet', 'hello', '--state', 'stopped'], { env: asAlice })).exitCode).toBe(0);
    expect((await node('instance')).exitCode).toBe(0);
    expect(await info()).toMatchObject({ state: 'stopped', status: 'stopped', ready: true });
    expect(await portOpen(url.hostname, Number(url.port))).toBe(false);
    expect(helloProcesses()).toEqual([]);
  });

  it('shows a stopped instance with no promise and no URL, and both again once started', async () => {
    expect(await info()).toMatchObject({ status: 'stopped', connection: {}, promises: [] });
    const shown = await pledger(['info', 'greet'], { env: asAlice });
    expect(shown.stdout).toMatch(/^status: +stopped \(ready\)$/m);
    expect(shown.stdout).not.toMatch(/^(connection|promise)\./m);
    expect((await pledger(['request', 'greet', 'hello', '--state', 'started'], { env: asAlice })).exitCode).toBe(0);
    expect((await node('instance')).exitCode).toBe(0);
    const started = await info();
    expect(started).toMatchObject({ status: 'started', promises: [expect.objectContaining({ name: 'answers', status: 'ok' })] });
    expect(await (await fetch(started.connection.url!)).text()).toBe('Hola\n');
    expect((await pledger(['request', 'greet', 'hello', '--state', 'stopped'], { env: asAlice })).exitCode).toBe(0);
    expect((await node('instance')).exitCode).toBe(0);
  });

  it('destroys the instance: partition free on the master, directory wiped, no process left', async () => {
    const destroyed = await pledger(['destroy', 'greet', '--json'], { env: asAlice });
    expect(destroyed.exitCode).toBe(0);
    expect((await node('instance')).exitCode).toBe(0);
    expect(await info()).toMatchObject({ state: 'destroyed', status: 'destroyed', partition: null, connection: {}, promises: [] });
    expect((await pledger(['info', 'greet'], { env: asAlice })).stdout).not.toMatch(/^(connection|promise)\./m);
    const nodes = (await pledger(['node', 'list', '--json'], { env: asAdmin })).json<NodeView[]>();
    expect(nodes[0]).toMatchObject({ freePartitions: 2 });
    const partition = path.join(root, 'partitions', 'part0');
    expect(existsSync(partition) ? readdirSync(partition) : []).toEqual([]);
    expect(helloProcesses()).toEqual([]);
    expect((await pledger(['list', '--json'], { env: asAlice })).json()).toEqual([]);
  });

  it('shows every step in the instance history', async () => {
    const history = (await pledger(['info', 'greet', '--history', '--json'], { env: asAlice })).json<MovementView[]>();
    const kinds = history.map((m) => m.kind);
    for (const kind of ['instance.requested', 'instance.allocated', 'instance.deployed', 'instance.started', 'instance.stopped', 'instance.destroyed']) {
      expect(kinds).toContain(kind);
    }
    const text = await pledger(['info', 'greet', '--history'], { env: asAlice });
    expect(text.stdout).toMatch(/instance\.allocated +master +edge-1 \/ part0/);
  });
});

function portOpen(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}
