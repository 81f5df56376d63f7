/**
 * The user API: what the CLI calls with an account's token. Operators (admins) also
 * manage accounts, nodes, software and supplies; every account manages its own
 * instances and sees nobody else's.
 */
import type { FastifyRequest } from 'fastify';
import type { Kysely } from 'kysely';
import { Type } from 'typebox';
import {
  Account,
  AccountCreate,
  AccountWithToken,
  InstanceRequest,
  InstanceTreeView,
  InstanceView,
  MovementView,
  Name,
  NodeCredential,
  NodeRegister,
  NodeUpdate,
  NodeView,
  SoftwareRef,
  SoftwareView,
  SupplyRequest,
  SupplyView,
  Title,
} from '../../protocol/api.js';
import { PledgerError } from '../../protocol/errors.js';
import { createAccount, listAccounts } from '../accounts.js';
import type { App } from '../app.js';
import type { Tables } from '../db/tables.js';
import { requestInstance } from '../instances/request.js';
import { getInstance, instanceHistory, instanceTree, listInstances } from '../instances/views.js';
import { listNodes, registerNode, updateNode } from '../nodes/registry.js';
import { setAsideByNode } from '../nodes/set-aside.js';
import { listSoftware, publishSoftware, resolveSoftware, softwareView, supply } from '../software.js';

function requireAdmin(request: FastifyRequest): void {
  if (request.account.role !== 'admin') throw new PledgerError('FORBIDDEN', 'only an operator (admin account) may do this');
}

const actor = (request: FastifyRequest) => `account:${request.account.name}`;
const TitleParams = Type.Object({ title: Title });

export async function userRoutes(app: App, db: Kysely<Tables>): Promise<void> {
  app.get('/whoami', { schema: { response: { 200: Account } } }, async (request) => ({
    name: request.account.name,
    role: request.account.role,
    createdAt: request.account.created_at,
  }));

  // Accounts
  app.post('/accounts', { schema: { body: AccountCreate, response: { 201: AccountWithToken } } }, async (request, reply) => {
    requireAdmin(request);
    const created = await createAccount(db, { name: request.body.name, role: request.body.role ?? 'user' }, actor(request));
    return reply.code(201).send(created);
  });
  app.get('/accounts', { schema: { response: { 200: Type.Array(Account) } } }, async (request) => {
    requireAdmin(request);
    return listAccounts(db);
  });

  // Nodes
  app.post('/nodes', { schema: { body: NodeRegister, response: { 201: NodeCredential } } }, async (request, reply) => {
    requireAdmin(request);
    return reply.code(201).send(await registerNode(db, request.body, request.account));
  });
  app.patch(
    '/nodes/:name',
    { schema: { params: Type.Object({ name: Name }), body: NodeUpdate, response: { 200: NodeView } } },
    async (request) => {
      requireAdmin(request);
      return updateNode(db, request.params.name, request.body, actor(request));
    },
  );
  app.get('/nodes', { schema: { response: { 200: Type.Array(NodeView) } } }, async (request) => {
    requireAdmin(request);
    const [nodes, setAside] = await Promise.all([listNodes(db), setAsideByNode(db)]);
    return nodes.map((node) => ({ ...node, setAside: setAside.get(node.name) ?? null }));
  });

  // Software releases and supplies
  app.get('/software', { schema: { response: { 200: Type.Array(SoftwareView) } } }, async () => listSoftware(db));
  app.get(
    '/software/:ref',
    { schema: { params: Type.Object({ ref: SoftwareRef }), response: { 200: SoftwareView } } },
    async (request) => softwareView(await resolveSoftware(db, request.params.ref)),
  );
  app.post('/supplies', { schema: { body: SupplyRequest, response: { 200: SupplyView } } }, async (request) => {
    requireAdmin(request);
    return supply(db, request.body, actor(request));
  });

  // Instances: always those of the caller.
  app.get(
    '/instances',
    { schema: { querystring: Type.Object({ all: Type.Optional(Type.Union([Type.Literal('true'), Type.Literal('false')])) }), response: { 200: Type.Array(InstanceView) } } },
    async (request) => listInstances(db, request.account, request.query.all === 'true'),
  );
  app.put(
    '/instances/:title',
    { schema: { params: TitleParams, body: InstanceRequest, response: { 200: InstanceView } } },
    async (request) => requestInstance(db, request.account, request.params.title, request.body),
  );
  app.get(
    '/instances/:title',
    { schema: { params: TitleParams, response: { 200: InstanceView } } },
    async (request) => getInstance(db, request.account, request.params.title),
  );
  app.get(
    '/instances/:title/tree',
    { schema: { params: TitleParams, response: { 200: InstanceTreeView } } },
    async (request) => instanceTree(db, request.account, request.params.title),
  );
  app.get(
    '/instances/:title/history',
    { schema: { params: TitleParams, response: { 200: Type.Array(MovementView) } } },
    async (request) => instanceHistory(db, request.account, request.params.title),
  );
  app.delete(
    '/instances/:title',
    { schema: { params: TitleParams, response: { 200: InstanceView } } },
    async (request) => {
      const current = await getInstance(db, request.account, request.params.title);
      return requestInstance(db, request.account, request.params.title, {
        software: `${current.software.name}@${current.software.version}`,
        state: 'destroyed',
      });
    },
  );
}

/**
 * Publishing a release: its body is an archive (up to 64 MiB), so the route lives in a
 * scope that accepts archives (see `acceptArchives`). Only operators publish, and that
 * is checked before the body is read.
 */
export async function softwareUploadRoutes(app: App, db: Kysely<Tables>): Promise<void> {
  app.post(
    '/software',
    { schema: { response: { 200: SoftwareView, 201: SoftwareView } }, onRequest: async (request) => requireAdmin(request) },
    async (request, reply) => {
      if (!Buffer.isBuffer(request.body)) throw new PledgerError('BAD_REQUEST', 'send the release as a gzipped tar (Content-Type: application/gzip)');
      const { software, created } = await publishSoftware(db, request.body, actor(request));
      return reply.code(created ? 201 : 200).send(software);
    },
  );
}
