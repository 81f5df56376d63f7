/**
 * The ordering flow: requesting, reading and destroying instances.
 *
 * An instance is named by its owner and title: requesting the same title again names
 * the same instance, and a request that changes nothing records nothing. Each change
 * the node must apply raises the instance's serial by one.
 */
import { randomUUID } from 'node:crypto';
import { Ajv, type ValidateFunction } from 'ajv';
import { sql, type Kysely, type RawBuilder, type Transaction } from 'kysely';
import type { InstanceRequest, InstanceTreeView, InstanceView, MovementView, Parameters, PromiseState, RequestedState, Resources, Sla } from '../protocol/api.js';
import { PledgerError } from '../protocol/errors.js';
import { sharedSchemaKey, type SoftwareDefinition } from '../protocol/software-release.js';
import type { AccountRow } from './accounts.js';
import { allocate, resourceNeeds } from './allocation.js';
import { writeTransaction } from './db/group-commit.js';
import type { InstancesTable, Tables } from './db/tables.js';
import { lock, locks, lockShared } from './ledger/locks.js';
import { record } from './ledger/movements.js';
import { resolveSoftware, type SoftwareRow } from './software.js';
import { cascadeState, hostsChanged, placeShared } from './trees.js';

export async function requestInstance(
  db: Kysely<Tables>,
  owner: AccountRow,
  title: string,
  request: InstanceRequest,
  /** Who asks: the owner, or the master itself (stopping for non-payment). */
  actor = `account:${owner.name}`,
): Promise<InstanceView> {
  // A request that changes nothing is a read: no transaction, no lock, nothing to sync.
  // What it reads is committed, so its answer is the state at that moment.
  const current = await db.selectFrom('instances').selectAll().where('owner_id', '=', owner.id).where('title', '=', title).executeTakeFirst();
  if (current && (await decideRequest(db, owner, title, request, { actor }, current)) === UNCHANGED) return getInstance(db, owner, title);
  // Changes the instance as asked; its view is read in the same transaction.
  return writeTransaction(db, async (trx) => {
    await applyRequest(trx, owner, title, request, { actor });
    return getInstance(trx, owner, title);
  });
}

export interface RequestOrigin {
  actor: string;
  /** Set when an instance's deployment requests this one: its parent and tree. */
  parent?: { id: string; rootId: string; title: string };
}

/**
 * Records a request inside the caller's transaction and answers the instance's id:
 * creates or changes the instance, allocates it (a partition, or a host for a shared
 * instance), and carries a stop, start or destroy down its tree. Uses only `trx`: it
 * may run inside a group commit.
 */
export async function applyRequest(trx: Transaction<Tables>, owner: AccountRow, title: string, request: InstanceRequest, origin: RequestOrigin): Promise<string> {
  const { actor, parent } = origin;
  const existing = await lockedInstance(trx, owner, title, actor);
  const decided = await decideRequest(trx, owner, title, request, origin, existing);
  if (decided === UNCHANGED) return existing!.id;
  const { software, softwareType, shared, parameters, hostsShared, state, sla, resources } = decided;

  const instanceId = existing?.id ?? randomUUID();
  const serial = (existing?.serial ?? 0) + 1;
  const tree = existing ? {} : { parentId: parent?.id ?? null, rootId: parent?.rootId ?? instanceId, shared };
  // An allocated instance keeps what it took on its node, whatever its release now says;
  // a shared instance takes nothing of a node.
  const needs: Resources = existing?.partition_id
    ? (JSON.parse(existing.needs) as Resources)
    : shared
      ? {}
      : resourceNeeds(JSON.parse(software.definition) as SoftwareDefinition, softwareType, JSON.parse(resources) as Resources);
  await record(
    trx,
    {
      kind: 'instance.requested',
      data: {
        instanceId,
        ownerId: owner.id,
        title,
        softwareId: software.id,
        softwareType,
        parameters,
        sla: JSON.parse(sla) as Sla,
        resources: JSON.parse(resources) as Resources,
        needs,
        state,
        serial,
        ...tree,
      },
    },
    { actor, subject: instanceId },
  );
  if (shared) {
    await placeShared(trx, { id: instanceId, serial, state, hostId: existing?.host_id ?? null, message: existing?.message ?? null });
  } else {
    const partitioned = existing?.partition_id != null;
    if (state === 'destroyed' && !partitioned) {
      // Nothing runs anywhere: destroyed at once.
      await record(
        trx,
        { kind: 'instance.destroyed', data: { instanceId, serial, partitionId: null, message: null } },
        { actor: 'master', subject: instanceId },
      );
    } else if (state !== 'destroyed' && !partitioned) {
      await allocate(
        trx,
        { id: instanceId, software_id: software.id, owner_id: owner.id, sla, needs, message: existing?.message ?? null, root_id: tree.rootId ?? existing?.root_id ?? instanceId },
        'master',
      );
    }
    const releaseChanged = existing !== undefined && (existing.software_id !== software.id || existing.software_type !== softwareType);
    await hostsChanged(trx, { id: instanceId, state, wasStarted: existing?.state === 'started', hostsShared, releaseChanged });
  }
  if (existing && existing.state !== state) await cascadeState(trx, owner, existing.id, title, existing.root_id ?? existing.id, state);
  return instanceId;
}

/** A request that asks for what the instance already is. */
const UNCHANGED = Symbol('unchanged');

/** What a request records: its values, checked and completed from the instance as it is. */
interface Decision {
  software: SoftwareRow;
  softwareType: string;
  shared: boolean;
  parameters: Parameters;
  hostsShared: boolean;
  state: RequestedState;
  /** JSON, keys sorted. */
  sla: string;
  resources: string;
}

/**
 * Checks a request against the instance as it is (`existing`, undefined for a new
 * title) and decides what it records, or that it changes nothing. Only reads: a request
 * that changes nothing is answered from it without a transaction.
 */
async function decideRequest(
  db: Kysely<Tables>,
  owner: AccountRow,
  title: string,
  request: InstanceRequest,
  origin: RequestOrigin,
  existing: InstancesTable | undefined,
): Promise<Decision | typeof UNCHANGED> {
  const { actor, parent } = origin;
  if (existing?.parent_id && !parent && actor.startsWith('account:')) {
    const parentRow = await db.selectFrom('instances').select('title').where('id', '=', existing.parent_id).executeTakeFirst();
    throw new PledgerError('CONFLICT', `"${title}" is a sub-instance of "${parentRow?.title ?? '?'}": it follows its parent`, {
      hint: `change or destroy "${parentRow?.title ?? '?'}" instead`,
    });
  }
  if (existing && parent && existing.parent_id !== parent.id) {
    throw new PledgerError('CONFLICT', `"${title}" already exists outside the tree of "${parent.title}"`);
  }

  const software = await chooseSoftware(db, request.software, existing?.software_id);
  const softwareType = request.softwareType ?? existing?.software_type ?? 'default';
  const shared = request.shared ?? (existing ? existing.shared === 1 : false);
  if (existing && shared !== (existing.shared === 1)) {
    throw new PledgerError('CONFLICT', `"${title}" is ${existing.shared ? '' : 'not '}a shared instance: that cannot change`, {
      hint: 'destroy it first, or choose another title',
    });
  }
  const { parameters, hostsShared } = validateParameters(software, softwareType, request.parameters ?? (existing ? JSON.parse(existing.parameters) : {}), {
    shared,
    coerce: parent !== undefined,
  });
  const state: RequestedState = request.state ?? (existing && existing.state !== 'destroyed' ? existing.state : 'started');
  const sla = JSON.stringify(sortedKeys(request.sla ?? (existing ? (JSON.parse(existing.sla) as Sla) : {})));
  const resources = JSON.stringify(sortedKeys(request.resources ?? (existing ? (JSON.parse(existing.resources) as Resources) : {})));
  if ((existing?.partition_id || existing?.host_id) && (sla !== existing.sla || resources !== existing.resources) && state !== 'destroyed') {
    throw new PledgerError('CONFLICT', `instance "${title}" is already allocated: its SLA cannot change`, {
      hint: 'destroy it and request it again with the new SLA',
    });
  }

  if (!existing && state === 'destroyed') {
    throw new PledgerError('INSTANCE_NOT_FOUND', `you have no instance named "${title}" to destroy`);
  }
  // Dunning stops and lifts holds as the actor `master`; nobody else starts anything of a
  // customer held for non-payment, nor adds to what they have.
  const starts = !existing || existing.state === 'destroyed' ? state !== 'destroyed' : state === 'started' && existing.state !== 'started';
  if (starts && actor !== 'master') await refuseIfHeld(db, owner, title, !existing || existing.state === 'destroyed');
  const unchanged =
    existing &&
    existing.software_id === software.id &&
    existing.software_type === softwareType &&
    existing.state === state &&
    existing.sla === sla &&
    existing.resources === resources &&
    existing.parameters === JSON.stringify(parameters);
  if (unchanged) return UNCHANGED;
  return { software, softwareType, shared, parameters, hostsShared, state, sla, resources };
}

/**
 * The instance `title` of `owner`, read under its lock (or, while it does not exist, the
 * lock of its title, so that two requests creating it create one). A request of the
 * owner also holds their account's lock shared: a hold for non-payment, recorded under
 * it, cannot slip between the check below and the request.
 */
async function lockedInstance(trx: Transaction<Tables>, owner: AccountRow, title: string, actor: string): Promise<InstancesTable | undefined> {
  if (actor.startsWith('account:')) await lockShared(trx, locks.account(owner.id));
  await lock(trx, locks.title(owner.id, title));
  const found = await trx.selectFrom('instances').select('id').where('owner_id', '=', owner.id).where('title', '=', title).executeTakeFirst();
  if (!found) return undefined;
  await lock(trx, locks.instance(found.id));
  return trx.selectFrom('instances').selectAll().where('id', '=', found.id).executeTakeFirstOrThrow();
}

async function refuseIfHeld(db: Kysely<Tables>, owner: AccountRow, title: string, isNew: boolean): Promise<void> {
  const { rows } = await sql<{ invoice_id: string }>`select invoice_id from billing_holds where account_id = ${owner.id}`.execute(db);
  const invoice = rows[0]?.invoice_id;
  if (invoice === undefined) return;
  throw new PledgerError(
    'PAYMENT_REQUIRED',
    `${isNew ? `"${title}" cannot be created` : `"${title}" cannot be started`}: the instances of ${owner.name} are stopped until invoice ${invoice} is paid`,
    { hint: `pay invoice ${invoice} (\`pledger billing invoice ${invoice}\` shows what it owes): the instances stopped for it start again then` },
  );
}

/** The same object with its keys in order, so that two equal SLAs compare equal as JSON. */
function sortedKeys<T>(value: Record<string, T>): Record<string, T> {
  return Object.fromEntries(Object.entries(value).sort(([a], [b]) => a.localeCompare(b)));
}

/**
 * The release a request names. A bare name keeps the version an existing instance
 * already runs: upgrading is asked for explicitly, with NAME@VERSION.
 */
async function chooseSoftware(db: Kysely<Tables>, ref: string, currentId: string | undefined): Promise<SoftwareRow> {
  const [name, version] = ref.split('@');
  if (currentId) {
    const [currentName] = currentId.split('@');
    if (currentName !== name) {
      throw new PledgerError('CONFLICT', `this instance runs ${currentId}, not ${name}`, {
        hint: 'destroy it first, or choose another title',
      });
    }
    if (version === undefined) return resolveSoftware(db, currentId);
  }
  return resolveSoftware(db, ref);
}

const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false });
/** For sub-instances: their parameters are rendered from templates, strings that the child's schema types. */
const coercingAjv = new Ajv({ allErrors: true, useDefaults: true, strict: false, coerceTypes: true });
const validators = new Map<string, ValidateFunction>();

/**
 * Checks parameters against the software type's schema (a shared instance's against
 * the schema its host type declares for them), filling in its defaults.
 */
function validateParameters(
  software: SoftwareRow,
  softwareType: string,
  parameters: Parameters,
  options: { shared: boolean; coerce: boolean },
): { parameters: Parameters; hostsShared: boolean } {
  const definition = JSON.parse(software.definition) as SoftwareDefinition;
  const type = definition['software-types'][softwareType];
  if (!type || !Object.hasOwn(definition['software-types'], softwareType)) {
    const known = Object.keys(definition['software-types']).join(', ');
    throw new PledgerError('BAD_REQUEST', `${software.id} has no software type "${softwareType}" (it has: ${known})`);
  }
  if (options.shared && !type.shared) {
    throw new PledgerError('BAD_REQUEST', `${software.id} ${softwareType} does not host shared instances`, { hint: 'request it without --shared' });
  }
  const schemaKey = options.shared ? sharedSchemaKey(softwareType) : softwareType;
  const validate = validatorFor(software, schemaKey, options.coerce);
  const copy = structuredClone(parameters);
  if (!validate(copy)) {
    const what = options.shared ? `shared ${softwareType}` : softwareType;
    throw new PledgerError('INVALID_PARAMETERS', `invalid parameters for ${software.id} ${what}: ${problemsOf(validate)}`, {
      details: validate.errors,
    });
  }
  return { parameters: copy, hostsShared: type.shared !== undefined };
}

function validatorFor(software: Pick<SoftwareRow, 'hash' | 'parameter_schemas'>, schemaKey: string, coerce: boolean): ValidateFunction {
  const key = `${software.hash}:${schemaKey}:${coerce}`;
  let validate = validators.get(key);
  if (!validate) {
    const schemas = JSON.parse(software.parameter_schemas) as Record<string, object>;
    validate = (coerce ? coercingAjv : ajv).compile(schemas[schemaKey] ?? {});
    validators.set(key, validate);
  }
  return validate;
}

function problemsOf(validate: ValidateFunction): string {
  return validate.errors!
    .map((e) => {
      const where = e.instancePath ? e.instancePath.slice(1).replaceAll('/', '.') : 'parameters';
      const extra = e.keyword === 'additionalProperties' ? ` (${(e.params as { additionalProperty: string }).additionalProperty})` : '';
      return `${where} ${e.message ?? 'is invalid'}${extra}`;
    })
    .join('; ');
}

/**
 * Why a host refuses a shared instance's parameters, or null. The host renders them
 * into its own configuration, so the schema its release declares for shared instances
 * decides, not the one of the version the requester named: an older or another version
 * with a looser schema would otherwise let unchecked values into the host's files. The
 * stored parameters are checked as they are (no coercion, no defaults kept): they are
 * what the host will see.
 */
export function refusedByHost(
  host: { title: string; software: Pick<SoftwareRow, 'id' | 'hash' | 'parameter_schemas'> },
  softwareType: string,
  parameters: Parameters,
): PledgerError | null {
  const key = sharedSchemaKey(softwareType);
  if (!Object.hasOwn(JSON.parse(host.software.parameter_schemas) as object, key)) {
    return new PledgerError('BAD_REQUEST', `${host.software.id} ${softwareType} (${host.title}) does not host shared instances`);
  }
  const validate = validatorFor(host.software, key, false);
  if (validate(structuredClone(parameters))) return null;
  return new PledgerError('INVALID_PARAMETERS', `invalid parameters for ${host.software.id} shared ${softwareType} on ${host.title}: ${problemsOf(validate)}`, {
    hint: `${host.title} runs ${host.software.id}, whose schema for shared instances decides: name that version, or give parameters it accepts`,
    details: validate.errors,
  });
}

/** An instance with its release, partition and node, the titles of its parent and root, and its host's node. */
type InstanceRow = InstancesTable & {
  software_name: string;
  software_version: string;
  software_hash: string;
  partition_reference: string | null;
  node_name: string | null;
  host_node_name: string | null;
  parent_title: string | null;
  root_title: string | null;
};

/**
 * The instances that `where` selects, as views read them. Plain SQL: every request
 * answers with its instance's view, and building this query through the query builder
 * cost more than running it.
 */
async function instanceRows(db: Kysely<Tables>, where: RawBuilder<unknown>): Promise<InstanceRow[]> {
  const { rows } = await sql<InstanceRow>`
    select instances.*, software.name as software_name, software.version as software_version, software.hash as software_hash,
      partitions.reference as partition_reference, nodes.name as node_name, host_node.name as host_node_name,
      parent.title as parent_title, root.title as root_title
    from instances
    join software on software.id = instances.software_id
    left join partitions on partitions.id = instances.partition_id
    left join nodes on nodes.id = partitions.node_id
    left join instances parent on parent.id = instances.parent_id
    left join instances root on root.id = instances.root_id
    left join instances host on host.id = instances.host_id
    left join partitions host_partition on host_partition.id = host.partition_id
    left join nodes host_node on host_node.id = host_partition.node_id
    where ${where}
    order by instances.title`.execute(db);
  return rows;
}

async function promisesOf(db: Kysely<Tables>, instanceIds: string[]): Promise<Map<string, PromiseState[]>> {
  const byInstance = new Map<string, PromiseState[]>();
  if (instanceIds.length === 0) return byInstance;
  const { rows } = await sql<Tables['instance_promises']>`
    select * from instance_promises where instance_id in (${sql.join(instanceIds)}) order by name`.execute(db);
  for (const r of rows) {
    const list = byInstance.get(r.instance_id) ?? [];
    list.push({ name: r.name, status: r.status as PromiseState['status'], message: r.message, since: r.since });
    byInstance.set(r.instance_id, list);
  }
  return byInstance;
}

function instanceView(row: InstanceRow, promises: PromiseState[] = []): InstanceView {
  // Once stopped or destroyed on its node, nothing answers at the published addresses and
  // no promise is checked: the ledger keeps the last reports, the view shows none of them.
  const gone = row.status === 'stopped' || row.status === 'destroyed';
  return {
    title: row.title,
    software: { name: row.software_name, version: row.software_version, hash: row.software_hash },
    softwareType: row.software_type,
    parameters: JSON.parse(row.parameters) as Parameters,
    sla: JSON.parse(row.sla) as Sla,
    resources: JSON.parse(row.needs) as Resources,
    state: row.state,
    status: row.status as InstanceView['status'],
    message: row.message,
    ready: row.status === row.state,
    serial: row.serial,
    node: row.node_name ?? row.host_node_name,
    partition: row.partition_reference,
    connection: gone ? {} : (JSON.parse(row.connection) as Record<string, string>),
    promises: gone ? [] : promises,
    parent: row.parent_title,
    root: row.root_id && row.root_id !== row.id ? row.root_title : null,
    shared: row.shared === 1,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

export async function getInstance(db: Kysely<Tables>, owner: AccountRow, title: string): Promise<InstanceView> {
  const [row] = await instanceRows(db, sql`instances.owner_id = ${owner.id} and instances.title = ${title}`);
  // Another owner's instance of the same title is as absent as one that never was.
  if (!row) throw new PledgerError('INSTANCE_NOT_FOUND', `you have no instance named "${title}"`);
  return instanceView(row, (await promisesOf(db, [row.id])).get(row.id));
}

export async function listInstances(db: Kysely<Tables>, owner: AccountRow, includeDestroyed: boolean): Promise<InstanceView[]> {
  const rows = await instanceRows(db, sql`instances.owner_id = ${owner.id} ${includeDestroyed ? sql`` : sql`and instances.status != 'destroyed'`}`);
  const promises = await promisesOf(db, rows.map((r) => r.id));
  return rows.map((r) => instanceView(r, promises.get(r.id)));
}

export async function instanceHistory(db: Kysely<Tables>, owner: AccountRow, title: string): Promise<MovementView[]> {
  const instance = await db
    .selectFrom('instances')
    .select('id')
    .where('owner_id', '=', owner.id)
    .where('title', '=', title)
    .executeTakeFirst();
  if (!instance) throw new PledgerError('INSTANCE_NOT_FOUND', `you have no instance named "${title}"`);
  const rows = await db.selectFrom('movements').selectAll().where('subject', '=', instance.id).orderBy('seq').execute();
  return rows.map((r) => ({ seq: Number(r.seq), at: r.at, kind: r.kind, actor: r.actor, data: JSON.parse(r.data) as unknown }));
}

/** An instance and its sub-instances, recursively (depth first, by title), without those destroyed. */
export async function instanceTree(db: Kysely<Tables>, owner: AccountRow, title: string): Promise<InstanceTreeView> {
  const [top] = await instanceRows(db, sql`instances.owner_id = ${owner.id} and instances.title = ${title}`);
  if (!top) throw new PledgerError('INSTANCE_NOT_FOUND', `you have no instance named "${title}"`);
  const rows = await instanceRows(db, sql`instances.owner_id = ${owner.id} and instances.root_id = ${top.root_id ?? top.id} and instances.status != 'destroyed'`);
  const promises = await promisesOf(db, [top.id, ...rows.map((r) => r.id)]);
  const instances: InstanceTreeView['instances'] = [];
  const visit = (row: InstanceRow, depth: number) => {
    instances.push({ depth, instance: instanceView(row, promises.get(row.id)) });
    for (const child of rows.filter((r) => r.parent_id === row.id)) visit(child, depth + 1);
  };
  visit(top, 0);
  return { instances };
}
