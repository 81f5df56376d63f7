/**
 * The exit codes docs/cli.md documents, through the real CLI: node runs with their
 * master away (before and after a first contact), a master URL without its scheme,
 * and `--wait` on an instance no node can take.
 */
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freshDatabase, type TestDatabase } from './helpers/databases.js';
import { agentUser, type AgentUser, asAccount, createCustomer, expectLedgerUnchanged, pledger, type RunningMaster, startMaster } from './helpers/processes.js';

/** A port of 127.0.0.1 that nothing listens on (taken, then given back). */
function closedPort(): Promise<number> {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

describe('exit codes', () => {
  let db: TestDatabase;
  let master: RunningMaster;
  let asAdmin: Record<string, string>;
  let asAlice: Record<string, string>;
  let agent: AgentUser;
  let away: string;

  const node = (config: string, ...args: string[]) => pledger(['node', ...args, '--config', config], { user: agent, timeoutMs: 120_000 });
  const configure = async (name: string, masterUrl: string, credential: string) => {
    const config = path.join(agent.home, `${name}.json`);
    const configured = await node(config, 'configure', '--master', masterUrl, '--credential', credential, '--root', path.join(agent.home, name));
    expect(configured.exitCode).toBe(0);
    return config;
  };

  beforeAll(async () => {
    db = await freshDatabase('sqlite');
    master = await startMaster(db.url);
    asAdmin = asAccount(master, master.adminToken);
    asAlice = await createCustomer(master, 'alice');
    agent = agentUser();
    away = `http://127.0.0.1:${await closedPort()}`;
  });

  afterAll(async () => {
    await master?.stop();
    await db?.drop();
  });

  it('node report: 0 with the master there and nothing to send, 3 with the master away and nothing to send', async () => {
    const registered = await pledger(['node', 'register', 'edge-report', '--json'], { env: asAdmin });
    const credential = registered.json<{ credential: string }>().credential;
    const here = await configure('report-here', master.url, credential);
    const reachable = await node(here, 'report', '--json');
    expect(reachable.exitCode).toBe(0);
    expect(reachable.json()).toEqual({ sent: 0, pending: 0, offline: false });

    const there = await configure('report-away', away, credential);
    const unreachable = await node(there, 'report');
    expect(unreachable.exitCode).toBe(3);
    expect(unreachable.stdout).toBe('0 event(s) sent, 0 waiting: the master is unreachable');
  });

  it('node instance and node software: 6 with the master away before any desired state was saved, 3 once one was', async () => {
    const registered = await pledger(['node', 'register', 'edge-away', '--json'], { env: asAdmin });
    const credential = registered.json<{ credential: string }>().credential;
    const config = await configure('away', away, credential);
    for (const cycle of ['instance', 'software']) {
      const run = await node(config, cycle);
      expect(run.exitCode).toBe(6);
      expect(run.stderr).toMatch(new RegExp(`^error: cannot reach the master at ${away.replaceAll('.', '\\.')}: .*\\nhint: is the master running\\?`, 'm'));
    }
    // Once a desired state is saved, the node works from it and says the master was away.
    const here = path.join(agent.home, 'away-here.json');
    expect((await node(here, 'configure', '--master', master.url, '--credential', credential, '--root', path.join(agent.home, 'away'))).exitCode).toBe(0);
    expect((await node(here, 'format')).exitCode).toBe(0);
    expect((await node(here, 'instance')).exitCode).toBe(0);
    for (const cycle of ['instance', 'software']) {
      const run = await node(config, cycle, '--json');
      expect(run.exitCode).toBe(3);
      expect(run.json()).toMatchObject({ offline: true });
    }
  });

  it('refuses a master URL without its scheme as bad input (2), wherever it comes from, changing nothing', async () => {
    const registered = await pledger(['node', 'register', 'edge-typo', '--json'], { env: asAdmin });
    await expectLedgerUnchanged(db.url, async () => {
      const port = new URL(master.url).port;
      const fromEnvironment = await pledger(['request', 'cache', 'hello'], { env: { ...asAlice, PLEDGER_MASTER_URL: `127.0.0.1:${port}` } });
      expect(fromEnvironment.exitCode).toBe(2);
      expect(fromEnvironment.stderr).toBe(`error: PLEDGER_MASTER_URL 127.0.0.1:${port} is not an http:// or https:// URL\nhint: write the master's URL with its scheme (e.g. http://127.0.0.1:${port})`);
      const fromFlag = await pledger(['list', '--master', `localhost:${port}`], { env: asAlice });
      expect(fromFlag.exitCode).toBe(2);
      expect(fromFlag.stderr).toMatch(/^error: --master localhost:\d+ is not an http:\/\/ or https:\/\/ URL\nhint: /);
      const login = await pledger(['login', '--master', `127.0.0.1:${port}`, '--token', master.adminToken]);
      expect(login.exitCode).toBe(2);
      const configured = await pledger(['node', 'configure', '--credential', registered.json<{ credential: string }>().credential, '--root', path.join(agent.home, 'typo'), '--config', path.join(agent.home, 'typo.json')], {
        user: agent,
        env: { PLEDGER_MASTER_URL: `127.0.0.1:${port}` },
      });
      expect(configured.exitCode).toBe(2);
      expect(configured.stderr).toMatch(/^error: PLEDGER_MASTER_URL 127\.0\.0\.1:\d+ is not an http:\/\/ or https:\/\/ URL\nhint: write the master's URL with its scheme/);
    });
  });

  it('--wait on an instance no node can take: exit 7, saying what is missing rather than blaming a node agent', async () => {
    const waited = await pledger(['request', 'lonely', 'hello', '--wait', '--timeout', '1'], { env: asAlice });
    expect(waited.exitCode).toBe(7);
    expect(waited.stderr).toMatch(/^error: instance "lonely" is not started after 1 s \(status: unallocated, .+\)\nhint: no node can take it yet: /);
    expect(waited.stderr).not.toMatch(/node agent/);
  });
});
