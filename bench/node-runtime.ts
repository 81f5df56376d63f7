/**
 * Figures of the node agent's runtime, printed, never asserted (`npm run bench:node`):
 *
 * 1. one `node instance` cycle with 100 partitions deployed and nothing changed: wall
 *    time and child processes spawned (target: < 200 ms, 0 children);
 * 2. 1,000 built-in promises (TCP and HTTP, against a server in another process) checked
 *    (target: < 1 s);
 * 3. crash-to-first-restart latency of a service under the node supervisor, and under
 *    Debian's supervisord in the same run, measured the same way: the restarted service
 *    writes the time it started (target: < 100 ms);
 * 4. resident memory of the node daemon plus the supervisor with 100 partitions
 *    between cycles (target: < 100 MB), and of the daemon, its cycles' child processes
 *    and the supervisor while every cycle runs at once; as RSS summed over the
 *    processes (which counts node's own binary once per process) and as PSS (which
 *    shares it out), with the daemon as is and with the V8 setting the operations guide
 *    suggests; and the heap that rounds of every cycle leave behind in one process
 *    (target: none).
 *
 * Everything is real: a master process over SQLite, the supervisor process, /proc.
 * Run as root, the services and supervisord run as an ordinary user.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import diagnostics from 'node:diagnostics_channel';
import { chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { MasterClient } from '../protocol/client.js';
import { packSoftware } from '../protocol/software-archive.js';
import { resolveNodeConfig, type NodeConfig } from '../slave/config.js';
import { formatNode } from '../slave/format.js';
import { processInstances } from '../slave/instance.js';
import { silentLogger } from '../slave/log.js';
import { checkPromises } from '../slave/promises.js';
import { checkPromisesCycle } from '../slave/promise-cycle.js';
import { reportEvents } from '../slave/report.js';
import { installSoftware } from '../slave/software.js';
import { meterUsage } from '../slave/usage.js';
import { connectSupervisor, SupervisorClient } from '../slave/supervisor-client.js';

const PROJECT = path.resolve(import.meta.dirname, '..', '..');
const CLI = path.join(PROJECT, 'dist', 'cli', 'main.js');
const PARTITIONS = 100;
const RESTARTS = 20;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const progress = (step: string) => process.stderr.write(`  ... ${step}\n`);

const figures: [string, string, string][] = [];
function figure(name: string, value: string, target = ''): void {
  figures.push([name, value, target]);
  process.stdout.write(`${name}: ${value}${target ? ` (target ${target})` : ''}\n`);
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
const percentile = (values: number[], p: number) => [...values].sort((a, b) => a - b)[Math.min(values.length - 1, Math.floor((values.length * p) / 100))]!;

/** The unprivileged user that runs the node when the bench runs as root. */
function benchUser(): { uid: number; gid: number } | undefined {
  if (process.getuid!() !== 0) return undefined;
  const name = 'pledger-agent';
  try {
    execFileSync('id', ['-u', name], { stdio: 'ignore' });
  } catch {
    execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', name]);
  }
  return { uid: Number(execFileSync('id', ['-u', name]).toString()), gid: Number(execFileSync('id', ['-g', name]).toString()) };
}

async function startMasterProcess(dir: string): Promise<{ url: string; token: string; child: ChildProcess }> {
  const database = `sqlite:${path.join(dir, 'master.db')}`;
  const init = JSON.parse(execFileSync(process.execPath, [CLI, 'master', 'init', '--database', database, '--json']).toString()) as { token: string };
  const child = spawn(process.execPath, [CLI, 'master', 'serve', '--database', database, '--host', '127.0.0.1', '--port', '0'], {
    stdio: ['ignore', 'pipe', 'inherit'],
    // The address is in the start-up line, logged at info.
    env: { ...process.env, PLEDGER_LOG_LEVEL: 'info' },
  });
  const url = await new Promise<string>((resolve, reject) => {
    let seen = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      seen += chunk.toString();
      const match = /"url":"(http:\/\/127\.0\.0\.1:\d+)"/.exec(seen);
      if (match) resolve(match[1]!);
    });
    child.once('exit', () => reject(new Error(`master exited: ${seen}`)));
  });
  return { url, token: init.token, child };
}

/** Proportional set size: shared pages (node's own binary, mostly) divided among the processes that map them. */
function pssKb(pid: number): number {
  try {
    return Number(/^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

function rssKb(pid: number, field: 'VmRSS' | 'RssAnon' | 'RssFile' = 'VmRSS'): number {
  try {
    return Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

/** The processes whose parent is `parent`: the daemon's running cycles. */
function childrenOf(parent: number): number[] {
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === parent) found.push(Number(entry));
    } catch {
      // Ended meanwhile.
    }
  }
  return found;
}

/** The system's last allocated pid: unchanged when nothing on the machine forked. */
const lastPid = () => Number(readFileSync('/proc/loadavg', 'utf8').trim().split(' ').at(-1));

async function benchPartitions(scratch: string): Promise<void> {
  const master = await startMasterProcess(scratch);
  const operator = new MasterClient({ url: master.url, token: master.token });
  const { credential } = await operator.nodes.register({ name: 'bench-node' });
  const config = resolveNodeConfig({
    masterUrl: master.url,
    credential,
    root: path.join(scratch, 'node'),
    partitions: PARTITIONS,
    ipBase: '127.48.0.1',
    portBase: 40000,
    portsPerPartition: 2,
  });
  const release = path.join(scratch, 'release');
  mkdirSync(release);
  writeFileSync(
    path.join(release, 'software.yaml'),
    'name: idle\nversion: 1.0.0\nsoftware-types:\n  default:\n    services:\n      idle: [/bin/sleep, "100000"]\n    promises:\n      running: { process: idle }\n',
  );
  progress('publishing and building the release');
  await operator.software.publish(await packSoftware(release));
  await operator.supplies.set({ software: 'idle', node: 'bench-node' });
  await formatNode(config, silentLogger);
  await installSoftware(config, silentLogger);
  progress('requesting 100 instances');
  for (let i = 0; i < PARTITIONS; i++) await operator.instances.request(`idle-${i}`, { software: 'idle' });

  progress('deploying them');
  let began = performance.now();
  const first = await processInstances(config, silentLogger);
  figure('first deployment of 100 instances (one cycle)', `${Math.round(performance.now() - began)} ms, ${first.results.filter((r) => r.status === 'done').length} deployed`);

  let children = 0;
  diagnostics.subscribe('child_process', () => children++);
  const walls: number[] = [];
  let forkedOnMachine = 0;
  for (let i = 0; i < 10; i++) {
    const before = lastPid();
    began = performance.now();
    const run = await processInstances(config, silentLogger);
    walls.push(performance.now() - began);
    if (lastPid() !== before) forkedOnMachine++;
    if (run.results.some((r) => r.status !== 'unchanged')) throw new Error(`a cycle changed something: ${JSON.stringify(run.results.find((r) => r.status !== 'unchanged'))}`);
  }
  figure('node instance cycle, 100 partitions, nothing changed', `median ${median(walls).toFixed(1)} ms, max ${Math.max(...walls).toFixed(1)} ms over 10 cycles`, '< 200 ms');
  figure('child processes spawned by those 10 cycles', `${children} (cycles during which any process was created on the machine: ${forkedOnMachine})`, '0');

  // Nothing a cycle allocates may outlive it: the heap after a full collection stays flat.
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const rounds = async (count: number) => {
    for (let i = 0; i < count; i++) {
      await installSoftware(config, silentLogger);
      await processInstances(config, silentLogger);
      await checkPromisesCycle(config, silentLogger);
      await meterUsage(config, silentLogger);
      await reportEvents(config, silentLogger);
    }
    gc();
    return process.memoryUsage().heapUsed;
  };
  const settled = await rounds(5);
  const after = await rounds(50);
  figure('heap kept by 50 more rounds of every cycle, in process (after a full collection)', `${((after - settled) / 1048576).toFixed(2)} MB (${(settled / 1048576).toFixed(1)} MB before)`, '~0');

  // A cold one-shot command, node's own start-up included.
  const oneShot: number[] = [];
  for (let i = 0; i < 3; i++) {
    began = performance.now();
    execFileSync(process.execPath, [CLI, 'node', 'instance', '--config', writeConfig(scratch, config)], { stdio: 'ignore' });
    oneShot.push(performance.now() - began);
  }
  figure('`pledger node instance` as a fresh process (node start-up included)', `median ${median(oneShot).toFixed(0)} ms`);

  // The long-lived footprint: the daemon, whose cycles all start together every 5 s here
  // (as the default schedules coincide at each minute), and the supervisor.
  const daemonConfig = writeConfig(scratch, {
    ...config,
    schedule: { software: '*/5 * * * * *', instance: '*/5 * * * * *', promise: '*/5 * * * * *', usage: '*/5 * * * * *', report: '*/5 * * * * *', maxRandomDelayMs: 0 },
  });
  const supervisorPid = (await new SupervisorClient(config.root).ping())!;
  const mb = (kb: number) => `${(kb / 1024).toFixed(1)} MB`;
  // File-backed pages are mostly node's own binary, shared by all the processes; anonymous ones are each process's own.
  const split = (pid: number) => `${mb(rssKb(pid))} = ${mb(rssKb(pid, 'RssAnon'))} anonymous + ${mb(rssKb(pid, 'RssFile'))} file`;
  const footprint = async (label: string, env: Record<string, string>, nodeFlags: string[] = []) => {
    const daemon = spawn(process.execPath, [...nodeFlags, CLI, 'node', 'daemon', '--config', daemonConfig], { stdio: 'ignore', env: { ...process.env, ...env } });
    // Idle: no cycle running, after the first round (so that the daemon has done its work once).
    let idleDaemon = 0;
    let idleTotal = 0;
    let idlePss = 0;
    let idleSplit = '';
    // Busy: the daemon, its cycles' processes and the supervisor, summed, at the worst sample.
    let busyTotal = 0;
    let busyPss = 0;
    let busyCycles = 0;
    let busyDaemon = 0;
    let roundsSeen = 0;
    let wasBusy = false;
    for (let i = 0; i < 220; i++) {
      await sleep(100);
      const cycles = childrenOf(daemon.pid!);
      const daemonKb = rssKb(daemon.pid!);
      const supervisorKb = rssKb(supervisorPid);
      if (cycles.length > 0) {
        wasBusy = true;
        const cyclesKb = cycles.reduce((sum, pid) => sum + rssKb(pid), 0);
        const total = daemonKb + supervisorKb + cyclesKb;
        if (total > busyTotal) {
          busyTotal = total;
          busyCycles = cyclesKb;
          busyDaemon = daemonKb;
          busyPss = pssKb(daemon.pid!) + pssKb(supervisorPid) + cycles.reduce((sum, pid) => sum + pssKb(pid), 0);
        }
      } else {
        if (wasBusy) roundsSeen++;
        wasBusy = false;
        if (roundsSeen === 0 || daemonKb === 0) continue;
        idleDaemon = Math.max(idleDaemon, daemonKb);
        if (daemonKb + supervisorKb > idleTotal) {
          idleTotal = daemonKb + supervisorKb;
          idlePss = pssKb(daemon.pid!) + pssKb(supervisorPid);
          idleSplit = `daemon ${split(daemon.pid!)}; supervisor ${split(supervisorPid)}`;
        }
      }
    }
    figure(
      `resident memory between cycles, daemon + supervisor, 100 partitions (peak over ${roundsSeen} idle spells in 22 s), ${label}`,
      `RSS ${mb(idleTotal)} (daemon ${mb(idleDaemon)}); PSS ${mb(idlePss)} (${idleSplit})`,
      '< 100 MB',
    );
    figure(
      `resident memory while the 5 cycles run at once, daemon + cycles + supervisor, ${label}`,
      `RSS ${mb(busyTotal)} (daemon ${mb(busyDaemon)}, cycles ${mb(busyCycles)}); PSS ${mb(busyPss)}`,
    );
    if (daemon.exitCode !== null || daemon.signalCode !== null) throw new Error(`the daemon exited early (${label})`);
    daemon.kill('SIGTERM');
    await new Promise((resolve) => daemon.once('exit', resolve));
  };
  await footprint('`pledger node daemon`', {});
  // The settings docs/operations.md weighs for the daemon's service unit.
  await footprint('with NODE_OPTIONS=--max-semi-space-size=1', { NODE_OPTIONS: '--max-semi-space-size=1' });
  // Not allowed in NODE_OPTIONS: a flag of node itself, which the daemon hands on to its cycles.
  await footprint('started as `node --lite-mode pledger node daemon`', {}, ['--lite-mode']);

  // Answered once the 100 services are stopped; the supervisor then exits.
  await new SupervisorClient(config.root).shutdown(true);
  master.child.kill('SIGTERM');
}

function writeConfig(scratch: string, config: NodeConfig): string {
  const file = path.join(scratch, `node-${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(file, JSON.stringify(config), { mode: 0o600 });
  return file;
}

async function benchPromises(): Promise<void> {
  // The checked server runs in a process of its own, as a real service would.
  const server = spawn(
    process.execPath,
    ['-e', "const s = require('node:http').createServer((q, r) => r.end('healthy')).listen(0, '127.0.0.1', () => console.log(s.address().port))"],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const port = await new Promise<number>((resolve) => server.stdout!.once('data', (chunk: Buffer) => resolve(Number(chunk.toString().trim()))));
  const promises = Object.fromEntries(
    Array.from({ length: 1000 }, (_, i) => [`p${i}`, i % 2 ? { tcp: `127.0.0.1:${port}` } : { http: `http://127.0.0.1:${port}/`, contains: 'healthy' }]),
  );
  const walls: number[] = [];
  for (let i = 0; i < 5; i++) {
    const began = performance.now();
    const results = await checkPromises(promises);
    walls.push(performance.now() - began);
    if (results.some((r) => !r.ok)) throw new Error(`a promise failed: ${results.find((r) => !r.ok)!.message}`);
  }
  figure('1,000 built-in promises (500 TCP + 500 HTTP) checked', `median ${median(walls).toFixed(0)} ms, max ${Math.max(...walls).toFixed(0)} ms over 5 rounds`, '< 1 s');
  server.kill();
}

/**
 * The service writes "pid nanoseconds" when it starts; the latency is from the kill to
 * the time the restarted service wrote. The same service under both supervisors.
 */
async function restartLatencies(stamp: string, kill: () => void): Promise<number[]> {
  const read = () => {
    try {
      const [pid, ns] = readFileSync(stamp, 'utf8').trim().split(' ');
      return { pid: Number(pid), ms: Number(BigInt(ns!) / 1000n) / 1000 };
    } catch {
      return undefined;
    }
  };
  const latencies: number[] = [];
  for (let i = 0; i < RESTARTS; i++) {
    let current = read();
    for (let t = 0; !current && t < 500; t++) {
      await sleep(10);
      current = read();
    }
    if (!current) throw new Error('the service never started');
    // Let it settle: a crash soon after a start is what backoff is for, not what is measured.
    await sleep(300);
    const killedAt = Date.now();
    process.kill(current.pid, 'SIGKILL');
    kill();
    let next = read();
    for (let t = 0; (!next || next.pid === current.pid) && t < 5000; t++) {
      await sleep(1);
      next = read();
    }
    if (!next || next.pid === current.pid) throw new Error('not restarted within 5 s');
    latencies.push(next.ms - killedAt);
  }
  return latencies;
}

const stampingService = (stamp: string) => ['/bin/sh', '-c', `echo "$$ $(date +%s%N)" > ${stamp}; exec sleep 100000`];

async function benchRestarts(scratch: string, user: { uid: number; gid: number } | undefined): Promise<void> {
  // Our supervisor; resetAfterMs short so that every crash counts as a first one.
  const root = path.join(scratch, 'restarts');
  const config = resolveNodeConfig({ masterUrl: 'http://127.0.0.1:9', credential: 'unused', root, supervisor: { resetAfterMs: 200, crashLoopExits: 1000 } });
  const supervisor = await connectSupervisor(config, silentLogger);
  const stamp = path.join(scratch, 'pledger.stamp');
  await supervisor.ensure('part0', { id: 'bench', serial: 1, title: 'bench' }, { crashy: stampingService(stamp) }, true);
  const ours = await restartLatencies(stamp, () => {});
  figure('crash to first restart, pledger supervisor', `median ${median(ours).toFixed(1)} ms, p95 ${percentile(ours, 95).toFixed(1)} ms, max ${Math.max(...ours).toFixed(1)} ms (${RESTARTS} crashes)`, '< 100 ms');
  await supervisor.shutdown(true);

  if (!existsSync('/usr/bin/supervisord')) {
    figure('crash to first restart, Debian supervisord', 'not measured: supervisord is not installed (apt-get install supervisor)');
    return;
  }
  const dir = path.join(scratch, 'supervisord');
  mkdirSync(dir);
  const theirStamp = path.join(dir, 'stamp');
  const command = stampingService(theirStamp)[2]!.replaceAll('%', '%%');
  writeFileSync(
    path.join(dir, 'supervisord.conf'),
    [
      '[unix_http_server]',
      `file=${dir}/supervisor.sock`,
      '[supervisord]',
      `logfile=${dir}/supervisord.log`,
      `pidfile=${dir}/supervisord.pid`,
      `childlogdir=${dir}`,
      'nodaemon=true',
      '[rpcinterface:supervisor]',
      'supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface',
      '[program:crashy]',
      `command=/bin/sh -c '${command}'`,
      'autorestart=true',
      'startsecs=0',
      'startretries=1000',
      '',
    ].join('\n'),
  );
  if (user) chownSync(dir, user.uid, user.gid);
  const supervisord = spawn('/usr/bin/supervisord', ['-c', path.join(dir, 'supervisord.conf')], {
    stdio: 'ignore',
    ...(user ? { uid: user.uid, gid: user.gid } : {}),
  });
  try {
    const theirs = await restartLatencies(theirStamp, () => {});
    figure('crash to first restart, Debian supervisord', `median ${median(theirs).toFixed(1)} ms, p95 ${percentile(theirs, 95).toFixed(1)} ms, max ${Math.max(...theirs).toFixed(1)} ms (${RESTARTS} crashes)`);
  } finally {
    supervisord.kill('SIGTERM');
    await new Promise((resolve) => supervisord.once('exit', resolve));
  }
}

const scratch = mkdtempSync(path.join(tmpdir(), 'pledger-bench-node-'));
const user = benchUser();
if (user) chownSync(scratch, user.uid, user.gid);
try {
  process.stdout.write(`node ${process.version}, ${PARTITIONS} partitions, scratch ${scratch}\n`);
  const only = process.env.PLEDGER_BENCH_ONLY?.split(',');
  if (!only || only.includes('restarts')) await benchRestarts(scratch, user);
  if (!only || only.includes('promises')) await benchPromises();
  if (!only || only.includes('partitions')) await benchPartitions(scratch);
  process.stdout.write('\nsummary\n');
  for (const [name, value, target] of figures) process.stdout.write(`  ${name}: ${value}${target ? `  [target ${target}]` : ''}\n`);
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
