/**
 * The bundled `redis` release end to end: built from Debian's binary packages by the
 * node agent running as an ordinary user, deployed by a real master process through
 * the real CLI, and used with redis-cli (itself from the built part) and the password
 * the instance publishes.
 */
import { readlinkSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InstanceView, NodeView } from '../protocol/api.js';
import type { RunReport } from '../slave/result.js';
import { freshDatabase, type TestDatabase } from './helpers/databases.js';
import { asAccount, createCustomer, pledger, processesMentioning, type RunningMaster, startMaster, startNode, type TestNode } from './helpers/processes.js';

describe('redis from Debian packages, from supply to SET and GET with the published password', () => {
  let db: TestDatabase;
  let master: RunningMaster;
  let edge: TestNode;
  let asAlice: Record<string, string>;
  let asAdmin: Record<string, string>;

  const node = (command: string) => edge.run(command);
  const info = async () => (await pledger(['info', 'cache', '--json'], { env: asAlice })).json<InstanceView>();
  const redisCli = async (args: string[], password?: string) => {
    const cli = path.join(edge.root, 'software', releaseHash, 'parts', 'redis', 'pledger', 'bin', 'redis-cli');
    const result = await execa(cli, args, { reject: false, timeout: 10_000, env: password ? { REDISCLI_AUTH: password } : {}, extendEnv: false });
    return { exitCode: result.exitCode, stdout: String(result.stdout).trim(), stderr: String(result.stderr).trim() };
  };
  let releaseHash = '';

  beforeAll(async () => {
    db = await freshDatabase('sqlite');
    master = await startMaster(db.url);
    asAdmin = asAccount(master, master.adminToken);
    asAlice = await createCustomer(master, 'alice');
    edge = await startNode(master, 'edge-redis', { partitions: 1, ipBase: '127.44.0.1' });
  }, 60_000);

  afterAll(async () => {
    if (edge) for (const p of processesMentioning(edge.root)) process.kill(p.pid, 'SIGKILL');
    await master?.stop();
    await db?.drop();
  });

  it('builds redis from Debian packages as an ordinary user, into a shared part', async () => {
    expect(edge.agent.uid === 0).toBe(false);
    expect((await pledger(['supply', 'redis', 'edge-redis'], { env: asAdmin })).exitCode).toBe(0);
    const run = await node('software');
    expect(run.stderr).not.toMatch(/"level":"error"/);
    expect(run.json<RunReport>().results).toEqual([expect.objectContaining({ item: 'redis@7.0.15-2', status: 'done' })]);
    // Off a terminal (cron), progress comes as JSON lines, one per part and step.
    const events = run.stderr.split('\n').filter(Boolean).map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(events).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ msg: 'building part', software: 'redis', part: 'redis', progress: '1/1' }),
        expect.objectContaining({ msg: 'part built', software: 'redis', part: 'redis', progress: '1/1', seconds: expect.any(Number) }),
      ]),
    );
    const nodes = (await pledger(['node', 'list', '--json'], { env: asAdmin })).json<NodeView[]>();
    const supplied = nodes[0]!.software.find((s) => s.name === 'redis')!;
    expect(supplied.status).toBe('built');
    releaseHash = supplied.hash;
    // The release links its part; the part lives in the node's content-addressed store.
    const link = readlinkSync(path.join(edge.root, 'software', releaseHash, 'parts', 'redis'));
    expect(path.dirname(link)).toBe(path.join(edge.root, 'parts'));
    expect(realpathSync(path.join(edge.root, 'software', releaseHash, 'parts', 'redis', 'usr', 'bin', 'redis-server'))).toContain(link);
  }, 600_000);

  it('keeps the supplied release and its part at prune', async () => {
    const pruned = await node('prune');
    expect(pruned.exitCode, pruned.stderr).toBe(0);
    expect(pruned.json()).toMatchObject({ removed: [], kept: { software: 1, parts: 1 }, offline: false });
  });

  it('deploys an instance that answers PING and keeps a value set with the published password', async () => {
    const requested = await pledger(['request', 'cache', 'redis', '--parameters', 'maxmemory=32mb', '--json'], { env: asAlice });
    expect(requested.exitCode).toBe(0);
    const run = await node('instance');
    expect(run.exitCode).toBe(0);
    const view = await info();
    expect(view).toMatchObject({ status: 'started', ready: true });
    const { host, port, password, url } = view.connection as Record<string, string>;
    expect(url).toBe(`redis://default:${password}@${host}:${port}`);
    expect(password).toMatch(/^[A-Za-z0-9_-]{32}$/);

    expect(await redisCli(['-h', host!, '-p', port!, 'PING'], password)).toMatchObject({ stdout: 'PONG' });
    expect(await redisCli(['-h', host!, '-p', port!, 'SET', 'greeting', 'bonjour'], password)).toMatchObject({ stdout: 'OK' });
    expect(await redisCli(['-h', host!, '-p', port!, 'GET', 'greeting'], password)).toMatchObject({ stdout: 'bonjour' });
    expect(await redisCli(['-h', host!, '-p', port!, 'CONFIG', 'GET', 'maxmemory'], password)).toMatchObject({ stdout: `maxmemory\n${32 * 1024 * 1024}` });
  }, 120_000);

  it('publishes a URL that redis-cli takes as it is, the part\'s and the system\'s', async () => {
    const { url } = (await info()).connection as Record<string, string>;
    // redis-cli warns on stderr about a password on its command line, whatever the URL.
    const part = await redisCli(['-u', url!, 'GET', 'greeting']);
    expect(part).toMatchObject({ exitCode: 0, stdout: 'bonjour' });
    expect(part.stderr).not.toMatch(/AUTH|WRONGPASS/);
    const system = await execa('/usr/bin/redis-cli', ['-u', url!, 'PING'], { reject: false, timeout: 10_000 });
    expect({ exitCode: system.exitCode, stdout: String(system.stdout).trim() }).toEqual({ exitCode: 0, stdout: 'PONG' });
    expect(String(system.stderr)).not.toMatch(/AUTH|WRONGPASS/);
  });

  it('refuses a client without the password', async () => {
    const { host, port } = (await info()).connection as Record<string, string>;
    const anonymous = await redisCli(['-h', host!, '-p', port!, 'GET', 'greeting']);
    expect(`${anonymous.stdout}${anonymous.stderr}`).toMatch(/NOAUTH/);
  });

  it('runs redis as the node user, from the part', () => {
    const servers = processesMentioning('redis-server').filter((p) => p.cmdline.includes(edge.root));
    expect(servers.length).toBeGreaterThan(0);
    for (const p of servers) expect(p.uid).toBe(edge.agent.uid);
  });
});
