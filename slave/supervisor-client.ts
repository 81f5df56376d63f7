/**
 * Talking to the node's supervisor, and starting it when it is not running: every
 * command that needs services running calls `connectSupervisor`, so the supervisor
 * comes up on demand (after a reboot without `@reboot`, after it was killed) and the
 * operator never has to think about it.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, openSync, closeSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { PledgerError } from '../protocol/errors.js';
import { supervisorSettings, type NodeConfig, type SupervisorSettings } from './config.js';
import type { Logger } from './log.js';
import { stateRoot, supervisorLogPath, supervisorSocketPath } from './paths.js';
import { CLEAN_PATH } from './processes.js';
import type { PartitionStatus, SupervisedInstance, SupervisorAnswer, SupervisorRequest } from './supervisor.js';

const START_TIMEOUT_MS = 10_000;

/**
 * The supervisor lives as long as the node and allocates little but often (process
 * table reads, one JSON answer per request): a 1 MiB young generation instead of V8's
 * default 16 MiB keeps its resident memory near its live data, at the cost of more,
 * shorter, scavenges. Its work is light, so it runs without V8's optimizing compilers
 * (lite mode): their code in node's binary is never paged in, some 5 MB less resident.
 */
// `--no-expose-wasm`: lite mode turns WebAssembly off anyway, and says so on stderr
// unless told first; that line would open the supervisor's log of JSON lines.
export const SUPERVISOR_NODE_FLAGS = ['--max-semi-space-size=1', '--no-expose-wasm', '--lite-mode'];

export class SupervisorClient {
  constructor(private readonly root: string) {}

  /** One request on a connection of its own; rejects with the supervisor's error message. */
  request<T>(request: SupervisorRequest, timeoutMs = 120_000): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const socket = net.connect(supervisorSocketPath(this.root));
      let buffered = '';
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`the supervisor did not answer ${request.op} within ${timeoutMs} ms`));
      }, timeoutMs);
      socket.setEncoding('utf8');
      socket.on('connect', () => socket.write(`${JSON.stringify(request)}\n`));
      socket.on('data', (chunk: string) => {
        buffered += chunk;
        const end = buffered.indexOf('\n');
        if (end < 0) return;
        clearTimeout(timer);
        socket.end();
        const answer = JSON.parse(buffered.slice(0, end)) as SupervisorAnswer;
        if (answer.ok) resolve(answer.result as T);
        else reject(new Error(answer.error));
      });
      socket.on('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
    });
  }

  status(): Promise<Record<string, PartitionStatus>> {
    return this.request({ op: 'status' });
  }

  ensure(partition: string, instance: SupervisedInstance, services: Record<string, string[]>, restart: boolean, graceMs?: number): Promise<PartitionStatus> {
    return this.request({ op: 'ensure', partition, instance, services, restart, ...(graceMs === undefined ? {} : { graceMs }) });
  }

  stop(partition: string, graceMs?: number): Promise<void> {
    return this.request({ op: 'stop', partition, ...(graceMs === undefined ? {} : { graceMs }) });
  }

  /** Ends the supervisor; its services keep running unless `stopServices`. */
  shutdown(stopServices = false): Promise<void> {
    return this.request({ op: 'shutdown', stopServices });
  }

  async ping(): Promise<number | undefined> {
    try {
      return (await this.request<{ pid: number }>({ op: 'ping' }, 5000)).pid;
    } catch {
      return undefined;
    }
  }
}

/** The compiled entry point of the supervisor process (beside this module, or in dist/ when run from source). */
export function supervisorEntry(): string {
  const here = import.meta.dirname;
  const candidates = [path.join(here, 'supervisor-main.js'), path.join(here, '..', 'dist', 'slave', 'supervisor-main.js')];
  const found = candidates.find((file) => existsSync(file));
  if (!found) throw new PledgerError('INTERNAL', `the supervisor program is missing (looked for ${candidates.join(', ')})`, { hint: 'run `npm run build`' });
  return found;
}

/** A client of the node's supervisor, started first (detached, outliving this process) when it does not answer. */
export async function connectSupervisor(config: NodeConfig, log: Logger): Promise<SupervisorClient> {
  const client = new SupervisorClient(config.root);
  if ((await client.ping()) !== undefined) return client;
  startSupervisorProcess(config.root, supervisorSettings(config));
  log.info('supervisor started', { root: config.root });
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if ((await client.ping()) !== undefined) return client;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new PledgerError('INTERNAL', `the supervisor did not start within ${START_TIMEOUT_MS / 1000} s`, { hint: `see ${supervisorLogPath(config.root)}` });
}

function startSupervisorProcess(root: string, settings: SupervisorSettings): void {
  mkdirSync(stateRoot(root), { recursive: true, mode: 0o750 });
  const fd = openSync(supervisorLogPath(root), 'a', 0o600);
  try {
    const child = spawn(process.execPath, [...SUPERVISOR_NODE_FLAGS, supervisorEntry(), root, JSON.stringify(settings)], {
      cwd: root,
      detached: true,
      stdio: ['ignore', fd, fd],
      env: { PATH: CLEAN_PATH, HOME: root, LANG: 'C.UTF-8' },
    });
    child.unref();
  } finally {
    closeSync(fd);
  }
}
