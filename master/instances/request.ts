/**
 * The ordering flow: a request for an instance, recorded.
 *
 * An instance is named by its owner and title: requesting the same title again names
 * the same instance, and a request that changes nothing records nothing (and is
 * answered without a transaction). Each change the node must apply raises the
 * instance's serial by one; a stop, start or destroy is carried down the instance's tree.
 */
import { randomUUID } from 'node:crypto';
import { sql, type Kysely, type Transaction } from 'kysely';
import type { InstanceRequest, InstanceView, Parameters, RequestedState, Resources, Sla } from '../../protocol/api.js';
import { PledgerError } from '../../protocol/errors.js';
import type { AccountRow } from '../accounts.js';
import { writeTransaction } from '../db/group-commit.js';
import type { InstancesTable, Tables } from '../db/tables.js';
import { lock, locks, lockShared } from '../ledger/locks.js';
import { record } from '../ledger/movements.js';
import { resolveSoftware, type SoftwareRow } from '../software.js';
import { allocate, resourceNeeds } from './allocation.js';
import { validateParameters } from './parameters.js';
import { hostsChanged, placeShared } from './shared.js';
import { getInstance } from './views.js';
import { readJson } from '../db/json-columns.js';

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
    ? readJson('needs', existing.needs)
    : shared
      ? {}
      : resourceNeeds(readJson('definition', software.definition), softwareType, JSON.parse(resources) as Resources);
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
  const { parameters, hostsShared } = validateParameters(software, softwareType, request.parameters ?? (existing ? readJson('parameters', existing.parameters) : {}), {
    shared,
    coerce: parent !== undefined,
  });
  const state: RequestedState = request.state ?? (existing && existing.state !== 'destroyed' ? existing.state : 'started');
  const sla = JSON.stringify(sortedKeys(request.sla ?? (existing ? readJson('sla', existing.sla) : {})));
  const resources = JSON.stringify(sortedKeys(request.resources ?? (existing ? readJson('resources', existing.resources) : {})));
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

/** Carries an instance's new requested state to its sub-instances, and theirs. */
export async function cascadeState(trx: Transaction<Tables>, owner: AccountRow, instanceId: string, title: string, rootId: string, state: RequestedState): Promise<void> {
  const children = await trx
    .selectFrom('instances')
    .select(['title', 'software_id', 'state'])
    .where('parent_id', '=', instanceId)
    .where('state', '!=', 'destroyed')
    .orderBy('title')
    .execute();
  for (const child of children) {
    if (child.state === state) continue;
    await applyRequest(trx, owner, child.title, { software: child.software_id, state }, { actor: 'master', parent: { id: instanceId, rootId, title } });
  }
}
