/**
 * The node's long-lived side, with real processes and an ordinary user: the daemon runs
 * every cycle on its node-cron schedule and deploys an instance with no one-shot command;
 * stopping the daemon leaves the services to the supervisor; after a simulated reboot
 * (supervisor and services killed, master gone) `pledger node boot` brings the instance
 * back from the node's own state; `pledger node cron` prints crontab lines.
 */
import { chownSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InstanceView } from '../protocol/api.js';
import { readProcessStat } from '../slave/processes.js';
import { supervisorLogPath } from '../slave/paths.js';
import { SupervisorClient } from '../slave/supervisor-client.js';
import { freshDatabase, type TestDatabase } from './helpers/databases.js';
import { agentUser, CLI, pledger, portBase, processesMentioning, PROJECT, startMaster, type AgentUser, type RunningMaster } from './helpers/processes.js';
import { writeTree } from './helpers/tree.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The parent of a process (field 4 of /proc/PID/stat, counted after the command name), or null once it is gone. */
function parentOf(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return null;
  }
}

const release = () =>
  writeTree({
    'software.yaml': [
      'name: pinger',
      'version: 1.0.0',
      'software-types:',
      '  default:',
      '    ports: [http]',
      '    services:',
      `      web: ['${process.execPath}', '-e', 'require("node:http").createServer((q, r) => r.end("pong")).listen({{ ports.http }}, "{{ partition.ip }}")']`,
      '    promises:',
      '      answers: { http: "http://{{ partition.ip }}:{{ ports.http }}/", contains: pong, interval: 1 }',
      '    publish:',
      '      url: "http://{{ partition.ip }}:{{ ports.http }}/"',
      '',
    ].join('\n'),
  });

describe('node daemon, boot and cron', () => {
  let db: TestDatabase;
  let master: RunningMaster;
  let agent: AgentUser;
  let root: string;
  let nodeConfig: string;
  let asAdmin: Record<string, string>;
  let daemon: ResultPromise | undefined;

  const info = async () => (await pledger(['info', 'ping', '--json'], { env: asAdmin })).json<InstanceView>();
  const servicePid = async () => (await new SupervisorClient(root).status()).part0?.services.web?.pid ?? null;

  beforeAll(async () => {
    db = await freshDatabase('sqlite');
    master = await startMaster(db.url);
    asAdmin = { PLEDGER_MASTER_URL: master.url, PLEDGER_TOKEN: master.adminToken };
    agent = agentUser();
    // A space and a percent sign: both must survive the crontab lines.
    root = path.join(agent.home, 'node root 100%');
    nodeConfig = path.join(agent.home, 'node.json');
    const credential = (await pledger(['node', 'register', 'edge-d', '--json'], { env: asAdmin })).json<{ credential: string }>().credential;
    writeFileSync(
      nodeConfig,
      JSON.stringify({
        masterUrl: master.url,
        credential,
        root,
        partitions: 1,
        ipBase: `127.47.${10 + Math.floor(Math.random() * 200)}.1`,
        portBase: portBase(),
        schedule: { software: '* * * * * *', instance: '* * * * * *', promise: '* * * * * *', usage: '*/5 * * * * *', report: '* * * * * *', maxRandomDelayMs: 300 },
      }),
      { mode: 0o600 },
    );
    chownSync(nodeConfig, agent.uid, agent.gid);
    expect((await pledger(['node', 'format', '--config', nodeConfig], { user: agent })).exitCode).toBe(0);
    expect((await pledger(['software', 'publish', release()], { env: asAdmin })).exitCode).toBe(0);
    expect((await pledger(['supply', 'pinger', 'edge-d'], { env: asAdmin })).exitCode).toBe(0);
    expect((await pledger(['request', 'ping', 'pinger'], { env: asAdmin })).exitCode).toBe(0);
  });

  afterAll(async () => {
    daemon?.kill('SIGTERM');
    await daemon?.catch(() => null);
    if (root) await new SupervisorClient(root).shutdown(true).catch(() => {});
    await sleep(300);
    await master?.stop();
    await db?.drop();
  });

  it('builds, deploys and keeps the instance on its schedule, with no one-shot command', async () => {
    daemon = execa(process.execPath, [CLI, 'node', 'daemon', '--config', nodeConfig], {
      uid: agent.uid,
      gid: agent.gid,
      env: { HOME: agent.home, PATH: '/usr/bin:/bin' },
      extendEnv: false,
      reject: false,
    });
    let view = await info();
    for (let i = 0; i < 150 && !view.ready; i++) {
      await sleep(200);
      view = await info();
    }
    expect(view).toMatchObject({ status: 'started', ready: true });
    expect(await (await fetch(view.connection.url!)).text()).toBe('pong');
    expect(view.promises).toEqual([expect.objectContaining({ name: 'answers', status: 'ok' })]);
    const pid = (await servicePid())!;
    expect(pid).toBeGreaterThan(0);
    // The service, like the daemon and the supervisor, runs as the agent's ordinary user.
    expect(Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1])).toBe(agent.uid);
  });

  it('stops on SIGTERM and leaves the services to the supervisor', async () => {
    const before = await servicePid();
    await sleep(1500);
    daemon!.kill('SIGTERM');
    const ended = await daemon!;
    daemon = undefined;
    expect(ended.exitCode).toBe(0);
    const lines = String(ended.stderr)
      .split('\n')
      .filter(Boolean)
      .map((line) => {
        // Every line the daemon writes is JSON: a plain line would break the log's readers.
        expect(() => JSON.parse(line) as unknown, line).not.toThrow();
        return JSON.parse(line) as { msg: string; cycle?: string; reason?: string };
      });
    expect(lines.map((l) => l.msg)).toContain('daemon started');
    expect(lines.filter((l) => l.msg === 'cycle failed')).toEqual([]);
    expect(lines.at(-1)?.msg).toBe('daemon stopped');
    expect(await servicePid()).toBe(before);
    expect(await (await fetch((await info()).connection.url!)).text()).toBe('pong');
  });

  it('runs in lite mode through the launcher with a log of JSON lines only, and so does its supervisor', async () => {
    const launcher = execa('bash', [path.join(PROJECT, 'scripts', 'pledger'), 'node', 'daemon', '--config', nodeConfig], {
      uid: agent.uid,
      gid: agent.gid,
      env: { HOME: agent.home, PATH: '/usr/bin:/bin' },
      extendEnv: false,
      reject: false,
    });
    daemon = launcher;
    // Each cycle is a child process of the daemon: three of them seen are three cycles run.
    const cycles = new Set<number>();
    while (cycles.size < 3) {
      for (const p of processesMentioning(nodeConfig)) {
        if (parentOf(p.pid) === launcher.pid) cycles.add(p.pid);
      }
      await sleep(20);
    }
    launcher.kill('SIGTERM');
    const ended = await launcher;
    daemon = undefined;
    expect(ended.exitCode).toBe(0);
    const jsonLines = (text: string) => {
      const lines = text.split('\n').filter(Boolean);
      expect(lines.length).toBeGreaterThan(0);
      return lines.map((line) => {
        expect(() => JSON.parse(line) as unknown, line).not.toThrow();
        return JSON.parse(line) as { msg: string; level: string };
      });
    };
    const daemonLines = jsonLines(String(ended.stderr));
    expect(daemonLines[0]?.msg).toBe('daemon started');
    expect(daemonLines.filter((l) => l.level === 'error')).toEqual([]);
    jsonLines(readFileSync(supervisorLogPath(root), 'utf8'));
  });

  it('brings the instance back after a reboot with `node boot`, without the master', async () => {
    const url = (await info()).connection.url!;
    const supervisor = (await new SupervisorClient(root).ping())!;
    const service = (await servicePid())!;
    await master.stop();
    // A reboot ends every process: the supervisor and the service die, the node's files stay.
    process.kill(supervisor, 'SIGKILL');
    process.kill(-service, 'SIGKILL');
    for (let i = 0; i < 100 && ![undefined, 'Z'].includes((await readProcessStat(supervisor))?.state); i++) await sleep(20);
    expect(await fetch(url).then(() => 'answered', () => 'down')).toBe('down');

    const boot = await pledger(['node', 'boot', '--config', nodeConfig, '--json'], { user: agent });
    expect(boot.exitCode).toBe(0);
    expect(boot.json()).toEqual([expect.objectContaining({ partition: 'part0', instance: 'ping', service: 'web', state: 'running' })]);
    let answer = '';
    for (let i = 0; i < 100 && answer !== 'pong'; i++) {
      answer = await fetch(url).then((r) => r.text(), () => '');
      if (answer !== 'pong') await sleep(50);
    }
    expect(answer).toBe('pong');
    expect(await servicePid()).not.toBe(service);
  });

  it('prints crontab lines: @reboot boot, and each cycle with a random delay, every value quoted', async () => {
    const cron = await pledger(['node', 'cron', '--config', nodeConfig, '--max-random-delay', '20'], { user: agent });
    expect(cron.exitCode).toBe(0);
    const lines = cron.stdout.split('\n').filter((line) => line && !line.startsWith('#'));
    const quotedRoot = `'${root.replace('%', '\\%')}`;
    expect(lines[0]).toMatch(/^@reboot '.+node' '.+main\.js' node boot --config '.+node\.json' >> /);
    expect(lines[0]).toContain(quotedRoot);
    expect(lines.slice(1).map((line) => /node (\w+) --config/.exec(line)?.[1])).toEqual(['software', 'instance', 'promise', 'usage', 'report']);
    for (const line of lines.slice(1)) {
      expect(line).toMatch(/^(\*\/5|\*) \* \* \* \* /);
      expect(line).toContain('--max-random-delay 20');
      expect(line).toContain(quotedRoot);
    }
    // Without the option, each run waits a random delay of up to 30 s, as documented.
    const byDefault = await pledger(['node', 'cron', '--config', nodeConfig], { user: agent });
    const cycles = byDefault.stdout.split('\n').filter((line) => line && !line.startsWith('#')).slice(1);
    expect(cycles).toHaveLength(5);
    for (const line of cycles) expect(line).toContain('--max-random-delay 30');
    // What cron hands to /bin/sh runs: the boot line, with its % unescaped as cron does.
    const command = lines[0]!.replace(/^@reboot /, '').replaceAll('\\%', '%').replace(/ >>.*$/, ' --json');
    const ran = await execa('/bin/sh', ['-c', command], { uid: agent.uid, gid: agent.gid, env: { HOME: agent.home, PATH: '/usr/bin:/bin' }, extendEnv: false, reject: false });
    expect(ran.exitCode).toBe(0);
  });
});
