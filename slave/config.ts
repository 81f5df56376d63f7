/**
 * The node agent's configuration: which master to pull from, with which credential,
 * and how the node's root is cut into partitions. Written once by
 * `pledger node configure`, read at every run.
 */
import { createHash } from 'node:crypto';
import { chmod, mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { PledgerError } from '../protocol/errors.js';
import { writeFileAtomic } from './files.js';
export { defaultNodeConfigPath } from './paths.js';
import { SUPERVISOR_DEFAULTS, type SupervisorSettings } from './supervisor-settings.js';
import { NodeConfigFile } from './validators.generated.js';
import { checkValue } from './validate.js';

export interface NodeConfig {
  masterUrl: string;
  /** The secret the master issued at registration: sent as a bearer token. */
  credential: string;
  /** Absolute directory that holds everything the agent builds and runs. */
  root: string;
  partitions: number;
  /** Address of the first partition; the next ones get the next addresses. */
  ipBase: string;
  /** First port of the first partition. */
  portBase: number;
  portsPerPartition: number;
  /** How the supervisor restarts services and rotates their logs. */
  supervisor?: Partial<SupervisorSettings>;
  /** When the daemon runs each cycle. */
  schedule?: Partial<ScheduleSettings>;
  /** How the outbox retries while the master is unreachable. */
  outbox?: Partial<OutboxSettings>;
  /** How often promises are summarized to the master when nothing changes. */
  promiseSummarySeconds?: number;
  /** Whether built parts are taken from and given to the master's binary cache; off when absent. */
  binaryCache?: BinaryCacheSettings;
}

/**
 * The binary cache, per node: `download` takes parts others built instead of building
 * them, `upload` gives the master the parts this node built. Separate switches, so
 * that a fleet can let only the nodes it trusts as builders fill the cache. Entries
 * are verified with `publicKey`, the master's key as `pledger node register` printed it.
 */
export interface BinaryCacheSettings {
  download: boolean;
  upload: boolean;
  publicKey: string;
}

export { SUPERVISOR_DEFAULTS, type SupervisorSettings } from './supervisor-settings.js';

/** node-cron expressions (with an optional seconds field) of the daemon's cycles. */
export interface ScheduleSettings {
  software: string;
  instance: string;
  promise: string;
  usage: string;
  report: string;
  /** Each tick waits a random delay up to this, so a fleet does not call its master in the same second. */
  maxRandomDelayMs: number;
  /** A cycle still running after this is killed and reported (software builds can be long). */
  cycleTimeoutMs: number;
  /** On SIGTERM, how long the daemon lets a running cycle finish before killing it. */
  stopGraceMs: number;
}

export const SCHEDULE_DEFAULTS: ScheduleSettings = {
  software: '*/5 * * * *',
  instance: '* * * * *',
  promise: '*/10 * * * * *',
  usage: '*/30 * * * * *',
  report: '* * * * *',
  maxRandomDelayMs: 5000,
  cycleTimeoutMs: 2 * 3600_000,
  stopGraceMs: 30_000,
};

export interface OutboxSettings {
  retryFirstMs: number;
  retryMaxMs: number;
  /** How long an event the master refused waits before it is sent again, alone. */
  refusedRetryMs: number;
  /** After how many refusals an event is set aside. */
  setAsideAfter: number;
}

export const OUTBOX_DEFAULTS: OutboxSettings = { retryFirstMs: 5000, retryMaxMs: 10 * 60_000, refusedRetryMs: 60_000, setAsideAfter: 3 };

export const PROMISE_SUMMARY_DEFAULT_S = 3600;

export const supervisorSettings = (config: NodeConfig): SupervisorSettings => ({ ...SUPERVISOR_DEFAULTS, ...config.supervisor });
export const scheduleSettings = (config: NodeConfig): ScheduleSettings => ({ ...SCHEDULE_DEFAULTS, ...config.schedule });
export const outboxSettings = (config: NodeConfig): OutboxSettings => ({ ...OUTBOX_DEFAULTS, ...config.outbox });

export const NODE_CONFIG_DEFAULTS = {
  partitions: 4,
  portBase: 30000,
  portsPerPartition: 10,
} as const satisfies Partial<NodeConfig>;

/**
 * The address of the first partition when none is given: `127.A.B.1`, with A (1-254)
 * and B (0-255) taken from a hash of the node's root. Two nodes on one machine have
 * two roots, so they get two address ranges (one chance in 65,024 of the same one) and
 * may keep the same ports; the same root always gets the same addresses. Second octet
 * 0 is left out: 127.0.0.0/16 is where the system's own loopback services live.
 */
export function defaultIpBase(root: string): string {
  const digest = createHash('sha256').update(path.resolve(root)).digest();
  return `127.${1 + (digest[0]! % 254)}.${digest[1]!}.1`;
}

const CONFIGURE_HINT = 'run `pledger node configure`';


/**
 * Completes a configuration with the defaults and checks it as a whole: the addresses
 * must stay in 127.0.0.0/8 and the ports below 65536 for every partition.
 */
export function resolveNodeConfig(input: unknown, where = 'node configuration'): NodeConfig {
  const given = checkValue<Partial<NodeConfig> & Pick<NodeConfig, 'masterUrl' | 'credential' | 'root'>>(
    NodeConfigFile,
    input,
    where,
    'BAD_REQUEST',
    CONFIGURE_HINT,
  );
  // An option left out arrives as an undefined key: it must not hide its default.
  const set = Object.fromEntries(Object.entries(given).filter(([, value]) => value !== undefined)) as typeof given;
  const root = path.resolve(given.root);
  const config: NodeConfig = { ...NODE_CONFIG_DEFAULTS, ipBase: defaultIpBase(root), ...set, root };
  const bad = (message: string, hint = CONFIGURE_HINT) => new PledgerError('BAD_REQUEST', `invalid ${where}: ${message}`, { hint });
  const octets = config.ipBase.split('.').map(Number);
  if (octets.some((octet) => octet > 255)) throw bad(`ipBase ${config.ipBase} is not an IPv4 address`);
  if (ipToNumber(config.ipBase) + config.partitions - 1 > ipToNumber('127.255.255.254')) {
    throw bad(`${config.partitions} partitions from ${config.ipBase} leave 127.0.0.0/8`, 'run `pledger node configure` with a lower --ip-base or fewer --partitions');
  }
  const lastPort = config.portBase + config.partitions * config.portsPerPartition - 1;
  if (lastPort > 65535) {
    throw bad(`the last partition would end at port ${lastPort}, above 65535`, 'run `pledger node configure` with a lower --port-base, fewer --partitions or fewer --ports-per-partition');
  }
  return config;
}

export async function readNodeConfig(file: string): Promise<NodeConfig> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : (error as Error).message;
    throw new PledgerError('BAD_REQUEST', `node configuration ${file} ${reason}`, { hint: CONFIGURE_HINT });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new PledgerError('BAD_REQUEST', `node configuration ${file} is not JSON: ${(error as Error).message}`, { hint: CONFIGURE_HINT });
  }
  return resolveNodeConfig(parsed, `node configuration ${file}`);
}

/** Mode 0600: the file holds the node's credential. */
export async function writeNodeConfig(file: string, config: NodeConfig): Promise<void> {
  const checked = resolveNodeConfig(config);
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  await writeFileAtomic(file, `${JSON.stringify(checked, null, 2)}\n`, 0o600);
  await chmod(file, 0o600);
}

export function ipToNumber(ip: string): number {
  return ip.split('.').reduce((value, octet) => value * 256 + Number(octet), 0);
}

export function numberToIp(value: number): string {
  return [24, 16, 8, 0].map((shift) => Math.floor(value / 2 ** shift) % 256).join('.');
}
