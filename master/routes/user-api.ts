/**
 * The user API: what the CLI calls with an account's token. Operators (admins) also
 * manage accounts, nodes, software and supplies; every account manages its own
 * instances and sees nobody else's.
 */
import type { FastifyRequest } from 'fastify';
import type { Kysely } from 'kysely';
import { PledgerError } from '../../protocol/errors.js';
import { ROUTES } from '../../protocol/routes.js';
import { createAccount, listAccounts } from '../accounts.js';
import type { App } from '../app.js';
import type { Tables } from '../db/tables.js';
import { requestInstance } from '../instances/request.js';
import { getInstance, instanceHistory, instanceTree, listInstances } from '../instances/views.js';
import { listNodes, registerNode, updateNode } from '../nodes/registry.js';
import { setAsideByNode } from '../nodes/set-aside.js';
import { listSoftware, publishSoftware, resolveSoftware, softwareView, supply } from '../software.js';
import { route } from './route.js';

const actor = (request: FastifyRequest) => `account:${request.account.name}`;
const { accounts, nodes, software, supplies, instances } = ROUTES;

export async function userRoutes(app: App, db: Kysely<Tables>): Promise<void> {
  route(app, accounts.whoami, async (request) => ({
    name: request.account.name,
    role: request.account.role,
    createdAt: request.account.created_at,
  }));

  // Accounts
  route(app, accounts.create, async (request, reply) => {
    const created = await createAccount(db, { name: request.body.name, role: request.body.role ?? 'user' }, actor(request));
    return reply.code(201).send(created);
  });
  route(app, accounts.list, async () => listAccounts(db));

  // Nodes
  route(app, nodes.register, async (request, reply) => reply.code(201).send(await registerNode(db, request.body, request.account)));
  route(app, nodes.update, async (request) => updateNode(db, request.params.name, request.body, actor(request)));
  route(app, nodes.list, async () => {
    const [list, setAside] = await Promise.all([listNodes(db), setAsideByNode(db)]);
    return list.map((node) => ({ ...node, setAside: setAside.get(node.name) ?? null }));
  });

  // Software releases and supplies
  route(app, software.list, async () => listSoftware(db));
  route(app, software.show, async (request) => softwareView(await resolveSoftware(db, request.params.ref)));
  route(app, supplies.set, async (request) => supply(db, request.body, actor(request)));

  // Instances: always those of the caller.
  route(app, instances.list, async (request) => listInstances(db, request.account, request.query.all === 'true'));
  route(app, instances.request, async (request) => requestInstance(db, request.account, request.params.title, request.body));
  route(app, instances.get, async (request) => getInstance(db, request.account, request.params.title));
  route(app, instances.tree, async (request) => instanceTree(db, request.account, request.params.title));
  route(app, instances.history, async (request) => instanceHistory(db, request.account, request.params.title));
  route(app, instances.destroy, async (request) => {
    const current = await getInstance(db, request.account, request.params.title);
    return requestInstance(db, request.account, request.params.title, {
      software: `${current.software.name}@${current.software.version}`,
      state: 'destroyed',
    });
  });
}

/**
 * Publishing a release: its body is an archive (up to 64 MiB), so the route lives in a
 * scope that accepts archives (see `acceptArchives`). Only operators publish, and that
 * is checked before the body is read.
 */
export async function softwareUploadRoutes(app: App, db: Kysely<Tables>): Promise<void> {
  route(app, software.publish, async (request, reply) => {
    if (!Buffer.isBuffer(request.body)) throw new PledgerError('BAD_REQUEST', 'send the release as a gzipped tar (Content-Type: application/gzip)');
    const { software: published, created } = await publishSoftware(db, request.body, actor(request));
    return reply.code(created ? 201 : 200).send(published);
  });
}
