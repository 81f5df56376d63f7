/** The one snapshot a node pulls: its supplied releases and its partitions with their instances. */
import type { Kysely } from 'kysely';
import type { DesiredState } from '../../protocol/api.js';
import type { Tables } from '../db/tables.js';
import { sharedOf } from '../instances/shared.js';
import type { NodeRow } from './registry.js';
import { readJson } from '../db/json-columns.js';

/** The shape of the desired state: a master that changes it must change this, so that every node pulls it anew. */
const DESIRED_STATE_FORMAT = 1;

/**
 * The ETag of a node's desired state, from its row alone: every movement that changes
 * what the node is asked to run moves its version on (master/ledger/projections), so an
 * unchanged poll costs no query and builds nothing.
 */
export function desiredStateTag(node: NodeRow): string {
  return `"${DESIRED_STATE_FORMAT}.${node.desired_version}"`;
}

/** The one snapshot a node pulls. */
export async function desiredState(db: Kysely<Tables>, node: NodeRow): Promise<DesiredState> {
  const software = await db
    .selectFrom('supplies')
    .innerJoin('software', 'software.id', 'supplies.software_id')
    .select(['software.name', 'software.version', 'software.hash', 'supplies.state'])
    .where('supplies.node_id', '=', node.id)
    .orderBy('software.id')
    .execute();
  const rows = await db
    .selectFrom('partitions')
    .leftJoin('instances', 'instances.id', 'partitions.instance_id')
    .leftJoin('software', 'software.id', 'instances.software_id')
    .select(['partitions.reference', 'partitions.ip', 'partitions.port_first', 'partitions.port_last'])
    .select(['instances.id', 'instances.title', 'instances.software_type', 'instances.parameters', 'instances.state', 'instances.serial'])
    .select(['software.name', 'software.version', 'software.hash'])
    .where('partitions.node_id', '=', node.id)
    .orderBy('partitions.reference')
    .execute();
  const shared = await sharedOf(db, rows.flatMap((r) => (r.id === null ? [] : [r.id])));
  const state: DesiredState = {
    node: node.name,
    software,
    partitions: rows.map((r) => ({
      reference: r.reference,
      ip: r.ip,
      ports: { first: r.port_first, last: r.port_last },
      instance:
        r.id === null
          ? null
          : {
              id: r.id,
              title: r.title!,
              software: { name: r.name!, version: r.version!, hash: r.hash! },
              softwareType: r.software_type!,
              parameters: readJson('parameters', r.parameters!),
              state: r.state!,
              serial: r.serial!,
              ...(shared.has(r.id) ? { shared: shared.get(r.id) } : {}),
            },
    })),
  };
  return state;
}
