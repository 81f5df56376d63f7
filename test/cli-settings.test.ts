/**
 * Where the CLI finds its master and token (flags, environment, the file `pledger
 * login` writes) and how it reads parameters.
 */
import { mkdtempSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InstanceView } from '../protocol/api.js';
import { freshDatabase, type TestDatabase } from './helpers/databases.js';
import { pledger, startMaster, type RunningMaster } from './helpers/processes.js';

describe('the CLI settings', () => {
  let db: TestDatabase;
  let master: RunningMaster;
  let token: string;
  const dir = mkdtempSync(path.join(tmpdir(), 'pledger-cli-'));
  const configFile = path.join(dir, 'client.json');

  beforeAll(async () => {
    db = await freshDatabase('sqlite');
    master = await startMaster(db.url);
    token = (await pledger(['account', 'create', 'carol', '--json'], { env: { PLEDGER_MASTER_URL: master.url, PLEDGER_TOKEN: master.adminToken } })).json<{
      token: string;
    }>().token;
  });
  afterAll(async () => {
    await master?.stop();
    await db?.drop();
  });

  it('keeps what login checked in a file only its owner can read, and uses it', async () => {
    const refused = await pledger(['login', '--master', master.url, '--token', 'plg_u_wrong'], { env: { PLEDGER_CONFIG: configFile } });
    expect(refused.exitCode).toBe(3);
    const login = await pledger(['login', '--master', master.url, '--token', token], { env: { PLEDGER_CONFIG: configFile } });
    expect(login.exitCode).toBe(0);
    expect(login.stdout).toMatch(/logged in to .* as carol \(user\)/);
    expect(statSync(configFile).mode & 0o777).toBe(0o600);
    const whoami = await pledger(['whoami'], { env: { PLEDGER_CONFIG: configFile } });
    expect(whoami.stdout).toBe('carol (user)');
  });

  it('lets the environment override the file, and flags override both', async () => {
    const viaEnv = await pledger(['whoami'], { env: { PLEDGER_CONFIG: configFile, PLEDGER_TOKEN: master.adminToken } });
    expect(viaEnv.stdout).toBe('admin (admin)');
    const viaFlag = await pledger(['whoami', '--token', token], { env: { PLEDGER_CONFIG: configFile, PLEDGER_TOKEN: master.adminToken } });
    expect(viaFlag.stdout).toBe('carol (user)');
  });

  it('reads parameters from a file, overridden by --parameters pairs', async () => {
    const file = path.join(dir, 'parameters.json');
    writeFileSync(file, JSON.stringify({ greeting: 'from the file' }));
    const env = { PLEDGER_CONFIG: configFile };
    const fromFile = await pledger(['request', 'filed', 'hello', '--parameters-file', file, '--json'], { env });
    expect(fromFile.json<InstanceView>().parameters).toEqual({ greeting: 'from the file' });
    const overridden = await pledger(['request', 'filed', 'hello', '--parameters-file', file, '--parameters', 'greeting=from a pair', '--json'], { env });
    expect(overridden.json<InstanceView>().parameters).toEqual({ greeting: 'from a pair' });
    writeFileSync(file, '[1, 2]');
    const notObject = await pledger(['request', 'filed', 'hello', '--parameters-file', file], { env });
    expect(notObject.exitCode).toBe(2);
    expect(notObject.stderr).toMatch(/must hold a JSON object/);
  });
});
