/** Services as real detached processes: started, recognised, stopped with everything they forked. */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { open } from 'node:fs/promises';
import { cleanEnv, groupMembers, isAlive, readProcessStat, stopProcessGroup, type ServiceRecord } from '../slave/processes.js';

let scratch: string;

/**
 * Starts a process as the supervisor does: in a group of its own, detached, its output
 * appended to a log file, and known by its pid and start time.
 */
async function startProcess(options: { argv: string[]; cwd: string; env: Record<string, string>; logFile: string }): Promise<ServiceRecord> {
  const [command, ...args] = options.argv;
  const log = await open(options.logFile, 'a', 0o640);
  try {
    const child = spawn(command!, args, { cwd: options.cwd, env: options.env, detached: true, stdio: ['ignore', log.fd, log.fd] });
    const started = await new Promise<number>((resolve, reject) => {
      child.once('spawn', () => resolve(child.pid!));
      child.once('error', (error) => reject(new Error(`cannot start ${command}: ${error.message}`)));
    });
    child.unref();
    const stat = await readProcessStat(started);
    if (!stat) throw new Error(`${command} exited at once (see ${options.logFile})`);
    return { pid: started, startTime: stat.startTime };
  } finally {
    await log.close();
  }
}
const started: ServiceRecord[] = [];

beforeAll(async () => {
  scratch = await mkdtemp(path.join(tmpdir(), 'pledger-processes-'));
});

afterAll(async () => {
  for (const record of started) await stopProcessGroup(record, 500).catch(() => {});
  await rm(scratch, { recursive: true, force: true });
});

/** Waits for the event itself; the test's own timeout bounds it, whatever the machine's load. */
async function waitFor(condition: () => Promise<boolean>): Promise<void> {
  while (!(await condition())) await new Promise((resolve) => setTimeout(resolve, 50));
}

describe('processes', () => {
  it('starts a detached service in its own group, with a clean environment and its output in a log', async () => {
    const logFile = path.join(scratch, 'env.log');
    const record = await startProcess({
      argv: ['/bin/sh', '-c', 'echo "HOME=$HOME PATH=$PATH"; echo oops >&2; env | grep -c . ; sleep 60'],
      cwd: scratch,
      env: cleanEnv(scratch),
      logFile,
    });
    started.push(record);
    expect(await isAlive(record)).toBe(true);
    expect((await readProcessStat(record.pid))?.pgid).toBe(record.pid);
    await waitFor(async () => (await readFile(logFile, 'utf8')).includes('oops'));
    const log = await readFile(logFile, 'utf8');
    expect(log).toContain(`HOME=${scratch} PATH=/usr/local/bin:/usr/bin:/bin`);
    expect(log).not.toMatch(/VITEST|NODE_OPTIONS/);
    await stopProcessGroup(record);
    expect(await isAlive(record)).toBe(false);
  });

  it('stops a service and every process it forked, even one that ignores SIGTERM', async () => {
    const ready = path.join(scratch, 'fork.ready');
    const terms = path.join(scratch, 'fork.terms');
    const record = await startProcess({
      // The grandchild notes each SIGTERM and keeps running: only the SIGKILL after the grace period ends it.
      argv: ['/bin/sh', '-c', `sh -c 'trap "echo TERM >> ${terms}" TERM; echo ready > ${ready}; while :; do sleep 1; done' & sleep 60 & wait`],
      cwd: scratch,
      env: cleanEnv(scratch),
      logFile: path.join(scratch, 'fork.log'),
    });
    started.push(record);
    // Stopped only once its trap is set: a SIGTERM before it would end it like any other process.
    await waitFor(async () => existsSync(ready) && (await groupMembers(record.pid)).length >= 3);
    await stopProcessGroup(record, 800);
    expect(await groupMembers(record.pid)).toEqual([]);
    // It got the SIGTERM and lived through it: what ended it was the SIGKILL.
    expect((await readFile(terms, 'utf8')).split('\n').filter(Boolean)).not.toEqual([]);
    // Zombies (exited, not yet reaped by their parent) go within moments: then the group is empty.
    await waitFor(async () => {
      try {
        process.kill(-record.pid, 0);
        return false;
      } catch {
        return true;
      }
    });
  });

  it('does not take a reused pid for the service', async () => {
    const record = await startProcess({ argv: ['/bin/sleep', '60'], cwd: scratch, env: cleanEnv(scratch), logFile: path.join(scratch, 'sleep.log') });
    started.push(record);
    const impostor = { pid: record.pid, startTime: record.startTime - 1 };
    expect(await isAlive(record)).toBe(true);
    expect(await isAlive(impostor)).toBe(false);
    await stopProcessGroup(impostor);
    expect(await isAlive(record)).toBe(true);
    await stopProcessGroup(record);
    expect(await isAlive(record)).toBe(false);
  });

  it('reads a start time even when the command name holds spaces and parentheses', async () => {
    const stat = await readProcessStat(process.pid);
    expect(stat?.startTime).toBeGreaterThan(0);
    expect(await readProcessStat(2 ** 22 + 1)).toBeUndefined();
  });
});
