/**
 * The node agent's runtime as its operator and its users meet it, with real parts: a
 * master process, the `pledger` CLI, and `pledger node ...` run as an ordinary user,
 * whose supervisor runs the services. CPU metered and billed, promise states and their
 * since-times in `pledger info`, the exit codes of one-shot runs, the lock between two
 * runs, promise intervals, and the supervisor's backoff.
 */
import { chownSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InstanceView, MovementView } from '../protocol/api.js';
import type { RunReport } from '../slave/result.js';
import { startNodeFixture, type NodeFixture } from './helpers/node-fixture.js';
import { pledger, processesMentioning } from './helpers/processes.js';
import { writeTree } from './helpers/tree.js';

/** Busy half of every 100 ms: CPU time the meter must see. */
const BURNER = `setInterval(() => {
  const end = Date.now() + 50;
  while (Date.now() < end);
}, 100);
`;

const release = () =>
  writeTree({
    'software.yaml': [
      'name: runtime',
      'version: 1.0.0',
      'software-types:',
      '  default:',
      '    files:',
      '      bin/burn.cjs: burn.cjs',
      '    services:',
      `      burn: ['${process.execPath}', '{{ partition.path }}/bin/burn.cjs']`,
      '  forking:',
      '    services:',
      `      work: [/bin/sh, -c, "while [ ! -e var/go ]; do sleep 0.1; done; for i in 1 2 3 4 5; do '${process.execPath}' -e 'for (let i = 0; i < 2e8; i++);'; done; touch var/done; exec sleep 300"]`,
      '  flagged:',
      '    services:',
      '      idle: [/bin/sleep, "300"]',
      '    promises:',
      '      flag: { file: var/flag, interval: 1, timeout: 1 }',
      '  broken:',
      '    files:',
      '      etc/app.conf: broken.conf.njk',
      '    services:',
      '      idle: [/bin/sleep, "300"]',
      '  slow:',
      '    services:',
      '      slow: [/bin/sh, -c, "echo started >> var/starts; sleep 3; touch var/ready; exec sleep 300"]',
      '    promises:',
      '      ready: { file: var/ready, timeout: 20 }',
      '  periodic:',
      '    services:',
      '      idle: [/bin/sleep, "300"]',
      '    promises:',
      '      checked: { command: [/bin/true], interval: 5 }',
      '  steady:',
      '    parameters: schema/steady.json',
      '    services:',
      '      idle: [/bin/sleep, "300"]',
      '    promises:',
      '      up: { command: [/bin/true] }',
      '      flag: { file: var/flag, timeout: 1 }',
      '  crashing:',
      '    services:',
      '      crash: [/bin/sh, -c, "date +%s%3N >> var/starts; exit 3"]',
      '',
    ].join('\n'),
    'burn.cjs': BURNER,
    'broken.conf.njk': 'colour = {{ parameters.colour }}\n',
    'schema/steady.json': JSON.stringify({ type: 'object', properties: { round: { type: 'integer' } }, additionalProperties: false }),
  });

/** What the supervisor is told: restarts after 300, 600, then 1200 ms at most; never a crash loop. */
const SUPERVISOR = { backoffFirstMs: 300, backoffMaxMs: 1200, crashLoopExits: 1000 };

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('the node runtime, through the CLI', () => {
  let f: NodeFixture;
  const user = (...args: string[]) => pledger(args, { env: f.asUser });
  const info = async (title: string) => (await user('info', title, '--json')).json<InstanceView>();
  const partitionDir = async (title: string) => path.join(f.root, 'partitions', (await info(title)).partition!);
  /** Requests `title` of type `type` and deploys it with one `pledger node instance`. */
  const deploy = async (title: string, type: string) => {
    expect((await user('request', title, 'runtime', '--type', type)).exitCode).toBe(0);
    return f.node('instance');
  };
  /** Destroys `title`, so that the next test's runs meet only their own instance. */
  const destroy = async (title: string) => {
    expect((await user('destroy', title)).exitCode).toBe(0);
    const run = await f.node('instance');
    expect(run.exitCode, run.stdout + run.stderr).toBe(0);
  };

  /**
   * Takes a usage sample as if it were an hour earlier: the hour it lands in is over by
   * the time `reportedUsage` closes it, for the master's clock as for the node's (the
   * master takes no usage for an hour not over). The meter's clock is the only thing chosen.
   */
  /**
   * The samples are an hour old, and the master bills only hours of an instance's life:
   * the instance is taken to have been requested two hours ago.
   */
  const requestedHoursAgo = (title: string) => {
    const sqlite = new SqliteDatabase(f.master.database.replace(/^sqlite:/, ''));
    try {
      sqlite.prepare('UPDATE instances SET created_at = ? WHERE title = ?').run(new Date(Date.now() - 2 * 3_600_000).toISOString(), title);
    } finally {
      sqlite.close();
    }
  };
  const sampleUsage = () => f.node('usage', { NODE_OPTIONS: '--import=data:text/javascript,Date.now=(n=>()=>n()-3600000)(Date.now)' });
  /** Closes the hour of the samples taken so far, reports it, and returns what the master recorded of `title`. */
  const reportedUsage = async (title: string) => {
    const closing = await f.node('usage');
    expect(closing.exitCode, closing.stderr).toBe(0);
    expect(closing.json<{ hoursReported: number }>().hoursReported).toBeGreaterThanOrEqual(1);
    const report = await f.node('report');
    expect(report.exitCode, report.stderr).toBe(0);
    expect(report.json()).toMatchObject({ pending: 0, offline: false });
    const sqlite = new SqliteDatabase(f.master.database.replace(/^sqlite:/, ''), { readonly: true });
    try {
      return sqlite
        .prepare(
          `SELECT sum(u.cpu_ms) AS cpu, sum(u.memory_byte_seconds) AS memory, sum(u.disk_byte_seconds) AS disk, sum(u.uptime_seconds) AS uptime
           FROM usage_hours u JOIN instances i ON i.id = u.instance_id WHERE i.title = ?`,
        )
        .get(title) as { cpu: number; memory: number; disk: number; uptime: number };
    } finally {
      sqlite.close();
    }
  };

  beforeAll(async () => {
    f = await startNodeFixture('runtime-node', `127.51.${10 + Math.floor(Math.random() * 200)}.1`, 2, { supervisor: SUPERVISOR, promiseSummarySeconds: 1 });
    expect((await pledger(['software', 'publish', release()], { env: f.asAdmin })).exitCode).toBe(0);
    expect((await pledger(['supply', 'runtime', f.nodeName], { env: f.asAdmin })).exitCode).toBe(0);
    const built = await f.node('software');
    expect(built.exitCode, built.stderr).toBe(0);
  }, 120_000);

  afterAll(async () => {
    await f?.close();
  });

  it('meters the CPU a service burns and reports it to the master with its memory, disk and uptime', async () => {
    const run = await deploy('burn', 'default');
    requestedHoursAgo('burn');
    expect(run.exitCode, run.stdout + run.stderr).toBe(0);
    expect(await info('burn')).toMatchObject({ status: 'started', ready: true });

    expect((await sampleUsage()).json()).toEqual({ partitions: 1, hoursReported: 0 });
    const baseline = Date.now();
    await sleep(1500);
    expect((await sampleUsage()).exitCode).toBe(0);
    const metered = Date.now() - baseline;
    const usage = await reportedUsage('burn');
    expect(usage.cpu).toBeGreaterThan(0);
    // One thread, busy half of the time: never more CPU than the time between the samples.
    expect(usage.cpu).toBeLessThanOrEqual(metered + 1000);
    expect(usage.memory).toBeGreaterThan(0);
    expect(usage.disk).toBeGreaterThan(0);
    expect(usage.uptime).toBeGreaterThan(0);
    await destroy('burn');
  });

  it('counts the CPU of child processes that started and ended between two samples', async () => {
    const run = await deploy('forks', 'forking');
    requestedHoursAgo('forks');
    expect(run.exitCode, run.stdout + run.stderr).toBe(0);
    const dir = await partitionDir('forks');
    expect((await sampleUsage()).exitCode).toBe(0);
    writeFileSync(path.join(dir, 'var', 'go'), '');
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline && !existsSync(path.join(dir, 'var', 'done'))) await sleep(100);
    expect(existsSync(path.join(dir, 'var', 'done'))).toBe(true);
    expect((await sampleUsage()).exitCode).toBe(0);

    // What the children used, as the kernel counts it for the service, which reaped them all.
    const leader = (await f.node('boot')).json<{ service: string; pid: number }[]>().find((s) => s.service === 'work')!.pid;
    const fields = readFileSync(`/proc/${leader}/stat`, 'utf8').split(') ')[1]!.split(' ');
    const childrenMs = (Number(fields[13]) + Number(fields[14])) * 10;
    expect(childrenMs).toBeGreaterThan(300);
    const usage = await reportedUsage('forks');
    expect(usage.cpu).toBeGreaterThanOrEqual(childrenMs * 0.9);
    expect(usage.cpu).toBeLessThanOrEqual(childrenMs + 200);
    await destroy('forks');
  });

  it('shows a failing promise with its state and a since-time that holds while the state does, and moves when it recovers', async () => {
    const run = await deploy('flagged', 'flagged');
    // A promise that does not hold is exit 2, not a failure of the run.
    expect(run.exitCode, run.stdout + run.stderr).toBe(2);
    expect(run.json<RunReport>().results).toEqual([
      { item: expect.stringMatching(/^part\d \(flagged\)$/), status: 'failed', message: 'promise flag: var/flag does not exist', promiseFailure: true },
    ]);

    const text = async () => {
      const shown = await user('info', 'flagged');
      expect(shown.exitCode).toBe(0);
      const line = /^promise\.flag:\s+(\w+) since (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z): (.*)$/m.exec(shown.stdout);
      expect(line, shown.stdout).not.toBeNull();
      return { status: line![1]!, since: line![2]!, message: line![3]! };
    };
    const json = async () => (await info('flagged')).promises;
    const reports = async () => (await user('info', 'flagged', '--history', '--json')).json<MovementView[]>().filter((m) => m.kind === 'instance.promises').length;

    const failing = await text();
    expect(failing).toEqual({ status: 'critical', since: expect.any(String), message: 'promise flag: var/flag does not exist' });
    expect(await json()).toEqual([{ name: 'flag', status: 'critical', message: 'promise flag: var/flag does not exist', since: failing.since }]);

    // Checked again, and reported again (the summary is due every second): still failing, since the same time.
    const before = await reports();
    await sleep(1100);
    expect((await f.node('promise')).exitCode).toBe(2);
    expect(await reports()).toBeGreaterThan(before);
    expect(await text()).toEqual(failing);
    expect((await json())[0]).toMatchObject({ status: 'critical', since: failing.since });

    const flag = path.join(await partitionDir('flagged'), 'var', 'flag');
    writeFileSync(flag, '');
    chownSync(flag, f.agent.uid, f.agent.gid);
    await sleep(1100);
    expect((await f.node('promise')).exitCode).toBe(0);
    const recovered = await text();
    expect(recovered.status).toBe('ok');
    expect(Date.parse(recovered.since)).toBeGreaterThan(Date.parse(failing.since));
    expect((await json())[0]).toMatchObject({ status: 'ok', since: recovered.since });
    await destroy('flagged');
  });

  it('keeps a promise\'s since-time across redeployments that leave its state as it was, and moves it when one changes it', async () => {
    const request = async (round: number) => {
      expect((await user('request', 'steady', 'runtime', '--type', 'steady', '--state', 'started', '--parameters', `round:=${round}`)).exitCode).toBe(0);
      return f.node('instance');
    };
    const shown = async () => {
      const view = await info('steady');
      return { serial: view.serial, promises: Object.fromEntries(view.promises.map((p) => [p.name, { status: p.status, since: p.since }])) };
    };
    expect((await request(0)).exitCode).toBe(2);
    const first = await shown();
    expect(first.promises).toEqual({ up: { status: 'ok', since: expect.any(String) }, flag: { status: 'critical', since: expect.any(String) } });

    await sleep(1100);
    expect((await request(1)).exitCode).toBe(2);
    const redeployed = await shown();
    expect(redeployed.serial).toBeGreaterThan(first.serial);
    expect(redeployed.promises).toEqual(first.promises);

    const flag = path.join(await partitionDir('steady'), 'var', 'flag');
    writeFileSync(flag, '');
    chownSync(flag, f.agent.uid, f.agent.gid);
    await sleep(1100);
    expect((await request(2)).exitCode).toBe(0);
    const fixed = await shown();
    expect(fixed.serial).toBeGreaterThan(redeployed.serial);
    expect(fixed.promises.up).toEqual(first.promises.up);
    expect(fixed.promises.flag!.status).toBe('ok');
    expect(Date.parse(fixed.promises.flag!.since)).toBeGreaterThan(Date.parse(first.promises.flag!.since));

    // Stopped, nothing held: started again, every promise starts afresh.
    expect((await user('request', 'steady', 'runtime', '--state', 'stopped')).exitCode).toBe(0);
    expect((await f.node('instance')).exitCode).toBe(0);
    await sleep(1100);
    expect((await request(3)).exitCode).toBe(0);
    const restarted = await shown();
    expect(Date.parse(restarted.promises.up!.since)).toBeGreaterThan(Date.parse(fixed.promises.flag!.since));
    await destroy('steady');
  });

  it('exits 1 when a deployment fails: a template that uses an undefined value', async () => {
    const run = await deploy('broken', 'broken');
    expect(run.exitCode, run.stdout + run.stderr).toBe(1);
    const [result] = run.json<RunReport>().results;
    expect(result).toMatchObject({ item: expect.stringMatching(/^part\d \(broken\)$/), status: 'failed' });
    expect(result!.promiseFailure).toBeUndefined();
    expect(result!.message).toMatch(/^cannot deploy: .*broken\.conf\.njk.*parameters\.colour.* is undefined$/);
    expect(await info('broken')).toMatchObject({ status: 'error', message: result!.message });
    expect(existsSync(path.join(await partitionDir('broken'), 'etc', 'app.conf'))).toBe(false);
    await destroy('broken');
  });

  it('exits 1 when a build fails, with the end of its log', async () => {
    const failing = writeTree({
      'software.yaml': "name: unbuildable\nversion: 1.0.0\nparts:\n  x:\n    build:\n      - [/bin/sh, -c, 'echo the-reason >&2; exit 3']\nsoftware-types:\n  default: {}\n",
    });
    expect((await pledger(['software', 'publish', failing], { env: f.asAdmin })).exitCode).toBe(0);
    expect((await pledger(['supply', 'unbuildable', f.nodeName], { env: f.asAdmin })).exitCode).toBe(0);
    const run = await f.node('software');
    expect(run.exitCode, run.stdout + run.stderr).toBe(1);
    expect(run.json<RunReport>().results).toEqual([
      { item: 'runtime@1.0.0', status: 'unchanged' },
      { item: 'unbuildable@1.0.0', status: 'failed', message: expect.stringMatching(/^part x: \/bin\/sh exited with code 3\n--- last lines of build.log ---\n[\s\S]*\nthe-reason$/) },
    ]);
    expect((await pledger(['supply', 'unbuildable', f.nodeName, '--destroy'], { env: f.asAdmin })).exitCode).toBe(0);
  });

  it('lets one of two runs started at once do the work: the other exits with a conflict, and no service starts twice', async () => {
    expect((await user('request', 'slow', 'runtime', '--type', 'slow')).exitCode).toBe(0);
    const runs = await Promise.all([f.node('instance'), f.node('instance')]);
    const winner = runs.find((r) => r.exitCode === 0);
    const loser = runs.find((r) => r.exitCode !== 0);
    expect(winner, runs.map((r) => r.stderr).join('\n')).toBeDefined();
    expect(winner!.json<RunReport>().results).toEqual([{ item: expect.stringMatching(/^part\d \(slow\)$/), status: 'done' }]);
    // CONFLICT: exit 5, and a message that names what the other run is doing.
    expect(loser?.exitCode).toBe(5);
    expect(JSON.parse(loser!.stderr)).toEqual({
      error: { code: 'CONFLICT', message: expect.stringMatching(/^another node agent run \(pid \d+\) is processing instances$/), hint: 'wait for it to finish' },
    });

    expect(readFileSync(path.join(await partitionDir('slow'), 'var', 'starts'), 'utf8')).toBe('started\n');
    const services = (await f.node('boot')).json<{ service: string; state: string }[]>();
    expect(services).toEqual([expect.objectContaining({ service: 'slow', state: 'running' })]);
    await destroy('slow');
  });

  it('checks a promise again only once its interval has passed', async () => {
    const run = await deploy('periodic', 'periodic');
    expect(run.exitCode, run.stdout + run.stderr).toBe(0);
    const results = path.join(await partitionDir('periodic'), '.pledger', 'promises.json');
    const checkedAt = () => (JSON.parse(readFileSync(results, 'utf8')) as { promises: Record<string, { checkedAt: number }> }).promises.checked!.checkedAt;
    const deployed = checkedAt();

    const early = await f.node('promise');
    expect(early.exitCode, early.stderr).toBe(0);
    expect(early.json<RunReport>().results).toEqual([]);
    expect(checkedAt()).toBe(deployed);

    await sleep(Math.max(0, deployed + 5000 - Date.now()));
    const due = await f.node('promise');
    expect(due.exitCode, due.stderr).toBe(0);
    expect(due.json<RunReport>().results).toEqual([{ item: expect.stringMatching(/^part\d$/), status: 'unchanged' }]);
    expect(checkedAt()).toBeGreaterThanOrEqual(deployed + 5000);
    await destroy('periodic');
  });

  it('restarts a service that always crashes after delays that double up to the configured cap, from a supervisor run as the agent user', async () => {
    const run = await deploy('crashing', 'crashing');
    expect(run.exitCode, run.stdout + run.stderr).toBe(0);
    const supervisors = processesMentioning(f.root).filter((p) => p.cmdline.includes('supervisor-main'));
    expect(supervisors.map((p) => p.uid)).toEqual([f.agent.uid]);

    const starts = path.join(await partitionDir('crashing'), 'var', 'starts');
    const times = () => readFileSync(starts, 'utf8').trim().split('\n').map(Number);
    // At once, then 300, 600, 1200 and 1200 ms: some 3.3 s.
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline && (!existsSync(starts) || times().length < 6)) await sleep(100);
    const gaps = times().slice(0, 6).map((t, i, all) => (i === 0 ? 0 : t - all[i - 1]!)).slice(1);
    expect(gaps).toHaveLength(5);
    expect(gaps[0]).toBeLessThan(250);
    // Never sooner than the delay; later by what a busy machine adds to a timer, well short of the next doubling.
    for (const [i, expected] of [300, 600, 1200, 1200].entries()) {
      expect(gaps[i + 1], `gaps ${gaps.join(', ')}`).toBeGreaterThanOrEqual(expected - 5);
      expect(gaps[i + 1], `gaps ${gaps.join(', ')}`).toBeLessThan(expected + 400);
    }
    await destroy('crashing');
  });
});
