/**
 * The periodic promise cycle: every promise of every deployed instance is checked again
 * when its interval has passed, its result kept in the partition
 * (`.pledger/promises.json`), and the master told the state of all of the instance's
 * promises when one changes status, and otherwise once per summary period. A promise
 * with `bang-after` that fails that many checks in a row asks the master to redeploy
 * the instance's tree, once per failing streak.
 */
import { readdir } from 'node:fs/promises';
import type { PromiseState } from '../protocol/api.js';
import type { PromiseDefinition } from '../protocol/software-release.js';
import { PROMISE_SUMMARY_DEFAULT_S, type NodeConfig } from './config.js';
import { errorMessage, readJsonFile, writeFileAtomic } from './files.js';
import { withLock } from './lock.js';
import type { Logger } from './log.js';
import { connectMaster } from './master.js';
import { newEvent, openOutbox, type Outbox } from './outbox.js';
import { readPartitionState, type PartitionState } from './partition-state.js';
import { lockPath, partitionPath, promiseResultsPath, stateRoot } from './paths.js';
import { checkPromiseOnce, DEFAULT_PROMISE_INTERVAL_S, limited, PROMISE_CONCURRENCY, type PromiseResult } from './promises.js';
import type { ItemResult, RunReport } from './result.js';
import { connectSupervisor } from './supervisor-client.js';
import type { PartitionStatus } from './supervisor.js';

interface StoredPromise {
  status: PromiseState['status'];
  message: string;
  /** When the promise entered this status (ISO-8601). */
  since: string;
  checkedAt: number;
  /** Checks in a row that did not hold. */
  failures: number;
  /** A bang was asked for during the current failing streak. */
  banged: boolean;
}

interface StoredResults {
  instance: string;
  serial: number;
  /** When the master was last told (epoch ms). */
  reportedAt: number;
  promises: Record<string, StoredPromise>;
}

const MAX_MESSAGE = 2048;

async function readStoredResults(root: string, reference: string): Promise<StoredResults | undefined> {
  try {
    return (await readJsonFile(promiseResultsPath(root, reference))) as StoredResults | undefined;
  } catch {
    return undefined;
  }
}

async function readResults(root: string, reference: string, instance: { id: string; serial: number }): Promise<StoredResults | undefined> {
  const stored = await readStoredResults(root, reference);
  return stored?.instance === instance.id && stored.serial === instance.serial ? stored : undefined;
}

/**
 * Merges new results into what the partition keeps, and queues an `instance.promises`
 * event when a status changed (or none was reported for this serial yet), or when
 * `summaryDue`. Returns the promises that should bang now.
 */
export async function notePromiseResults(
  root: string,
  outbox: Outbox,
  reference: string,
  instance: { id: string; serial: number },
  results: PromiseResult[],
  /** `periodic`: results of the periodic cycle, which count towards bang-after (a deployment's do not). */
  options: { summaryMs?: number; bangAfter?: Record<string, number | undefined>; now?: number; periodic?: boolean } = {},
): Promise<string[]> {
  const now = options.now ?? Date.now();
  const kept = await readStoredResults(root, reference);
  const stored = kept?.instance === instance.id && kept.serial === instance.serial ? kept : undefined;
  // A redeployment (a later serial of the same instance) starts afresh: its promises,
  // failing streaks and bangs are its own. But a promise whose state it did not change
  // has been in that state since before: "ok since" must not mean "redeployed at".
  const before = !stored && kept?.instance === instance.id && kept.serial < instance.serial ? kept.promises : {};
  const promises: Record<string, StoredPromise> = { ...stored?.promises };
  let changed = stored === undefined;
  const banging: string[] = [];
  for (const result of results) {
    const previous = promises[result.name];
    const earlier = previous ?? before[result.name];
    if (previous?.status !== result.status) changed = true;
    const failures = result.ok || !options.periodic ? 0 : (previous?.failures ?? 0) + 1;
    const limit = options.bangAfter?.[result.name];
    const bang = limit !== undefined && failures >= limit && !previous?.banged;
    if (bang) banging.push(result.name);
    promises[result.name] = {
      status: result.status,
      message: result.message.slice(0, MAX_MESSAGE),
      since: earlier?.status === result.status ? earlier.since : new Date(now).toISOString(),
      checkedAt: now,
      failures,
      banged: failures > 0 && (bang || Boolean(previous?.banged)),
    };
  }
  const summaryDue = stored !== undefined && options.summaryMs !== undefined && now - stored.reportedAt >= options.summaryMs;
  const report = changed || summaryDue;
  if (report) {
    const states: PromiseState[] = Object.entries(promises)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([name, p]) => ({ name, status: p.status, message: p.message, since: p.since }));
    outbox.addNow(newEvent({ type: 'instance.promises', partition: reference, instance: instance.id, serial: instance.serial, promises: states }));
  }
  const next: StoredResults = { instance: instance.id, serial: instance.serial, reportedAt: report ? now : (stored?.reportedAt ?? now), promises };
  await writeFileAtomic(promiseResultsPath(root, reference), `${JSON.stringify(next)}\n`, 0o600);
  for (const name of banging) {
    const message = `promise ${name} failed ${promises[name]!.failures} checks in a row: ${promises[name]!.message}`;
    outbox.addNow(newEvent({ type: 'instance.bang', partition: reference, instance: instance.id, serial: instance.serial, message }));
  }
  return banging;
}

interface DuePartition {
  reference: string;
  state: PartitionState & { promises: Record<string, PromiseDefinition> };
  due: [string, PromiseDefinition][];
  summaryDue: boolean;
}

/**
 * One promise cycle. Failed promises are listed as failed items; the CLI turns them
 * into exit code 2. Throws CONFLICT while another promise cycle runs.
 */
export async function checkPromisesCycle(config: NodeConfig, log: Logger, now = Date.now()): Promise<RunReport> {
  return withLock(lockPath(config.root, 'promises'), 'checking promises', () => cycle(config, log, now));
}

async function cycle(config: NodeConfig, log: Logger, now: number): Promise<RunReport> {
  const summaryMs = (config.promiseSummarySeconds ?? PROMISE_SUMMARY_DEFAULT_S) * 1000;
  const references = (await readdir(`${stateRoot(config.root)}/partitions`).catch(() => [] as string[]))
    .filter((name) => name.endsWith('.json'))
    .map((name) => name.slice(0, -'.json'.length))
    .sort();
  const due: DuePartition[] = [];
  for (const reference of references) {
    const state = await readPartitionState(config.root, reference).catch(() => undefined);
    if (!state?.promises || (state.status !== 'started' && state.status !== 'deployed')) continue;
    const stored = await readResults(config.root, reference, { id: state.instanceId, serial: state.serial });
    const duePromises = Object.entries(state.promises).filter(([name, promise]) => {
      const checkedAt = stored?.promises[name]?.checkedAt;
      return checkedAt === undefined || now - checkedAt >= (promise.interval ?? DEFAULT_PROMISE_INTERVAL_S) * 1000 - 500;
    });
    const summaryDue = stored !== undefined && now - stored.reportedAt >= summaryMs;
    if (duePromises.length > 0 || summaryDue) due.push({ reference, state: state as DuePartition['state'], due: duePromises, summaryDue });
  }

  const results: ItemResult[] = [];
  if (due.length === 0) return { results, offline: false };
  let supervised: Record<string, PartitionStatus> = {};
  if (due.some((p) => p.due.some(([, promise]) => 'process' in promise))) supervised = await (await connectSupervisor(config, log)).status();

  const checks = due.flatMap((partition) =>
    partition.due.map(([name, promise]) => async () => {
      const services = supervised[partition.reference]?.services ?? {};
      return checkPromiseOnce(name, promise, {
        partitionDir: partitionPath(config.root, partition.reference),
        serviceRunning: (service) => services[service]?.state === 'running',
      });
    }),
  );
  const flat = await limited(checks, PROMISE_CONCURRENCY);

  const outbox = openOutbox(config);
  try {
    let offset = 0;
    for (const partition of due) {
      const own = flat.slice(offset, offset + partition.due.length);
      offset += partition.due.length;
      const bangAfter = Object.fromEntries(Object.entries(partition.state.promises).map(([name, p]) => [name, p['bang-after']]));
      const instance = { id: partition.state.instanceId, serial: partition.state.serial };
      try {
        const banged = await notePromiseResults(config.root, outbox, partition.reference, instance, own, { summaryMs, bangAfter, now, periodic: true });
        if (banged.length > 0) log.error('promises keep failing: bang', { partition: partition.reference, promises: banged });
      } catch (error) {
        log.error('cannot record promise results', { partition: partition.reference, reason: errorMessage(error) });
      }
      const broken = own.filter((r) => !r.ok);
      if (broken.length > 0) results.push({ item: partition.reference, status: 'failed', message: broken.map((r) => r.message).join('; '), promiseFailure: true });
      else if (own.length > 0) results.push({ item: partition.reference, status: 'unchanged' });
    }
    const flushed = await outbox.flush(connectMaster(config), log);
    return { results, offline: flushed.offline };
  } finally {
    outbox.close();
  }
}
