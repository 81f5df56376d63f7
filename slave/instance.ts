/**
 * Converging the partitions towards the desired state, one partition at a time.
 *
 * The serial of an instance is the only change detector: a partition whose instance
 * has the serial last applied, and whose services the supervisor still runs, costs a
 * file read and nothing else; the supervisor is asked about every partition in one
 * request. Every outcome is reported as an event through the outbox, and each one only
 * once per serial, so a node that runs every minute does not flood its master.
 *
 * Services are the supervisor's: this module tells it what must run in each partition
 * (`ensure`) or that nothing must (`stop`), and never starts or kills a service itself.
 */
import { mkdir, rm } from 'node:fs/promises';
import type { DesiredInstance, InstanceEvent } from '../protocol/api.js';
import type { NodeConfig } from './config.js';
import type { MasterClient } from '../protocol/client.js';
import type { DesiredPartition, RenderedDeployment } from './deploy.js';
import { emptyDirectory, errorMessage } from './files.js';
import { WaitingError } from './waiting.js';
import type { Logger } from './log.js';
import { connectMaster, pullDesiredState } from './master.js';
import { newEvent, openOutbox, type Outbox } from './outbox.js';
import { deletePartitionState, readPartitionState, writePartitionState, type LocalStatus, type PartitionState } from './partition-state.js';
import { withLock } from './lock.js';
import { lockPath, partitionPath, promiseResultsPath } from './paths.js';
import { stopProcessGroup, type ServiceRecord } from './processes.js';
import { checkPromises } from './promises.js';
import { notePromiseResults } from './promise-cycle.js';
import type { ItemResult, RunReport } from './result.js';
import { isSoftwareBuilt } from './software.js';
import { connectSupervisor, type SupervisorClient } from './supervisor-client.js';
import type { PartitionStatus } from './supervisor.js';

export type { ItemResult, RunReport } from './result.js';

interface Run {
  config: NodeConfig;
  /** The node's name, as the master knows it. */
  node: string;
  master: MasterClient;
  outbox: Outbox;
  log: Logger;
  /**
   * The supervisor and what it runs per partition, asked once per run and only when a
   * partition has something to run or to stop: a node without instances starts no supervisor.
   */
  supervision(): Promise<Supervision>;
}

interface Supervision {
  client: SupervisorClient;
  supervised: Record<string, PartitionStatus>;
}

type InstanceEventType = InstanceEvent['type'];

/**
 * Brings every partition to its instance's requested state (started, stopped,
 * destroyed), deploying when the serial changed and handing services the supervisor
 * lost back to it. One partition's failure never stops the others. Throws when the
 * master is unreachable and no desired state was ever saved, and CONFLICT while
 * another run processes the instances.
 */
export async function processInstances(config: NodeConfig, log: Logger): Promise<RunReport> {
  return withLock(lockPath(config.root, 'instances'), 'processing instances', () => processAll(config, log));
}

async function processAll(config: NodeConfig, log: Logger): Promise<RunReport> {
  const master = connectMaster(config);
  const pulled = await pullDesiredState(config, master, log);
  let supervision: Promise<Supervision> | undefined;
  const connect = async (): Promise<Supervision> => {
    const client = await connectSupervisor(config, log);
    return { client, supervised: await client.status() };
  };
  const run: Run = { config, node: pulled.state.node, master, outbox: openOutbox(config), log, supervision: () => (supervision ??= connect()) };
  try {
    const results: ItemResult[] = [];
    for (const partition of pulled.state.partitions) {
      try {
        const result = await processPartition(run, partition);
        if (result) results.push(result);
      } catch (error) {
        log.error('partition failed', { partition: partition.reference, reason: errorMessage(error) });
        results.push({ item: partition.reference, status: 'failed', message: errorMessage(error) });
      }
    }
    const flushed = await run.outbox.flush(master, log);
    return { results, offline: pulled.offline || flushed.offline };
  } finally {
    run.outbox.close();
  }
}

async function processPartition(run: Run, partition: DesiredPartition): Promise<ItemResult | undefined> {
  const { root } = run.config;
  const instance = partition.instance;
  let local = await readPartitionState(root, partition.reference);

  if (local && local.instanceId !== instance?.id) {
    // The instance left the partition (or another one took it) without us seeing it destroyed.
    if (local.status !== 'destroyed') {
      await wipePartition(run, partition, local);
      await report(run, partition, local.instanceId, local.serial, 'instance.destroyed');
    }
    await deletePartitionState(root, partition.reference);
    if (!instance) return local.status === 'destroyed' ? undefined : { item: partition.reference, status: 'done', message: 'destroyed' };
    local = undefined;
  }
  if (!instance) return undefined;

  await mkdir(partitionPath(root, partition.reference), { recursive: true, mode: 0o750 });
  switch (instance.state) {
    case 'started':
      return startInstance(run, partition, instance, local);
    case 'stopped':
      return stopInstance(run, partition, instance, local);
    case 'destroyed':
      return destroyInstance(run, partition, instance, local);
  }
}

const itemName = (partition: DesiredPartition, instance: DesiredInstance) => `${partition.reference} (${instance.title})`;

async function startInstance(run: Run, partition: DesiredPartition, instance: DesiredInstance, local: PartitionState | undefined): Promise<ItemResult> {
  if (local?.serial === instance.serial && (local.status === 'started' || local.status === 'deployed')) {
    const supervised = (await run.supervision()).supervised[partition.reference];
    const complete = supervised?.instance.id === instance.id && Object.keys(local.services).every((name) => name in supervised.services);
    if (local.status === 'started' && complete) return { item: itemName(partition, instance), status: 'unchanged' };
    return repair(run, partition, instance, local, complete);
  }
  return deploy(run, partition, instance, local);
}

/** The supervisor's records of a partition's services, as the partition state keeps them. */
function serviceRecords(status: PartitionStatus | undefined): Record<string, ServiceRecord> {
  const records: Record<string, ServiceRecord> = {};
  for (const [name, service] of Object.entries(status?.services ?? {})) {
    if (service.pid !== null && service.startTime !== null) records[name] = { pid: service.pid, startTime: service.startTime };
  }
  return records;
}

const supervisedInstance = (instance: DesiredInstance) => ({ id: instance.id, serial: instance.serial, title: instance.title });

/** Renders the partition for this serial and has the supervisor (re)start all its services. */
async function deploy(run: Run, partition: DesiredPartition, instance: DesiredInstance, local: PartitionState | undefined): Promise<ItemResult> {
  const { root } = run.config;
  const previous = local?.serial === instance.serial ? local : undefined;
  const oldServices = local?.status === 'stopped' ? {} : (local?.services ?? {});
  const fail = (message: string, services = oldServices) => failure(run, partition, instance, previous, 'error', services, message);

  const software = instance.software;
  if (!(await isSoftwareBuilt(root, software.hash))) return fail(`software ${software.name}@${software.version} not built yet`);
  let rendered: RenderedDeployment;
  let partitionDir: string;
  let ports: Record<string, number>;
  try {
    ({ rendered, partitionDir, ports } = await render(run, partition, instance, true));
    const { writePartitionFiles } = await import('./render.js');
    await writePartitionFiles(partitionDir, rendered.files);
  } catch (error) {
    if (error instanceof WaitingError) return failure(run, partition, instance, previous, 'waiting', oldServices, error.message);
    return fail(`cannot deploy: ${errorMessage(error)}`);
  }
  // While the partition's own services run they hold its ports; otherwise a port that
  // cannot be bound belongs to another program, and starting would only hide that.
  const running = await run.supervision().then(
    (s) => Object.values(s.supervised[partition.reference]?.services ?? {}).some((service) => service.pid !== null),
    () => false,
  );
  if (!running && Object.keys(ports).length > 0) {
    const { firstUnbindable } = await import('./ports.js');
    const taken = await firstUnbindable(partition.ip, Object.values(ports));
    if (taken) return fail(`${taken} (another program, or another node on this machine, holds it: see docs/operations.md#addresses-and-ports)`);
  }

  // Recorded as `error` while starting: a run that dies halfway leaves a state that the
  // next run redeploys rather than takes for deployed.
  const state: PartitionState = { instanceId: instance.id, serial: instance.serial, status: 'error', services: {}, promises: rendered.promises };
  let supervised: PartitionStatus;
  try {
    await stopUnsupervised(run, partition.reference, oldServices);
    supervised = await (await run.supervision()).client.ensure(partition.reference, supervisedInstance(instance), rendered.services, true);
  } catch (error) {
    const known = await run.supervision().then(
      (s) => serviceRecords(s.supervised[partition.reference]),
      () => ({}),
    );
    return fail(`cannot start services: ${errorMessage(error)}`, known);
  }
  state.services = serviceRecords(supervised);
  state.status = 'deployed';
  await writePartitionState(root, partition.reference, state);
  run.log.info('instance deployed', { partition: partition.reference, instance: instance.title, serial: instance.serial });
  await report(run, partition, instance.id, instance.serial, 'instance.deployed');
  return keepPromises(run, partition, instance, { ...state, message: previous?.message }, rendered, partitionDir, supervised);
}

/**
 * Same serial, but the supervisor does not run every service (it lost its memory, or
 * the instance's promises were not kept yet): the services are handed to it again
 * without restarting those it runs, then the promises are checked again.
 */
async function repair(run: Run, partition: DesiredPartition, instance: DesiredInstance, local: PartitionState, complete: boolean): Promise<ItemResult> {
  const { root } = run.config;
  const fail = (message: string) => failure(run, partition, instance, local, local.status, local.services, message);
  if (!(await isSoftwareBuilt(root, instance.software.hash))) return fail(`software ${instance.software.name}@${instance.software.version} is gone`);
  let rendered: RenderedDeployment;
  let partitionDir: string;
  try {
    ({ rendered, partitionDir } = await render(run, partition, instance, false));
  } catch (error) {
    return fail(`cannot restart: ${errorMessage(error)}`);
  }
  let supervised: PartitionStatus;
  try {
    supervised = await (await run.supervision()).client.ensure(partition.reference, supervisedInstance(instance), rendered.services, false);
  } catch (error) {
    return failure(run, partition, instance, local, 'deployed', local.services, `cannot restart: ${errorMessage(error)}`);
  }
  const state: PartitionState = { ...local, services: serviceRecords(supervised), promises: rendered.promises };
  await writePartitionState(root, partition.reference, state);
  if (!complete) run.log.info('services handed to the supervisor again', { partition: partition.reference });
  const result = await keepPromises(run, partition, instance, state, rendered, partitionDir, supervised);
  return !complete && result.status !== 'failed' ? { ...result, status: 'done', message: 'services restored' } : result;
}

/**
 * Checks the promises. When they all hold, the instance is started and its connection
 * parameters published; when one fails, nothing is killed: the services stay up to be
 * debugged and the promises are checked again at the next run.
 */
async function keepPromises(
  run: Run,
  partition: DesiredPartition,
  instance: DesiredInstance,
  state: PartitionState,
  rendered: RenderedDeployment,
  partitionDir: string,
  supervised: PartitionStatus,
): Promise<ItemResult> {
  const serviceRunning = (name: string) => supervised.services[name]?.state === 'running';
  const results = await checkPromises(rendered.promises, { partitionDir, serviceRunning });
  await notePromiseResults(run.config.root, run.outbox, partition.reference, { id: instance.id, serial: instance.serial }, results);
  const broken = results.filter((result) => !result.ok);
  if (broken.length > 0) {
    const result = await failure(run, partition, instance, state, 'deployed', state.services, broken.map((r) => r.message).join('; '));
    return { ...result, promiseFailure: true };
  }
  const wasStarted = state.status === 'started';
  await writePartitionState(run.config.root, partition.reference, { ...state, status: 'started', message: undefined });
  if (wasStarted) return { item: itemName(partition, instance), status: 'unchanged' };
  run.log.info('instance started', { partition: partition.reference, instance: instance.title, serial: instance.serial });
  const shared = Object.keys(rendered.sharedPublish).length > 0 ? { shared: rendered.sharedPublish } : {};
  await report(run, partition, instance.id, instance.serial, 'instance.started', { connection: rendered.publish, ...shared });
  return { item: itemName(partition, instance), status: 'done' };
}

/**
 * Records a failure (or a wait for sub-instances) and reports it, unless the same
 * message was already reported for this serial: a release that is not built yet must
 * not produce an event every minute.
 */
async function failure(
  run: Run,
  partition: DesiredPartition,
  instance: DesiredInstance,
  previous: PartitionState | undefined,
  status: LocalStatus,
  services: Record<string, ServiceRecord>,
  message: string,
): Promise<ItemResult> {
  const known = previous?.instanceId === instance.id && previous.serial === instance.serial && previous.message === message;
  // The promises of this serial stay: the promise cycle keeps checking an instance in error.
  const promises = previous?.instanceId === instance.id && previous.serial === instance.serial ? previous.promises : undefined;
  await writePartitionState(run.config.root, partition.reference, { instanceId: instance.id, serial: instance.serial, status, services, message, promises });
  if (!known && status === 'waiting') {
    run.log.info('instance waiting', { partition: partition.reference, instance: instance.title, reason: message });
    await report(run, partition, instance.id, instance.serial, 'instance.waiting', { message });
  } else if (!known) {
    run.log.error('instance failed', { partition: partition.reference, instance: instance.title, reason: message });
    await report(run, partition, instance.id, instance.serial, 'instance.error', { message });
  }
  return { item: itemName(partition, instance), status: status === 'waiting' ? 'waiting' : 'failed', message };
}

async function stopInstance(run: Run, partition: DesiredPartition, instance: DesiredInstance, local: PartitionState | undefined): Promise<ItemResult> {
  if (local?.serial === instance.serial && local.status === 'stopped') return { item: itemName(partition, instance), status: 'unchanged' };
  await stopServices(run, partition.reference, local?.services ?? {});
  await writePartitionState(run.config.root, partition.reference, { instanceId: instance.id, serial: instance.serial, status: 'stopped', services: {} });
  // Nothing holds while stopped: started again, its promises begin afresh, since-times and all.
  await rm(promiseResultsPath(run.config.root, partition.reference), { force: true });
  run.log.info('instance stopped', { partition: partition.reference, instance: instance.title });
  await report(run, partition, instance.id, instance.serial, 'instance.stopped');
  return { item: itemName(partition, instance), status: 'done', message: 'stopped' };
}

/** Wipes the partition and leaves a tombstone, removed once the master frees the partition. */
async function destroyInstance(run: Run, partition: DesiredPartition, instance: DesiredInstance, local: PartitionState | undefined): Promise<ItemResult> {
  if (local?.serial === instance.serial && local.status === 'destroyed') return { item: itemName(partition, instance), status: 'unchanged' };
  await wipePartition(run, partition, local);
  await writePartitionState(run.config.root, partition.reference, { instanceId: instance.id, serial: instance.serial, status: 'destroyed', services: {} });
  await report(run, partition, instance.id, instance.serial, 'instance.destroyed');
  return { item: itemName(partition, instance), status: 'done', message: 'destroyed' };
}

/** Stops every process of the partition and empties its directory (the directory itself stays). */
async function wipePartition(run: Run, partition: DesiredPartition, local: PartitionState | undefined): Promise<void> {
  await stopServices(run, partition.reference, local?.services ?? {});
  await emptyDirectory(partitionPath(run.config.root, partition.reference));
  run.log.info('partition wiped', { partition: partition.reference });
}

async function stopServices(run: Run, reference: string, recorded: Record<string, ServiceRecord>): Promise<void> {
  const { client, supervised } = await run.supervision();
  if (supervised[reference]) await client.stop(reference);
  await stopUnsupervised(run, reference, recorded);
}

/**
 * Services recorded in the partition that the supervisor does not own (started by a
 * version of the agent without a supervisor) are stopped directly, process group and all.
 */
async function stopUnsupervised(run: Run, reference: string, recorded: Record<string, ServiceRecord>): Promise<void> {
  if (Object.keys(recorded).length === 0) return;
  const { supervised } = await run.supervision();
  const owned = new Set(Object.values(supervised[reference]?.services ?? {}).map((service) => service.pid));
  await Promise.all(Object.values(recorded).filter((record) => !owned.has(record.pid)).map((record) => stopProcessGroup(record)));
}

async function report(
  run: Run,
  partition: DesiredPartition,
  instanceId: string,
  serial: number,
  type: InstanceEventType,
  extra: Pick<InstanceEvent, 'message' | 'connection' | 'shared'> = {},
): Promise<void> {
  await run.outbox.add(newEvent({ type, partition: partition.reference, instance: instanceId, serial, ...extra }));
}

/**
 * The instance's files, services, promises and published values, rendered for its
 * partition, once its sub-instances have published what it needs. `fresh` (a new
 * deployment) asks the master about them; a repair reuses what it answered last.
 * The release format, its validator and the template engine load here, on the first
 * partition that changed: a run with nothing to do never loads them.
 */
async function render(
  run: Run,
  partition: DesiredPartition,
  instance: DesiredInstance,
  fresh: boolean,
): Promise<{ rendered: RenderedDeployment; partitionDir: string; ports: Record<string, number> }> {
  const { prepareDeployment, renderChildRequests, renderDeployment } = await import('./deploy.js');
  const deployment = await prepareDeployment(run.config.root, run.node, partition, instance);
  if (deployment.type.requests) {
    const { resolveChildren } = await import('./children.js');
    const target = { partition: partition.reference, partitionDir: deployment.partitionDir, instance };
    deployment.context.requests = await resolveChildren(run.master, run.log, target, renderChildRequests(deployment), fresh);
  }
  return { rendered: renderDeployment(deployment), partitionDir: deployment.partitionDir, ports: deployment.context.ports };
}
