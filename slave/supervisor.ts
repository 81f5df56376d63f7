/**
 * The node's supervisor: one long-lived process per node that owns every service of
 * every partition. The agent's cycles come and go (cron, the daemon, an operator's
 * one-shot command) and tell it what must run through a unix socket; it starts the
 * services, restarts them when they exit, rotates their logs, and kills whole process
 * trees when asked to stop them.
 *
 * Why a process of its own: only a parent learns at once that its child exited, so a
 * crash is repaired in milliseconds instead of at the next cron minute; and the one-shot
 * commands stay short-lived.
 *
 * Its memory is `state/supervisor.json`: what must run in each partition and the pid and
 * start time of each service. A new supervisor (after an upgrade, a crash, a reboot)
 * reads it, adopts the services still running and starts the others, without the master.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, copyFileSync, existsSync, mkdirSync, openSync, readFileSync, readSync, renameSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { SupervisorSettings } from './supervisor-settings.js';
import { errorMessage, randomToken } from './files.js';
import type { Logger } from './log.js';
import type { Outbox } from './outbox.js';
import { nodeDatabasePath, partitionPath, supervisorSocketPath, supervisorStatePath } from './paths.js';
import { cleanEnv, isAlive, parseProcessStat, processTrees, readProcessTable, type ServiceRecord } from './processes.js';

/** Who the services of a partition belong to: named in the reports of a crash loop. */
export interface SupervisedInstance {
  id: string;
  serial: number;
  title: string;
}

export type ServiceState = 'running' | 'backoff' | 'stopping';

export interface ServiceStatus {
  argv: string[];
  state: ServiceState;
  pid: number | null;
  startTime: number | null;
  /** Restarts after an exit since the supervisor took the service. */
  restarts: number;
  /** True from the exit that made it a crash loop until it stays up `resetAfterMs`. */
  crashLoop: boolean;
  lastExit: string | null;
}

export interface PartitionStatus {
  instance: SupervisedInstance;
  services: Record<string, ServiceStatus>;
}

export type SupervisorRequest =
  | { op: 'ping' }
  | { op: 'status' }
  | { op: 'ensure'; partition: string; instance: SupervisedInstance; services: Record<string, string[]>; restart: boolean; graceMs?: number }
  | { op: 'stop'; partition: string; graceMs?: number }
  | { op: 'shutdown'; stopServices?: boolean };

export type SupervisorAnswer = { ok: true; result: unknown } | { ok: false; error: string };

interface SavedService {
  argv: string[];
  pid?: number;
  startTime?: number;
}

interface SavedState {
  partitions: Record<string, { instance: SupervisedInstance; services: Record<string, SavedService> }>;
}

const DEFAULT_GRACE_MS = 5000;
const ADOPTED_POLL_MS = 250;
const LOG_TAIL_BYTES = 4000;
/** The longest unix socket path Linux accepts, terminating NUL excluded. */
const MAX_SOCKET_PATH = 107;

class Service {
  child: ChildProcess | undefined;
  record: ServiceRecord | undefined;
  state: ServiceState = 'backoff';
  startedAt = 0;
  /** Exits in a row without a healthy run in between: the exponent of the backoff. */
  consecutive = 0;
  exits: number[] = [];
  restarts = 0;
  crashLoop = false;
  lastExit: string | null = null;
  timer: NodeJS.Timeout | undefined;

  constructor(
    readonly partition: string,
    readonly name: string,
    readonly argv: string[],
  ) {}

  status(): ServiceStatus {
    return {
      argv: this.argv,
      state: this.state,
      pid: this.record?.pid ?? null,
      startTime: this.record?.startTime ?? null,
      restarts: this.restarts,
      crashLoop: this.crashLoop,
      lastExit: this.lastExit,
    };
  }
}

interface Partition {
  instance: SupervisedInstance;
  services: Map<string, Service>;
}

export class Supervisor {
  private readonly partitions = new Map<string, Partition>();
  private server: net.Server | undefined;
  private adoptedPoll: NodeJS.Timeout | undefined;
  private logCheck: NodeJS.Timeout | undefined;
  private outbox: Outbox | undefined;
  private closing = false;
  /** Resolves when the supervisor has shut down. */
  readonly finished: Promise<void>;
  private finish!: () => void;

  constructor(
    private readonly root: string,
    private readonly settings: SupervisorSettings,
    private readonly log: Logger,
  ) {
    this.finished = new Promise((resolve) => (this.finish = resolve));
  }

  /** Brings back the saved services, then listens on the control socket. */
  async start(): Promise<void> {
    const socket = supervisorSocketPath(this.root);
    if (socket.length > MAX_SOCKET_PATH) throw new Error(`the supervisor socket path ${socket} is longer than ${MAX_SOCKET_PATH} bytes: choose a shorter node root`);
    await this.restoreSaved();
    // Only the holder of the supervisor lock gets here: a socket file left behind is stale.
    rmSync(socket, { force: true });
    const server = net.createServer((connection) => this.serve(connection));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socket, () => resolve());
    });
    this.adoptedPoll = setInterval(() => void this.pollAdopted(), ADOPTED_POLL_MS);
    this.logCheck = setInterval(() => this.housekeeping(), this.settings.logCheckMs);
    this.log.info('supervisor listening', { socket, partitions: this.partitions.size });
  }

  /** Stops listening; the services keep running unless asked (they are in groups of their own). */
  async shutdown(stopServices = false): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    clearInterval(this.adoptedPoll);
    clearInterval(this.logCheck);
    if (stopServices) {
      for (const reference of [...this.partitions.keys()]) await this.stopPartition(reference, DEFAULT_GRACE_MS);
    } else {
      for (const partition of this.partitions.values()) for (const service of partition.services.values()) clearTimeout(service.timer);
      this.save();
    }
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    rmSync(supervisorSocketPath(this.root), { force: true });
    this.outbox?.close();
    this.log.info('supervisor stopped', { servicesStopped: stopServices });
    this.finish();
  }

  private serve(connection: net.Socket): void {
    let buffered = '';
    connection.setEncoding('utf8');
    connection.on('error', () => connection.destroy());
    connection.on('data', (chunk: string) => {
      buffered += chunk;
      for (let end = buffered.indexOf('\n'); end >= 0; end = buffered.indexOf('\n')) {
        const line = buffered.slice(0, end);
        buffered = buffered.slice(end + 1);
        void this.answer(line).then((answer) => {
          if (!connection.destroyed) connection.write(`${JSON.stringify(answer)}\n`);
        });
      }
    });
  }

  private async answer(line: string): Promise<SupervisorAnswer> {
    try {
      const request = JSON.parse(line) as SupervisorRequest;
      return { ok: true, result: await this.handle(request) };
    } catch (error) {
      return { ok: false, error: errorMessage(error) };
    }
  }

  private async handle(request: SupervisorRequest): Promise<unknown> {
    switch (request.op) {
      case 'ping':
        return { pid: process.pid };
      case 'status':
        return this.status();
      case 'ensure':
        return this.ensure(request.partition, request.instance, request.services, request.restart, request.graceMs ?? DEFAULT_GRACE_MS);
      case 'stop':
        await this.stopPartition(request.partition, request.graceMs ?? DEFAULT_GRACE_MS);
        return {};
      case 'shutdown':
        // Answered once every service is stopped, so that the caller may then remove the node.
        if (request.stopServices) for (const reference of [...this.partitions.keys()]) await this.stopPartition(reference, DEFAULT_GRACE_MS);
        setImmediate(() => void this.shutdown(false));
        return {};
      default:
        throw new Error(`unknown request ${JSON.stringify((request as { op?: unknown }).op)}`);
    }
  }

  status(): Record<string, PartitionStatus> {
    return Object.fromEntries(
      [...this.partitions].map(([reference, partition]) => [
        reference,
        { instance: partition.instance, services: Object.fromEntries([...partition.services].map(([name, service]) => [name, service.status()])) },
      ]),
    );
  }

  /**
   * Makes the partition run exactly `services`. With `restart`, every service is
   * stopped and started again (a deployment); without it, only services whose command
   * changed, or that are new, are (re)started, and services no longer named are stopped.
   */
  private async ensure(
    reference: string,
    instance: SupervisedInstance,
    wanted: Record<string, string[]>,
    restart: boolean,
    graceMs: number,
  ): Promise<PartitionStatus> {
    if (this.closing) throw new Error('the supervisor is shutting down');
    let partition = this.partitions.get(reference);
    if (!partition) {
      partition = { instance, services: new Map() };
      this.partitions.set(reference, partition);
    }
    partition.instance = instance;
    const outdated = [...partition.services.values()].filter(
      (service) => restart || !(service.name in wanted) || JSON.stringify(service.argv) !== JSON.stringify(wanted[service.name]),
    );
    await Promise.all(outdated.map((service) => this.stopService(service, graceMs)));
    for (const service of outdated) partition.services.delete(service.name);
    const failures: string[] = [];
    for (const [name, argv] of Object.entries(wanted)) {
      if (partition.services.has(name)) continue;
      const service = new Service(reference, name, argv);
      partition.services.set(name, service);
      const failure = this.spawnService(service);
      if (failure) failures.push(failure);
    }
    this.save();
    if (failures.length > 0) throw new Error(failures.join('; '));
    return this.status()[reference]!;
  }

  private async stopPartition(reference: string, graceMs: number): Promise<void> {
    const partition = this.partitions.get(reference);
    if (!partition) return;
    await Promise.all([...partition.services.values()].map((service) => this.stopService(service, graceMs)));
    this.partitions.delete(reference);
    this.save();
  }

  /** Starts the service now; returns why it could not start, if it could not. */
  private spawnService(service: Service): string | undefined {
    const dir = partitionPath(this.root, service.partition);
    const logFile = path.join(dir, 'var', 'log', `${service.name}.log`);
    const [command, ...args] = service.argv;
    let fd: number | undefined;
    try {
      mkdirSync(path.dirname(logFile), { recursive: true, mode: 0o750 });
      fd = openSync(logFile, 'a', 0o640);
      const child = spawn(command!, args, { cwd: dir, env: cleanEnv(dir), detached: true, stdio: ['ignore', fd, fd] });
      child.on('error', () => {
        // A command that cannot be executed: its exit is handled below, its reason is in lastExit.
      });
      if (child.pid === undefined) throw new Error(`cannot start ${command}: not executable or not found`);
      const pid = child.pid;
      service.child = child;
      service.record = { pid, startTime: readStartTime(pid) };
      service.state = 'running';
      service.startedAt = Date.now();
      child.once('exit', (code, signal) => this.onExit(service, pid, code === null ? `signal ${signal}` : `exit code ${code}`));
      return undefined;
    } catch (error) {
      const reason = `service ${service.name}: ${errorMessage(error)}`;
      service.lastExit = reason;
      service.record = undefined;
      this.log.error('service cannot start', { partition: service.partition, service: service.name, reason });
      this.scheduleRestart(service);
      return reason;
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  }

  /**
   * A service ended on its own. What it left in its group is killed (a restarted
   * service must not find its old children holding its port), then it is restarted: at
   * once the first time, then after a delay that doubles up to the cap. A service that
   * ran `resetAfterMs` counts as healthy again.
   */
  private onExit(service: Service, pid: number, how: string): void {
    if (service.record?.pid !== pid) return;
    service.child = undefined;
    if (service.state === 'stopping' || this.closing) return;
    killGroup(pid, 'SIGKILL');
    const now = Date.now();
    if (now - service.startedAt >= this.settings.resetAfterMs) {
      service.consecutive = 0;
      service.crashLoop = false;
    }
    service.lastExit = how;
    service.exits = [...service.exits.filter((at) => now - at < this.settings.crashLoopWindowMs), now];
    this.log.error('service exited', { partition: service.partition, service: service.name, how, consecutive: service.consecutive });
    if (!service.crashLoop && service.exits.length >= this.settings.crashLoopExits) {
      service.crashLoop = true;
      void this.reportCrashLoop(service);
    }
    this.scheduleRestart(service);
  }

  private scheduleRestart(service: Service): void {
    const delay = service.consecutive === 0 ? 0 : Math.min(this.settings.backoffFirstMs * 2 ** Math.min(service.consecutive - 1, 30), this.settings.backoffMaxMs);
    service.consecutive += 1;
    service.state = 'backoff';
    service.record = undefined;
    const restart = () => {
      if (service.state !== 'backoff' || this.closing) return;
      service.restarts += 1;
      this.spawnService(service);
      this.save();
    };
    if (delay === 0) restart();
    else service.timer = setTimeout(restart, delay);
  }

  /**
   * Stops a service and its whole process tree: SIGTERM to its group and to every
   * descendant (even one that left the group), SIGKILL to what is left after the grace
   * period.
   */
  private async stopService(service: Service, graceMs: number): Promise<void> {
    service.state = 'stopping';
    clearTimeout(service.timer);
    const record = service.record;
    if (!record) return;
    if (!service.child && !(await isAlive(record))) {
      // An adopted service that died unseen: its group may still hold children.
      killGroup(record.pid, 'SIGKILL');
      return;
    }
    const tree = processTrees(await readProcessTable(), new Set([record.pid]));
    killGroup(record.pid, 'SIGTERM');
    for (const p of tree) killProcess(p.pid, 'SIGTERM');
    const deadline = Date.now() + graceMs;
    while (Date.now() < deadline && (await survivors(record.pid, tree)).length > 0) await sleep(50);
    killGroup(record.pid, 'SIGKILL');
    for (const p of await survivors(record.pid, tree)) killProcess(p.pid, 'SIGKILL');
    const killDeadline = Date.now() + 2000;
    while (Date.now() < killDeadline && (await survivors(record.pid, tree)).length > 0) await sleep(20);
    this.log.info('service stopped', { partition: service.partition, service: service.name });
  }

  /** Services adopted from a previous supervisor are not our children: their exits are polled. */
  private async pollAdopted(): Promise<void> {
    for (const partition of this.partitions.values()) {
      for (const service of partition.services.values()) {
        if (service.state !== 'running' || service.child || !service.record) continue;
        const record = service.record;
        if (!(await isAlive(record))) this.onExit(service, record.pid, 'exit (adopted: code unknown)');
      }
    }
  }

  private async restoreSaved(): Promise<void> {
    let saved: SavedState;
    try {
      saved = JSON.parse(readFileSync(supervisorStatePath(this.root), 'utf8')) as SavedState;
    } catch {
      return;
    }
    for (const [reference, entry] of Object.entries(saved.partitions ?? {})) {
      const partition: Partition = { instance: entry.instance, services: new Map() };
      this.partitions.set(reference, partition);
      for (const [name, savedService] of Object.entries(entry.services)) {
        const service = new Service(reference, name, savedService.argv);
        partition.services.set(name, service);
        const record = savedService.pid && savedService.startTime !== undefined ? { pid: savedService.pid, startTime: savedService.startTime } : undefined;
        if (record && (await isAlive(record))) {
          service.record = record;
          service.state = 'running';
          service.startedAt = Date.now();
          this.log.info('service adopted', { partition: reference, service: name, pid: record.pid });
        } else {
          if (record) killGroup(record.pid, 'SIGKILL');
          this.spawnService(service);
          this.log.info('service brought back', { partition: reference, service: name, pid: service.record?.pid });
        }
      }
    }
    this.save();
  }

  /** Written at every change, atomically: a supervisor killed at any instruction leaves a usable file. */
  private save(): void {
    const state: SavedState = {
      partitions: Object.fromEntries(
        [...this.partitions].map(([reference, partition]) => [
          reference,
          {
            instance: partition.instance,
            services: Object.fromEntries(
              [...partition.services].map(([name, service]) => [name, { argv: service.argv, pid: service.record?.pid, startTime: service.record?.startTime }]),
            ),
          },
        ]),
      ),
    };
    const file = supervisorStatePath(this.root);
    const temporary = `${file}.tmp-${randomToken(6)}`;
    try {
      writeFileSync(temporary, `${JSON.stringify(state)}\n`, { mode: 0o600 });
      renameSync(temporary, file);
    } catch (error) {
      // A full disk or a removed node root must not kill the process that keeps the services up.
      this.log.error('cannot save the supervisor state', { file, reason: errorMessage(error) });
    }
  }

  /** A crash loop is beyond the node's repair: the master hears it and is asked to redeploy. */
  private async reportCrashLoop(service: Service): Promise<void> {
    const partition = this.partitions.get(service.partition);
    if (!partition) return;
    const { instance } = partition;
    const logFile = path.join(partitionPath(this.root, service.partition), 'var', 'log', `${service.name}.log`);
    const seconds = Math.round(this.settings.crashLoopWindowMs / 1000);
    const summary = `service ${service.name} exited ${service.exits.length} times in ${seconds} s (last: ${service.lastExit})`;
    const message = `${summary}; end of ${service.name}.log:\n${logTail(logFile)}`;
    this.log.error('crash loop', { partition: service.partition, service: service.name, instance: instance.title });
    try {
      // Loaded at the first crash loop only: the outbox brings SQLite and the protocol schemas.
      const { newEvent, Outbox } = await import('./outbox.js');
      this.outbox ??= new Outbox(nodeDatabasePath(this.root));
      const common = { partition: service.partition, instance: instance.id, serial: instance.serial };
      this.outbox.addNow(newEvent({ type: 'instance.error', ...common, message }));
      this.outbox.addNow(newEvent({ type: 'instance.bang', ...common, message: summary }));
    } catch (error) {
      this.log.error('cannot queue the crash loop report', { reason: errorMessage(error) });
    }
  }

  private idleSince = Date.now();

  /**
   * Rotates logs, and ends the supervisor when its node is gone (the node root was
   * removed: its services are stopped, nobody could reach them any more) or when it has
   * had nothing to supervise for idleExitMs.
   */
  private housekeeping(): void {
    if (this.closing) return;
    if (!existsSync(supervisorSocketPath(this.root))) {
      this.log.error('the node root is gone: stopping every service and exiting', { root: this.root });
      void this.shutdown(true);
      return;
    }
    if (this.partitions.size > 0) this.idleSince = Date.now();
    else if (Date.now() - this.idleSince >= this.settings.idleExitMs) {
      this.log.info('nothing to supervise: exiting', { idleMs: Date.now() - this.idleSince });
      void this.shutdown(false);
      return;
    }
    this.rotateLogs();
  }

  /** Copy then truncate: the service keeps writing to its open (append-mode) descriptor. */
  private rotateLogs(): void {
    for (const [reference, partition] of this.partitions) {
      for (const name of partition.services.keys()) {
        const file = path.join(partitionPath(this.root, reference), 'var', 'log', `${name}.log`);
        try {
          if (statSync(file).size <= this.settings.logMaxBytes) continue;
          for (let i = this.settings.logKeep - 1; i >= 1; i--) if (existsSync(`${file}.${i}`)) renameSync(`${file}.${i}`, `${file}.${i + 1}`);
          copyFileSync(file, `${file}.1`);
          truncateSync(file, 0);
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code !== 'ENOENT') this.log.error('cannot rotate a log', { file, reason: errorMessage(error) });
        }
      }
    }
  }
}

function readStartTime(pid: number): number {
  try {
    return parseProcessStat(pid, readFileSync(`/proc/${pid}/stat`, 'utf8')).startTime;
  } catch {
    return 0;
  }
}

function killGroup(pgid: number, signal: NodeJS.Signals): void {
  killProcess(-pgid, signal);
}

function killProcess(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

/** Processes of the group, or of the tree seen before the stop, still alive (same start time). */
async function survivors(pgid: number, tree: { pid: number; startTime: number }[]): Promise<{ pid: number }[]> {
  const table = await readProcessTable();
  const known = new Map(tree.map((p) => [p.pid, p.startTime]));
  return table.filter((p) => p.state !== 'Z' && (p.pgid === pgid || known.get(p.pid) === p.startTime));
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function logTail(file: string): string {
  try {
    const size = statSync(file).size;
    const fd = openSync(file, 'r');
    try {
      const length = Math.min(size, LOG_TAIL_BYTES);
      const buffer = Buffer.alloc(length);
      readSync(fd, buffer, 0, length, size - length);
      return buffer.toString('utf8');
    } finally {
      closeSync(fd);
    }
  } catch {
    return '(no log)';
  }
}
