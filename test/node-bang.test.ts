/**
 * What the node cannot repair goes to a real master (served in this process) as a
 * bang: a promise that keeps failing past its `bang-after`, and a service in a crash
 * loop, which is also reported in error with the end of its log. The master answers a
 * bang with a new serial, and the node's next run redeploys the instance.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MasterClient } from '../protocol/client.js';
import { resolveNodeConfig, type NodeConfig } from '../slave/config.js';
import { reportEvents } from '../slave/report.js';
import { formatNode } from '../slave/format.js';
import { processInstances } from '../slave/instance.js';
import { silentLogger } from '../slave/log.js';
import { checkPromisesCycle } from '../slave/promise-cycle.js';
import { installSoftware } from '../slave/software.js';
import { SupervisorClient } from '../slave/supervisor-client.js';
import { startInProcessMaster, type InProcessMaster } from './helpers/master-in-process.js';
import { portBase } from './helpers/processes.js';
import { writeTree } from './helpers/tree.js';

const YAML = `name: fragile
version: 1.0.0
software-types:
  default:
    services:
      idle: [/bin/sleep, "300"]
    promises:
      flag: { file: etc/flag, interval: 1, bang-after: 2, timeout: 1 }
  crashing:
    services:
      dies: [/bin/sh, -c, "echo giving up >&2; exit 4"]
`;

let scratch: string;
let master: InProcessMaster;
let config: NodeConfig;
let owner: MasterClient;

const info = (title: string) => owner.instances.get(title);
const history = async (title: string) => (await owner.instances.history(title)).map((m) => m.kind);

beforeAll(async () => {
  scratch = mkdtempSync(path.join(tmpdir(), 'pledger-bang-'));
  master = await startInProcessMaster();
  owner = master.operator;
  const credential = await master.registerNode('bang-node');
  config = resolveNodeConfig({
    masterUrl: master.url,
    credential,
    root: path.join(scratch, 'node'),
    partitions: 2,
    ipBase: `127.49.${10 + Math.floor(Math.random() * 200)}.1`,
    portBase: portBase(),
    supervisor: { backoffFirstMs: 50, crashLoopExits: 3, crashLoopWindowMs: 60_000 },
  });
  await master.publish(writeTree({ 'software.yaml': YAML }));
  await owner.supplies.set({ software: 'fragile', node: 'bang-node' });
  await formatNode(config, silentLogger);
  await installSoftware(config, silentLogger);
});

afterAll(async () => {
  await new SupervisorClient(config.root).shutdown(true).catch(() => {});
  await master.close();
  rmSync(scratch, { recursive: true, force: true });
});

describe('bangs', () => {
  it('(a node with no instance starts no supervisor)', async () => {
    expect((await processInstances(config, silentLogger)).results).toEqual([]);
    expect(await new SupervisorClient(config.root).ping()).toBeUndefined();
  });

  it('a promise failing bang-after periodic checks in a row asks for a redeployment, once', async () => {
    await owner.instances.request('flagged', { software: 'fragile' });
    // The flag is missing: the deployment itself fails its promise, and is in error.
    // A promise failure, which the CLI tells apart (exit code 2) from other failures.
    expect((await processInstances(config, silentLogger)).results[0]).toEqual({
      item: 'part0 (flagged)',
      status: 'failed',
      message: 'promise flag: etc/flag does not exist',
      promiseFailure: true,
    });
    expect(await info('flagged')).toMatchObject({ status: 'error', serial: 1 });

    expect((await checkPromisesCycle(config, silentLogger, Date.now() + 1000)).results).toEqual([
      { item: 'part0', status: 'failed', message: 'promise flag: etc/flag does not exist', promiseFailure: true },
    ]);
    expect(await history('flagged')).not.toContain('instance.banged');
    await checkPromisesCycle(config, silentLogger, Date.now() + 2000);
    expect((await history('flagged')).filter((k) => k === 'instance.banged')).toHaveLength(1);
    // The failing streak already banged: a third failure does not bang again.
    await checkPromisesCycle(config, silentLogger, Date.now() + 3000);
    expect((await history('flagged')).filter((k) => k === 'instance.banged')).toHaveLength(1);

    // The master answered with a new serial; the next run redeploys, and this time the flag is there.
    expect(await info('flagged')).toMatchObject({ serial: 2 });
    mkdirSync(path.join(config.root, 'partitions', 'part0', 'etc'), { recursive: true });
    writeFileSync(path.join(config.root, 'partitions', 'part0', 'etc', 'flag'), '');
    expect((await processInstances(config, silentLogger)).results[0]).toMatchObject({ status: 'done' });
    expect(await info('flagged')).toMatchObject({ status: 'started', serial: 2, ready: true });
    expect((await info('flagged')).promises).toEqual([expect.objectContaining({ name: 'flag', status: 'ok' })]);
  });

  it('a service in a crash loop is reported in error with the end of its log, and banged', async () => {
    await owner.instances.request('crasher', { software: 'fragile', softwareType: 'crashing' });
    await processInstances(config, silentLogger);
    const supervisor = new SupervisorClient(config.root);
    for (let i = 0; i < 100 && !(await supervisor.status()).part1?.services.dies?.crashLoop; i++) await new Promise((resolve) => setTimeout(resolve, 20));
    expect((await supervisor.status()).part1!.services.dies).toMatchObject({ crashLoop: true });
    // Queued by the supervisor; delivered by the next report.
    for (let i = 0; i < 50; i++) {
      await reportEvents(config, silentLogger);
      if ((await history('crasher')).includes('instance.banged')) break;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const kinds = await history('crasher');
    expect(kinds).toContain('instance.error');
    expect(kinds).toContain('instance.banged');
    expect(await info('crasher')).toMatchObject({ serial: 2 });
    const movements = await owner.instances.history('crasher');
    const error = movements.find((m) => m.kind === 'instance.error')!.data as { message: string };
    expect(error.message).toMatch(/^service dies exited 3 times in 60 s \(last: exit code 4\); end of dies\.log:\ngiving up\n/);
    await supervisor.stop('part1', 200);
  });
});
