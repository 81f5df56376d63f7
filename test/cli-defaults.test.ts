/**
 * The defaults docs/cli.md gives, through the real CLI with the options left out: where
 * `master init` and `master serve` keep their data, where the master listens and what it
 * publishes at start, and where the quickstart keeps everything. Each runs with a home
 * of its own. Port 8600, the documented default, may be taken on a shared machine: the
 * tests that need it say so as a skip.
 */
import { existsSync, mkdtempSync, readdirSync, statSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { afterAll, describe, expect, it } from 'vitest';
import type { InstanceView } from '../protocol/api.js';
import { CLI, pledger, processesMentioning } from './helpers/processes.js';

const DEFAULT_PORT = 8600;

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** `pledger master serve ARGS` with `env`; resolves once it says where it listens. */
async function serve(args: string[], env: Record<string, string>): Promise<{ url: string; child: ResultPromise }> {
  const child = execa(process.execPath, [CLI, 'master', 'serve', ...args], { reject: false, env: { PLEDGER_LOG_LEVEL: 'info', ...env } });
  const url = await new Promise<string>((resolve, reject) => {
    let seen = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      seen += chunk.toString();
      const match = /"url":"(http:\/\/[^"]+)"/.exec(seen);
      if (match) resolve(match[1]!);
    });
    void child.then(() => reject(new Error(`master exited:\n${seen}${String(child.stderr ?? '')}`)));
  });
  return { url, child };
}

describe('documented defaults', () => {
  const homes: string[] = [];
  const started: ResultPromise[] = [];
  const home = () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'pledger-home-'));
    homes.push(dir);
    return dir;
  };

  afterAll(async () => {
    for (const child of started) {
      child.kill('SIGTERM');
      await child;
    }
    for (const dir of homes) for (const p of processesMentioning(dir)) process.kill(p.pid, 'SIGKILL');
  });

  it('master init keeps the database in ~/.pledger/master, names the operator admin, and refuses to run twice (exit 5)', async () => {
    const HOME = home();
    const init = await pledger(['master', 'init', '--json'], { env: { HOME } });
    expect(init.exitCode, init.stderr).toBe(0);
    expect(init.json()).toEqual({ admin: 'admin', token: expect.stringMatching(/^plg_u_/) as string, database: `sqlite:${HOME}/.pledger/master/master.db` });
    expect(existsSync(path.join(HOME, '.pledger', 'master', 'master.db'))).toBe(true);
    const again = await pledger(['master', 'init'], { env: { HOME } });
    expect(again.exitCode).toBe(5);
    expect(again.stderr).toMatch(/is already initialized\nhint: /);
    const rebuilt = await pledger(['master', 'rebuild', '--json'], { env: { HOME } });
    expect(rebuilt.exitCode, rebuilt.stderr).toBe(0);
    expect(rebuilt.json<{ replayed: number }>().replayed).toBeGreaterThan(0);
  });

  it('master init and serve take $PLEDGER_MASTER_DIR as the data folder', async () => {
    const HOME = home();
    const PLEDGER_MASTER_DIR = path.join(HOME, 'elsewhere');
    const init = await pledger(['master', 'init', '--json'], { env: { HOME, PLEDGER_MASTER_DIR } });
    expect(init.json<{ database: string }>().database).toBe(`sqlite:${PLEDGER_MASTER_DIR}/master.db`);
    const master = await serve(['--port', String(await freePort())], { HOME, PLEDGER_MASTER_DIR });
    started.push(master.child);
    const me = await pledger(['whoami'], { env: { PLEDGER_MASTER_URL: master.url, PLEDGER_TOKEN: init.json<{ token: string }>().token } });
    expect(me.stdout).toBe('admin (admin)');
    expect(existsSync(path.join(HOME, '.pledger'))).toBe(false);
  });

  it('master init takes $PLEDGER_DATABASE_URL when --database is left out', async () => {
    const HOME = home();
    const PLEDGER_DATABASE_URL = `sqlite:${path.join(HOME, 'chosen.db')}`;
    const init = await pledger(['master', 'init', '--json'], { env: { HOME, PLEDGER_DATABASE_URL } });
    expect(init.json<{ database: string }>().database).toBe(PLEDGER_DATABASE_URL);
    expect(existsSync(path.join(HOME, 'chosen.db'))).toBe(true);
  });

  it('master serve publishes the bundled releases at start, and none with --no-software-dir', async () => {
    const HOME = home();
    const init = await pledger(['master', 'init', '--json'], { env: { HOME } });
    const token = init.json<{ token: string }>().token;
    const bundled = await serve(['--port', String(await freePort())], { HOME });
    started.push(bundled.child);
    const list = await pledger(['software', 'list', '--json'], { env: { PLEDGER_MASTER_URL: bundled.url, PLEDGER_TOKEN: token } });
    expect([...new Set(list.json<{ name: string }[]>().map((s) => s.name))].sort()).toEqual(['frontend', 'hello', 'postgresql', 'redis', 'static-site', 'webapp']);

    const emptyHome = home();
    const emptyToken = (await pledger(['master', 'init', '--json'], { env: { HOME: emptyHome } })).json<{ token: string }>().token;
    const bare = await serve(['--port', String(await freePort()), '--no-software-dir'], { HOME: emptyHome });
    started.push(bare.child);
    expect((await pledger(['software', 'list', '--json'], { env: { PLEDGER_MASTER_URL: bare.url, PLEDGER_TOKEN: emptyToken } })).json()).toEqual([]);
  });

  it('login keeps the master and token in ~/.config/pledger/client.json, mode 0600, for the next commands', async () => {
    const HOME = home();
    const token = (await pledger(['master', 'init', '--json'], { env: { HOME } })).json<{ token: string }>().token;
    const master = await serve(['--port', String(await freePort())], { HOME });
    started.push(master.child);
    // The CLI as a user runs it: no PLEDGER_CONFIG, no PLEDGER_MASTER_URL nor PLEDGER_TOKEN.
    const cli = (...args: string[]) => execa(process.execPath, [CLI, ...args], { reject: false, extendEnv: false, env: { HOME, PATH: process.env.PATH ?? '/usr/bin:/bin' } });
    const login = await cli('login', '--master', master.url, '--token', token);
    expect(login.exitCode, String(login.stderr)).toBe(0);
    const file = path.join(HOME, '.config', 'pledger', 'client.json');
    expect(login.stdout).toBe(`logged in to ${master.url} as admin (admin); settings kept in ${file}`);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect((await cli('whoami')).stdout).toBe('admin (admin)');
  });

  it('master serve listens on 127.0.0.1:8600 when told nothing', async (context) => {
    if (!(await portFree(DEFAULT_PORT))) return context.skip(`port ${DEFAULT_PORT} is taken on this machine`);
    const HOME = home();
    const token = (await pledger(['master', 'init', '--json'], { env: { HOME } })).json<{ token: string }>().token;
    const master = await serve([], { HOME });
    started.push(master.child);
    expect(master.url).toBe(`http://127.0.0.1:${DEFAULT_PORT}`);
    expect((await pledger(['whoami'], { env: { PLEDGER_MASTER_URL: master.url, PLEDGER_TOKEN: token } })).exitCode).toBe(0);
    master.child.kill('SIGTERM');
    expect((await master.child).exitCode).toBe(0);
  });

  it('the quickstart keeps everything in ~/.pledger/quickstart, and --down needs only the same options', async () => {
    const HOME = home();
    const port = String(await freePort());
    const up = await pledger(['quickstart', '--port', port, '--json'], { env: { HOME }, timeoutMs: 300_000 });
    expect(up.exitCode, up.stderr).toBe(0);
    const output = up.json<{ master: string; instance: InstanceView; answer: string }>();
    expect(output).toMatchObject({ master: `http://127.0.0.1:${port}`, instance: { title: 'hello-world', ready: true }, answer: 'Hello from Pledger!\n' });
    const dir = path.join(HOME, '.pledger', 'quickstart');
    expect(readdirSync(dir).sort()).toEqual(['master', 'node', 'node.json', 'operator.json']);
    expect(existsSync(path.join(dir, 'master', 'master.pid'))).toBe(true);
    const down = await pledger(['quickstart', '--port', port, '--down'], { env: { HOME } });
    expect(down.exitCode, down.stderr).toBe(0);
    expect(await portFree(Number(port))).toBe(true);
  });
});
