/**
 * Usage metering, per partition, from /proc: the CPU time of the partition's process
 * trees, its resident memory and its disk use integrated over time (byte-seconds), and
 * the seconds its instance was started. Each sample adds what happened since the
 * previous one to the instance's row of the current UTC hour (an interval that spans
 * two hours is split between them); once an hour is over, its row becomes one
 * `instance.usage` event in the outbox, in the same transaction, with an id derived
 * from (instance, hour) so that a resend after a crash is recognised as the same record.
 *
 * A gap between samples longer than MAX_GAP_MS (the node was down, the daemon stopped)
 * is not billed beyond MAX_GAP_MS: nothing ran on a node that was down.
 */
import { createHash } from 'node:crypto';
import { lstat, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { UsageEvent } from '../protocol/api.js';
import type { NodeConfig } from './config.js';
import { readJsonFile } from './files.js';
import { withLock } from './lock.js';
import type { Logger } from './log.js';
import { readMeta, writeMeta, type NodeDatabase } from './node-db.js';
import { openOutbox, type Outbox } from './outbox.js';
import { readPartitionState } from './partition-state.js';
import { lockPath, partitionPath, stateRoot, supervisorStatePath } from './paths.js';

/**
 * The master's bound on memory and disk byte-seconds per hour (protocol/api.ts, 1 TiB
 * held for the hour; not imported: the agent loads no schema values). An hour above it
 * is reported at the bound rather than refused and lost.
 */
export const MAX_BYTE_SECONDS_PER_HOUR = 3600 * 2 ** 40;
import { CLOCK_TICKS_PER_SECOND, processTrees, readProcessTable, type ProcessInfo } from './processes.js';

const HOUR_MS = 3600_000;
export const MAX_GAP_MS = 5 * 60_000;

/** What the previous sample saw of one partition. */
interface LastSample {
  instance: string;
  at: number;
  /** CPU ticks of each process, keyed `pid:startTime` so that a reused pid is a new process. */
  cpu: Record<string, number>;
  /** CPU ticks of the children each process reaped, by the same key (absent from samples of older agents). */
  reaped?: Record<string, number>;
  /** The parent of each process whose parent is in the partition, by the same key. */
  parents?: Record<string, string>;
}

interface Measured {
  reference: string;
  instance: string;
  started: boolean;
  processes: ProcessInfo[];
  diskBytes: number;
}

export interface SampleReport {
  partitions: number;
  /** Usage events queued for hours that ended. */
  hoursReported: number;
}

export async function meterUsage(config: NodeConfig, log: Logger, now = Date.now()): Promise<SampleReport> {
  return withLock(lockPath(config.root, 'usage'), 'metering usage', async () => {
    const outbox = openOutbox(config);
    try {
      return await sampleInto(config, outbox, now, log);
    } finally {
      outbox.close();
    }
  });
}

/** Takes one sample of every partition that hosts an instance, then reports the hours that ended. */
export async function sampleInto(config: NodeConfig, outbox: Outbox, now: number, log: Logger): Promise<SampleReport> {
  const measured = await measure(config);
  const db = outbox.database;
  const pageSize = await systemPageSize();
  db.transaction(() => {
    for (const partition of measured) record(db, partition, now, pageSize);
  })();
  const hoursReported = reportCompletedHours(db, outbox, now);
  if (hoursReported > 0) log.info('usage hours reported', { count: hoursReported });
  return { partitions: measured.length, hoursReported };
}

async function measure(config: NodeConfig): Promise<Measured[]> {
  const supervised = ((await readJsonFile(supervisorStatePath(config.root)).catch(() => undefined)) ?? { partitions: {} }) as {
    partitions: Record<string, { instance: { id: string }; services: Record<string, { pid?: number }> }>;
  };
  const references = (await readdir(path.join(stateRoot(config.root), 'partitions')).catch(() => [] as string[]))
    .filter((name) => name.endsWith('.json'))
    .map((name) => name.slice(0, -'.json'.length));
  const table = await readProcessTable();
  const measured: Measured[] = [];
  for (const reference of references.sort()) {
    const state = await readPartitionState(config.root, reference).catch(() => undefined);
    if (!state || state.status === 'destroyed') continue;
    const entry = supervised.partitions[reference];
    const groups = new Set<number>();
    if (entry?.instance.id === state.instanceId) for (const service of Object.values(entry.services)) if (service.pid) groups.add(service.pid);
    measured.push({
      reference,
      instance: state.instanceId,
      started: state.status === 'started',
      processes: processTrees(table, groups, true),
      diskBytes: await diskUsage(partitionPath(config.root, reference)),
    });
  }
  return measured;
}

function record(db: NodeDatabase, partition: Measured, now: number, pageSize: number): void {
  const key = `usage.last.${partition.reference}`;
  const previousText = readMeta(db, key);
  const previous = previousText ? (JSON.parse(previousText) as LastSample) : undefined;
  const sample = cpuSample(partition.processes);
  writeMeta(db, key, JSON.stringify({ instance: partition.instance, at: now, ...sample } satisfies LastSample));
  // The first sample of an instance is the baseline: what ran before it is not known.
  if (!previous || previous.instance !== partition.instance || now <= previous.at) return;

  const ticks = cpuTicksSince(previous, sample);
  const billedMs = Math.min(now - previous.at, MAX_GAP_MS);
  const seconds = billedMs / 1000;
  const rssBytes = partition.processes.reduce((sum, p) => sum + p.rssPages * pageSize, 0);
  const totals = {
    cpuMs: (ticks * 1000) / CLOCK_TICKS_PER_SECOND,
    memory: rssBytes * seconds,
    disk: partition.diskBytes * seconds,
    uptime: partition.started ? seconds : 0,
  };
  const add = db.prepare(`
    INSERT INTO usage_hours (instance, hour, partition, cpu_ms, memory_byte_s, disk_byte_s, uptime_s)
    VALUES (@instance, @hour, @partition, @cpu, @memory, @disk, @uptime)
    ON CONFLICT (instance, hour) DO UPDATE SET
      cpu_ms = cpu_ms + excluded.cpu_ms, memory_byte_s = memory_byte_s + excluded.memory_byte_s,
      disk_byte_s = disk_byte_s + excluded.disk_byte_s, uptime_s = uptime_s + excluded.uptime_s`);
  // Split [now - billed, now] between the hours it covers, in proportion to the time in each.
  for (let from = now - billedMs; from < now; ) {
    const hourStart = Math.floor(from / HOUR_MS) * HOUR_MS;
    const to = Math.min(now, hourStart + HOUR_MS);
    const share = (to - from) / billedMs;
    add.run({
      instance: partition.instance,
      hour: new Date(hourStart).toISOString(),
      partition: partition.reference,
      cpu: totals.cpuMs * share,
      memory: totals.memory * share,
      disk: totals.disk * share,
      uptime: totals.uptime * share,
    });
    from = to;
  }
}

export type CpuSample = Required<Pick<LastSample, 'cpu' | 'reaped' | 'parents'>>;

export function cpuSample(processes: ProcessInfo[]): CpuSample {
  const keyOf = new Map(processes.map((p) => [p.pid, `${p.pid}:${p.startTime}`]));
  const sample: CpuSample = { cpu: {}, reaped: {}, parents: {} };
  for (const p of processes) {
    const key = keyOf.get(p.pid)!;
    sample.cpu[key] = p.cpuTicks;
    sample.reaped[key] = p.reapedCpuTicks;
    const parent = keyOf.get(p.ppid);
    if (parent) sample.parents[key] = parent;
  }
  return sample;
}

/**
 * CPU ticks the partition used between two samples: what each process used itself, and
 * what the children it reaped meanwhile used (a service that forks a worker per job
 * does its work in processes no sample ever sees). A child seen by the previous sample
 * and reaped since had its ticks up to then counted already: they are taken off the
 * reaped ticks of its nearest ancestor still there, which inherited them.
 */
export function cpuTicksSince(previous: LastSample, current: CpuSample): number {
  const inherited = new Map<string, number>();
  for (const [key, ticks] of Object.entries(previous.cpu)) {
    if (key in current.cpu) continue;
    let ancestor = previous.parents?.[key];
    while (ancestor !== undefined && !(ancestor in current.cpu)) ancestor = previous.parents?.[ancestor];
    if (ancestor !== undefined) inherited.set(ancestor, (inherited.get(ancestor) ?? 0) + ticks + (previous.reaped?.[key] ?? 0));
  }
  let total = 0;
  for (const [key, ticks] of Object.entries(current.cpu)) {
    total += Math.max(0, ticks - (previous.cpu[key] ?? 0));
    // A process the previous sample saw without counting its children (an older agent's sample) starts counting them now.
    const reapedBefore = previous.reaped?.[key] ?? (key in previous.cpu ? current.reaped[key]! : 0);
    total += Math.max(0, current.reaped[key]! - reapedBefore - (inherited.get(key) ?? 0));
  }
  return total;
}

/** The id of the usage record of (instance, hour): the same whoever computes it, whenever. */
export function usageEventId(instance: string, hour: string): string {
  return `u-${createHash('sha256').update(`${instance}\n${hour}`).digest('base64url').slice(0, 40)}`;
}

interface UsageRow {
  instance: string;
  hour: string;
  partition: string;
  cpu_ms: number;
  memory_byte_s: number;
  disk_byte_s: number;
  uptime_s: number;
}

/** Turns every hour that ended into an event, once: the row is marked sent in the same transaction. */
export function reportCompletedHours(db: NodeDatabase, outbox: Outbox, now: number): number {
  const currentHour = new Date(Math.floor(now / HOUR_MS) * HOUR_MS).toISOString();
  const rows = db.prepare('SELECT * FROM usage_hours WHERE sent = 0 AND hour < ? ORDER BY hour, instance').all(currentHour) as UsageRow[];
  if (rows.length === 0) return 0;
  const markSent = db.prepare('UPDATE usage_hours SET sent = 1 WHERE instance = ? AND hour = ?');
  db.transaction(() => {
    for (const row of rows) {
      const event: UsageEvent = {
        id: usageEventId(row.instance, row.hour),
        at: new Date(now).toISOString(),
        type: 'instance.usage',
        partition: row.partition,
        instance: row.instance,
        hour: row.hour,
        cpuMilliseconds: Math.round(row.cpu_ms),
        memoryByteSeconds: Math.min(MAX_BYTE_SECONDS_PER_HOUR, Math.round(row.memory_byte_s)),
        diskByteSeconds: Math.min(MAX_BYTE_SECONDS_PER_HOUR, Math.round(row.disk_byte_s)),
        uptimeSeconds: Math.min(3600, Math.round(row.uptime_s)),
      };
      outbox.addNow(event);
      markSent.run(row.instance, row.hour);
    }
    // Rows sent a week ago are only history: the master has them.
    db.prepare('DELETE FROM usage_hours WHERE sent = 1 AND hour < ?').run(new Date(now - 7 * 24 * HOUR_MS).toISOString());
  })();
  return rows.length;
}

/** Bytes the partition's files take on disk (allocated blocks), symbolic links not followed. */
export async function diskUsage(dir: string): Promise<number> {
  let total = 0;
  const walk = async (current: string): Promise<void> => {
    let entries;
    try {
      entries = await readdir(current, { withFileTypes: true });
    } catch {
      return;
    }
    await Promise.all(
      entries.map(async (entry) => {
        const full = path.join(current, entry.name);
        const info = await lstat(full).catch(() => null);
        if (!info) return;
        total += info.blocks * 512;
        if (entry.isDirectory()) await walk(full);
      }),
    );
  };
  await walk(dir);
  return total;
}

let pageSize: number | undefined;

/** The size of a memory page, from this process's own resident size in pages and in kB. */
async function systemPageSize(): Promise<number> {
  if (pageSize !== undefined) return pageSize;
  try {
    const [statm, status] = await Promise.all([readFile('/proc/self/statm', 'utf8'), readFile('/proc/self/status', 'utf8')]);
    const pages = Number(statm.split(' ')[1]);
    const kb = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1]);
    const estimate = (kb * 1024) / pages;
    pageSize = [4096, 16384, 65536].reduce((best, size) => (Math.abs(size - estimate) < Math.abs(best - estimate) ? size : best), 4096);
  } catch {
    pageSize = 4096;
  }
  return pageSize;
}
