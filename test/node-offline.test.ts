/**
 * A node without its master, end to end with real processes: a master process over a
 * SQLite file, the CLI run as an ordinary user, the node supervisor, Debian's
 * monitoring-plugins. The master is stopped; the node keeps its instance running,
 * keeps checking its promises and metering usage, all queued in its outbox; the master
 * is started again on the same database and port, and every event arrives once, with
 * usage totals equal to what the node metered.
 */
import { chownSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InstanceView } from '../protocol/api.js';
import { SupervisorClient } from '../slave/supervisor-client.js';
import { freshDatabase, type TestDatabase } from './helpers/databases.js';
import { agentUser, CLI, pledger, portBase, PROJECT, startMaster, type AgentUser, type RunningMaster } from './helpers/processes.js';
import { writeTree } from './helpers/tree.js';

const PLUGIN = '/usr/lib/nagios/plugins/check_tcp';
const HOUR = 3600_000;

/** A service that answers HTTP, burns a little CPU, and writes a heartbeat unless var/pause exists. */
const SERVER = `const fs = require('node:fs');
const dir = {{ partition.path | json }};
setInterval(() => {
  if (!fs.existsSync(dir + '/var/pause')) fs.writeFileSync(dir + '/var/heartbeat', String(Date.now()));
  let x = 0;
  for (let i = 0; i < 2e6; i++) x += i;
}, 200);
require('node:http').createServer((q, r) => r.end('tick')).listen({{ ports.http }}, {{ partition.ip | json }});
`;

const release = () =>
  writeTree({
    'software.yaml': [
      'name: ticker',
      'version: 1.0.0',
      'software-types:',
      '  default:',
      '    ports: [http]',
      '    files:',
      '      bin/server.cjs: server.cjs.njk',
      '    services:',
      `      web: ['${process.execPath}', '{{ partition.path }}/bin/server.cjs']`,
      '    promises:',
      '      answers: { http: "http://{{ partition.ip }}:{{ ports.http }}/", contains: tick, interval: 1 }',
      '      running: { process: web, interval: 1 }',
      '      heartbeat: { file: var/heartbeat, max-age: 2, interval: 1, timeout: 5 }',
      existsSync(PLUGIN)
        ? `      plugin: { command: [${PLUGIN}, -H, "{{ partition.ip }}", -p, "{{ ports.http }}"], interval: 1 }`
        : '      plugin: { command: [/bin/true], interval: 1 }',
      '    publish:',
      '      url: "http://{{ partition.ip }}:{{ ports.http }}/"',
      '',
    ].join('\n'),
    'server.cjs.njk': SERVER,
  });

describe('a node without its master', () => {
  let db: TestDatabase;
  let master: RunningMaster;
  let restarted: ResultPromise | undefined;
  let agent: AgentUser;
  let root: string;
  let nodeConfig: string;
  let asAdmin: Record<string, string>;
  const hour = Math.floor(Date.now() / HOUR) * HOUR - 2 * HOUR;

  const node = (command: string, ...args: string[]) => pledger(['node', command, '--config', nodeConfig, '--json', ...args], { user: agent });
  const info = async () => (await pledger(['info', 'tick', '--json'], { env: asAdmin })).json<InstanceView>();
  /** The usage meter at a chosen time, in a process of the agent's user: the clock is the only thing chosen. */
  const meterAt = async (at: number) => {
    const script = `import { readNodeConfig, meterUsage, silentLogger } from ${JSON.stringify(path.join(PROJECT, 'dist', 'slave', 'index.js'))};
      const sample = await meterUsage(await readNodeConfig(process.argv[1]), silentLogger, Number(process.argv[2]));
      process.stdout.write(JSON.stringify(sample));`;
    const result = await execa(process.execPath, ['--input-type=module', '-e', script, nodeConfig, String(at)], {
      uid: agent.uid,
      gid: agent.gid,
      env: { HOME: agent.home, PATH: '/usr/bin:/bin' },
      extendEnv: false,
    });
    return JSON.parse(result.stdout) as { partitions: number; hoursReported: number };
  };
  const outbox = () => {
    const sqlite = new SqliteDatabase(path.join(root, 'state', 'node.db'), { readonly: true });
    try {
      return (sqlite.prepare('SELECT body FROM outbox ORDER BY seq').all() as { body: string }[]).map((row) => JSON.parse(row.body) as { id: string; type: string; [key: string]: unknown });
    } finally {
      sqlite.close();
    }
  };
  const masterDb = () => new SqliteDatabase(db.url.replace(/^sqlite:/, ''), { readonly: true });

  beforeAll(async () => {
    db = await freshDatabase('sqlite');
    master = await startMaster(db.url);
    asAdmin = { PLEDGER_MASTER_URL: master.url, PLEDGER_TOKEN: master.adminToken };
    agent = agentUser();
    root = path.join(agent.home, 'root');
    nodeConfig = path.join(agent.home, 'node.json');
    const credential = (await pledger(['node', 'register', 'edge-off', '--json'], { env: asAdmin })).json<{ credential: string }>().credential;
    writeFileSync(
      nodeConfig,
      JSON.stringify({
        masterUrl: master.url,
        credential,
        root,
        partitions: 1,
        ipBase: `127.46.${10 + Math.floor(Math.random() * 200)}.1`,
        portBase: portBase(),
        supervisor: { backoffFirstMs: 200 },
      }),
      { mode: 0o600 },
    );
    chownSync(nodeConfig, agent.uid, agent.gid);
    expect((await pledger(['software', 'publish', release()], { env: asAdmin })).exitCode).toBe(0);
    expect((await pledger(['supply', 'ticker', 'edge-off'], { env: asAdmin })).exitCode).toBe(0);
  });

  afterAll(async () => {
    if (root) await pledger(['node', 'boot', '--config', nodeConfig], { user: agent }).catch(() => null);
    if (root) await new SupervisorClient(root).shutdown(true).catch(() => {});
    await new Promise((resolve) => setTimeout(resolve, 500));
    restarted?.kill('SIGTERM');
    await restarted?.catch(() => null);
    await master?.stop();
    await db?.drop();
    if (agent) rmSync(agent.home, { recursive: true, force: true });
  });

  it('deploys an instance with http, process, file and command promises, and reports their states', async () => {
    expect((await node('format')).exitCode).toBe(0);
    expect((await node('software')).exitCode).toBe(0);
    expect((await pledger(['request', 'tick', 'ticker'], { env: asAdmin })).exitCode).toBe(0);
    // The meter runs at chosen times two hours ago, and the master bills only hours of the
    // instance's life: the instance is taken to have been requested before them.
    const writable = new SqliteDatabase(db.url.replace(/^sqlite:/, ''));
    try {
      writable.prepare("UPDATE instances SET created_at = ? WHERE title = 'tick'").run(new Date(hour - HOUR).toISOString());
    } finally {
      writable.close();
    }
    const run = await node('instance');
    expect(run.stderr).not.toMatch(/ERROR/);
    expect(run.exitCode).toBe(0);
    const view = await info();
    expect(view).toMatchObject({ status: 'started', ready: true });
    expect(view.promises.map((p) => [p.name, p.status])).toEqual([
      ['answers', 'ok'],
      ['heartbeat', 'ok'],
      ['plugin', 'ok'],
      ['running', 'ok'],
    ]);
    expect(await meterAt(hour + 10 * 60_000)).toEqual({ partitions: 1, hoursReported: 0 });
  });

  // Where Debian's monitoring-plugins-basic is missing, /bin/true stands in for check_tcp above, and this says so.
  it.skipIf(!existsSync(PLUGIN))("checks the command promise with Debian's check_tcp plugin", async () => {
    expect((await info()).promises.find((p) => p.name === 'plugin')).toMatchObject({ status: 'ok', message: expect.stringMatching(/^TCP OK/) as string });
  });

  it('keeps the instance running, its promises checked and its usage metered while the master is away', async () => {
    const url = (await info()).connection.url!;
    await master.stop();

    const offline = await node('instance');
    expect(offline.exitCode).toBe(3);
    expect(await (await fetch(url)).text()).toBe('tick');

    // A service that dies is restarted by the supervisor, master or not.
    const boot = await node('boot');
    const pid = boot.json<{ pid: number }[]>()[0]!.pid;
    process.kill(pid, 'SIGKILL');
    for (let i = 0; i < 100; i++) {
      const answer = await fetch(url).catch(() => null);
      if (answer?.ok) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(await (await fetch(url)).text()).toBe('tick');

    // The heartbeat stops: the promise breaks (exit 2), then holds again (exit 3: fine, but offline).
    const pause = path.join(root, 'partitions', 'part0', 'var', 'pause');
    mkdirSync(path.dirname(pause), { recursive: true });
    writeFileSync(pause, '');
    await new Promise((resolve) => setTimeout(resolve, 3000));
    const broken = await node('promise');
    expect(broken.exitCode).toBe(2);
    expect(broken.json<{ results: { message: string }[] }>().results[0]!.message).toMatch(/promise heartbeat: var\/heartbeat was modified \d+ s ago/);
    rmSync(pause);
    await new Promise((resolve) => setTimeout(resolve, 1200));
    expect((await node('promise')).exitCode).toBe(3);

    for (const minutes of [12, 14, 16]) expect(await meterAt(hour + minutes * 60_000)).toEqual({ partitions: 1, hoursReported: 0 });
    // The hour is over: its usage is queued once, whatever the number of later samples. The
    // 45 minutes without a sample count for 5 (a node that was down ran nothing): the hour
    // holds 3 × 2 minutes and the 4 minutes before its end, 600 s up.
    expect(await meterAt(hour + HOUR + 60_000)).toEqual({ partitions: 1, hoursReported: 1 });
    expect(await meterAt(hour + HOUR + 120_000)).toEqual({ partitions: 1, hoursReported: 0 });

    expect((await node('report')).exitCode).toBe(3);
    const waiting = outbox();
    expect(waiting.filter((e) => e.type === 'instance.promises').length).toBeGreaterThanOrEqual(2);
    expect(waiting.filter((e) => e.type === 'instance.usage')).toEqual([
      expect.objectContaining({ id: expect.stringMatching(/^u-[A-Za-z0-9_-]{40}$/), hour: new Date(hour).toISOString(), uptimeSeconds: 600 }),
    ]);
  });

  it('delivers every event once when the master is back on the same database and port', async () => {
    const waiting = outbox();
    expect(waiting.length).toBeGreaterThanOrEqual(3);
    const port = new URL(master.url).port;
    restarted = execa(process.execPath, [CLI, 'master', 'serve', '--database', db.url, '--host', '127.0.0.1', '--port', port], { reject: false });
    // Up once it answers, however long it takes (the test's timeout bounds the wait).
    while (!(await fetch(master.url).then(() => true, () => false))) await new Promise((resolve) => setTimeout(resolve, 100));

    const report = await node('report');
    expect(report.exitCode).toBe(0);
    expect(report.json()).toEqual({ sent: waiting.length, pending: 0, offline: false });
    expect(outbox()).toEqual([]);

    const sqlite = masterDb();
    try {
      const nodeId = (sqlite.prepare('SELECT id FROM nodes WHERE name = ?').get('edge-off') as { id: string }).id;
      for (const event of waiting) {
        if (event.type === 'instance.usage') {
          // An hour is counted once, in the usage table and in the one movement of the report that brought it.
          expect(sqlite.prepare('SELECT count(*) AS n FROM usage_hours WHERE instance_id = ? AND hour = ?').get(event.instance, event.hour)).toEqual({ n: 1 });
          const reports = sqlite.prepare("SELECT data FROM movements WHERE kind = 'usage.received' AND subject = ?").all(nodeId) as { data: string }[];
          const carrying = reports.filter((r) => (JSON.parse(r.data) as { hours: { instanceId: string; hour: string }[] }).hours.some((h) => h.instanceId === event.instance && h.hour === event.hour));
          expect(carrying).toHaveLength(1);
        } else {
          expect(sqlite.prepare('SELECT count(*) AS n FROM movements WHERE id = ?').get(`node:${nodeId}:${event.id}`)).toEqual({ n: 1 });
        }
      }
      const usage = waiting.find((e) => e.type === 'instance.usage')!;
      const row = sqlite.prepare('SELECT cpu_ms, memory_byte_seconds, disk_byte_seconds, uptime_seconds FROM usage_hours WHERE instance_id = ? AND hour = ?').get(usage.instance, usage.hour) as Record<string, number>;
      expect(row).toEqual({
        cpu_ms: usage.cpuMilliseconds,
        memory_byte_seconds: usage.memoryByteSeconds,
        disk_byte_seconds: usage.diskByteSeconds,
        uptime_seconds: usage.uptimeSeconds,
      });
      expect(Number(usage.memoryByteSeconds)).toBeGreaterThan(0);
      expect(Number(usage.diskByteSeconds)).toBeGreaterThan(0);
    } finally {
      sqlite.close();
    }

    // Sent again (a node that crashed before it saw the receipt): all duplicates, nothing counted twice.
    const resend = await fetch(`${master.url}/api/v1/node/events`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${(JSON.parse(readFileSync(nodeConfig, 'utf8')) as { credential: string }).credential}` },
      body: JSON.stringify({ events: waiting }),
    });
    const receipt = (await resend.json()) as { applied: string[]; duplicates: string[] };
    expect(receipt.applied).toEqual([]);
    expect(receipt.duplicates.sort()).toEqual(waiting.map((e) => e.id).sort());
    const promises = (await info()).promises;
    expect(promises.length).toBeGreaterThan(0);
    expect(promises.filter((p) => p.status !== 'ok')).toEqual([]);
  });
});
