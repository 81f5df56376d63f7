/**
 * Shared instances: hosted inside another instance instead of a partition. A shared
 * instance gets a host (a started instance of the same release whose type declares
 * `shared`); any change of it redeploys its host, whose report carries the connection
 * parameters it published for each. The host renders the parameters, so the schema its
 * release declares for shared instances checks them, not that of the version the
 * requester named. A host shared by several owners keeps them apart: the parameters its
 * release declares `unique` name a route held by one shared instance of the host only,
 * and those it declares `backends` must point into partitions of the shared instance's owner.
 */
import type { Kysely, Transaction } from 'kysely';
import type { RequestedState } from '../../protocol/api.js';
import { PledgerError } from '../../protocol/errors.js';
import type { SoftwareTypeDefinition } from '../../protocol/software-release.js';
import { isUniqueViolation } from '../db/database.js';
import type { Tables } from '../db/tables.js';
import { lock, locks } from '../ledger/locks.js';
import { record } from '../ledger/movements.js';
import { refusedByHost } from './parameters.js';
import { redeploy } from './redeploy.js';
import { readJson } from '../db/json-columns.js';

interface SharedPlacement {
  id: string;
  serial: number;
  state: RequestedState;
  hostId: string | null;
  message: string | null;
}

/**
 * Gives a requested shared instance what its state asks for: nothing runs of it but a
 * part of its host's configuration, so stopping and destroying take effect at once on
 * the master, and any change redeploys the host. A route another shared instance holds
 * on the host, or a backend that is not the requester's, refuses the request.
 */
export async function placeShared(trx: Transaction<Tables>, shared: SharedPlacement): Promise<void> {
  const { id, serial, state, hostId } = shared;
  if (state === 'destroyed') {
    await record(trx, { kind: 'instance.destroyed', data: { instanceId: id, serial, partitionId: null, message: null } }, { actor: 'master', subject: id });
    if (hostId) await redeploy(trx, hostId, `shared instance ${id} destroyed`);
    return;
  }
  const row = await sharedRow(trx, id);
  // Whatever host it gets, a backend that is no address of the owner's is refused now
  // rather than left waiting for one.
  const anywhere = await ownedBackends(trx, claimsFor(row, row.hosting), null);
  if (anywhere instanceof PledgerError) throw anywhere;
  if (hostId) {
    const host = await hostOf(trx, hostId);
    const fit = await fitsHost(trx, row, host);
    if ('problem' in fit) throw fit.problem;
    await rehost(trx, fit.claims, host, fit.backends);
    if (state !== 'started') await record(trx, { kind: `instance.${state}`, data: { instanceId: id, serial, partitionId: null, message: null } }, { actor: 'master', subject: id });
    await redeploy(trx, hostId, `shared instance ${id} ${state === 'started' ? 'changed' : state}`);
    return;
  }
  if (state !== 'started') {
    await record(trx, { kind: `instance.${state}`, data: { instanceId: id, serial, partitionId: null, message: null } }, { actor: 'master', subject: id });
    return;
  }
  await attachShared(trx, id, shared.message, true);
}

/** What a shared instance claims on a host, from its parameters and what the host's release declares of them. */
interface SharedClaims {
  id: string;
  ownerId: string;
  /** JSON of the values of its `unique` parameters; null when it sets none of them. */
  route: string | null;
  /** The same, for messages: `host=shop.example`. */
  routeLabel: string;
  /** The route it holds now on its host. */
  heldRoute: string | null;
  backends: { value: string; ip: string; port: number }[];
}

type SharedHosting = NonNullable<SoftwareTypeDefinition['shared']>;

interface SharedRow {
  id: string;
  ownerId: string;
  parameters: Record<string, unknown>;
  heldRoute: string | null;
  /** What its own release declares: a host may run another version, whose declarations count there. */
  hosting: SharedHosting;
}

async function sharedRow(trx: Transaction<Tables>, sharedId: string): Promise<SharedRow> {
  const row = await trx
    .selectFrom('instances')
    .innerJoin('software', 'software.id', 'instances.software_id')
    .select(['instances.owner_id', 'instances.software_type', 'instances.parameters', 'instances.shared_route', 'software.definition'])
    .where('instances.id', '=', sharedId)
    .executeTakeFirstOrThrow();
  return {
    id: sharedId,
    ownerId: row.owner_id,
    parameters: readJson('parameters', row.parameters),
    heldRoute: row.shared_route,
    hosting: readJson('definition', row.definition)['software-types'][row.software_type]?.shared ?? {},
  };
}

/**
 * What the shared instance claims on a host whose release declares `hosting`: the host
 * renders it, so the host's declarations decide, not those of the version the
 * requester named.
 */
function claimsFor(row: SharedRow, hosting: SharedHosting): SharedClaims {
  const { id: sharedId, parameters } = row;
  const set = (name: string) => parameters[name] !== undefined && parameters[name] !== null && parameters[name] !== '';
  const unique = hosting.unique ?? [];
  // A route is claimed only in full: a shared instance routed by its reference alone holds nothing.
  const claimed = unique.length > 0 && unique.every(set);
  const backends = (hosting.backends ?? []).filter(set).map((name) => backendAddress(name, parameters[name]));
  return {
    id: sharedId,
    ownerId: row.ownerId,
    route: claimed ? JSON.stringify(unique.map((name) => parameters[name])) : null,
    routeLabel: unique.map((name) => `${name}=${typeof parameters[name] === 'string' ? parameters[name] : JSON.stringify(parameters[name])}`).join(' '),
    heldRoute: row.heldRoute,
    backends,
  };
}

const IPV4 = /^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$/;

const DEFAULT_PORTS: Record<string, number> = { 'http:': 80, 'https:': 443, 'ws:': 80, 'wss:': 443 };

/** The IPv4 address and port a backend parameter names: a URL (`http://IP:PORT/path`) or `IP:PORT`. */
function backendAddress(name: string, value: unknown): SharedClaims['backends'][number] {
  const text = typeof value === 'string' ? value : '';
  let url: URL | undefined;
  try {
    url = new URL(text.includes('://') ? text : `tcp://${text}`);
  } catch {
    url = undefined;
  }
  const port = url && (url.port ? Number(url.port) : DEFAULT_PORTS[url.protocol]);
  if (!url || !IPV4.test(url.hostname) || !port) {
    throw new PledgerError('BAD_REQUEST', `${name} must name an IPv4 address and a port of one of your instances`, {
      hint: 'use an address your instance published in its connection parameters',
    });
  }
  return { value: text, ip: url.hostname, port };
}

interface HostRow {
  id: string;
  title: string;
  nodeId: string;
  nodeName: string;
  /** Its software type, which is its shared instances' too. */
  type: string;
  software: { id: string; hash: string; parameter_schemas: string };
  hosting: SharedHosting;
}

async function hostOf(trx: Transaction<Tables>, hostId: string): Promise<HostRow> {
  const row = await trx
    .selectFrom('instances as host')
    .innerJoin('partitions', 'partitions.id', 'host.partition_id')
    .innerJoin('nodes', 'nodes.id', 'partitions.node_id')
    .innerJoin('software', 'software.id', 'host.software_id')
    .select(['host.id', 'host.title', 'host.software_type', 'software.definition', 'software.id as software_id', 'software.hash', 'software.parameter_schemas'])
    .select(['nodes.id as node_id', 'nodes.name as node_name'])
    .where('host.id', '=', hostId)
    .executeTakeFirstOrThrow();
  const hosting = readJson('definition', row.definition)['software-types'][row.software_type]?.shared ?? {};
  const software = { id: row.software_id, hash: row.hash, parameter_schemas: row.parameter_schemas };
  return { id: row.id, title: row.title, nodeId: row.node_id, nodeName: row.node_name, type: row.software_type, software, hosting };
}

/**
 * The partitions the backends point into, or why one is refused: each must be inside a partition (its address, a port of its
 * range) allocated to an instance of the shared instance's owner. A loopback address
 * is local to a machine, so on a host it means a partition of the host's node; with no
 * host yet, any of the owner's partitions will do. The message is the same whether the
 * address is nobody's or another customer's.
 */
async function ownedBackends(trx: Transaction<Tables>, claims: SharedClaims, host: HostRow | null): Promise<string[] | PledgerError> {
  const partitions: string[] = [];
  for (const backend of claims.backends) {
    const local = backend.ip.startsWith('127.');
    let query = trx
      .selectFrom('partitions')
      .leftJoin('instances', 'instances.id', 'partitions.instance_id')
      .select(['partitions.id', 'instances.owner_id'])
      .where('partitions.ip', '=', backend.ip)
      .where('partitions.port_first', '<=', backend.port)
      .where('partitions.port_last', '>=', backend.port);
    if (host && local) query = query.where('partitions.node_id', '=', host.nodeId);
    const rows = await query.orderBy('partitions.id').execute();
    const owned = rows.filter((r) => r.owner_id === claims.ownerId);
    // On a host, the address must name the owner's partition and nobody else's.
    const fits = host ? owned.length > 0 && owned.length === rows.length : owned.length > 0;
    if (!fits) {
      const where = host && local ? ` on node ${host.nodeName}` : '';
      return new PledgerError('FORBIDDEN', `backend ${backend.value} is not an address of one of your instances${where}`, {
        hint: 'a shared instance may only send to an address and port of a partition of yours, as your instance published them',
      });
    }
    partitions.push(...owned.map((r) => r.id));
  }
  return [...new Set(partitions)].sort();
}

/** Whether `host` can take the shared instance: its route free there and its backends the owner's. */
async function fitOn(trx: Transaction<Tables>, claims: SharedClaims, host: HostRow): Promise<{ backends: string[] } | { problem: PledgerError }> {
  if (claims.route !== null) {
    const holder = await trx
      .selectFrom('instances')
      .select('id')
      .where('host_id', '=', host.id)
      .where('shared_route', '=', claims.route)
      .where('id', '!=', claims.id)
      .executeTakeFirst();
    // Neither the holder's title nor its owner: only that the route is taken.
    if (holder) return { problem: routeTaken(claims, host) };
  }
  const backends = await ownedBackends(trx, claims, host);
  return backends instanceof PledgerError ? { problem: backends } : { backends };
}

/**
 * Whether `host` takes the shared instance: its release's schema for shared instances
 * accepts the parameters, and the claims they make there fit.
 */
async function fitsHost(trx: Transaction<Tables>, row: SharedRow, host: HostRow): Promise<{ claims: SharedClaims; backends: string[] } | { problem: PledgerError }> {
  const refused = refusedByHost(host, host.type, row.parameters);
  if (refused) return { problem: refused };
  let claims: SharedClaims;
  try {
    claims = claimsFor(row, host.hosting);
  } catch (error) {
    if (error instanceof PledgerError) return { problem: error };
    throw error;
  }
  const fit = await fitOn(trx, claims, host);
  return 'problem' in fit ? fit : { claims, backends: fit.backends };
}

/** Records the shared instance's route and backends on its host again, when they changed. */
async function rehost(trx: Transaction<Tables>, claims: SharedClaims, host: HostRow, backends: string[]): Promise<void> {
  const current = await trx.selectFrom('shared_backends').select('partition_id').where('instance_id', '=', claims.id).orderBy('partition_id').execute();
  if (claims.route !== claims.heldRoute || current.map((r) => r.partition_id).join(' ') !== backends.join(' ')) {
    await hostOn(trx, claims, host, backends);
  }
}

function routeTaken(claims: SharedClaims, host: HostRow): PledgerError {
  return new PledgerError('CONFLICT', `the route ${claims.routeLabel} is taken on ${host.title}: another shared instance holds it`, {
    hint: 'choose another value, or ask whoever holds it to release it',
  });
}

/** Records the shared instance on `host` with its route and backends; the database refuses a route taken meanwhile. */
async function hostOn(trx: Transaction<Tables>, claims: SharedClaims, host: HostRow, backends: string[]): Promise<void> {
  try {
    await record(trx, { kind: 'instance.hosted', data: { instanceId: claims.id, hostId: host.id, route: claims.route, backends } }, { actor: 'master', subject: claims.id });
  } catch (error) {
    if (claims.route !== null && isUniqueViolation(error)) throw routeTaken(claims, host);
    throw error;
  }
}

/**
 * Finds a host for a shared instance and attaches it, or records why none fits. When the
 * hosts that would fit refuse it (their release's schema for shared instances, its
 * route or its backends), a request (`refuse`)
 * gets the reason as its error; otherwise the instance waits with it as its message.
 */
async function attachShared(trx: Transaction<Tables>, sharedId: string, previousMessage: string | null, refuse = false): Promise<boolean> {
  const shared = await trx
    .selectFrom('instances')
    .innerJoin('software', 'software.id', 'instances.software_id')
    .select(['instances.owner_id', 'instances.software_type', 'instances.sla', 'software.name'])
    .where('instances.id', '=', sharedId)
    .executeTakeFirstOrThrow();
  const sla = readJson('sla', shared.sla);
  const candidates = await trx
    .selectFrom('instances as host')
    .innerJoin('software', 'software.id', 'host.software_id')
    .innerJoin('accounts', 'accounts.id', 'host.owner_id')
    .innerJoin('partitions', 'partitions.id', 'host.partition_id')
    .innerJoin('nodes', 'nodes.id', 'partitions.node_id')
    .select(['host.id', 'host.title', 'software.definition', 'software.id as software_id', 'software.hash', 'software.parameter_schemas'])
    .select(['nodes.id as node_id', 'nodes.name as node_name'])
    .where('software.name', '=', shared.name)
    .where('host.software_type', '=', shared.software_type)
    .where('host.state', '=', 'started')
    .where('host.shared', '=', 0)
    // A user's shared instance goes to a host of theirs or of an operator: never to another customer's.
    .where((eb) => eb.or([eb('host.owner_id', '=', shared.owner_id), eb('accounts.role', '=', 'admin')]))
    .orderBy('host.created_at')
    .orderBy('host.id')
    .execute();
  const labels = new Map<string, Record<string, string>>();
  if (candidates.length > 0) {
    const rows = await trx.selectFrom('node_labels').selectAll().where('node_id', 'in', candidates.map((c) => c.node_id)).execute();
    for (const r of rows) labels.set(r.node_id, { ...labels.get(r.node_id), [r.key]: r.value });
  }
  const fitting = candidates.filter((c) => {
    const definition = readJson('definition', c.definition);
    if (!definition['software-types'][shared.software_type]?.shared) return false;
    return Object.entries(sla).every(([key, value]) => {
      if (key === 'host') return c.title === value;
      if (key === 'node') return c.node_name === value;
      return labels.get(c.node_id)?.[key] === value;
    });
  });
  let refused: PledgerError | undefined;
  if (fitting.length > 0) {
    const row = await sharedRow(trx, sharedId);
    for (const candidate of fitting) {
      const hosting = readJson('definition', candidate.definition)['software-types'][shared.software_type]?.shared ?? {};
      const software = { id: candidate.software_id, hash: candidate.hash, parameter_schemas: candidate.parameter_schemas };
      const host = { id: candidate.id, title: candidate.title, nodeId: candidate.node_id, nodeName: candidate.node_name, type: shared.software_type, software, hosting };
      const fit = await fitsHost(trx, row, host);
      if ('problem' in fit) {
        refused ??= fit.problem;
        continue;
      }
      await hostOn(trx, fit.claims, host, fit.backends);
      await redeploy(trx, host.id, `shared instance ${sharedId} attached`);
      return true;
    }
    if (refused && refuse) throw refused;
  }
  const filters = Object.entries(sla).map(([k, v]) => `${k}=${v}`);
  const reason = refused?.message ?? `no started ${shared.name} instance open to you hosts shared instances${filters.length > 0 ? ` with ${filters.join(', ')}` : ''}`;
  if (reason !== previousMessage) {
    await record(trx, { kind: 'instance.unallocated', data: { instanceId: sharedId, reason } }, { actor: 'master', subject: sharedId });
  }
  return false;
}

/**
 * A partition just allocated to an instance of `ownerId`: a shared instance of another
 * owner whose backend points into it would now send its traffic to someone else's
 * service, so it leaves its host and waits, saying why.
 */
export async function partitionTaken(trx: Transaction<Tables>, partitionId: string, ownerId: string): Promise<void> {
  const stale = await trx
    .selectFrom('shared_backends')
    .innerJoin('instances', 'instances.id', 'shared_backends.instance_id')
    .select(['instances.id', 'instances.host_id'])
    .where('shared_backends.partition_id', '=', partitionId)
    .where('instances.owner_id', '!=', ownerId)
    .where('instances.host_id', 'is not', null)
    .orderBy('instances.id')
    .execute();
  for (const shared of stale) {
    await lock(trx, locks.instance(shared.id));
    const reason = 'its backend is no longer an address of one of your instances: request it again with one of yours';
    await record(trx, { kind: 'instance.unallocated', data: { instanceId: shared.id, reason } }, { actor: 'master', subject: shared.id });
    await redeploy(trx, shared.host_id!, `shared instance ${shared.id} lost its backend`);
  }
}

/**
 * After a request of an ordinary instance: a host that starts takes the shared
 * instances waiting for one; a host that stops or goes hands its own to another host;
 * a host that now runs another release or type keeps only the shared instances that
 * release still takes, and hands the others to another host.
 */
export async function hostsChanged(
  trx: Transaction<Tables>,
  instance: { id: string; state: RequestedState; wasStarted: boolean; hostsShared: boolean; releaseChanged: boolean },
): Promise<void> {
  if (!instance.hostsShared && !instance.releaseChanged) return;
  if (instance.state === 'started' && instance.wasStarted) {
    if (!instance.releaseChanged) return;
    await recheckHosted(trx, instance.id);
    if (instance.hostsShared) await attachWaiting(trx);
  } else if (instance.state === 'started' && instance.hostsShared) {
    await attachWaiting(trx);
  } else if (instance.state !== 'started' && instance.wasStarted) {
    const hosted = await trx.selectFrom('instances').select(['id']).where('host_id', '=', instance.id).where('state', '!=', 'destroyed').orderBy('id').execute();
    for (const shared of hosted) {
      await lock(trx, locks.instance(shared.id));
      const reason = `its host was ${instance.state}`;
      await record(trx, { kind: 'instance.unallocated', data: { instanceId: shared.id, reason } }, { actor: 'master', subject: shared.id });
      await attachShared(trx, shared.id, reason);
    }
  }
}

async function attachWaiting(trx: Transaction<Tables>): Promise<void> {
  const waiting = await trx
    .selectFrom('instances')
    .select(['id', 'message'])
    .where('shared', '=', 1)
    .where('state', '=', 'started')
    .where('host_id', 'is', null)
    .orderBy('created_at')
    .orderBy('id')
    .execute();
  for (const shared of waiting) {
    await lock(trx, locks.instance(shared.id));
    // Read again under its lock: another master may have attached it meanwhile.
    const current = await trx.selectFrom('instances').select(['message', 'host_id', 'state']).where('id', '=', shared.id).executeTakeFirstOrThrow();
    if (current.host_id === null && current.state === 'started') await attachShared(trx, shared.id, current.message);
  }
}

/**
 * Checks the shared instances of a host that changed release against what it runs
 * now: its schema, its routes and its backends. One it refuses leaves for another
 * host, or waits saying why.
 */
async function recheckHosted(trx: Transaction<Tables>, hostId: string): Promise<void> {
  const hosted = await trx.selectFrom('instances').select(['id']).where('host_id', '=', hostId).where('state', '!=', 'destroyed').orderBy('id').execute();
  if (hosted.length === 0) return;
  const host = await hostOf(trx, hostId);
  for (const { id } of hosted) {
    await lock(trx, locks.instance(id));
    const fit = await fitsHost(trx, await sharedRow(trx, id), host);
    if ('problem' in fit) {
      const reason = `its host ${host.title} now runs ${host.software.id}, which refuses it: ${fit.problem.message}`;
      await record(trx, { kind: 'instance.unallocated', data: { instanceId: id, reason } }, { actor: 'master', subject: id });
      await attachShared(trx, id, reason);
    } else {
      await rehost(trx, fit.claims, host, fit.backends);
    }
  }
}

/** The started shared instances each of these hosts carries, by host. */
export async function sharedOf(db: Kysely<Tables>, hostIds: string[]): Promise<Map<string, { reference: string; parameters: Record<string, unknown>; serial: number }[]>> {
  const byHost = new Map<string, { reference: string; parameters: Record<string, unknown>; serial: number }[]>();
  if (hostIds.length === 0) return byHost;
  const rows = await db
    .selectFrom('instances')
    .select(['id', 'host_id', 'parameters', 'serial'])
    .where('host_id', 'in', hostIds)
    .where('state', '=', 'started')
    .orderBy('id')
    .execute();
  for (const r of rows) {
    const list = byHost.get(r.host_id!) ?? [];
    list.push({ reference: r.id, parameters: readJson('parameters', r.parameters), serial: r.serial });
    byHost.set(r.host_id!, list);
  }
  return byHost;
}
