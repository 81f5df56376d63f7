/**
 * The master's HTTP application: the user API, the node API and their shared error
 * handling. `buildApp` gives a fastify instance that tests drive with `inject()` and
 * that `pledger master serve` listens with.
 */
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify, {
  type FastifyBaseLogger,
  type FastifyError,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  type FastifyServerOptions,
  type RawReplyDefaultExpression,
  type RawRequestDefaultExpression,
  type RawServerDefault,
} from 'fastify';
import { API_PREFIX } from '../protocol/api.js';
import { PledgerError } from '../protocol/errors.js';
import { MAX_SOFTWARE_ARCHIVE_BYTES } from '../protocol/software-archive.js';
import { accountByToken, type AccountRow } from './accounts.js';
import { allocateSoon } from './allocation.js';
import type { Database } from './db/database.js';
import { isBusy, isUniqueViolation } from './db/database.js';
import { nodeByCredential, touchNode, type NodeRow } from './nodes.js';
import { billingRoutes } from './routes/billing-api.js';
import { binaryCacheKeyRoutes, binaryCacheRoutes, sourceCacheRoutes } from './routes/cache-api.js';
import { nodeRoutes } from './routes/node-api.js';
import { softwareUploadRoutes, userRoutes } from './routes/user-api.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** The authenticated account, on the user API. */
    account: AccountRow;
    /** The authenticated node, on the node API. */
    node: NodeRow;
    /** The node had been silent until this call: instances waiting for a partition may fit now. */
    nodeBack: boolean;
  }
}

export type App = FastifyInstance<
  RawServerDefault,
  RawRequestDefaultExpression,
  RawReplyDefaultExpression,
  FastifyBaseLogger,
  TypeBoxTypeProvider
>;

export interface AppOptions {
  database: Database;
  logger?: FastifyServerOptions['logger'];
}

export function buildApp({ database, logger = false }: AppOptions): App {
  const app = Fastify({
    logger,
    bodyLimit: 1024 * 1024,
    // A title may hold 200 characters (`MAX_TITLE_LENGTH`), each up to 9 bytes once
    // percent-encoded in a URL: fastify's default of 100 would refuse most of them.
    routerOptions: { maxParamLength: 2048 },
    // Strict validation: an unknown field or a string for a number is a 400, never
    // silently dropped or coerced.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: true } },
  }).withTypeProvider<TypeBoxTypeProvider>();

  app.setErrorHandler((error: FastifyError, request, reply) => sendError(reply, toPledgerError(error, request)));
  app.setNotFoundHandler((request, reply) =>
    sendError(reply, new PledgerError('NOT_FOUND', `no route ${request.method} ${request.url.split('?')[0]}`)),
  );

  app.get('/health', async () => ({ ok: true }));

  const { db } = database;
  void app.register(
    async (scope) => {
      scope.addHook('onRequest', async (request) => {
        const account = await accountByToken(db, bearer(request));
        if (!account) throw new PledgerError('UNAUTHENTICATED', 'this API token is not valid');
        request.account = account;
      });
      await userRoutes(scope, db);
      await billingRoutes(scope, database);
      await binaryCacheKeyRoutes(scope, db);
      await scope.register(async (archives) => {
        acceptArchives(archives);
        await softwareUploadRoutes(archives, db);
      });
    },
    { prefix: API_PREFIX },
  );
  void app.register(
    async (scope) => {
      scope.addHook('onRequest', async (request) => {
        const node = await nodeByCredential(db, bearer(request));
        if (!node) throw new PledgerError('UNAUTHENTICATED', 'this node credential is not valid', { hint: 'register the node again with `pledger node register`' });
        request.node = node;
        request.nodeBack = await touchNode(db, node.id);
      });
      // A node back from silence may take the instances waiting for a partition. Its
      // desired-state poll tries them first, so that it gets them at once; after any
      // other call they are tried in the background, off the node's path.
      scope.addHook('onResponse', async (request) => {
        if (request.nodeBack) allocateSoon(db, (error) => request.log.error({ err: error }, 'allocating after a silent node came back failed'));
      });
      await nodeRoutes(scope, db);
      await scope.register(async (archives) => {
        acceptArchives(archives);
        await sourceCacheRoutes(archives, db);
        await binaryCacheRoutes(archives, db);
      });
    },
    { prefix: `${API_PREFIX}/node` },
  );
  return app;
}

/**
 * Lets the routes of a scope take archives (a release, a source, a built part) as raw
 * bytes, up to the largest archive. Only the few routes that receive archives are in
 * such a scope: every other route reads JSON, up to 1 MiB, and refuses any other body
 * with 415 before reading it, so nobody can make the master hold 64 MiB per request on
 * a route that never needed it.
 */
function acceptArchives(scope: App): void {
  scope.addContentTypeParser(
    ['application/gzip', 'application/octet-stream'],
    { parseAs: 'buffer', bodyLimit: MAX_SOFTWARE_ARCHIVE_BYTES },
    (_request, body, done) => done(null, body),
  );
}

/** Problems named in one refusal: a body can break its schema in as many places as it has bytes. */
const MAX_PROBLEMS = 10;

function bearer(request: FastifyRequest): string {
  const header = request.headers.authorization;
  const match = /^Bearer (\S+)$/.exec(header ?? '');
  if (!match) throw new PledgerError('UNAUTHENTICATED', 'this request carries no credential (Authorization: Bearer ...)');
  return match[1]!;
}

function toPledgerError(error: FastifyError, request: FastifyRequest): PledgerError {
  if (error instanceof PledgerError) return error;
  if (error.validation) {
    const problems = error.validation.map((v) => {
      const where = v.instancePath ? `${error.validationContext ?? 'body'}${v.instancePath.replaceAll('/', '.')}` : (error.validationContext ?? 'body');
      const extra = v.keyword === 'additionalProperties' ? ` (${(v.params as { additionalProperty: string }).additionalProperty})` : '';
      return `${where} ${v.message ?? 'is invalid'}${extra}`;
    });
    const distinct = [...new Set(problems)];
    const more = distinct.length > MAX_PROBLEMS ? `; and ${distinct.length - MAX_PROBLEMS} more` : '';
    return new PledgerError('BAD_REQUEST', `invalid request: ${distinct.slice(0, MAX_PROBLEMS).join('; ')}${more}`, {
      details: error.validation.slice(0, MAX_PROBLEMS),
    });
  }
  if (error.statusCode === 413) return new PledgerError('PAYLOAD_TOO_LARGE', 'the request body is too large');
  if (error.statusCode === 415) {
    return new PledgerError('BAD_REQUEST', `invalid request: this route does not take ${request.headers['content-type'] ?? 'a body without a type'}`, {
      hint: 'send JSON (Content-Type: application/json)',
    });
  }
  if (error.statusCode && error.statusCode >= 400 && error.statusCode < 500) {
    // fastify's own refusals: malformed JSON, unsupported content type...
    return new PledgerError('BAD_REQUEST', `invalid request: ${error.message}`);
  }
  if (isUniqueViolation(error)) return new PledgerError('CONFLICT', 'a concurrent change got there first: try again', { hint: 'repeat the command' });
  if (isBusy(error)) return new PledgerError('CONFLICT', 'the database is busy with another change: try again', { hint: 'repeat the command' });
  request.log.error({ err: error }, 'request failed');
  return new PledgerError('INTERNAL', 'the master failed to handle this request');
}

function sendError(reply: FastifyReply, error: PledgerError): FastifyReply {
  return reply.code(error.status).type('application/json').send(error.toBody());
}
