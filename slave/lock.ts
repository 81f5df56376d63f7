/**
 * One run at a time per task. Cron starts the agent every minute and a build or a
 * slow promise can outlast that minute: two runs deploying the same partition would
 * start its services twice. A lock file names the pid and start time of its owner, so
 * a lock left by a crashed run is recognised as stale and taken over.
 */
import { link, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { PledgerError } from '../protocol/errors.js';
import { randomToken } from './files.js';
import { isAlive, readProcessStat, type ServiceRecord } from './processes.js';

export async function withLock<T>(file: string, task: string, run: () => Promise<T>): Promise<T> {
  await acquire(file, task);
  try {
    return await run();
  } finally {
    await rm(file, { force: true });
  }
}

async function acquire(file: string, task: string): Promise<void> {
  const me: ServiceRecord = { pid: process.pid, startTime: (await readProcessStat(process.pid))?.startTime ?? 0 };
  await mkdir(path.dirname(file), { recursive: true });
  // Written aside then linked into place: the lock appears complete or not at all.
  const candidate = `${file}.${randomToken(6)}`;
  await writeFile(candidate, JSON.stringify(me), { mode: 0o600 });
  try {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        await link(candidate, file);
        return;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      }
      const owner = await readOwner(file);
      if (owner && (await isAlive(owner))) {
        throw new PledgerError('CONFLICT', `another node agent run (pid ${owner.pid}) is ${task}`, { hint: 'wait for it to finish' });
      }
      await rm(file, { force: true });
    }
    throw new PledgerError('CONFLICT', `another node agent run is ${task}`, { hint: 'wait for it to finish' });
  } finally {
    await rm(candidate, { force: true });
  }
}

async function readOwner(file: string): Promise<ServiceRecord | undefined> {
  try {
    const owner = JSON.parse(await readFile(file, 'utf8')) as Partial<ServiceRecord>;
    if (typeof owner.pid === 'number' && typeof owner.startTime === 'number') return { pid: owner.pid, startTime: owner.startTime };
  } catch {
    // Gone meanwhile, or damaged: either way nobody holds it.
  }
  return undefined;
}
