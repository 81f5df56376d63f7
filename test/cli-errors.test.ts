/**
 * Bad input through the real CLI and a real master process: each gets a clear message
 * on stderr, the exit code of its kind, and changes nothing in the ledger.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { InstanceView } from '../protocol/api.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freshDatabase, type TestDatabase } from './helpers/databases.js';
import { accountEnv, expectLedgerUnchanged, pledger, PROJECT, type RunningMaster, startMaster } from './helpers/processes.js';

describe('the CLI facing bad input', () => {
  let db: TestDatabase;
  let master: RunningMaster;
  let asAdmin: Record<string, string>;
  let asAlice: Record<string, string>;
  let asBob: Record<string, string>;

  const expectUnchanged = (action: () => Promise<void>) => expectLedgerUnchanged(db.url, action);

  beforeAll(async () => {
    db = await freshDatabase('sqlite');
    master = await startMaster(db.url);
    asAdmin = { PLEDGER_MASTER_URL: master.url, PLEDGER_TOKEN: master.adminToken };
    asAlice = await accountEnv(master, 'alice');
    asBob = await accountEnv(master, 'bob');
    expect((await pledger(['request', 'mine', 'hello'], { env: asAlice })).exitCode).toBe(0);
  });
  afterAll(async () => {
    await master?.stop();
    await db?.drop();
  });

  it('names an unknown software release', async () => {
    await expectUnchanged(async () => {
      const result = await pledger(['request', 'db', 'nosuch'], { env: asAlice });
      expect(result.exitCode).toBe(4);
      expect(result.stderr).toBe('error: no software release nosuch is published\nhint: list the software releases with `pledger software list`');
    });
  });

  it('prints the schema message for parameters that break it', async () => {
    await expectUnchanged(async () => {
      const result = await pledger(['request', 'greet', 'hello', '--parameters', 'greeting=', 'colour=red'], { env: asAlice });
      expect(result.exitCode).toBe(2);
      expect(result.stderr).toMatch(/invalid parameters for hello@1\.0\.0 default: .*must NOT have additional properties \(colour\)/);
      const json = await pledger(['request', 'greet', 'hello', '--parameters', 'greeting:=42', '--json'], { env: asAlice });
      expect(JSON.parse(json.stderr)).toMatchObject({ error: { code: 'INVALID_PARAMETERS', message: expect.stringMatching(/greeting must be string/) } });
      const notPair = await pledger(['request', 'greet', 'hello', '--parameters', 'greeting'], { env: asAlice });
      expect(notPair.stderr).toMatch(/expected KEY=VALUE or KEY:=JSON/);
    });
  });

  it("never shows or changes another user's instance", async () => {
    await expectUnchanged(async () => {
      for (const args of [['info', 'mine'], ['destroy', 'mine'], ['info', 'mine', '--history']]) {
        const result = await pledger(args, { env: asBob });
        expect(result.exitCode).toBe(4);
        expect(result.stderr).toMatch(/you have no instance named "mine"/);
      }
      expect((await pledger(['list', '--json'], { env: asBob })).json()).toEqual([]);
    });
    expect((await pledger(['info', 'mine', '--json'], { env: asAlice })).json<InstanceView>().state).toBe('started');
  });

  it('refuses operator commands to a user, and unknown tokens', async () => {
    await expectUnchanged(async () => {
      const forbidden = await pledger(['node', 'register', 'sneaky'], { env: asBob });
      expect(forbidden.exitCode).toBe(3);
      expect(forbidden.stderr).toMatch(/only an operator/);
      const forged = await pledger(['list'], { env: { ...asBob, PLEDGER_TOKEN: 'plg_u_forged' } });
      expect(forged.exitCode).toBe(3);
      expect(forged.stderr).toMatch(/this API token is not valid/);
    });
  });

  it('answers a malformed body with 400 and a message', async () => {
    await expectUnchanged(async () => {
      const response = await fetch(`${master.url}/api/v1/instances/x`, {
        method: 'PUT',
        headers: { authorization: `Bearer ${asAlice.PLEDGER_TOKEN}`, 'content-type': 'application/json' },
        body: '{"software": "hello", ',
      });
      expect(response.status).toBe(400);
      expect(await response.json()).toMatchObject({ error: { code: 'BAD_REQUEST', message: expect.stringMatching(/JSON/) } });
    });
  });

  it('prints its version, as package.json gives it', async () => {
    const { version } = JSON.parse(readFileSync(path.join(PROJECT, 'package.json'), 'utf8')) as { version: string };
    const run = await pledger(['--version']);
    expect(run.exitCode).toBe(0);
    expect(run.stdout.trim()).toBe(version);
  });

  it('says when the master is missing', async () => {
    const result = await pledger(['list', '--master', 'http://127.0.0.1:9'], { env: asAlice });
    expect(result.exitCode).toBe(6);
    expect(result.stderr).toMatch(/^error: cannot reach the master at http:\/\/127\.0\.0\.1:9: .*\nhint: is the master running\?/);
    const none = await pledger(['list'], { env: { PLEDGER_TOKEN: 'x' } });
    expect(none.exitCode).toBe(2);
    expect(none.stderr).toMatch(/no master given/);
  });

  it('refuses a node credential used for another node, changing nothing', async () => {
    const register = async (name: string) => (await pledger(['node', 'register', name, '--json'], { env: asAdmin })).json<{ credential: string }>().credential;
    const [a, b] = [await register('node-a'), await register('node-b')];
    const nodeCall = (credential: string, method: string, url: string, body?: unknown) =>
      fetch(`${master.url}${url}`, {
        method,
        headers: { authorization: `Bearer ${credential}`, ...(body ? { 'content-type': 'application/json' } : {}) },
        body: body ? JSON.stringify(body) : undefined,
      });
    await nodeCall(a, 'PUT', '/api/v1/node/partitions', { partitions: [{ reference: 'part0', ip: '127.44.0.1', ports: { first: 40000, last: 40009 } }] });
    await expectUnchanged(async () => {
      const response = await nodeCall(b, 'POST', '/api/v1/node/events', {
        events: [{ id: 'forged-event-1', at: new Date().toISOString(), type: 'instance.destroyed', partition: 'part0', instance: 'x', serial: 1 }],
      });
      expect(response.status).toBe(403);
      expect(((await response.json()) as { error: { message: string } }).error.message).toBe('partition part0 is not a partition of node node-b');
    });
  });
});
