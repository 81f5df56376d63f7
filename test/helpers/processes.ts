/**
 * Real processes for end-to-end tests: a master on 127.0.0.1, the `pledger` CLI, and
 * an unprivileged user for the node agent when the tests run as root.
 */
import { execFileSync } from 'node:child_process';
import { chownSync, mkdtempSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Sqlite from 'better-sqlite3';
import { execa, type ResultPromise } from 'execa';
import { expect } from 'vitest';

export const PROJECT = path.resolve(import.meta.dirname, '..', '..');
export const CLI = path.join(PROJECT, 'dist', 'cli', 'main.js');

export interface RunResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  json<T = unknown>(): T;
}

export interface RunOptions {
  env?: Record<string, string>;
  user?: AgentUser;
  timeoutMs?: number;
}

/** Runs the real CLI; never throws on a non-zero exit. */
export async function pledger(args: string[], options: RunOptions = {}): Promise<RunResult> {
  const result = await execa(process.execPath, [CLI, ...args], {
    reject: false,
    env: { PLEDGER_CONFIG: '/nonexistent/pledger-client.json', ...options.env },
    extendEnv: !options.user,
    timeout: options.timeoutMs ?? 120_000,
    ...(options.user ? { uid: options.user.uid, gid: options.user.gid, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: options.user.home, ...options.env } } : {}),
  });
  return {
    exitCode: result.exitCode ?? -1,
    stdout: String(result.stdout),
    stderr: String(result.stderr),
    json: () => JSON.parse(String(result.stdout)),
  };
}

export interface RunningMaster {
  url: string;
  adminToken: string;
  database: string;
  process: ResultPromise;
  stop(): Promise<void>;
}

/** The environment of a CLI call made with `token` on `master`. */
export function asAccount(master: RunningMaster, token: string): Record<string, string> {
  return { PLEDGER_MASTER_URL: master.url, PLEDGER_TOKEN: token };
}

/** Creates the account `name` through the CLI, as the operator, and answers the environment to call as it. */
export async function createCustomer(master: RunningMaster, name: string): Promise<Record<string, string>> {
  const created = await pledger(['account', 'create', name, '--json'], { env: asAccount(master, master.adminToken) });
  if (created.exitCode !== 0) throw new Error(`account create ${name} failed: ${created.stderr}`);
  return asAccount(master, created.json<{ token: string }>().token);
}

/** Initializes `database` and serves it on a free port of 127.0.0.1. */
export async function startMaster(database: string): Promise<RunningMaster> {
  const init = await pledger(['master', 'init', '--database', database, '--json']);
  if (init.exitCode !== 0) throw new Error(`master init failed: ${init.stderr}`);
  return serveDatabase(database, init.json<{ token: string }>().token);
}

/** Serves a database initialized already (by another master, say) on a free port of 127.0.0.1. */
export async function serveDatabase(database: string, adminToken: string): Promise<RunningMaster> {
  const child = execa(process.execPath, [CLI, 'master', 'serve', '--database', database, '--host', '127.0.0.1', '--port', '0'], {
    reject: false,
    env: { PLEDGER_LOG_LEVEL: 'info' },
  });
  const url = await new Promise<string>((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => reject(new Error(`master did not start:\n${seen}`)), 30_000);
    child.stdout!.on('data', (chunk: Buffer) => {
      seen += chunk.toString();
      const match = /"url":"(http:\/\/127\.0\.0\.1:\d+)"/.exec(seen);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]!);
      }
    });
    void child.then(() => reject(new Error(`master exited:\n${seen}`)));
  });
  return {
    url,
    adminToken,
    database,
    process: child,
    stop: async () => {
      child.kill('SIGTERM');
      await child;
    },
  };
}

/** The environment that makes the CLI act as a new account of `master`. */
export async function accountEnv(master: RunningMaster, name: string): Promise<Record<string, string>> {
  const created = await pledger(['account', 'create', name, '--json'], { env: { PLEDGER_MASTER_URL: master.url, PLEDGER_TOKEN: master.adminToken } });
  if (created.exitCode !== 0) throw new Error(`account create ${name} failed: ${created.stderr}`);
  return { PLEDGER_MASTER_URL: master.url, PLEDGER_TOKEN: created.json<{ token: string }>().token };
}

/** How many movements the ledger of a SQLite master holds, read from its file. */
export function countMovements(sqliteUrl: string): number {
  const sqlite = new Sqlite(sqliteUrl.replace(/^sqlite:/, ''), { readonly: true });
  try {
    return (sqlite.prepare('select count(*) as n from movements').get() as { n: number }).n;
  } finally {
    sqlite.close();
  }
}

/** Runs `action` and checks that it recorded nothing in the ledger. */
export async function expectLedgerUnchanged(sqliteUrl: string, action: () => Promise<void>): Promise<void> {
  const before = countMovements(sqliteUrl);
  await action();
  expect(countMovements(sqliteUrl)).toBe(before);
}

export interface AgentUser {
  uid: number;
  gid: number;
  name: string;
  home: string;
}

/**
 * The user the node agent runs as: an ordinary account created for the tests when
 * they run as root, or the current user otherwise. Its home is a fresh folder.
 */
export function agentUser(): AgentUser {
  const home = mkdtempSync(path.join(tmpdir(), 'pledger-node-'));
  if (process.getuid!() !== 0) return { uid: process.getuid!(), gid: process.getgid!(), name: 'current', home };
  const name = 'pledger-agent';
  try {
    execFileSync('id', ['-u', name], { stdio: 'ignore' });
  } catch {
    execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', name]);
  }
  const uid = Number(execFileSync('id', ['-u', name]).toString().trim());
  const gid = Number(execFileSync('id', ['-g', name]).toString().trim());
  chownSync(home, uid, gid);
  return { uid, gid, name, home };
}

/** Processes whose executable or arguments mention `needle`, with their owner. */
export function processesMentioning(needle: string): { pid: number; uid: number; cmdline: string }[] {
  const found = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').replaceAll('\0', ' ');
      let exe = '';
      try {
        exe = readlinkSync(`/proc/${entry}/exe`);
      } catch {
        // not ours to read
      }
      if (!cmdline.includes(needle) && !exe.includes(needle)) continue;
      const uid = Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${entry}/status`, 'utf8'))![1]);
      found.push({ pid: Number(entry), uid, cmdline });
    } catch {
      // the process ended while we looked
    }
  }
  return found;
}

/** A port range nobody else in this test run uses. */
export function portBase(): number {
  return 20000 + Math.floor(Math.random() * 3000) * 10;
}

export interface TestNode {
  name: string;
  agent: AgentUser;
  /** The node's root folder and configuration file, in the agent user's home. */
  root: string;
  config: string;
  /** Runs `pledger node COMMAND --json` as the agent user. */
  run(command: string, timeoutMs?: number): Promise<RunResult>;
}

/**
 * Registers a node on `master`, configures it as the agent user with `partitions`
 * partitions from `ipBase`, and formats them.
 */
export async function startNode(master: RunningMaster, name: string, options: { partitions: number; ipBase: string }): Promise<TestNode> {
  const agent = agentUser();
  const root = path.join(agent.home, 'root');
  const config = path.join(agent.home, 'node.json');
  const registered = await pledger(['node', 'register', name, '--json'], { env: { PLEDGER_MASTER_URL: master.url, PLEDGER_TOKEN: master.adminToken } });
  if (registered.exitCode !== 0) throw new Error(`node register ${name} failed: ${registered.stderr}`);
  const configure = await pledger(
    ['node', 'configure', '--master', master.url, '--credential', registered.json<{ credential: string }>().credential, '--root', root, '--config', config,
      '--partitions', String(options.partitions), '--ip-base', options.ipBase, '--port-base', String(portBase())],
    { user: agent },
  );
  if (configure.exitCode !== 0) throw new Error(`node configure failed: ${configure.stderr}`);
  const run = (command: string, timeoutMs = 600_000) => pledger(['node', command, '--config', config, '--json'], { user: agent, timeoutMs });
  const formatted = await run('format');
  if (formatted.exitCode !== 0) throw new Error(`node format failed: ${formatted.stderr}`);
  return { name, agent, root, config, run };
}
