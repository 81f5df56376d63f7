/**
 * The one way to call the master, shared by the CLI and the node agent.
 *
 * Every route of the table (protocol/endpoints.ts, protocol/routes.ts) is a method, by
 * group and name: path parameters first (encoded here, and only here), then the body of
 * a route that takes one, then the query and headers. Each answers the body of the
 * master's answer, typed by the table's schemas; `client.answer.GROUP.NAME(...)` answers
 * the status and headers with it.
 *
 * Errors come back as PledgerError: the master's own error when it answered, and
 * MASTER_UNREACHABLE when it could not be reached at all, so callers can tell "the
 * master said no" from "there is no master".
 *
 * Only the table's types come from routes.ts: the node agent, which runs from cron,
 * loads neither TypeBox nor the schemas (and checks what it receives with validators
 * compiled at build time).
 *
 * @example
 *   const master = new MasterClient({ url: 'http://127.0.0.1:8600', token });
 *   const me = await master.accounts.whoami();
 *   const view = await master.instances.request('my-cache', { software: 'redis' });
 *   const payment = await master.billing.pay({ invoice, amount: '12.34' }, { headers: { 'idempotency-key': key } });
 */
import type { ClientRequest, IncomingHttpHeaders, IncomingMessage, RequestOptions } from 'node:http';
import type { Static, TSchema } from 'typebox';
import { ENDPOINTS, type Endpoint } from './endpoints.js';
import { PledgerError } from './errors.js';
import type { Routes } from './routes.js';

export interface MasterClientOptions {
  url: string;
  token?: string;
  /** Milliseconds without a byte from the master before a call is abandoned. */
  timeoutMs?: number;
  /**
   * Delays before each new attempt of a call the master answered SERVICE_UNAVAILABLE
   * (it lost its database for a moment and changed nothing): 0.25 s, doubling, about 7 s
   * in all by default. A jitter of up to half of each spreads the callers out.
   */
  unavailableRetriesMs?: number[];
}

const UNAVAILABLE_RETRIES_MS = [250, 500, 1000, 2000, 4000];

/** The answer's headers, looked up by name in any case (as with fetch's Headers). */
export class AnswerHeaders {
  constructor(private readonly headers: IncomingHttpHeaders) {}

  get(name: string): string | null {
    const value = this.headers[name.toLowerCase()];
    if (value === undefined) return null;
    return Array.isArray(value) ? value.join(', ') : value;
  }
}

export interface RawAnswer {
  status: number;
  headers: AnswerHeaders;
  body: Buffer;
}

/**
 * node:http rather than fetch: fetch loads Node's bundled undici on first use, which
 * costs more than a whole no-op run of the node agent started by cron.
 */
const transport = (protocol: string) => (protocol === 'https:' ? import('node:https') : import('node:http'));

export class MasterClient {
  readonly url: string;
  private readonly token: string | undefined;
  private readonly timeoutMs: number;
  private readonly unavailableRetriesMs: number[];

  readonly accounts: Bodies<'accounts'>;
  readonly nodes: Bodies<'nodes'>;
  readonly software: Bodies<'software'>;
  readonly supplies: Bodies<'supplies'>;
  readonly instances: Bodies<'instances'>;
  readonly binaryCache: Bodies<'binaryCache'>;
  readonly billing: Bodies<'billing'>;
  readonly node: Bodies<'node'>;
  /** The same methods, answering the status and headers of the answer with its body. */
  readonly answer: { [G in keyof Routes]: Answers<G> };

  constructor(options: MasterClientOptions) {
    this.url = options.url.replace(/\/+$/, '');
    this.token = options.token;
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.unavailableRetriesMs = options.unavailableRetriesMs ?? UNAVAILABLE_RETRIES_MS;
    const groups = (answerOnly: boolean) =>
      Object.fromEntries(
        Object.entries(ENDPOINTS).map(([group, endpoints]) => [
          group,
          Object.fromEntries(
            Object.entries(endpoints).map(([name, endpoint]: [string, Endpoint]) => [
              name,
              answerOnly ? (...args: unknown[]) => this.send(endpoint, args) : async (...args: unknown[]) => (await this.send(endpoint, args)).body,
            ]),
          ),
        ]),
      );
    const bodies = groups(false) as { [G in keyof Routes]: Bodies<G> };
    this.answer = groups(true) as { [G in keyof Routes]: Answers<G> };
    this.accounts = bodies.accounts;
    this.nodes = bodies.nodes;
    this.software = bodies.software;
    this.supplies = bodies.supplies;
    this.instances = bodies.instances;
    this.binaryCache = bodies.binaryCache;
    this.billing = bodies.billing;
    this.node = bodies.node;
  }

  /** Calls one route of the table with the arguments its method took (see `RouteArgs`). */
  private async send(endpoint: Endpoint, args: unknown[]): Promise<{ status: number; headers: AnswerHeaders; body: unknown }> {
    const { path, body, headers } = requestOf(endpoint, args);
    if (endpoint.answer === 'stream') {
      const response = await this.stream(endpoint.method, path, headers);
      return { status: response.statusCode ?? 0, headers: new AnswerHeaders(response.headers), body: response };
    }
    if (endpoint.answer) headers.accept = endpoint.answer;
    const answer = endpoint.archive
      ? await this.raw(endpoint.method, path, { body: body as Buffer, headers: { 'content-type': endpoint.archive, ...headers } })
      : await this.raw(endpoint.method, path, {
          body: body === undefined ? undefined : Buffer.from(JSON.stringify(body)),
          headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
        });
    const { status, headers: answered } = answer;
    if (endpoint.answer) return { status, headers: answered, body: answer.body };
    if (answer.body.length === 0) return { status, headers: answered, body: undefined };
    try {
      return { status, headers: answered, body: JSON.parse(answer.body.toString('utf8')) };
    } catch {
      throw new PledgerError('INTERNAL', `the master answered ${endpoint.method} ${endpoint.path} with something that is not JSON`);
    }
  }

  /**
   * Sends JSON (when `body` is given) and parses the JSON answer, untyped: for tests and
   * tools that probe the API as it is. The CLI and the node agent call routes by name.
   */
  async call<T>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<T> {
    const answer = await this.raw(method, path, {
      body: body === undefined ? undefined : Buffer.from(JSON.stringify(body)),
      headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
    });
    return (answer.body.length > 0 ? JSON.parse(answer.body.toString('utf8')) : undefined) as T;
  }

  /**
   * Sends bytes and returns the answer as bytes. Answers 2xx and 304 are returned;
   * every other status is thrown as the master's PledgerError.
   */
  async raw(method: string, path: string, options: { body?: Buffer; headers?: Record<string, string> } = {}): Promise<RawAnswer> {
    return this.retrying(() => this.once(method, path, options));
  }

  /**
   * Sends a request whose answer is read as it arrives rather than buffered: exports can
   * be large. A refusal is thrown as with every other call; once the answer has begun,
   * its reader may take as long as it needs.
   */
  async stream(method: string, path: string, headers: Record<string, string> = {}): Promise<IncomingMessage> {
    return this.retrying(async () => {
      let response: IncomingMessage;
      try {
        ({ response } = await this.open(new URL(`${this.url}${path}`), { method, headers: this.withCredential({ accept: '*/*', ...headers }) }, undefined));
      } catch (error) {
        throw this.unreachable(error);
      }
      const status = response.statusCode ?? 0;
      if (status >= 200 && status < 300) return response;
      const chunks: Buffer[] = [];
      for await (const chunk of response) chunks.push(chunk as Buffer);
      throw refusal(status, Buffer.concat(chunks));
    });
  }

  /** Tries again what the master answered SERVICE_UNAVAILABLE: it changed nothing. */
  private async retrying<T>(attempt: () => Promise<T>): Promise<T> {
    for (let attempts = 0; ; attempts++) {
      try {
        return await attempt();
      } catch (error) {
        const delay = this.unavailableRetriesMs[attempts];
        if (!(error instanceof PledgerError) || error.code !== 'SERVICE_UNAVAILABLE' || delay === undefined) throw error;
        await new Promise((resolve) => setTimeout(resolve, delay * (1 + Math.random() / 2)));
      }
    }
  }

  private async once(method: string, path: string, options: { body?: Buffer; headers?: Record<string, string> }): Promise<RawAnswer> {
    const headers = this.withCredential({ accept: 'application/json', ...options.headers });
    if (options.body) headers['content-length'] = String(options.body.length);
    let answer: RawAnswer;
    try {
      answer = await this.exchange(new URL(`${this.url}${path}`), { method, headers }, options.body);
    } catch (error) {
      throw this.unreachable(error);
    }
    if ((answer.status >= 200 && answer.status < 300) || answer.status === 304) return answer;
    throw refusal(answer.status, answer.body);
  }

  private withCredential(headers: Record<string, string>): Record<string, string> {
    return this.token ? { ...headers, authorization: `Bearer ${this.token}` } : headers;
  }

  private unreachable(error: unknown): PledgerError {
    const reason = (error as Error & { cause?: Error }).cause?.message ?? (error as Error).message;
    return new PledgerError('MASTER_UNREACHABLE', `cannot reach the master at ${this.url}: ${reason}`, { cause: error });
  }

  /** One request and its whole answer, within the client's timeout. */
  private async exchange(url: URL, options: RequestOptions, body: Buffer | undefined): Promise<RawAnswer> {
    const { response, sent } = await this.open(url, options, body, { untilEnd: true });
    return new Promise<RawAnswer>((resolve, reject) => {
      sent.on('error', reject);
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, headers: new AnswerHeaders(response.headers), body: Buffer.concat(chunks) }));
      response.on('error', reject);
      response.on('close', () => {
        if (!response.complete) reject(new Error('the connection closed before the answer ended'));
      });
    });
  }

  /**
   * Sends one request and resolves with the answer as it begins. The client's timeout
   * holds while connecting, sending and waiting for the answer, and `untilEnd` while it
   * is received too.
   */
  private async open(url: URL, options: RequestOptions, body: Buffer | undefined, { untilEnd = false } = {}): Promise<{ response: IncomingMessage; sent: ClientRequest }> {
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`${url.protocol} is not http: or https:`);
    const { request } = await transport(url.protocol);
    return new Promise((resolve, reject) => {
      const sent = request(url, { ...options, timeout: this.timeoutMs }, (response: IncomingMessage) => {
        if (!untilEnd) sent.setTimeout(0);
        resolve({ response, sent });
      });
      // The socket's inactivity, while connecting, sending or receiving.
      sent.on('timeout', () => sent.destroy(new Error(`no answer within ${this.timeoutMs} ms`)));
      sent.on('error', reject);
      sent.end(body);
    });
  }
}

/** The master's refusal, from its answer's status and body. */
function refusal(status: number, body: Buffer): PledgerError {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    parsed = undefined;
  }
  return PledgerError.fromBody(parsed, status);
}

// ---------------------------------------------------------------------------
// The methods' types, from the route table's.

const PATH_PARAMETER = /:[A-Za-z0-9]+/g;
const TAKES_BODY = new Set(['PUT', 'POST', 'PATCH']);

interface RequestOptionsOf {
  query?: Record<string, string | undefined>;
  headers?: Record<string, string | undefined>;
}

/**
 * The request a route's method makes of its arguments: path parameters first, each
 * encoded into the path (here and nowhere else), then the body of a method that takes
 * one, then the query and headers, without the values left undefined.
 */
function requestOf(endpoint: Endpoint, args: unknown[]): { path: string; body: unknown; headers: Record<string, string> } {
  const values = args.slice(0, (endpoint.path.match(PATH_PARAMETER) ?? []).length) as string[];
  const rest = args.slice(values.length);
  const body = TAKES_BODY.has(endpoint.method) ? rest.shift() : undefined;
  const options = (rest[0] ?? {}) as RequestOptionsOf;
  let next = 0;
  const path = endpoint.path.replace(PATH_PARAMETER, () => encodeURIComponent(values[next++]!));
  const query = new URLSearchParams(definedEntries(options.query));
  return { path: query.size > 0 ? `${path}?${query}` : path, body, headers: Object.fromEntries(definedEntries(options.headers)) };
}

function definedEntries(record: Record<string, string | undefined> | undefined): [string, string][] {
  return Object.entries(record ?? {}).filter((entry): entry is [string, string] => entry[1] !== undefined);
}

type Field<R, K extends string> = R extends Record<K, infer S extends TSchema> ? S : undefined;
type StaticOf<S> = S extends TSchema ? Static<S> : never;

/** One string per `:parameter` of the path, in order. */
type PathArgs<P extends string> = P extends `${string}:${string}/${infer Rest}` ? [string, ...PathArgs<`/${Rest}`>] : P extends `${string}:${string}` ? [string] : [];

type BodyArgs<R> = R extends { archive: string } ? [archive: Buffer] : Field<R, 'body'> extends TSchema ? [body: StaticOf<Field<R, 'body'>>] : [];

type Nothing = Record<never, never>;
type QueryOption<R> = Field<R, 'querystring'> extends TSchema
  ? Nothing extends StaticOf<Field<R, 'querystring'>>
    ? { query?: StaticOf<Field<R, 'querystring'>> }
    : { query: StaticOf<Field<R, 'querystring'>> }
  : Nothing;
type HeaderOption<R> = Field<R, 'headers'> extends TSchema ? { headers?: StaticOf<Field<R, 'headers'>> } : Nothing;
type Options<R> = QueryOption<R> & HeaderOption<R>;
/** The options come last, and may be left out when nothing in them is required. */
type OptionArgs<R> = keyof Options<R> extends never ? [] : Nothing extends Options<R> ? [options?: Options<R>] : [options: Options<R>];

export type RouteArgs<R> = [...(R extends { path: infer P extends string } ? PathArgs<P> : []), ...BodyArgs<R>, ...OptionArgs<R>];

/** What a route answers: its JSON, typed by the table; an archive's or a page's bytes; or an answer to read as it arrives. */
export type ReplyBody<R> = R extends { answer: 'stream' }
  ? IncomingMessage
  : R extends { answer: string }
    ? Buffer
    : Field<R, 'reply'> extends Record<number, TSchema>
      ? StaticOf<Field<R, 'reply'>[keyof Field<R, 'reply'>]>
      : unknown;

/** An answer with its status: one per status the table lists, and 304 for a route asked If-None-Match. */
export type TypedAnswer<R> =
  | (Field<R, 'reply'> extends Record<number, TSchema>
      ? { [S in keyof Field<R, 'reply'>]: { status: S; headers: AnswerHeaders; body: StaticOf<Field<R, 'reply'>[S]> } }[keyof Field<R, 'reply'>]
      : { status: number; headers: AnswerHeaders; body: ReplyBody<R> })
  | (Field<R, 'headers'> extends TSchema
      ? 'if-none-match' extends keyof StaticOf<Field<R, 'headers'>>
        ? { status: 304; headers: AnswerHeaders; body: undefined }
        : never
      : never);

type Bodies<G extends keyof Routes> = { [N in keyof Routes[G]]: (...args: RouteArgs<Routes[G][N]>) => Promise<ReplyBody<Routes[G][N]>> };
type Answers<G extends keyof Routes> = { [N in keyof Routes[G]]: (...args: RouteArgs<Routes[G][N]>) => Promise<TypedAnswer<Routes[G][N]>> };
