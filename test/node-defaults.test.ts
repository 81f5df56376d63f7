/**
 * A node set up exactly as the README's real setup types it: `pledger node configure`
 * with only --master, --credential and --root (or fewer), as an ordinary user with the
 * configuration in its default place, then `node format`, `node software` and
 * `node instance` without --config. Two such nodes on one machine, and a partition
 * whose port another program holds.
 */
import { existsSync, readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InstanceView, PartitionDefinition } from '../protocol/api.js';
import type { RunReport } from '../slave/result.js';
import { freshDatabase, type TestDatabase } from './helpers/databases.js';
import { agentUser, type AgentUser, asAccount, createCustomer, pledger, processesMentioning, type RunningMaster, startMaster } from './helpers/processes.js';

interface Node {
  name: string;
  agent: AgentUser;
  credential: string;
  /** `pledger node ARGS` as the node's user, with nothing but HOME and PATH in its environment. */
  run(...args: string[]): ReturnType<typeof pledger>;
}

describe('a node configured with the documented defaults', () => {
  let db: TestDatabase;
  let master: RunningMaster;
  let asAdmin: Record<string, string>;
  let asAlice: Record<string, string>;
  const nodes: Node[] = [];

  const newNode = async (name: string): Promise<Node> => {
    const registered = await pledger(['node', 'register', name, '--json'], { env: asAdmin });
    expect(registered.exitCode).toBe(0);
    const agent = agentUser();
    const node = {
      name,
      agent,
      credential: registered.json<{ credential: string }>().credential,
      run: (...args: string[]) => pledger(['node', ...args], { user: agent, timeoutMs: 600_000 }),
    };
    nodes.push(node);
    return node;
  };
  const configFile = (node: Node) => path.join(node.agent.home, '.config', 'pledger', 'node.json');
  const info = async (title: string) => (await pledger(['info', title, '--json'], { env: asAlice })).json<InstanceView>();

  beforeAll(async () => {
    db = await freshDatabase('sqlite');
    master = await startMaster(db.url);
    asAdmin = asAccount(master, master.adminToken);
    asAlice = await createCustomer(master, 'alice');
  });

  afterAll(async () => {
    for (const node of nodes) {
      for (const p of processesMentioning(node.agent.home)) {
        try {
          process.kill(p.pid, 'SIGKILL');
        } catch {
          // gone already
        }
      }
    }
    await master?.stop();
    await db?.drop();
  });

  it('configures with only the README options: 4 partitions of 10 ports from 30000, in the default file', async () => {
    const node = await newNode('edge-readme');
    const root = path.join(node.agent.home, 'pledger-node');
    const configure = await node.run('configure', '--master', master.url, '--credential', node.credential, '--root', root);
    expect(configure.stderr).toBe('');
    expect(configure.exitCode).toBe(0);
    const written = JSON.parse(readFileSync(configFile(node), 'utf8')) as Record<string, unknown>;
    expect(written).toMatchObject({ masterUrl: master.url, root, partitions: 4, portBase: 30000, portsPerPartition: 10 });
    expect(written.binaryCache).toBeUndefined();
    expect(written.ipBase).toMatch(/^127\.([1-9]\d?|1\d\d|2[0-4]\d|25[0-4])\.\d{1,3}\.1$/);
    expect(configure.stdout).toBe(`wrote ${configFile(node)}: 4 partitions under ${root}, addresses ${String(written.ipBase)}-${String(written.ipBase).replace(/1$/, '4')}, ports 30000-30039 (10 each)`);

    const formatted = await node.run('format', '--json');
    expect(formatted.exitCode).toBe(0);
    const partitions = formatted.json<PartitionDefinition[]>();
    expect(partitions.map((p) => [p.reference, p.ports.first, p.ports.last])).toEqual([
      ['part0', 30000, 30009],
      ['part1', 30010, 30019],
      ['part2', 30020, 30029],
      ['part3', 30030, 30039],
    ]);
  });

  it('keeps the root in ~/pledger-node when --root is left out too, and configures again to the same addresses', async () => {
    const node = await newNode('edge-bare');
    const first = await node.run('configure', '--master', master.url, '--credential', node.credential, '--json');
    expect(first.exitCode).toBe(0);
    const written = first.json<{ root: string; ipBase: string; config: string; credential: string }>();
    expect(written).toMatchObject({ root: path.join(node.agent.home, 'pledger-node'), config: configFile(node), credential: '(hidden)' });
    const again = await node.run('configure', '--master', master.url, '--credential', node.credential, '--json');
    expect(again.json<{ ipBase: string }>().ipBase).toBe(written.ipBase);
  });

  it('keeps its configuration where $PLEDGER_NODE_CONFIG says, for every node command', async () => {
    const node = await newNode('edge-env');
    const PLEDGER_NODE_CONFIG = path.join(node.agent.home, 'etc', 'node.json');
    const env = (...args: string[]) => pledger(['node', ...args], { user: node.agent, env: { PLEDGER_NODE_CONFIG } });
    const configured = await env('configure', '--master', master.url, '--credential', node.credential, '--json');
    expect(configured.json<{ config: string }>().config).toBe(PLEDGER_NODE_CONFIG);
    expect(existsSync(configFile(node))).toBe(false);
    expect((await env('format')).exitCode).toBe(0);
  });

  it('refuses a layout that node format would refuse, even with the other options left out, and writes nothing', async () => {
    const node = await newNode('edge-bad-layout');
    const tooHigh = await node.run('configure', '--master', master.url, '--credential', node.credential, '--port-base', '65530');
    expect(tooHigh.exitCode).toBe(2);
    expect(tooHigh.stderr).toBe(
      'error: invalid --root, --partitions, --ip-base, --port-base and --ports-per-partition: the last partition would end at port 65569, above 65535\n' +
        'hint: run `pledger node configure` with a lower --port-base, fewer --partitions or fewer --ports-per-partition',
    );
    const tooMany = await node.run('configure', '--master', master.url, '--credential', node.credential, '--ports-per-partition', '1000', '--partitions', '100');
    expect(tooMany.exitCode).toBe(2);
    expect(tooMany.stderr).toMatch(/above 65535/);
    const leaving = await node.run('configure', '--master', master.url, '--credential', node.credential, '--ip-base', '127.255.255.252');
    expect(leaving.exitCode).toBe(2);
    expect(leaving.stderr).toMatch(/^error: invalid .*: 4 partitions from 127\.255\.255\.252 leave 127\.0\.0\.0\/8\nhint: /);
    const notNumber = await node.run('configure', '--master', master.url, '--credential', node.credential, '--partitions', 'four');
    expect(notNumber.exitCode).toBe(2);
    expect(notNumber.stderr).toMatch(/^error: --partitions four is not a whole number\nhint: /);
    const noMaster = await node.run('configure', '--credential', node.credential);
    expect(noMaster.exitCode).toBe(2);
    expect(noMaster.stderr).toBe('error: no master given\nhint: pass --master URL or set PLEDGER_MASTER_URL');
    const formatted = await node.run('format');
    expect(formatted.exitCode).toBe(2);
    expect(formatted.stderr).toMatch(/does not exist\nhint: run `pledger node configure`/);
  });

  it('gives two nodes on one machine two address ranges, so both deploy hello on the same ports', async () => {
    const pair = [await newNode('edge-left'), await newNode('edge-right')];
    for (const node of pair) {
      expect((await node.run('configure', '--master', master.url, '--credential', node.credential, '--root', path.join(node.agent.home, 'pledger-node'))).exitCode).toBe(0);
      expect((await node.run('format')).exitCode).toBe(0);
      expect((await pledger(['supply', 'hello', node.name], { env: asAdmin })).exitCode).toBe(0);
      expect((await node.run('software')).exitCode).toBe(0);
    }
    const [left, right] = pair.map((node) => JSON.parse(readFileSync(configFile(node), 'utf8')) as { ipBase: string });
    expect(left!.ipBase).not.toBe(right!.ipBase);
    for (const [i, node] of pair.entries()) {
      expect((await pledger(['request', `greet-${i}`, 'hello', '--sla', `node=${node.name}`, '--parameters', `greeting=from ${node.name}`], { env: asAlice })).exitCode).toBe(0);
      const deployed = await node.run('instance');
      expect(deployed.exitCode).toBe(0);
    }
    const urls = [];
    for (const [i, node] of pair.entries()) {
      const view = await info(`greet-${i}`);
      // Requested without --type or --state: the default software type, started.
      expect(view).toMatchObject({ softwareType: 'default', state: 'started', status: 'started', ready: true, node: node.name, partition: 'part0' });
      expect(view.connection.url).toMatch(/:30000\/$/);
      expect(await (await fetch(view.connection.url!)).text()).toBe(`from ${node.name}\n`);
      urls.push(view.connection.url);
    }
    expect(urls[0]).not.toBe(urls[1]);
  });

  it("reports an instance whose port another program holds in error, with the cause, and deploys it once the port is free", async () => {
    const node = nodes.find((n) => n.name === 'edge-left')!;
    const { ipBase } = JSON.parse(readFileSync(configFile(node), 'utf8')) as { ipBase: string };
    // part1 of the node: the next address, ports from 30010.
    const ip = ipBase.replace(/\.1$/, '.2');
    let contacted = 0;
    const squatter = net.createServer((socket) => {
      contacted += 1;
      socket.destroy();
    });
    await new Promise<void>((resolve) => squatter.listen(30010, ip, resolve));
    try {
      expect((await pledger(['request', 'blocked', 'hello', '--sla', 'node=edge-left'], { env: asAlice })).exitCode).toBe(0);
      const run = await node.run('instance', '--json');
      expect(run.exitCode).toBe(1);
      const cause = `cannot bind ${ip}:30010: address already in use`;
      expect(run.json<RunReport>().results.filter((r) => r.item !== 'part0 (greet-0)')).toEqual([
        { item: 'part1 (blocked)', status: 'failed', message: expect.stringContaining(cause) as string },
      ]);
      const view = await info('blocked');
      expect(view).toMatchObject({ status: 'error', ready: false, partition: 'part1', connection: {} });
      expect(view.message).toContain(cause);
      const shown = await pledger(['info', 'blocked'], { env: asAlice });
      expect(shown.stdout).toMatch(new RegExp(`^message: +${cause.replaceAll('.', '\\.')}`, 'm'));
      const waited = await pledger(['request', 'blocked', 'hello', '--wait', '--timeout', '30'], { env: asAlice });
      expect(waited.exitCode).toBe(1);
      expect(waited.stderr).toContain(cause);
      expect(waited.stderr).toMatch(/\nhint: its node reported this; `pledger info blocked --history` lists every report/);
      expect(contacted).toBe(0);
    } finally {
      await new Promise((resolve) => squatter.close(resolve));
    }
    const retried = await node.run('instance');
    expect(retried.exitCode).toBe(0);
    expect(await info('blocked')).toMatchObject({ status: 'started', ready: true });
  });
});
