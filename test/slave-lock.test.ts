/** Two runs of the same task never overlap; a lock left by a crashed run is taken over. */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROJECT } from './helpers/processes.js';
import { withLock } from '../slave/lock.js';
import { readProcessStat } from '../slave/processes.js';

let scratch: string;

beforeAll(async () => {
  scratch = await mkdtemp(path.join(tmpdir(), 'pledger-lock-'));
});

afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

describe('lock', () => {
  it('refuses a second run while the first holds the lock, and frees it after', async () => {
    const file = path.join(scratch, 'state', 'instances.lock');
    let inner: unknown;
    await withLock(file, 'processing instances', async () => {
      inner = await withLock(file, 'processing instances', async () => 'ran').catch((error: unknown) => error);
    });
    expect(inner).toMatchObject({ code: 'CONFLICT', message: `another node agent run (pid ${process.pid}) is processing instances` });
    await expect(stat(file)).rejects.toThrow();
    expect(await withLock(file, 'processing instances', async () => 'ran')).toBe('ran');
  });

  it('takes over a lock whose owner is gone', async () => {
    const file = path.join(scratch, 'stale.lock');
    const startTime = (await readProcessStat(process.pid))!.startTime;
    await writeFile(file, JSON.stringify({ pid: process.pid, startTime: startTime + 1 }));
    expect(await withLock(file, 'installing software', async () => 'ran')).toBe('ran');
    await writeFile(file, 'torn');
    expect(await withLock(file, 'installing software', async () => 'ran')).toBe('ran');
  });

  it('takes over a stale lock even when a run crashed while taking it over', async () => {
    const file = path.join(scratch, 'crashed-reaper.lock');
    const stale = JSON.stringify(await deadProcess());
    await writeFile(file, stale);
    // Where a run reserves the removal of that stale content, left behind by a run that died.
    const digest = createHash('sha256').update(path.basename(file)).update('\0').update(stale).digest('base64url').slice(0, 22);
    await writeFile(`${file}.reap-${digest}`, JSON.stringify({ ...(await deadProcess()), nonce: 'x' }));
    expect(await withLock(file, 'processing instances', async () => 'ran')).toBe('ran');
    expect((await readdir(scratch)).filter((name) => name.startsWith('crashed-reaper'))).toEqual([]);
  });

  it('lets exactly one of many runs take over a stale lock at once, and never two at the same time', async () => {
    const file = path.join(scratch, 'race', 'instances.lock');
    await mkdir(path.dirname(file));
    const dead = await deadProcess();
    for (let round = 0; round < 6; round++) {
      await writeFile(file, JSON.stringify(dead));
      const runs = await contend(file, 8);
      const held = runs.filter((run) => run.held).sort((a, b) => a.from - b.from);
      expect(held.length, `round ${round}`).toBeGreaterThanOrEqual(1);
      for (let i = 1; i < held.length; i++) expect(held[i]!.from, `round ${round}: two runs held the lock at once`).toBeGreaterThan(held[i - 1]!.to);
      // Every run that did not hold the lock was refused with a conflict (there may be none: runs can follow one another).
      expect(runs.filter((run) => !run.held && run.code !== 'CONFLICT')).toEqual([]);
      await expect(stat(file)).rejects.toThrow();
      expect((await readdir(path.dirname(file))).filter((name) => name !== 'instances.lock')).toEqual([]);
    }
  }, 90_000);
});

/** The record of a process that has exited: its pid and start time name nobody alive. */
async function deadProcess(): Promise<{ pid: number; startTime: number }> {
  const child = spawn('sleep', ['30'], { stdio: 'ignore' });
  await new Promise((resolve) => child.once('spawn', resolve));
  const startTime = (await readProcessStat(child.pid!))!.startTime;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
  return { pid: child.pid!, startTime };
}

interface Run {
  held: boolean;
  from: number;
  to: number;
  code?: string;
}

/**
 * Starts `count` processes that each try the lock once, holding it 150 ms; they are
 * released together once all are ready. Times are the system's monotonic clock, in ns.
 */
async function contend(file: string, count: number): Promise<Run[]> {
  const script = `
    import { withLock } from ${JSON.stringify(path.join(PROJECT, 'dist', 'slave', 'lock.js'))};
    process.stdout.write('ready\\n');
    await new Promise((resolve) => process.stdin.once('data', resolve));
    let run;
    try {
      await withLock(process.argv[1], 'processing instances', async () => {
        const from = process.hrtime.bigint();
        await new Promise((resolve) => setTimeout(resolve, 150));
        run = { held: true, from: Number(from), to: Number(process.hrtime.bigint()) };
      });
    } catch (error) {
      run = { held: false, from: 0, to: 0, code: error.code ?? String(error) };
    }
    process.stdout.write(JSON.stringify(run) + '\\n');
    process.exit(0);
  `;
  const children = Array.from({ length: count }, () => spawn(process.execPath, ['--input-type=module', '-e', script, file], { stdio: ['pipe', 'pipe', 'inherit'] }));
  const lines = children.map((child) => createInterface({ input: child.stdout! })[Symbol.asyncIterator]());
  try {
    for (const line of lines) expect((await line.next()).value).toBe('ready');
    for (const child of children) child.stdin!.write('go\n');
    const runs: Run[] = [];
    for (const line of lines) runs.push(JSON.parse((await line.next()).value as string) as Run);
    return runs;
  } finally {
    for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
  }
}
