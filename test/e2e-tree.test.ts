/**
 * A sub-instance end to end, with real parts: a master process, the real CLI, the node
 * agent as an ordinary user. `duo` runs a hello server whose greeting names the URL of
 * a hello child it requests (with a greeting computed from its own title and secret):
 * it waits for the child, is deployed once the child published, drops the child when
 * its parameters say so, and takes the child with it when destroyed.
 */
import { copyFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InstanceView } from '../protocol/api.js';
import { freshDatabase, type TestDatabase } from './helpers/databases.js';
import { accountEnv, pledger, PROJECT, processesMentioning, startMaster, startNode, type RunningMaster, type TestNode } from './helpers/processes.js';
import { writeTree } from './helpers/tree.js';

/** hello, plus a child hello: the parent's greeting shows the child's URL. */
function duoRelease(): string {
  const dir = writeTree({
    'software.yaml': [
      'name: duo',
      'version: 1.0.0',
      'parts:',
      '  hello:',
      '    files: [hello.c]',
      '    build:',
      '      - [cc, -O2, -o, hello, hello.c]',
      'software-types:',
      '  default:',
      '    parameters: schema.json',
      '    ports: [http]',
      '    secrets: [token]',
      '    requests:',
      '      child:',
      '        software: hello',
      '        when: "{{ parameters.with_child }}"',
      '        parameters:',
      '          greeting: "child of {{ instance.title }} with {{ secrets.token }}"',
      '    files:',
      '      etc/greeting.txt: greeting.njk',
      '    services:',
      '      hello: ["{{ parts.hello.path }}/hello", "{{ partition.ip }}", "{{ ports.http }}", "{{ partition.path }}/etc/greeting.txt"]',
      '    publish:',
      '      url: "http://{{ partition.ip }}:{{ ports.http }}/"',
      '      child-url: "{{ requests.child.connection.url if requests.child else \'\' }}"',
      '',
    ].join('\n'),
    'schema.json': JSON.stringify({ type: 'object', additionalProperties: false, properties: { with_child: { type: 'boolean', default: true } } }),
    'greeting.njk': '{% if requests.child %}parent of {{ requests.child.connection.url }}{% else %}alone{% endif %}\n',
  });
  copyFileSync(path.join(PROJECT, 'software-releases', 'hello', 'hello.c'), path.join(dir, 'hello.c'));
  return dir;
}

describe('a tree of instances, from one request', () => {
  let db: TestDatabase;
  let master: RunningMaster;
  let edge: TestNode;
  let asAlice: Record<string, string>;
  let asAdmin: Record<string, string>;

  const node = (command: string) => edge.run(command);
  const info = async (title: string) => (await pledger(['info', title, '--json'], { env: asAlice })).json<InstanceView>();
  const served = async (url: string) => (await fetch(url)).text();

  beforeAll(async () => {
    db = await freshDatabase('sqlite');
    master = await startMaster(db.url);
    asAdmin = { PLEDGER_MASTER_URL: master.url, PLEDGER_TOKEN: master.adminToken };
    asAlice = await accountEnv(master, 'alice');
    edge = await startNode(master, 'edge-t', { partitions: 3, ipBase: '127.47.0.1' });
    expect((await pledger(['software', 'publish', duoRelease()], { env: asAdmin })).exitCode).toBe(0);
    for (const software of ['hello', 'duo']) expect((await pledger(['supply', software, 'edge-t'], { env: asAdmin })).exitCode).toBe(0);
    expect((await node('software')).exitCode).toBe(0);
  });

  afterAll(async () => {
    if (edge) for (const p of processesMentioning(edge.root)) process.kill(p.pid, 'SIGKILL');
    await master?.stop();
    await db?.drop();
  });

  it('waits for the child it requested, and says so', async () => {
    expect((await pledger(['request', 'duo', 'duo'], { env: asAlice })).exitCode).toBe(0);
    expect((await node('instance')).exitCode).toBe(0);
    expect(await info('duo')).toMatchObject({ status: 'waiting', ready: false, message: expect.stringMatching(/^waiting for child \(duo\/child: allocated\)/) });
    expect(await info('duo/child')).toMatchObject({ parent: 'duo', root: 'duo', node: 'edge-t', status: 'allocated' });
  });

  it('deploys the child, then the parent with what the child published', async () => {
    expect((await node('instance')).exitCode).toBe(0);
    const child = await info('duo/child');
    expect(child).toMatchObject({ status: 'started', ready: true });
    // The child's parameters were computed on the node from the parent's title and secret.
    expect(child.parameters.greeting).toMatch(/^child of duo with [A-Za-z0-9_-]{32}$/);
    expect(await served(child.connection.url!)).toBe(`${child.parameters.greeting as string}\n`);

    expect((await node('instance')).exitCode).toBe(0);
    const parent = await info('duo');
    expect(parent).toMatchObject({ status: 'started', ready: true, connection: { 'child-url': child.connection.url } });
    expect(await served(parent.connection.url!)).toBe(`parent of ${child.connection.url}\n`);
  });

  it('shows the tree with each instance, its node, status and promises', async () => {
    const tree = await pledger(['info', 'duo', '--tree'], { env: asAlice });
    expect(tree.exitCode).toBe(0);
    const lines = tree.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^TITLE +SOFTWARE +STATE +STATUS +NODE +PROMISES/);
    expect(lines[1]).toMatch(/^duo +duo@1\.0\.0 +started +started \(ready\) +edge-t/);
    expect(lines[2]).toMatch(/^ {2}duo\/child +hello@[^ ]+ +started +started \(ready\) +edge-t +1 ok/);
  });

  it('leaves the whole tree alone on the next run', async () => {
    const run = await node('instance');
    expect(run.exitCode).toBe(0);
    const statuses = run.json<{ results: { status: string }[] }>().results.map((r) => r.status);
    expect(statuses.length).toBeGreaterThan(0);
    expect(statuses.filter((status) => status !== 'unchanged')).toEqual([]);
  });

  it('destroys the child once the parent no longer requests it', async () => {
    const childUrl = (await info('duo/child')).connection.url!;
    expect((await pledger(['request', 'duo', 'duo', '--parameters', 'with_child:=false'], { env: asAlice })).exitCode).toBe(0);
    expect((await node('instance')).exitCode).toBe(0);
    expect((await info('duo/child')).state).toBe('destroyed');
    expect((await node('instance')).exitCode).toBe(0);
    expect(await info('duo/child')).toMatchObject({ status: 'destroyed', partition: null });
    const parent = await info('duo');
    expect(parent).toMatchObject({ status: 'started', ready: true });
    expect(parent.connection['child-url']).toBeUndefined();
    expect(await served(parent.connection.url!)).toBe('alone\n');
    await expect(fetch(childUrl)).rejects.toThrow();
  });

  it('refuses to let the owner touch a child directly, changing nothing', async () => {
    expect((await pledger(['request', 'duo', 'duo', '--parameters', 'with_child:=true'], { env: asAlice })).exitCode).toBe(0);
    expect((await node('instance')).exitCode).toBe(0);
    const destroy = await pledger(['destroy', 'duo/child'], { env: asAlice });
    expect(destroy.exitCode).not.toBe(0);
    expect(destroy.stderr).toMatch(/sub-instance of "duo"/);
    expect((await info('duo/child')).state).toBe('started');
  });

  it('destroys the whole tree with its root: no process left', async () => {
    expect((await pledger(['destroy', 'duo'], { env: asAlice })).exitCode).toBe(0);
    expect((await node('instance')).exitCode).toBe(0);
    expect((await node('instance')).exitCode).toBe(0);
    expect(await info('duo')).toMatchObject({ status: 'destroyed' });
    expect(await info('duo/child')).toMatchObject({ status: 'destroyed' });
    expect(processesMentioning(path.join(edge.root, 'software'))).toEqual([]);
  });
});
