/**
 * The master's HTTP application: the user API, the node API and their shared error
 * handling. `buildApp` gives a fastify instance that tests drive with `inject()` and
 * that `pledger master serve` listens with.
 */
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify, {
  LogController,
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
import type { Socket } from 'node:net';
import type { Ajv } from 'ajv';
import { API_PREFIX, MAX_TITLE_LENGTH, PATTERN_MEANINGS, STORABLE_JSON_KEYWORD } from '../protocol/api.js';
import { NODE_API_PREFIX } from '../protocol/endpoints.js';
import { PledgerError } from '../protocol/errors.js';
import { MAX_SOFTWARE_ARCHIVE_BYTES } from '../protocol/software-archive.js';
import { findUnstorable } from '../protocol/storable.js';
import { accountByToken, type AccountRow } from './accounts.js';
import { allocateSoon } from './instances/allocation.js';
import type { Database } from './db/database.js';
import { isBusy, isConnectionLost, isUniqueViolation } from './db/database.js';
import { nodeByCredential, touchNode, type NodeRow } from './nodes/registry.js';
import { billingRoutes } from './routes/billing-api.js';
import { binaryCacheKeyRoutes, binaryCacheRoutes, sourceCacheRoutes } from './routes/cache-api.js';
import { nodeRoutes } from './routes/node-api.js';
import { softwareUploadRoutes, userRoutes } from './routes/user-api.js';
import { describeSchemaErrors } from '../protocol/schema-problems.js';

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
    // One line per request, written once it is answered (below), rather than fastify's
    // two: a busy master writes its log at every request.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 1024 * 1024,
    // A title may hold 200 characters (`MAX_TITLE_LENGTH`), each up to 9 bytes once
    // percent-encoded in a URL: fastify's default of 100 would refuse most of them.
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    // Strict validation: an unknown field or a string for a number is a 400, never
    // silently dropped or coerced.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: true }, plugins: [storableJsonKeyword] },
    // A path fastify cannot decode, or a parameter longer than maxParamLength, is refused
    // before any route: in Pledger's error shape, like every other refusal.
    frameworkErrors: (error, request, reply) => {
      const path = shortPath(request.raw.url);
      const refusal =
        error.code === 'FST_ERR_MAX_PARAM_LENGTH'
          ? new PledgerError('BAD_REQUEST', `invalid request: a part of the path ${path} is longer than ${MAX_PARAM_LENGTH} characters`, {
              hint: `an instance title holds at most ${MAX_TITLE_LENGTH} characters`,
            })
          : new PledgerError('BAD_REQUEST', `invalid request: the path ${path} is not valid URL encoding`, { hint: 'percent-encode the title as UTF-8 (encodeURIComponent)' });
      void sendError(reply, refusal);
    },
    // Requests Node's HTTP parser refuses (headers over 16 KiB, a path among them,
    // malformed HTTP): answered in Pledger's error shape too, then the connection closed.
    clientErrorHandler: (error: Error & { code?: string }, socket: Socket) => {
      if (error.code === 'ECONNRESET' || socket.destroyed) return;
      const message =
        error.code === 'HPE_HEADER_OVERFLOW'
          ? 'invalid request: the request line and headers are over 16 KiB (an over-long path?)'
          : error.code === 'ERR_HTTP_REQUEST_TIMEOUT'
            ? 'invalid request: the request did not arrive in time'
            : 'invalid request: this is not well-formed HTTP';
      const body = JSON.stringify(new PledgerError('BAD_REQUEST', message).toBody());
      if (socket.writable) {
        socket.write(`HTTP/1.1 400 Bad Request\r\nContent-Length: ${Buffer.byteLength(body)}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n${body}`);
      }
      socket.destroy();
    },
  }).withTypeProvider<TypeBoxTypeProvider>();

  app.addHook('onResponse', async (request, reply) => {
    request.log.info({ method: request.method, url: shortPath(request.raw.url), status: reply.statusCode, ms: Math.round(reply.elapsedTime * 10) / 10 }, 'request completed');
  });
  app.setErrorHandler((error: FastifyError, request, reply) => sendError(reply, toPledgerError(error, request)));
  app.setNotFoundHandler((request, reply) =>
    sendError(reply, new PledgerError('NOT_FOUND', `no route ${request.method} ${shortPath(request.url)}`)),
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
        request.nodeBack = await touchNode(db, node.id, node.last_seen_at);
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
    { prefix: NODE_API_PREFIX },
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
const MAX_PARAM_LENGTH = 2048;

/** A request's path for a message: without its query, and cut when it is long (a refusal must not echo megabytes). */
function shortPath(url: string | undefined): string {
  const path = (url ?? '').split('?')[0]!;
  return path.length > 120 ? `${path.slice(0, 120)}...` : path;
}

/**
 * The keyword STORABLE_JSON_KEYWORD (see protocol/api.ts): free-form JSON is walked
 * once, iteratively, for its depth and its strings, before anything recursive (the
 * release's parameter schema, canonical serialization) sees it. A value nested
 * thousands of levels deep is a 400 here instead of a stack overflow later.
 */
function storableJsonKeyword(ajv: Ajv): Ajv {
  return ajv.addKeyword({
    keyword: STORABLE_JSON_KEYWORD,
    schemaType: 'number',
    errors: true,
    validate: function check(maxDepth: number, data: unknown, _schema?: unknown, context?: { instancePath?: string }) {
      const found = findUnstorable(data, maxDepth);
      if (!found) return true;
      const instancePath = `${context?.instancePath ?? ''}${found.path}`;
      (check as { errors?: unknown[] }).errors = [
        { keyword: STORABLE_JSON_KEYWORD, instancePath: instancePath.length > 200 ? `${instancePath.slice(0, 200)}...` : instancePath, schemaPath: '', params: {}, message: found.problem },
      ];
      return false;
    },
  });
}

function bearer(request: FastifyRequest): string {
  const header = request.headers.authorization;
  const match = /^Bearer (\S+)$/.exec(header ?? '');
  if (!match) throw new PledgerError('UNAUTHENTICATED', 'this request carries no credential (Authorization: Bearer ...)');
  return match[1]!;
}

function toPledgerError(error: FastifyError, request: FastifyRequest): PledgerError {
  if (error instanceof PledgerError) return error;
  if (error.validation) {
    const context = error.validationContext ?? 'body';
    // The shared text patterns are unreadable as regular expressions: say what they mean.
    const problems = describeSchemaErrors(error.validation, { root: context, top: context, patterns: PATTERN_MEANINGS }, MAX_PROBLEMS);
    return new PledgerError('BAD_REQUEST', `invalid request: ${problems}`, {
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
  if (isConnectionLost(error)) {
    // A transaction whose connection is lost before its commit is rolled back by the
    // database, so the client may try again; the pool opens a new connection for the next
    // query by itself. (A loss during the commit itself leaves its outcome unknown: the
    // requests are idempotent by title or event id, so trying again is still safe for them.)
    request.log.warn({ err: error }, 'database connection lost during a request');
    return new PledgerError('SERVICE_UNAVAILABLE', 'the master lost its database connection: try again');
  }
  if (isUniqueViolation(error)) return new PledgerError('CONFLICT', 'a concurrent change got there first: try again', { hint: 'repeat the command' });
  if (isBusy(error)) return new PledgerError('CONFLICT', 'the database is busy with another change: try again', { hint: 'repeat the command' });
  request.log.error({ err: error }, 'request failed');
  return new PledgerError('INTERNAL', 'the master failed to handle this request');
}

function sendError(reply: FastifyReply, error: PledgerError): FastifyReply {
  return reply.code(error.status).type('application/json').send(error.toBody());
}
