/**
 * The node API: what a node agent calls with its own credential. A node sees and
 * reports only its own partitions.
 */
import type { FastifyReply } from 'fastify';
import type { Kysely } from 'kysely';
import type { NodeEvent } from '../../protocol/api.js';
import { ROUTES } from '../../protocol/routes.js';
import { storable } from '../../protocol/storable.js';
import type { App } from '../app.js';
import type { Tables } from '../db/tables.js';
import { allocatePending } from '../instances/allocation.js';
import { requestChildren } from '../instances/children.js';
import { desiredState, desiredStateTag } from '../nodes/desired-state.js';
import { applyEvents } from '../nodes/events.js';
import { formatPartitions } from '../nodes/partitions.js';
import { nodeById } from '../nodes/registry.js';
import { noteSetAside } from '../nodes/set-aside.js';
import { archiveForNode } from '../software.js';
import { route } from './route.js';

const { node } = ROUTES;

export async function nodeRoutes(app: App, db: Kysely<Tables>): Promise<void> {
  route(app, node.desiredState, async (request, reply) => {
    // The tag of the node's row as it authenticated: a state built a moment later may be
    // newer than its tag, never older, so a change is never missed (at worst sent twice).
    if (request.nodeBack) {
      await allocatePending(db);
      request.nodeBack = false;
      request.node = (await nodeById(db, request.node.id)) ?? request.node;
    }
    const etag = desiredStateTag(request.node);
    reply.header('etag', etag).header('cache-control', 'no-cache');
    // A 304 has no body at all: untyped, since the typed reply only knows the 200 schema.
    if (request.headers['if-none-match'] === etag) return (reply as FastifyReply).code(304).send();
    return desiredState(db, request.node);
  });

  route(app, node.partitions, async (request) => {
    await formatPartitions(db, request.node, request.body.partitions);
    return { partitions: request.body.partitions.length };
  });

  route(app, node.requestChildren, async (request) => requestChildren(db, request.node, request.params.reference, request.body));

  // What a node reports is evidence (a build log's tail, a promise's output): a NUL or a
  // broken surrogate in it is kept, escaped, never refused, so that one odd byte in a
  // log cannot hold back the node's every later event.
  route(app, node.events, async (request) => applyEvents(db, request.node, storableEvents(request.body.events)));

  // The node's count of events it set aside, and the last one's reason (see master/set-aside.ts).
  route(app, node.setAside, async (request) => {
    await noteSetAside(db, request.node.id, request.body);
    return { count: request.body.count };
  });

  route(app, node.software, async (request, reply) => {
    const archive = await archiveForNode(db, request.node.id, request.params.hash);
    return reply.type('application/gzip').send(archive);
  });
}

/**
 * The events as the databases can hold them: every string made storable (see
 * protocol/storable.ts). The ids and the other patterned fields have nothing to escape,
 * so an event keeps its identity.
 */
export function storableEvents(events: NodeEvent[]): NodeEvent[] {
  return events.map((event) => storable(event));
}
