/**
 * The daemon's cycles run as child processes of the plain cron form, so the daemon only
 * schedules: a cycle that crashes is reported and the daemon goes on; a cycle that hangs
 * is killed after `schedule.cycleTimeoutMs`; SIGTERM during a cycle lets it run for
 * `schedule.stopGraceMs`, then kills it, and the daemon exits cleanly.
 *
 * Real processes: a master on 127.0.0.1, the built CLI run as the agent's ordinary user,
 * a release whose build hangs (it sleeps), so that the software cycle is always running.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNodeFixture, type NodeFixture } from './helpers/node-fixture.js';
import { CLI, pledger, PROJECT } from './helpers/processes.js';
import { writeTree } from './helpers/tree.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface LogLine {
  msg: string;
  level: string;
  cycle?: string;
  reason?: string;
}

/** The processes whose parent is `parent`, with their arguments. */
function childrenOf(parent: number): { pid: number; args: string[] }[] {
  const found: { pid: number; args: string[] }[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === parent) found.push({ pid: Number(entry), args: readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').filter(Boolean) });
    } catch {
      // Ended meanwhile.
    }
  }
  return found;
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return false;
  }
};

describe('node daemon: each cycle in a child process', () => {
  let fixture: NodeFixture;
  let config: string;
  let daemon: ResultPromise | undefined;
  const lines: LogLine[] = [];
  const raw: string[] = [];

  async function until<T>(what: string, probe: () => T | undefined, timeoutMs = 20_000): Promise<T> {
    for (const end = Date.now() + timeoutMs; Date.now() < end; ) {
      const value = probe();
      if (value !== undefined) return value;
      await sleep(50);
    }
    throw new Error(`timed out waiting for ${what}; log so far:\n${raw.join('\n')}`);
  }
  const softwareCycle = () => childrenOf(daemon!.pid!).find((child) => child.args.includes('software'));
  const logged = (msg: string, after = 0) => lines.slice(after).find((line) => line.msg === msg && line.cycle === 'software');

  beforeAll(async () => {
    fixture = await startNodeFixture('daemon-cycles', `127.51.${10 + Math.floor(Math.random() * 200)}.1`);
    config = path.join(fixture.agent.home, 'node.json');
    const settings = JSON.parse(readFileSync(config, 'utf8')) as Record<string, unknown>;
    settings.schedule = {
      software: '* * * * * *',
      instance: '* * * * * *',
      promise: '* * * * * *',
      usage: '* * * * * *',
      report: '* * * * * *',
      maxRandomDelayMs: 0,
      cycleTimeoutMs: 4000,
      stopGraceMs: 1500,
    };
    writeFileSync(config, JSON.stringify(settings));
    const release = writeTree({
      'software.yaml': [
        'name: slowbuild',
        'version: 1.0.0',
        'parts:',
        '  app:',
        '    files: [app.sh]',
        '    build: [[/bin/sleep, "20"]]',
        'software-types:',
        '  default:',
        '    services:',
        '      idle: [/bin/sleep, "100000"]',
        '',
      ].join('\n'),
      'app.sh': '#!/bin/sh\n',
    });
    expect((await pledger(['software', 'publish', release], { env: fixture.asAdmin })).exitCode).toBe(0);
    expect((await pledger(['supply', 'slowbuild', fixture.nodeName], { env: fixture.asAdmin })).exitCode).toBe(0);
    daemon = execa(process.execPath, [CLI, 'node', 'daemon', '--config', config], {
      uid: fixture.agent.uid,
      gid: fixture.agent.gid,
      env: { HOME: fixture.agent.home, PATH: '/usr/bin:/bin' },
      extendEnv: false,
      reject: false,
    });
    let pending = '';
    daemon.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      const complete = (pending + chunk).split('\n');
      pending = complete.pop()!;
      for (const line of complete.filter(Boolean)) {
        raw.push(line);
        lines.push(JSON.parse(line) as LogLine);
      }
    });
  });

  afterAll(async () => {
    daemon?.kill('SIGKILL');
    await daemon?.catch(() => null);
    await fixture?.close();
  });

  it('runs each cycle as `pledger node CYCLE --config FILE --json` in a child process', async () => {
    const cycle = await until('a software cycle', softwareCycle);
    expect(cycle.pid).not.toBe(daemon!.pid);
    expect(cycle.args.slice(-5)).toEqual(['node', 'software', '--config', config, '--json']);
    expect(cycle.args).toContain(CLI);
  });

  it('reports a cycle that crashes and goes on scheduling', async () => {
    const cycle = await until('a software cycle', softwareCycle);
    const seen = lines.length;
    process.kill(cycle.pid, 'SIGKILL');
    const failed = await until('the crash reported', () => logged('cycle failed', seen));
    expect(failed).toMatchObject({ level: 'error', reason: 'ended by SIGKILL' });
    // The next tick starts the cycle again, in a new process; the daemon itself is untouched.
    const next = await until('a new software cycle', () => {
      const found = softwareCycle();
      return found && found.pid !== cycle.pid ? found : undefined;
    });
    expect(next.pid).toBeGreaterThan(0);
    expect(alive(daemon!.pid!)).toBe(true);
  });

  it('kills a cycle that outlives cycleTimeoutMs and reports it', async () => {
    const cycle = await until('a software cycle', softwareCycle);
    const timedOut = await until('the timeout reported', () => logged('cycle timed out'), 15_000);
    expect(timedOut.level).toBe('error');
    expect(timedOut.reason).toMatch(/^still running after \d+ ms: killed$/);
    await until('the hung cycle gone', () => (alive(cycle.pid) ? undefined : true), 5000);
    expect(alive(daemon!.pid!)).toBe(true);
  });

  it('on SIGTERM lets a running cycle finish within stopGraceMs, then kills it and exits 0', async () => {
    const cycle = await until('a software cycle', softwareCycle);
    const seen = lines.length;
    const began = Date.now();
    daemon!.kill('SIGTERM');
    const ended = await daemon!;
    const took = Date.now() - began;
    daemon = undefined;
    expect(ended.exitCode).toBe(0);
    // At least the grace period (1.5 s); that the build's 20 s were not waited for is the kill below.
    expect(took).toBeGreaterThanOrEqual(1400);
    const after = lines.slice(seen);
    expect(after.find((line) => line.msg === 'cycle killed' && line.cycle === 'software')).toMatchObject({ level: 'error' });
    expect(after.at(-1)?.msg).toBe('daemon stopped');
    expect(alive(cycle.pid)).toBe(false);
  });
});

/** Packages the daemon's own process must not load: the cycles load what they need, and exit. */
const NOT_IN_DAEMON = ['commander', 'typebox', 'ajv', 'ajv-formats', 'nunjucks', 'yaml', 'fastify', 'kysely', 'execa', 'tar', 'pg', 'better-sqlite3'];

describe('node daemon: what its own process loads', () => {
  let fixture: NodeFixture;

  beforeAll(async () => {
    fixture = await startNodeFixture('daemon-modules', `127.52.${10 + Math.floor(Math.random() * 200)}.1`);
  });

  afterAll(async () => {
    await fixture?.close();
  });

  it('loads node-cron and the scheduler, not the CLI, the validators, the template engine or a database', async () => {
    const config = path.join(fixture.agent.home, 'node.json');
    const settings = JSON.parse(readFileSync(config, 'utf8')) as Record<string, unknown>;
    // No tick during the test: every module traced is the daemon's own.
    const never = '0 0 1 1 *';
    settings.schedule = { software: never, instance: never, promise: never, usage: never, report: never };
    writeFileSync(config, JSON.stringify(settings));
    const trace = path.join(fixture.agent.home, 'trace-daemon');
    // The hook as a flag of node, not NODE_OPTIONS, so that the supervisor the daemon starts is not traced.
    const daemon = execa(process.execPath, ['--import', path.join(PROJECT, 'scripts', 'trace-modules.mjs'), CLI, 'node', 'daemon', '--config', config], {
      uid: fixture.agent.uid,
      gid: fixture.agent.gid,
      env: { HOME: fixture.agent.home, PATH: '/usr/bin:/bin', PLEDGER_TRACE_MODULES: trace },
      extendEnv: false,
      reject: false,
    });
    let stderr = '';
    await new Promise<void>((resolve, reject) => {
      daemon.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
        stderr += chunk;
        if (stderr.includes('"daemon started"')) resolve();
      });
      void daemon.then(() => reject(new Error(`the daemon exited: ${stderr}`)));
    });
    daemon.kill('SIGTERM');
    expect((await daemon).exitCode).toBe(0);
    const urls = readFileSync(trace, 'utf8').split('\n').filter(Boolean);
    const packages = new Set(urls.map((url) => /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(url)?.[1]).filter(Boolean));
    expect(packages.has('node-cron')).toBe(true);
    expect(NOT_IN_DAEMON.filter((name) => packages.has(name))).toEqual([]);
    const modules = urls.filter((url) => url.includes('/dist/')).map((url) => url.slice(url.indexOf('/dist/') + 1));
    expect(modules).toContain('dist/slave/daemon.js');
    // The cycles' own modules stay out of the daemon.
    for (const cycle of ['instance', 'software', 'promise-cycle', 'usage', 'report', 'outbox', 'program']) {
      expect(modules.filter((m) => m.endsWith(`/${cycle}.js`))).toEqual([]);
    }
  });
});
