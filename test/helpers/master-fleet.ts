/**
 * Several real `pledger master serve` processes on one database, and for PostgreSQL a
 * real haproxy in front of them balancing round-robin, all on 127.0.0.1: what an
 * operator runs past one machine. Used by the concurrency tests and the request
 * benchmark, so it imports nothing from vitest.
 *
 * Every process it starts is bounded three ways, so that none outlives its test:
 * - `close()` kills them all (SIGKILL) and waits for each to exit;
 * - a fleet has a lifetime: past it, a timer kills every process of the fleet, so a
 *   test that hangs cannot leave masters behind once its own timeout is over;
 * - each child runs under `setpriv --pdeathsig KILL`, which execs it with a parent-death
 *   signal: if the test process itself dies (killed by its runner, crashed), the kernel
 *   kills its masters and its haproxy, which no exit handler could do.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { freshDatabase, type TestDatabase, type TestEngine } from './databases.js';

/** The checkout: found from here whether this file runs from test/ or, compiled, from dist/test/. */
export const PROJECT = findProject(import.meta.dirname);
const CLI = path.join(PROJECT, 'dist', 'cli', 'main.js');
const HAPROXY = '/usr/sbin/haproxy';

function findProject(from: string): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    if (existsSync(path.join(dir, 'package.json')) && existsSync(path.join(dir, 'scripts', 'pledger'))) return dir;
    if (path.dirname(dir) === dir) throw new Error(`no checkout above ${from}`);
  }
}

/** Every child any fleet of this process started and that has not exited yet. */
const living = new Set<ChildProcess>();
let exitHookInstalled = false;

function track(child: ChildProcess): void {
  living.add(child);
  child.once('exit', () => living.delete(child));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    // The last word of a process that ends normally: synchronous, so it runs even then.
    process.once('exit', () => {
      for (const c of living) killQuietly(c, 'SIGKILL');
    });
  }
}

function killQuietly(child: ChildProcess, signal: NodeJS.Signals): void {
  try {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
  } catch {
    // gone already
  }
}

/** Starts `command` so that it dies with this process; its pid is the command's own (setpriv execs it). */
function spawnBound(command: string, args: string[], env: Record<string, string> = {}): ChildProcess {
  const child = spawn('setpriv', ['--pdeathsig', 'KILL', '--', command, ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  track(child);
  return child;
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

/** Ends `child`: `signal` first, SIGKILL after `graceMs` if it is still there. */
async function end(child: ChildProcess, signal: NodeJS.Signals, graceMs: number): Promise<void> {
  killQuietly(child, signal);
  const timer = setTimeout(() => killQuietly(child, 'SIGKILL'), graceMs);
  await exited(child);
  clearTimeout(timer);
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

export interface FleetMaster {
  index: number;
  url: string;
  pid: number;
  /** Requests this master completed, counted from its log (zero when its log level hides them). */
  answered(): number;
  /** Lines of its log that are warnings or errors, and whatever it wrote to stderr. */
  problems(): string[];
  alive(): boolean;
  /** Sends the signal and waits for the process to exit (SIGKILL after 10 s for a SIGTERM). */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

export interface MasterFleet {
  engine: TestEngine;
  /** The database every master serves, for the test's own checks and `pledger master rebuild`. */
  database: string;
  adminToken: string;
  masters: FleetMaster[];
  /** Where clients go: the balancer when there is one, else the first master. */
  url: string;
  /** Every master's URL, for clients that balance by themselves. */
  urls: string[];
  balancerPid: number | null;
  /** Stops every master with SIGTERM, as an operator would, and waits for them. */
  stopMasters(): Promise<void>;
  /** Runs the CLI against the fleet's database (`master rebuild`, say); never throws on a non-zero exit. */
  cli(args: string[], timeoutMs?: number): { exitCode: number; stdout: string; stderr: string };
  /** Kills whatever is left (masters, balancer), then drops the database. Safe to call twice. */
  close(): Promise<void>;
}

export interface FleetOptions {
  engine: TestEngine;
  masters: number;
  /** Put a haproxy in front (the default on PostgreSQL with more than one master). */
  balancer?: boolean;
  /** Past this, every process of the fleet is killed whatever the test is doing. */
  lifetimeMs: number;
  /** PLEDGER_LOG_LEVEL of the masters: `info` logs every request (and lets `answered()` count them). */
  logLevel?: string;
  /** A database to serve instead of a fresh one (the fleet then leaves it in place at close). */
  database?: string;
  /** The operator token of `database` when it is initialized already: `master init` is then skipped. */
  adminToken?: string;
}

export async function startMasterFleet(options: FleetOptions): Promise<MasterFleet> {
  const testDb: TestDatabase | null = options.database ? null : await freshDatabase(options.engine);
  const database = options.database ?? testDb!.url;
  const children: ChildProcess[] = [];
  const work = mkdtempSync(path.join(tmpdir(), 'pledger-fleet-'));
  let closed = false;
  const killAll = () => {
    for (const child of children) killQuietly(child, 'SIGKILL');
  };
  const lifetime = setTimeout(killAll, options.lifetimeMs);
  // The timer must not keep a finished process alive by itself.
  lifetime.unref();

  const close = async () => {
    clearTimeout(lifetime);
    killAll();
    await Promise.all(children.map(exited));
    if (closed) return;
    closed = true;
    rmSync(work, { recursive: true, force: true });
    // pg's pool in a killed master may leave a backend a moment: the drop forces it out.
    await testDb?.drop();
  };

  try {
    let adminToken = options.adminToken;
    if (adminToken === undefined) {
      const init = runCli(['master', 'init', '--database', database, '--json'], 60_000);
      if (init.exitCode !== 0) throw new Error(`master init failed: ${init.stderr}`);
      adminToken = (JSON.parse(init.stdout) as { token: string }).token;
    }

    // One after the other: a SQLite file is migrated by the first, the others find it done.
    const masters: FleetMaster[] = [];
    for (let index = 0; index < options.masters; index++) {
      const master = await startOneMaster(index, database, options.logLevel ?? 'info');
      children.push(master.child);
      masters.push(master.view);
    }

    const wantBalancer = options.balancer ?? (options.engine === 'postgres' && options.masters > 1);
    let url = masters[0]!.url;
    let balancerPid: number | null = null;
    if (wantBalancer) {
      const balancer = await startHaproxy(work, masters.map((m) => m.url));
      children.push(balancer.child);
      url = balancer.url;
      balancerPid = balancer.child.pid!;
    }

    return {
      engine: options.engine,
      database,
      adminToken,
      masters,
      url,
      urls: masters.map((m) => m.url),
      balancerPid,
      stopMasters: async () => {
        await Promise.all(masters.map((m) => m.stop('SIGTERM')));
      },
      cli: runCli,
      close,
    };
  } catch (error) {
    await close();
    throw error;
  }
}

function runCli(args: string[], timeoutMs = 120_000): { exitCode: number; stdout: string; stderr: string } {
  try {
    const stdout = execFileSync(process.execPath, [CLI, ...args], {
      env: { ...process.env, PLEDGER_CONFIG: '/nonexistent/pledger-client.json' },
      timeout: timeoutMs,
      stdio: ['ignore', 'pipe', 'pipe'],
      maxBuffer: 64 * 1024 * 1024,
    }).toString();
    return { exitCode: 0, stdout, stderr: '' };
  } catch (error) {
    const e = error as { status?: number | null; stdout?: Buffer; stderr?: Buffer };
    return { exitCode: e.status ?? -1, stdout: String(e.stdout ?? ''), stderr: String(e.stderr ?? '') };
  }
}

async function startOneMaster(index: number, database: string, logLevel: string): Promise<{ child: ChildProcess; view: FleetMaster }> {
  const child = spawnBound(process.execPath, [CLI, 'master', 'serve', '--database', database, '--host', '127.0.0.1', '--port', '0', '--no-software-dir'], {
    PLEDGER_LOG_LEVEL: logLevel,
  });
  let answered = 0;
  const problems: string[] = [];
  let pending = '';
  let seen = '';
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`master ${index} did not start within 30 s:\n${seen}`)), 30_000);
    child.stdout!.on('data', (chunk: Buffer) => {
      pending += chunk.toString();
      const lines = pending.split('\n');
      pending = lines.pop()!;
      for (const line of lines) {
        if (seen.length < 20_000) seen += `${line}\n`;
        if (line.includes('"msg":"request completed"')) answered++;
        // pino levels: 40 warn, 50 error, 60 fatal. Kept bounded: a test reads the first few.
        else if (/"level":(4|5|6)0/.test(line) && problems.length < 200) problems.push(line);
        const match = /"url":"(http:\/\/127\.0\.0\.1:\d+)".*"msg":"master listening"/.exec(line);
        if (match) {
          clearTimeout(timer);
          resolve(match[1]!);
        }
      }
    });
    child.stderr!.on('data', (chunk: Buffer) => {
      if (problems.length < 200) problems.push(chunk.toString());
      if (seen.length < 20_000) seen += chunk.toString();
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`master ${index} exited (${code ?? signal}) before listening:\n${seen}`));
    });
  });
  return {
    child,
    view: {
      index,
      url,
      pid: child.pid!,
      answered: () => answered,
      problems: () => problems,
      alive: () => child.exitCode === null && child.signalCode === null,
      stop: (signal = 'SIGTERM') => end(child, signal, 10_000),
    },
  };
}

/**
 * haproxy in the foreground (-db), round-robin over the masters, per request (HTTP
 * mode balances each request, keep-alive or not). A master that stops answering TCP is
 * taken out within a few hundred ms by the health check, and a request whose connection
 * was refused is sent to another one (retries + redispatch): what a client sees of a
 * `kill -9` is at most the requests that were in flight on it.
 */
async function startHaproxy(work: string, backends: string[]): Promise<{ child: ChildProcess; url: string }> {
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    const config = path.join(work, `haproxy-${port}.cfg`);
    writeFileSync(
      config,
      [
        'global',
        '  maxconn 4096',
        `  stats socket ${path.join(work, `haproxy-${port}.sock`)} mode 600 level user`,
        '  log stderr format raw local0 err',
        'defaults',
        '  mode http',
        '  log global',
        '  timeout connect 2s',
        '  timeout client 120s',
        '  timeout server 120s',
        // A connection refused by a dead master is sent to another one; a request in flight
        // on it fails (502 or a closed connection), for the client to send again, as real
        // clients must.
        '  retries 3',
        '  option redispatch 1',
        'frontend masters_in',
        `  bind 127.0.0.1:${port}`,
        '  default_backend masters',
        'backend masters',
        '  balance roundrobin',
        ...backends.map((b, i) => `  server m${i} ${new URL(b).host} check inter 200ms fall 1 rise 2`),
        '',
      ].join('\n'),
    );
    const check = execFileSync(HAPROXY, ['-c', '-q', '-f', config], { stdio: ['ignore', 'pipe', 'pipe'] });
    void check;
    const child = spawnBound(HAPROXY, ['-db', '-f', config]);
    let output = '';
    child.stdout!.on('data', (c: Buffer) => (output += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (output += c.toString()));
    const url = `http://127.0.0.1:${port}`;
    const ready = (await waitForHttp(url, child, 10_000)) && (await waitForBackends(path.join(work, `haproxy-${port}.sock`), backends.length, 10_000));
    if (ready) return { child, url };
    await end(child, 'SIGKILL', 0);
    // The port may have been taken between our probe and haproxy's bind: try another.
    if (attempt >= 2) throw new Error(`haproxy did not start:\n${output}\n${readFileSync(config, 'utf8')}`);
  }
}

/**
 * Waits until haproxy's health checks see every master up: before that it sends every
 * request to the first master that passed, and a test would balance nothing.
 */
async function waitForBackends(socket: string, count: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const stat = await new Promise<string>((resolve) => {
      let text = '';
      const connection = createConnection(socket, () => connection.end('show stat\n'));
      connection.on('data', (c: Buffer) => (text += c.toString()));
      connection.on('close', () => resolve(text));
      connection.on('error', () => resolve(''));
    });
    // CSV: pxname,svname,...,status (the 18th column).
    const up = stat.split('\n').filter((line) => {
      const fields = line.split(',');
      return fields[0] === 'masters' && /^m\d+$/.test(fields[1] ?? '') && fields[17] === 'UP';
    });
    if (up.length === count) return true;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return false;
}

/** Waits until `url` answers anything over HTTP (a 401 is an answer) while `child` lives. */
async function waitForHttp(url: string, child: ChildProcess, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) return false;
    try {
      const response = await fetch(`${url}/api/v1/whoami`, { signal: AbortSignal.timeout(1000) });
      await response.arrayBuffer();
      if (response.status < 500) return true;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return false;
}
