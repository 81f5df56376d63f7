/**
 * Registers a route of the table (protocol/routes.ts) with its handler: the schemas
 * fastify validates and serializes with are the table's, so a route cannot drift from
 * what the client and docs/api.md say of it, and the handler is typed by them.
 */
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type {
  ContextConfigDefault,
  FastifyBaseLogger,
  FastifyRequest,
  FastifySchema,
  onRequestAsyncHookHandler,
  RawReplyDefaultExpression,
  RawRequestDefaultExpression,
  RawServerDefault,
  RouteGenericInterface,
  RouteHandlerMethod,
} from 'fastify';
import { NODE_API_PREFIX } from '../../protocol/endpoints.js';
import { PledgerError } from '../../protocol/errors.js';
import type { Route } from '../../protocol/routes.js';
import type { App } from '../app.js';

type Field<R, K extends string> = R extends Record<K, infer S> ? S : undefined;

/** The fastify schema of a route, as a type: what types its handler. */
interface SchemaOf<R extends Route> extends FastifySchema {
  params: Field<R, 'params'>;
  querystring: Field<R, 'querystring'>;
  headers: Field<R, 'headers'>;
  body: Field<R, 'body'>;
  response: Field<R, 'reply'>;
}

export type RouteHandler<R extends Route> = RouteHandlerMethod<
  RawServerDefault,
  RawRequestDefaultExpression,
  RawReplyDefaultExpression,
  RouteGenericInterface,
  ContextConfigDefault,
  SchemaOf<R>,
  TypeBoxTypeProvider,
  FastifyBaseLogger
>;

export interface RouteOptions<R extends Route> {
  /** Checks made before the body is read: an archive refused is never received. */
  onRequest?: onRequestAsyncHookHandler<
    RawServerDefault,
    RawRequestDefaultExpression,
    RawReplyDefaultExpression,
    RouteGenericInterface,
    ContextConfigDefault,
    SchemaOf<R>,
    TypeBoxTypeProvider,
    FastifyBaseLogger
  >;
}

export function route<R extends Route>(app: App, route: R, handler: RouteHandler<R>, options: RouteOptions<R> = {}): void {
  // A node route registered among the user routes would take an account's token, and the reverse a node's.
  if (!route.path.startsWith(`${app.prefix}/`) || (route.caller === 'node') !== (app.prefix === NODE_API_PREFIX)) {
    throw new Error(`${route.method} ${route.path} (for ${route.caller}) does not belong under ${app.prefix || '/'}`);
  }
  const schema: FastifySchema = {};
  if (route.params) schema.params = route.params;
  if (route.querystring) schema.querystring = route.querystring;
  if (route.headers) schema.headers = route.headers;
  if (route.body) schema.body = route.body;
  if (route.reply) schema.response = route.reply;
  const onRequest: onRequestAsyncHookHandler[] = [];
  const preHandler: onRequestAsyncHookHandler[] = [];
  if (route.caller === 'operator') {
    // An archive is refused before it is read; a JSON body is checked against its schema first.
    (route.archive ? onRequest : preHandler).push(async (request) => requireOperator(request));
  }
  if (options.onRequest) onRequest.push(options.onRequest as onRequestAsyncHookHandler);
  app.route({
    method: route.method,
    url: route.path.slice(app.prefix.length),
    schema,
    ...(onRequest.length > 0 ? { onRequest } : {}),
    ...(preHandler.length > 0 ? { preHandler } : {}),
    handler: handler as RouteHandlerMethod,
  });
}

function requireOperator(request: FastifyRequest): void {
  if (request.account.role !== 'admin') throw new PledgerError('FORBIDDEN', 'only an operator (admin account) may do this');
}
