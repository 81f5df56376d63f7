/**
 * Sub-instances: what an instance's deployment requests, as its node rendered it. The
 * master creates or updates each child, named `PARENT/NAME` in the parent's tree,
 * destroys the children no longer requested, and answers with what each has published.
 */
import type { Kysely, Transaction } from 'kysely';
import type { ChildrenRequest, ChildrenState, ChildState } from '../../protocol/api.js';
import { MAX_TITLE_LENGTH } from '../../protocol/api.js';
import { PledgerError } from '../../protocol/errors.js';
import { writeTransaction } from '../db/group-commit.js';
import type { Tables } from '../db/tables.js';
import { lock, locks } from '../ledger/locks.js';
import { partitionId } from '../ledger/ids.js';
import { applyRequest } from './request.js';
import type { NodeRow } from '../nodes/registry.js';
import { readJson } from '../db/json-columns.js';
import { isReady } from './views.js';

/** How deep a tree may grow: a release that requests itself through others stops here at the latest. */
const MAX_DEPTH = 8;

/**
 * Applies the requests of an instance's deployment, as its node rendered them, and
 * answers with each child's state. Only the node hosting the instance may ask, and only
 * for the serial it was told to deploy: a stale deployment changes nothing.
 */
export async function requestChildren(db: Kysely<Tables>, node: NodeRow, reference: string, body: ChildrenRequest): Promise<ChildrenState> {
  return writeTransaction(db, async (trx) => {
    await lock(trx, locks.instance(body.instance));
    const parent = await trx
      .selectFrom('instances')
      .innerJoin('software', 'software.id', 'instances.software_id')
      .select(['instances.id', 'instances.title', 'instances.owner_id', 'instances.serial', 'instances.state', 'instances.partition_id', 'instances.root_id'])
      .select(['instances.software_type', 'software.definition', 'software.id as software_id'])
      .where('instances.id', '=', body.instance)
      .executeTakeFirst();
    if (!parent || parent.partition_id !== partitionId(node.id, reference)) {
      throw new PledgerError('FORBIDDEN', `instance ${body.instance} is not allocated to partition ${reference} of node ${node.name}`);
    }
    if (body.serial !== parent.serial || parent.state !== 'started') {
      throw new PledgerError('CONFLICT', `instance ${parent.title} has moved on from serial ${body.serial}: deploy its latest request`);
    }
    // A node renders the requests, but only those its release declares: it cannot order
    // anything else on the owner's account.
    const declared = readJson('definition', parent.definition)['software-types'][parent.software_type]?.requests ?? {};
    const names = new Set<string>();
    for (const child of body.requests) {
      if (names.has(child.name)) throw new PledgerError('BAD_REQUEST', `the sub-instance "${child.name}" is requested twice`);
      names.add(child.name);
      // Every title reaches the node in its desired state, where one longer than the
      // protocol allows would make the node refuse the whole document.
      const title = `${parent.title}/${child.name}`;
      if (title.length > MAX_TITLE_LENGTH) {
        throw new PledgerError('BAD_REQUEST', `the sub-instance title "${title.slice(0, 40)}…" would be ${title.length} characters long, over ${MAX_TITLE_LENGTH}`, {
          hint: 'request the parent under a shorter title',
        });
      }
      const expected = Object.hasOwn(declared, child.name) ? declared[child.name] : undefined;
      const matches =
        expected &&
        expected.software === child.software &&
        (expected['software-type'] ?? 'default') === (child.softwareType ?? 'default') &&
        (expected.shared ?? false) === (child.shared ?? false);
      if (!matches) {
        throw new PledgerError('FORBIDDEN', `${parent.software_id} ${parent.software_type} declares no request "${child.name}" of ${child.software}${child.shared ? ' (shared)' : ''}`);
      }
    }
    const ancestors = await lineage(trx, parent.id);
    for (const child of body.requests) {
      const wanted = `${child.software.split('@')[0]} ${child.softwareType ?? 'default'}`;
      const repeated = ancestors.find((a) => `${a.name} ${a.type}` === wanted);
      if (repeated) {
        throw new PledgerError('BAD_REQUEST', `cycle: "${parent.title}" requests ${wanted} (as ${child.name}), which "${repeated.title}" already is in its tree`);
      }
    }
    if (body.requests.length > 0 && ancestors.length >= MAX_DEPTH) {
      throw new PledgerError('BAD_REQUEST', `"${parent.title}" is ${ancestors.length} levels deep: a tree has at most ${MAX_DEPTH}`);
    }

    const owner = await trx.selectFrom('accounts').selectAll().where('id', '=', parent.owner_id).executeTakeFirstOrThrow();
    const origin = { actor: `node:${node.name}`, parent: { id: parent.id, rootId: parent.root_id ?? parent.id, title: parent.title } };
    const childIds = new Map<string, string>();
    for (const child of body.requests) {
      const request = {
        software: child.software,
        parameters: child.parameters,
        state: 'started' as const,
        sla: child.sla ?? {},
        shared: child.shared ?? false,
        ...(child.softwareType ? { softwareType: child.softwareType } : {}),
      };
      childIds.set(child.name, await applyRequest(trx, owner, `${parent.title}/${child.name}`, request, origin));
    }
    // What the latest deployment no longer requests goes.
    const gone = await trx
      .selectFrom('instances')
      .select(['id', 'title', 'software_id'])
      .where('parent_id', '=', parent.id)
      .where('state', '!=', 'destroyed')
      .execute();
    for (const child of gone.filter((c) => ![...childIds.values()].includes(c.id))) {
      await applyRequest(trx, owner, child.title, { software: child.software_id, state: 'destroyed' }, origin);
    }

    const children: Record<string, ChildState> = {};
    for (const [name, id] of childIds) {
      const row = await trx.selectFrom('instances').select(['title', 'status', 'state', 'message', 'connection']).where('id', '=', id).executeTakeFirstOrThrow();
      children[name] = {
        title: row.title,
        status: row.status as ChildState['status'],
        ready: isReady(row),
        message: row.message,
        connection: readJson('connection', row.connection),
      };
    }
    return { children };
  });
}

/** The instance and its ancestors up to the root: the release and type of each. */
async function lineage(trx: Transaction<Tables>, instanceId: string): Promise<{ title: string; name: string; type: string }[]> {
  const chain = [];
  let id: string | null = instanceId;
  while (id && chain.length <= MAX_DEPTH) {
    const row = await trx
      .selectFrom('instances')
      .innerJoin('software', 'software.id', 'instances.software_id')
      .select(['instances.title', 'instances.parent_id', 'instances.software_type', 'software.name'])
      .where('instances.id', '=', id)
      .executeTakeFirst();
    if (!row) break;
    chain.push({ title: row.title, name: row.name, type: row.software_type });
    id = row.parent_id;
  }
  return chain;
}
