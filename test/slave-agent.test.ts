/**
 * The node agent against a stand-in master: building releases, deploying instances,
 * keeping their promises, repairing, stopping and destroying them, and carrying on
 * without the master.
 */
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DesiredInstance, NodeEvent } from '../protocol/api.js';
import { packSoftware } from '../protocol/software-archive.js';
import { hashDirectory } from '../protocol/software-release.js';
import { resolveNodeConfig, type NodeConfig } from '../slave/config.js';
import { formatNode } from '../slave/format.js';
import { processInstances } from '../slave/instance.js';
import { silentLogger } from '../slave/log.js';
import { readPartitionState } from '../slave/partition-state.js';
import { isAlive, stopProcessGroup } from '../slave/processes.js';
import { installSoftware } from '../slave/software.js';
import { startFakeMaster, type FakeMaster } from './slave-fake-master.js';

let scratch: string;
let master: FakeMaster;
let config: NodeConfig;
const releases: Record<string, { dir: string; hash: string }> = {};

const ECHO_YAML = `
name: echo
version: 1.0.0
parts:
  tool:
    files: [src/tool.sh]
    build:
      - [/bin/sh, -c, 'echo "building in $PWD for {{ part.path }} with HOME=$HOME"; cp src/tool.sh tool.sh']
      - [/bin/chmod, '755', tool.sh]
software-types:
  default:
    ports: [http]
    secrets: [password]
    files:
      etc/greeting.txt: templates/greeting.txt.njk
      bin/server.cjs: templates/server.cjs.njk
    services:
      web: ['${process.execPath}', '{{ partition.path }}/bin/server.cjs']
    promises:
      answers: { http: 'http://{{ partition.ip }}:{{ ports.http }}/', status: 200 }
      listening: { tcp: '{{ partition.ip }}:{{ ports.http }}' }
    publish:
      url: 'http://{{ partition.ip }}:{{ ports.http }}/'
      password: '{{ secrets.password }}'
      tool: '{{ parts.tool.path }}/tool.sh'
  broken:
    files:
      etc/broken.conf: templates/broken.njk
  silent:
    ports: [http]
    services:
      idle: [/bin/sleep, '300']
    promises:
      listening: { tcp: '{{ partition.ip }}:{{ ports.http }}', timeout: 0.5 }
`;

const SERVER = `const fs = require('node:fs');
require('node:http')
  .createServer((request, response) => response.end(fs.readFileSync({{ partition.path | json }} + '/etc/greeting.txt', 'utf8')))
  .listen({{ ports.http }}, {{ partition.ip | json }});
`;

async function writeRelease(name: string, files: Record<string, string>): Promise<void> {
  const dir = path.join(scratch, 'releases', name);
  for (const [file, content] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(dir, file)), { recursive: true });
    await writeFile(path.join(dir, file), content);
  }
  const hash = await hashDirectory(dir);
  releases[name] = { dir, hash };
  master.archives.set(hash, await packSoftware(dir));
}

const supply = (name: string, state = 'available') => ({ name, version: '1.0.0', hash: releases[name]!.hash, state });

function instance(id: string, software: string, fields: Partial<DesiredInstance> = {}): DesiredInstance {
  return {
    id,
    title: `title of ${id}`,
    software: { name: software, version: '1.0.0', hash: releases[software]!.hash },
    softwareType: 'default',
    parameters: {},
    state: 'started',
    serial: 1,
    ...fields,
  };
}

function place(reference: string, desired: DesiredInstance | null): void {
  const partition = master.state.partitions.find((p) => p.reference === reference)!;
  partition.instance = desired;
}

const eventsOf = (type: NodeEvent['type'], partition?: string) =>
  master.events.filter((e) => e.type === type && (partition === undefined || ('partition' in e && e.partition === partition)));

async function services(reference: string) {
  return (await readPartitionState(config.root, reference))?.services ?? {};
}

beforeAll(async () => {
  scratch = await mkdtemp(path.join(tmpdir(), 'pledger-agent-'));
  master = await startFakeMaster();
  const octet = 10 + Math.floor(Math.random() * 200);
  config = resolveNodeConfig({
    masterUrl: master.url,
    credential: 'node-secret',
    root: path.join(scratch, 'node'),
    partitions: 4,
    ipBase: `127.45.${octet}.1`,
    portBase: 20000 + Math.floor(Math.random() * 3000) * 10,
  });
  await writeRelease('echo', {
    'software.yaml': ECHO_YAML,
    'src/tool.sh': '#!/bin/sh\necho tool\n',
    'templates/greeting.txt.njk': '{{ parameters.greeting }}',
    'templates/server.cjs.njk': SERVER,
    'templates/broken.njk': 'ok = {{ partition.ip }}\nvalue = {{ parameters.nope }}\n',
  });
  await writeRelease('fails', {
    'software.yaml': "name: fails\nversion: 1.0.0\nparts:\n  x:\n    build:\n      - [/bin/sh, -c, 'echo first line; echo the-reason >&2; exit 3']\nsoftware-types:\n  default: {}\n",
  });
  // Supplied under a hash its archive does not have.
  releases.forged = { dir: '', hash: 'f'.repeat(64) };
  master.archives.set(releases.forged.hash, master.archives.get(releases.echo!.hash)!);
});

afterAll(async () => {
  for (const reference of ['part0', 'part1', 'part2', 'part3']) {
    for (const record of Object.values(await services(reference))) await stopProcessGroup(record, 500).catch(() => {});
  }
  await master.close();
  await rm(scratch, { recursive: true, force: true });
});

describe('node agent', () => {
  it('formats the node', async () => {
    const partitions = await formatNode(config, silentLogger);
    master.state.partitions = partitions.map((p) => ({ ...p, instance: null }));
    expect(master.partitions).toHaveLength(4);
  });

  it('builds the supplied releases, refusing a forged one, reporting a failed build with its log', async () => {
    master.state.software = [supply('echo'), supply('fails'), { ...supply('forged'), name: 'forged' }];
    const { results, offline } = await installSoftware(config, silentLogger);
    expect(offline).toBe(false);
    expect(results.map((r) => [r.item, r.status])).toEqual([
      ['echo@1.0.0', 'done'],
      ['fails@1.0.0', 'failed'],
      ['forged@1.0.0', 'failed'],
    ]);
    expect(results[1]!.message).toMatch(/exited with code 3[\s\S]*first line\nthe-reason/);
    expect(results[2]!.message).toMatch(/refused: the release downloaded has the content hash [0-9a-f]{64}, not f{64}/);

    const built = path.join(config.root, 'software', releases.echo!.hash);
    expect(await readFile(path.join(built, '.pledger-built'), 'utf8')).toMatch(/^\d{4}-/);
    expect((await stat(path.join(built, 'parts', 'tool', 'tool.sh'))).mode & 0o111).not.toBe(0);
    const log = await readFile(path.join(built, 'build.log'), 'utf8');
    expect(log).toMatch(new RegExp(`building in .*/software/\\.build-${releases.echo!.hash}-[^/]+/parts/tool for ${built}/parts/tool with HOME=.*\\.build-`));
    expect((await readdir(path.join(config.root, 'software'))).sort()).toEqual([releases.echo!.hash]);

    expect(eventsOf('software.built').map((e) => 'software' in e && e.software)).toEqual([releases.echo!.hash]);
    expect(eventsOf('software.error')).toHaveLength(2);
  });

  it('does nothing when everything is built', async () => {
    master.state.software = [supply('echo')];
    const downloads = master.hits['GET /api/v1/node/software/:hash'];
    const events = master.events.length;
    expect(await installSoftware(config, silentLogger)).toEqual({ results: [{ item: 'echo@1.0.0', status: 'unchanged' }], offline: false });
    expect(master.hits['GET /api/v1/node/software/:hash']).toBe(downloads);
    expect(master.hits['POST /api/v1/node/events']).toBe(1);
    expect(master.events).toHaveLength(events);
  });

  it('deploys instances, keeps parameters as data, and reports each failure clearly', async () => {
    place('part0', instance('i-web', 'echo', { parameters: { greeting: '{{ 7*7 }} {% include "software.yaml" %}' } }));
    place('part1', instance('i-broken', 'echo', { softwareType: 'broken' }));
    place('part2', instance('i-silent', 'echo', { softwareType: 'silent' }));
    place('part3', instance('i-waiting', 'forged'));
    const { results, offline } = await processInstances(config, silentLogger);
    expect(offline).toBe(false);
    expect(results.map((r) => [r.item, r.status])).toEqual([
      ['part0 (title of i-web)', 'done'],
      ['part1 (title of i-broken)', 'failed'],
      ['part2 (title of i-silent)', 'failed'],
      ['part3 (title of i-waiting)', 'failed'],
    ]);
    expect(results[1]!.message).toBe('cannot deploy: etc/broken.conf (from templates/broken.njk), line 2: {{ parameters.nope }} is undefined');
    expect(results[2]!.message).toMatch(/promise listening: cannot connect to 127\.45\.\d+\.3:\d+/);
    expect(results[3]!.message).toBe('software forged@1.0.0 not built yet');

    const [started] = eventsOf('instance.started', 'part0');
    const connection = started && 'connection' in started ? started.connection! : {};
    expect(connection.url).toBe(`http://${config.ipBase}:${config.portBase}/`);
    expect(connection.password).toMatch(/^[A-Za-z0-9_-]{32}$/);
    expect(connection.tool).toBe(path.join(config.root, 'software', releases.echo!.hash, 'parts', 'tool', 'tool.sh'));
    expect(await (await fetch(connection.url!)).text()).toBe('{{ 7*7 }} {% include "software.yaml" %}');
    expect(await readFile(path.join(config.root, 'partitions', 'part0', '.pledger', 'secrets.json'), 'utf8')).toContain(connection.password);

    expect(eventsOf('instance.deployed').map((e) => 'partition' in e && e.partition)).toEqual(['part0', 'part2']);
    expect(eventsOf('instance.error').map((e) => 'partition' in e && e.partition)).toEqual(['part1', 'part2', 'part3']);
    // A broken promise kills nothing: the service stays up to be debugged.
    expect(await isAlive((await services('part2')).idle!)).toBe(true);
    expect(await readdir(path.join(config.root, 'partitions', 'part1'))).not.toContain('etc');
  });

  it('changes nothing and reports nothing when nothing changed', async () => {
    const events = master.events.length;
    const pid = (await services('part0')).web!.pid;
    const { results } = await processInstances(config, silentLogger);
    expect(results.map((r) => r.status)).toEqual(['unchanged', 'failed', 'failed', 'failed']);
    expect(master.events).toHaveLength(events);
    expect(master.notModified).toBeGreaterThanOrEqual(1);
    expect((await services('part0')).web!.pid).toBe(pid);
  });

  it('restarts a service that died, and only that one', async () => {
    const before = (await services('part0')).web!;
    process.kill(-before.pid, 'SIGKILL');
    while (await isAlive(before)) await new Promise((resolve) => setTimeout(resolve, 20));
    const { results } = await processInstances(config, silentLogger);
    expect(results[0]).toEqual({ item: 'part0 (title of i-web)', status: 'done', message: 'restarted web' });
    const after = (await services('part0')).web!;
    expect(after.pid).not.toBe(before.pid);
    expect(await isAlive(after)).toBe(true);
    expect(await (await fetch(`http://${config.ipBase}:${config.portBase}/`)).text()).toContain('{{ 7*7 }}');
  });

  it('stops an instance once, and destroys it once', async () => {
    const web = (await services('part0')).web!;
    place('part0', instance('i-web', 'echo', { state: 'stopped', serial: 2 }));
    expect((await processInstances(config, silentLogger)).results[0]).toMatchObject({ status: 'done', message: 'stopped' });
    expect(await isAlive(web)).toBe(false);
    expect((await processInstances(config, silentLogger)).results[0]!.status).toBe('unchanged');
    expect(eventsOf('instance.stopped')).toHaveLength(1);

    place('part0', instance('i-web', 'echo', { state: 'destroyed', serial: 3 }));
    expect((await processInstances(config, silentLogger)).results[0]).toMatchObject({ status: 'done', message: 'destroyed' });
    expect(await readdir(path.join(config.root, 'partitions', 'part0'))).toEqual([]);
    expect((await processInstances(config, silentLogger)).results[0]!.status).toBe('unchanged');
    expect(eventsOf('instance.destroyed', 'part0')).toHaveLength(1);

    place('part0', null);
    const { results } = await processInstances(config, silentLogger);
    expect(results.map((r) => r.item)).not.toContain('part0 (title of i-web)');
    expect(await readPartitionState(config.root, 'part0')).toBeUndefined();
    expect(eventsOf('instance.destroyed', 'part0')).toHaveLength(1);
  });

  it('wipes a partition whose instance vanished from the desired state', async () => {
    const idle = (await services('part2')).idle!;
    place('part2', null);
    const { results } = await processInstances(config, silentLogger);
    expect(results.find((r) => r.item === 'part2')).toEqual({ item: 'part2', status: 'done', message: 'destroyed' });
    expect(await isAlive(idle)).toBe(false);
    expect(await readdir(path.join(config.root, 'partitions', 'part2'))).toEqual([]);
    expect(eventsOf('instance.destroyed', 'part2')).toHaveLength(1);
  });

  it('builds and runs the hello release of this repository', async () => {
    const dir = path.join(import.meta.dirname, '..', 'software-releases', 'hello');
    const hash = await hashDirectory(dir);
    releases.hello = { dir, hash };
    master.archives.set(hash, await packSoftware(dir));
    master.state.software.push(supply('hello'));
    expect((await installSoftware(config, silentLogger)).results.find((r) => r.item === 'hello@1.0.0')?.status).toBe('done');
    place('part2', instance('i-hello', 'hello', { parameters: { greeting: 'Hi {{ there }}' } }));
    const { results } = await processInstances(config, silentLogger);
    expect(results.find((r) => r.item.startsWith('part2'))).toEqual({ item: 'part2 (title of i-hello)', status: 'done' });
    const [started] = eventsOf('instance.started', 'part2');
    const url = started && 'connection' in started ? started.connection!.url! : '';
    expect(await (await fetch(url)).text()).toContain('Hi {{ there }}');
  });

  it('keeps converging without its master, and delivers its events when the master is back', async () => {
    place('part1', instance('i-broken', 'echo', { softwareType: 'broken', state: 'stopped', serial: 2 }));
    await installSoftware(config, silentLogger); // pulls and saves the new desired state
    const port = Number(new URL(master.url).port);
    const { state, archives } = master;
    await master.close();

    expect(await installSoftware(config, silentLogger)).toEqual({
      results: [
        { item: 'echo@1.0.0', status: 'unchanged' },
        { item: 'hello@1.0.0', status: 'unchanged' },
      ],
      offline: true,
    });
    const offline = await processInstances(config, silentLogger);
    expect(offline.offline).toBe(true);
    expect(offline.results.find((r) => r.item.startsWith('part1'))).toMatchObject({ status: 'done', message: 'stopped' });
    expect(await readFile(path.join(config.root, 'state', 'outbox.jsonl'), 'utf8')).toContain('instance.stopped');

    master = await startFakeMaster('node-secret', port);
    Object.assign(master, { state, archives });
    const online = await processInstances(config, silentLogger);
    expect(online.offline).toBe(false);
    expect(master.events.map((e) => e.type)).toEqual(['instance.stopped']);
    expect(await readFile(path.join(config.root, 'state', 'outbox.jsonl'), 'utf8')).toBe('');
  });

  it('fails with MASTER_UNREACHABLE when it has never seen a desired state', async () => {
    const lonely = { ...config, root: path.join(scratch, 'lonely'), masterUrl: 'http://127.0.0.1:9' };
    await expect(processInstances(lonely, silentLogger)).rejects.toMatchObject({ code: 'MASTER_UNREACHABLE' });
  });
});
