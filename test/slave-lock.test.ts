/** Two runs of the same task never overlap; a lock left by a crashed run is taken over. */
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
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
});
