/**
 * The node agent against a real master (in this process, over a fresh SQLite file):
 * building releases, deploying instances, keeping their promises, repairing, stopping
 * and destroying them, and carrying on without the master. What the node reported is
 * read back through the master's own API: instance histories and the node list.
 */
import { readdir, readFile, realpath, rm, stat } from 'node:fs/promises';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serveMaster, initMaster, type RunningMaster } from '../master/server.js';
import type { InstanceRequest, SoftwareView } from '../protocol/api.js';
import { MasterClient } from '../protocol/client.js';
import { packSoftware } from '../protocol/software-archive.js';
import { resolveNodeConfig, type NodeConfig } from '../slave/config.js';
import { formatNode } from '../slave/format.js';
import { processInstances } from '../slave/instance.js';
import { silentLogger } from '../slave/log.js';
import { readPartitionState } from '../slave/partition-state.js';
import { isAlive, stopProcessGroup, type ServiceRecord } from '../slave/processes.js';
import { installSoftware } from '../slave/software.js';
import { SupervisorClient } from '../slave/supervisor-client.js';
import { freshDatabase, type TestDatabase } from './helpers/databases.js';
import { portBase } from './helpers/processes.js';
import { writeTree } from './helpers/tree.js';

const NODE = 'agent-node';
const PARTITIONS = ['part0', 'part1', 'part2', 'part3'];

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
    parameters: schema/default.json
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

const RELEASES = {
  echo: {
    'software.yaml': ECHO_YAML,
    'schema/default.json': JSON.stringify({
      type: 'object',
      additionalProperties: false,
      properties: { greeting: { type: 'string', maxLength: 200, default: 'hello' } },
    }),
    'src/tool.sh': '#!/bin/sh\necho tool\n',
    'templates/greeting.txt.njk': '{{ parameters.greeting }}',
    'templates/server.cjs.njk': SERVER,
    'templates/broken.njk': 'ok = {{ partition.ip }}\nvalue = {{ parameters.nope }}\n',
  },
  fails: {
    'software.yaml': "name: fails\nversion: 1.0.0\nparts:\n  x:\n    build:\n      - [/bin/sh, -c, 'echo first line; echo the-reason >&2; exit 3']\nsoftware-types:\n  default: {}\n",
  },
  forged: {
    'software.yaml': 'name: forged\nversion: 1.0.0\nsoftware-types:\n  default: {}\n',
  },
};
const HELLO_DIR = path.join(import.meta.dirname, '..', 'software-releases', 'hello');

let scratch: string;
let db: TestDatabase;
let master: RunningMaster;
let masterPort: number;
let operator: MasterClient;
let alice: MasterClient;
let credential: string;
let config: NodeConfig;
const hashes: Record<string, string> = {};

/** Every request the master answered, as `METHOD /path STATUS`, release hashes shown as :hash. */
const answered: string[] = [];

/** Serves the test database, on `port` when given, and notes every request it answers. */
async function startMaster(port = 0): Promise<void> {
  master = await serveMaster({ database: db.url, host: '127.0.0.1', port, softwareDir: null });
  masterPort = Number(new URL(master.url).port);
  master.app.server.on('request', (request, response) => {
    const route = `${request.method} ${(request.url ?? '').split('?')[0]!.replace(/[0-9a-f]{64}/, ':hash')}`;
    response.on('finish', () => answered.push(`${route} ${response.statusCode}`));
  });
}

/** The requests the master answered while `run` ran, and what `run` returned. */
async function watching<T>(run: () => Promise<T>): Promise<{ result: T; requests: string[] }> {
  const from = answered.length;
  const result = await run();
  return { result, requests: answered.slice(from) };
}

const DESIRED_STATE_UNCHANGED = 'GET /api/v1/node/desired-state 304';

async function publish(dir: string): Promise<SoftwareView> {
  return operator.software.publish(await packSoftware(dir));
}

const supply = (software: string, state: 'available' | 'destroyed' = 'available') =>
  operator.supplies.set({ software, node: NODE, state });

const request = (title: string, body: InstanceRequest) => alice.instances.request(title, body);
const info = (title: string) => alice.instances.get(title);
const nodeView = async () => (await operator.nodes.list()).find((n) => n.name === NODE)!;

/** What the node reported about an instance, in order, as `KIND SERIAL`. */
async function reported(title: string): Promise<string[]> {
  const history = await alice.instances.history(title);
  // Promise states are reported beside the lifecycle; test/node-promises.test.ts checks them.
  return history
    .filter((m) => m.actor === `node:${NODE}` && m.kind !== 'instance.promises')
    .map((m) => `${m.kind} ${(m.data as { serial: number }).serial}`);
}

async function services(reference: string): Promise<Record<string, ServiceRecord>> {
  return (await readPartitionState(config.root, reference))?.services ?? {};
}

async function allServices(): Promise<Record<string, Record<string, ServiceRecord>>> {
  return Object.fromEntries(await Promise.all(PARTITIONS.map(async (reference) => [reference, await services(reference)] as const)));
}

/** The events waiting in the node's outbox, oldest first, one JSON line each. */
const outbox = async () => {
  const file = path.join(config.root, 'state', 'node.db');
  const sqlite = new SqliteDatabase(file, { readonly: true, fileMustExist: true });
  try {
    return (sqlite.prepare('SELECT body FROM outbox ORDER BY seq').all() as { body: string }[]).map((row) => `${row.body}\n`).join('');
  } finally {
    sqlite.close();
  }
};
/** The events the node set aside, oldest first. */
const setAside = () => {
  const sqlite = new SqliteDatabase(path.join(config.root, 'state', 'node.db'), { readonly: true, fileMustExist: true });
  try {
    return (sqlite.prepare('SELECT body FROM set_aside ORDER BY seq').all() as { body: string }[]).map((row) => JSON.parse(row.body) as { type: string });
  } finally {
    sqlite.close();
  }
};
const sqliteFile = () => db.url.replace(/^sqlite:/, '');

beforeAll(async () => {
  // The master logs every request at info; its warnings and errors are enough here.
  process.env.PLEDGER_LOG_LEVEL ??= 'warn';
  scratch = mkdtempSync(path.join(tmpdir(), 'pledger-agent-'));
  db = await freshDatabase('sqlite');
  const { token } = await initMaster(db.url, 'admin');
  await startMaster();
  operator = new MasterClient({ url: master.url, token });
  alice = new MasterClient({ url: master.url, token: (await operator.accounts.create({ name: 'alice' })).token });
  credential = (await operator.nodes.register({ name: NODE })).credential;
  config = resolveNodeConfig({
    masterUrl: master.url,
    credential,
    root: path.join(scratch, 'node'),
    partitions: PARTITIONS.length,
    ipBase: `127.45.${10 + Math.floor(Math.random() * 200)}.1`,
    portBase: portBase(),
    // An event the master refuses is set aside at its first refusal here: the retries
    // before that are the outbox's own tests.
    outbox: { setAsideAfter: 1 },
  });
  for (const [name, files] of Object.entries(RELEASES)) hashes[name] = (await publish(writeTree(files, path.join(scratch, 'releases', name)))).hash;
});

afterAll(async () => {
  if (config) {
    await new SupervisorClient(config.root).shutdown(true).catch(() => {});
    for (const reference of PARTITIONS) {
      for (const record of Object.values(await services(reference))) await stopProcessGroup(record, 500).catch(() => {});
    }
  }
  await master?.close();
  await db?.drop();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

describe('node agent, against a real master', () => {
  it('formats the node and tells the master its partitions', async () => {
    const partitions = await formatNode(config, silentLogger);
    expect(partitions.map((p) => p.reference)).toEqual(PARTITIONS);
    expect(await nodeView()).toMatchObject({ partitions: 4, freePartitions: 4, lastSeenAt: expect.any(String) });
  });

  it('builds the supplied releases, refusing a forged one, reporting a failed build with its log', async () => {
    // A compromised store: the master serves echo's archive under forged's hash.
    const sqlite = new SqliteDatabase(sqliteFile());
    try {
      const echo = sqlite.prepare('SELECT archive FROM software_archives WHERE hash = ?').get(hashes.echo) as { archive: Buffer };
      expect(sqlite.prepare('UPDATE software_archives SET archive = ? WHERE hash = ?').run(echo.archive, hashes.forged).changes).toBe(1);
    } finally {
      sqlite.close();
    }
    for (const name of ['echo', 'fails', 'forged']) await supply(name);

    const { results, offline } = await installSoftware(config, silentLogger);
    expect(offline).toBe(false);
    expect(results.map((r) => [r.item, r.status])).toEqual([
      ['echo@1.0.0', 'done'],
      ['fails@1.0.0', 'failed'],
      ['forged@1.0.0', 'failed'],
    ]);
    expect(results[1]!.message).toMatch(/exited with code 3[\s\S]*first line\nthe-reason/);
    expect(results[2]!.message).toBe(`refused: the release downloaded has the content hash ${hashes.echo}, not ${hashes.forged}`);

    const built = path.join(config.root, 'software', hashes.echo!);
    expect(await readFile(path.join(built, '.pledger-built'), 'utf8')).toMatch(/^\d{4}-/);
    expect((await stat(path.join(built, 'parts', 'tool', 'tool.sh'))).mode & 0o111).not.toBe(0);
    const log = await readFile(path.join(built, 'build.log'), 'utf8');
    // The part is built in its content-addressed directory, which the release links to.
    const partDir = await realpath(path.join(built, 'parts', 'tool'));
    expect(path.dirname(partDir)).toBe(path.join(config.root, 'parts'));
    expect(log).toContain(`building in ${partDir} for ${partDir} with HOME=${config.root}/parts/.build-`);
    expect((await readdir(path.join(config.root, 'software'))).sort()).toEqual([hashes.echo]);

    // What the node said of each build is shown by the master.
    expect((await nodeView()).software.map((s) => [s.name, s.status, s.message])).toEqual([
      ['echo', 'built', null],
      ['fails', 'error', results[1]!.message],
      ['forged', 'error', results[2]!.message],
    ]);
  });

  it('downloads nothing and reports nothing when everything it is asked for is built', async () => {
    await supply('fails', 'destroyed');
    await supply('forged', 'destroyed');
    const { result, requests } = await watching(() => installSoftware(config, silentLogger));
    expect(result).toEqual({
      results: [
        { item: 'echo@1.0.0', status: 'unchanged' },
        { item: 'fails@1.0.0', status: 'unchanged' },
        { item: 'forged@1.0.0', status: 'unchanged' },
      ],
      offline: false,
    });
    expect(requests).toEqual(['GET /api/v1/node/desired-state 200']);
  });

  it('deploys instances, keeps parameters as data, and reports each failure clearly', async () => {
    // hello is supplied, but the node has not built it yet.
    await publish(HELLO_DIR);
    await supply('hello');
    expect((await request('web', { software: 'echo', parameters: { greeting: '{{ 7*7 }} {% include "software.yaml" %}' } })).partition).toBe('part0');
    expect((await request('broken', { software: 'echo', softwareType: 'broken' })).partition).toBe('part1');
    expect((await request('silent', { software: 'echo', softwareType: 'silent' })).partition).toBe('part2');
    expect((await request('hello', { software: 'hello', parameters: { greeting: 'Hi {{ there }}' } })).partition).toBe('part3');

    const { results, offline } = await processInstances(config, silentLogger);
    expect(offline).toBe(false);
    expect(results.map((r) => [r.item, r.status])).toEqual([
      ['part0 (web)', 'done'],
      ['part1 (broken)', 'failed'],
      ['part2 (silent)', 'failed'],
      ['part3 (hello)', 'failed'],
    ]);
    expect(results[1]!.message).toBe('cannot deploy: etc/broken.conf (from templates/broken.njk), line 2: {{ parameters.nope }} is undefined');
    expect(results[2]!.message).toMatch(/^promise listening: cannot connect to 127\.45\.\d+\.3:\d+/);
    expect(results[3]!.message).toBe('software hello@1.0.0 not built yet');

    const web = await info('web');
    expect(web).toMatchObject({ status: 'started', ready: true, message: null });
    expect(web.connection.url).toBe(`http://${config.ipBase}:${config.portBase}/`);
    expect(web.connection.password).toMatch(/^[A-Za-z0-9_-]{32}$/);
    expect(web.connection.tool).toBe(path.join(config.root, 'software', hashes.echo!, 'parts', 'tool', 'tool.sh'));
    expect(await (await fetch(web.connection.url!)).text()).toBe('{{ 7*7 }} {% include "software.yaml" %}');
    expect(await readFile(path.join(config.root, 'partitions', 'part0', '.pledger', 'secrets.json'), 'utf8')).toContain(web.connection.password);

    for (const [title, result] of [['broken', results[1]!], ['silent', results[2]!], ['hello', results[3]!]] as const) {
      expect(await info(title)).toMatchObject({ status: 'error', ready: false, message: result.message });
    }
    expect(await reported('web')).toEqual(['instance.deployed 1', 'instance.started 1']);
    expect(await reported('broken')).toEqual(['instance.error 1']);
    expect(await reported('silent')).toEqual(['instance.deployed 1', 'instance.error 1']);
    expect(await reported('hello')).toEqual(['instance.error 1']);

    // A broken promise kills nothing: the service stays up to be debugged.
    expect(await isAlive((await services('part2')).idle!)).toBe(true);
    expect(await readdir(path.join(config.root, 'partitions', 'part1'))).not.toContain('etc');
  });

  it('changes nothing, starts nothing and reports nothing when nothing changed', async () => {
    const before = await allServices();
    const { result, requests } = await watching(() => processInstances(config, silentLogger));
    expect(result.results.map((r) => r.status)).toEqual(['unchanged', 'failed', 'failed', 'failed']);
    expect(requests).toEqual([DESIRED_STATE_UNCHANGED]);
    expect(await allServices()).toEqual(before);
  });

  it('has the supervisor restart a service that died, at once and only that one; the next run has nothing to do', async () => {
    const before = (await services('part0')).web!;
    const idle = (await services('part2')).idle!;
    const supervisor = new SupervisorClient(config.root);
    process.kill(-before.pid, 'SIGKILL');
    let restarted: number | null = null;
    for (let i = 0; i < 100 && (restarted === null || restarted === before.pid); i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      restarted = (await supervisor.status()).part0!.services.web!.pid;
    }
    expect(restarted).not.toBe(before.pid);
    expect((await supervisor.status()).part0!.services.web).toMatchObject({ state: 'running', restarts: 1 });
    for (let i = 0; i < 50; i++) {
      if ((await fetch(`http://${config.ipBase}:${config.portBase}/`).catch(() => null))?.ok) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(await (await fetch(`http://${config.ipBase}:${config.portBase}/`)).text()).toContain('{{ 7*7 }}');
    expect((await supervisor.status()).part2!.services.idle!.pid).toBe(idle.pid);

    const { result, requests } = await watching(() => processInstances(config, silentLogger));
    expect(result.results[0]).toEqual({ item: 'part0 (web)', status: 'unchanged' });
    // Still started, as the master knows: nothing to tell it.
    expect(requests).toEqual([DESIRED_STATE_UNCHANGED]);
  });

  it('stops an instance once, and destroys it once', async () => {
    const web = (await services('part0')).web!;
    expect(await request('web', { software: 'echo', state: 'stopped' })).toMatchObject({ serial: 2 });
    expect((await processInstances(config, silentLogger)).results[0]).toEqual({ item: 'part0 (web)', status: 'done', message: 'stopped' });
    expect(await isAlive(web)).toBe(false);
    expect(await info('web')).toMatchObject({ state: 'stopped', status: 'stopped', ready: true });
    expect((await processInstances(config, silentLogger)).results[0]).toEqual({ item: 'part0 (web)', status: 'unchanged' });
    expect(await reported('web')).toEqual(['instance.deployed 1', 'instance.started 1', 'instance.stopped 2']);

    expect(await alice.instances.destroy('web')).toMatchObject({ state: 'destroyed', serial: 3 });
    expect((await processInstances(config, silentLogger)).results[0]).toEqual({ item: 'part0 (web)', status: 'done', message: 'destroyed' });
    expect(await readdir(path.join(config.root, 'partitions', 'part0'))).toEqual([]);
    // The report freed the partition on the master.
    expect(await info('web')).toMatchObject({ status: 'destroyed', partition: null });
    expect(await nodeView()).toMatchObject({ freePartitions: 1 });

    const { result, requests } = await watching(() => processInstances(config, silentLogger));
    expect(result.results.map((r) => r.item)).toEqual(['part1 (broken)', 'part2 (silent)', 'part3 (hello)']);
    expect(await readPartitionState(config.root, 'part0')).toBeUndefined();
    expect(requests).toEqual(['GET /api/v1/node/desired-state 200']);
    expect(await reported('web')).toEqual(['instance.deployed 1', 'instance.started 1', 'instance.stopped 2', 'instance.destroyed 3']);
  });

  it('builds and runs the hello release of this repository once it is built', async () => {
    const software = await installSoftware(config, silentLogger);
    expect(software.results.find((r) => r.item === 'hello@1.0.0')).toEqual({ item: 'hello@1.0.0', status: 'done' });
    expect((await nodeView()).software.find((s) => s.name === 'hello')).toMatchObject({ status: 'built' });

    const { results } = await processInstances(config, silentLogger);
    expect(results.find((r) => r.item.startsWith('part3'))).toEqual({ item: 'part3 (hello)', status: 'done' });
    const hello = await info('hello');
    expect(hello).toMatchObject({ status: 'started', ready: true, message: null });
    expect(await (await fetch(hello.connection.url!)).text()).toBe('Hi {{ there }}\n');
    expect(await reported('hello')).toEqual(['instance.error 1', 'instance.deployed 1', 'instance.started 1']);
  });

  it('wipes a partition whose instance left it unseen, and delivers the other events when the master refuses that report', async () => {
    const idle = (await services('part2')).idle!;
    // The master frees a partition once its node reports the instance destroyed. Here that
    // report comes from elsewhere with the node's credential, so this agent never saw it.
    await alice.instances.destroy('silent');
    const asNode = new MasterClient({ url: master.url, token: credential });
    const desired = await asNode.node.desiredState();
    const silent = desired.partitions.find((p) => p.reference === 'part2')!.instance!;
    const at = new Date().toISOString();
    await asNode.node.events({ events: [{ id: 'destroyed-elsewhere', at, type: 'instance.destroyed', partition: 'part2', instance: silent.id, serial: 2 }] });
    expect(await info('silent')).toMatchObject({ status: 'destroyed', partition: null });
    // Meanwhile hello gets a new greeting: its events travel with the agent's report on part2.
    await request('hello', { software: 'hello', parameters: { greeting: 'Bonjour' } });

    const { result, requests } = await watching(() => processInstances(config, silentLogger));
    expect(result.offline).toBe(false);
    expect(result.results).toEqual([
      { item: 'part1 (broken)', status: 'failed', message: expect.stringMatching(/^cannot deploy/) },
      { item: 'part2', status: 'done', message: 'destroyed' },
      { item: 'part3 (hello)', status: 'done' },
    ]);
    expect(await isAlive(idle)).toBe(false);
    expect(await readdir(path.join(config.root, 'partitions', 'part2'))).toEqual([]);
    expect(await readPartitionState(config.root, 'part2')).toBeUndefined();

    // The batch of three is refused for the event about a partition no longer the
    // instance's, then sent again in halves: the half with it is refused, that event alone
    // is refused and set aside, the other event of that half and the other half applied.
    expect(requests.filter((r) => r.startsWith('POST /api/v1/node/events'))).toEqual([
      'POST /api/v1/node/events 403',
      'POST /api/v1/node/events 403',
      'POST /api/v1/node/events 403',
      'POST /api/v1/node/events 200',
      'POST /api/v1/node/events 200',
    ]);
    expect(requests.filter((r) => r.startsWith('PUT /api/v1/node/set-aside'))).toEqual(['PUT /api/v1/node/set-aside 200']);
    expect(await outbox()).toBe('');
    expect(setAside().map((event) => event.type)).toEqual(['instance.destroyed']);
    expect(await reported('silent')).toEqual(['instance.deployed 1', 'instance.error 1', 'instance.destroyed 2']);
    expect(await reported('hello')).toEqual(['instance.error 1', 'instance.deployed 1', 'instance.started 1', 'instance.deployed 2', 'instance.started 2']);
    expect(await (await fetch((await info('hello')).connection.url!)).text()).toBe('Bonjour\n');
  });

  it('keeps converging without its master, and delivers its events once when the master is back', async () => {
    await request('broken', { software: 'echo', state: 'stopped' });
    await request('hello', { software: 'hello', parameters: { greeting: 'Hallo' } });
    await installSoftware(config, silentLogger); // pulls and saves the new desired state
    const url = (await info('hello')).connection.url!;
    await master.close();

    expect(await installSoftware(config, silentLogger)).toEqual({
      results: [
        { item: 'echo@1.0.0', status: 'unchanged' },
        { item: 'fails@1.0.0', status: 'unchanged' },
        { item: 'forged@1.0.0', status: 'unchanged' },
        { item: 'hello@1.0.0', status: 'unchanged' },
      ],
      offline: true,
    });
    const offline = await processInstances(config, silentLogger);
    expect(offline).toEqual({
      results: [
        { item: 'part1 (broken)', status: 'done', message: 'stopped' },
        { item: 'part3 (hello)', status: 'done' },
      ],
      offline: true,
    });
    expect(await (await fetch(url)).text()).toBe('Hallo\n');
    const waiting = (await outbox()).trim().split('\n').map((line) => (JSON.parse(line) as { type: string }).type);
    expect(waiting).toEqual(['instance.stopped', 'instance.deployed', 'instance.promises', 'instance.started']);

    await startMaster(masterPort);
    const online = await watching(() => processInstances(config, silentLogger));
    expect(online.result).toEqual({
      results: [
        { item: 'part1 (broken)', status: 'unchanged' },
        { item: 'part3 (hello)', status: 'unchanged' },
      ],
      offline: false,
    });
    expect(online.requests).toEqual([DESIRED_STATE_UNCHANGED, 'POST /api/v1/node/events 200']);
    expect(await outbox()).toBe('');
    expect(await info('broken')).toMatchObject({ status: 'stopped', serial: 2 });
    expect(await info('hello')).toMatchObject({ status: 'started', serial: 3, ready: true });

    const again = await watching(() => processInstances(config, silentLogger));
    expect(again.requests).toEqual([DESIRED_STATE_UNCHANGED]);
    expect(await reported('broken')).toEqual(['instance.error 1', 'instance.stopped 2']);
    expect((await reported('hello')).slice(-2)).toEqual(['instance.deployed 3', 'instance.started 3']);
  });

  it('fails with MASTER_UNREACHABLE when it has never seen a desired state', async () => {
    const lonely = { ...config, root: path.join(scratch, 'lonely'), masterUrl: 'http://127.0.0.1:9' };
    await expect(processInstances(lonely, silentLogger)).rejects.toMatchObject({ code: 'MASTER_UNREACHABLE' });
  });
});
