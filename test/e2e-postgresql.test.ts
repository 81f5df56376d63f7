/**
 * The bundled `postgresql` release end to end: PostgreSQL from Debian's binary
 * packages, initialized and run by the node agent as an ordinary user, used with a
 * real psql and the credentials the instance publishes; its data survives a stop and
 * a start of the instance.
 */
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InstanceView, NodeView } from '../protocol/api.js';
import type { RunReport } from '../slave/result.js';
import { startNodeFixture, type NodeFixture } from './helpers/node-fixture.js';
import { pledger, processesMentioning } from './helpers/processes.js';

describe('postgresql from Debian packages: psql with the published credentials, data kept across stop and start', () => {
  let f: NodeFixture;
  let psqlPath = '';
  const info = async () => (await pledger(['info', 'db', '--json'], { env: f.asUser })).json<InstanceView>();
  const psql = async (sql: string) => {
    const c = (await info()).connection as Record<string, string>;
    const result = await execa(psqlPath, ['-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-h', c.host!, '-p', c.port!, '-U', c.user!, '-d', c.database!, '-c', sql], {
      env: { PGPASSWORD: c.password!, PGCONNECT_TIMEOUT: '5' },
      extendEnv: false,
      reject: false,
      timeout: 20_000,
    });
    return { exitCode: result.exitCode, stdout: String(result.stdout).trim(), stderr: String(result.stderr).trim() };
  };

  beforeAll(async () => {
    f = await startNodeFixture('edge-db', '127.47.0.1');
  }, 60_000);
  afterAll(async () => {
    await f?.close();
  });

  it('builds PostgreSQL from Debian packages as an ordinary user', async () => {
    expect((await pledger(['supply', 'postgresql', f.nodeName], { env: f.asAdmin })).exitCode).toBe(0);
    const run = await f.node('software');
    expect(run.json<RunReport>().results, run.stderr).toEqual([expect.objectContaining({ item: 'postgresql@15', status: 'done' })]);
    const nodes = (await pledger(['node', 'list', '--json'], { env: f.asAdmin })).json<NodeView[]>();
    const hash = nodes[0]!.software.find((s) => s.name === 'postgresql')!.hash;
    psqlPath = path.join(f.root, 'software', hash, 'parts', 'postgresql', 'pledger', 'usr', 'lib', 'postgresql', '15', 'bin', 'psql');
  }, 600_000);

  it('initializes a server as the node user and answers a SELECT with the published credentials', async () => {
    const requested = await pledger(['request', 'db', 'postgresql', '--parameters', 'user=shop', '--parameters', 'database=orders', '--json'], { env: f.asUser });
    expect(requested.exitCode, requested.stderr).toBe(0);
    const run = await f.node('instance');
    expect(run.exitCode, run.stdout + run.stderr).toBe(0);
    const view = await info();
    expect(view).toMatchObject({ status: 'started', ready: true });
    const c = view.connection as Record<string, string>;
    expect(c).toMatchObject({ user: 'shop', database: 'orders', host: '127.47.0.1' });
    expect(c.url).toBe(`postgresql://shop:${c.password}@${c.host}:${c.port}/orders`);

    expect(await psql('SELECT 6 * 7')).toMatchObject({ exitCode: 0, stdout: '42' });
    expect(await psql("SELECT current_user || '@' || current_database()")).toMatchObject({ stdout: 'shop@orders' });
    for (const p of processesMentioning('postgres').filter((p) => p.cmdline.includes(f.root))) expect(p.uid).toBe(f.agent.uid);
  }, 180_000);

  it('refuses a wrong password', async () => {
    const c = (await info()).connection as Record<string, string>;
    const result = await execa(psqlPath, ['-X', '-h', c.host!, '-p', c.port!, '-U', 'shop', '-d', 'orders', '-c', 'SELECT 1'], {
      env: { PGPASSWORD: 'wrong' },
      extendEnv: false,
      reject: false,
    });
    expect(result.exitCode).not.toBe(0);
    expect(String(result.stderr)).toMatch(/password authentication failed/);
  });

  it('keeps its data across a stop and a start of the instance', async () => {
    expect(await psql("CREATE TABLE kept (note text); INSERT INTO kept VALUES ('written before the stop')")).toMatchObject({ exitCode: 0 });
    expect((await pledger(['request', 'db', 'postgresql', '--parameters', 'user=shop', '--parameters', 'database=orders', '--state', 'stopped'], { env: f.asUser })).exitCode).toBe(0);
    expect((await f.node('instance')).exitCode).toBe(0);
    expect(await info()).toMatchObject({ status: 'stopped' });
    expect((await psql('SELECT 1')).exitCode).not.toBe(0);

    expect((await pledger(['request', 'db', 'postgresql', '--parameters', 'user=shop', '--parameters', 'database=orders', '--state', 'started'], { env: f.asUser })).exitCode).toBe(0);
    const run = await f.node('instance');
    expect(run.exitCode, run.stdout + run.stderr).toBe(0);
    expect(await info()).toMatchObject({ status: 'started', ready: true });
    expect(await psql('SELECT note FROM kept')).toMatchObject({ exitCode: 0, stdout: 'written before the stop' });
  }, 180_000);
});
