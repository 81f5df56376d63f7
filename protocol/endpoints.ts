/**
 * Every route of the master's API, by name: its method, its path, who may call it and
 * what it does. protocol/routes.ts joins each with the schemas of what it carries; the
 * master registers its routes from that table, the client (protocol/api-client.ts)
 * calls them by name, and docs/api.md documents each (test/api-docs.test.ts keeps them
 * in step).
 *
 * Plain data, without the schemas: the node agent's client names its routes from here
 * without loading TypeBox, which would cost more than a whole run that has nothing to do.
 *
 * A new route is named here, given its schemas in routes.ts, registered with its handler
 * by `route()` in master/routes/, and documented in docs/api.md; the client has its
 * method at once.
 */
import { API_PREFIX } from './api-prefix.js';

export type HttpMethod = 'GET' | 'HEAD' | 'PUT' | 'POST' | 'PATCH' | 'DELETE';

/**
 * Who may call a route: any account (`user`), an operator (an admin account), or a node
 * with its own credential. The master checks it: the node API and the user API take
 * different credentials, and an operator's route refuses other accounts with 403.
 */
export type Caller = 'user' | 'operator' | 'node';

/** The media types of archives: the only bodies that are not JSON. */
export type ArchiveType = 'application/gzip' | 'application/octet-stream';

export interface Endpoint {
  method: HttpMethod;
  /** The whole path, each parameter as `:name`. */
  path: string;
  caller: Caller;
  summary: string;
  /** A body sent as the bytes of an archive rather than as JSON. */
  archive?: ArchiveType;
  /** An answer that is not JSON: bytes of this media type, or `stream` for one read as it arrives. */
  answer?: ArchiveType | 'text/html' | 'stream';
}

/** Routes in groups, each route named within its group: `instances.request`. */
export type EndpointTable = Record<string, Record<string, Endpoint>>;

/** Where the node API lives: its routes take a node's credential, and no other route does. */
export const NODE_API_PREFIX = `${API_PREFIX}/node`;

const user = API_PREFIX;
const node = NODE_API_PREFIX;

export const ENDPOINTS = {
  accounts: {
    whoami: { method: 'GET', path: `${user}/whoami`, caller: 'user', summary: 'the account of the token' },
    create: { method: 'POST', path: `${user}/accounts`, caller: 'operator', summary: 'creates an account and answers its API token, shown once' },
    list: { method: 'GET', path: `${user}/accounts`, caller: 'operator', summary: 'every account' },
  },
  nodes: {
    register: { method: 'POST', path: `${user}/nodes`, caller: 'operator', summary: 'registers a node and answers its credential, shown once' },
    update: { method: 'PATCH', path: `${user}/nodes/:name`, caller: 'operator', summary: "changes a node's labels, resources, scope, owner or binary cache uploads" },
    list: { method: 'GET', path: `${user}/nodes`, caller: 'operator', summary: 'every node, its partitions, resources and supplied releases' },
  },
  software: {
    list: { method: 'GET', path: `${user}/software`, caller: 'user', summary: 'the published software releases' },
    show: { method: 'GET', path: `${user}/software/:ref`, caller: 'user', summary: 'one release (NAME or NAME@VERSION) with the parameter schema of each software type' },
    publish: {
      method: 'POST',
      path: `${user}/software`,
      caller: 'operator',
      archive: 'application/gzip',
      summary: 'publishes a release from a gzipped tar of its folder: 201 when published, 200 when that content was already',
    },
  },
  supplies: {
    set: { method: 'POST', path: `${user}/supplies`, caller: 'operator', summary: 'asks a node to build a release, or to remove it' },
  },
  instances: {
    list: { method: 'GET', path: `${user}/instances`, caller: 'user', summary: "the caller's instances, the destroyed ones with all=true" },
    request: { method: 'PUT', path: `${user}/instances/:title`, caller: 'user', summary: 'requests an instance, or changes it: idempotent per account and title' },
    get: { method: 'GET', path: `${user}/instances/:title`, caller: 'user', summary: 'one instance of the caller' },
    tree: { method: 'GET', path: `${user}/instances/:title/tree`, caller: 'user', summary: 'an instance and its sub-instances, recursively, depth first' },
    history: { method: 'GET', path: `${user}/instances/:title/history`, caller: 'user', summary: "the instance's movements in the ledger, in order" },
    destroy: { method: 'DELETE', path: `${user}/instances/:title`, caller: 'user', summary: 'asks for the instance to be destroyed' },
  },
  binaryCache: {
    key: { method: 'GET', path: `${user}/binary-cache/key`, caller: 'user', summary: 'the public key binary cache entries are signed with' },
  },
  billing: {
    settings: { method: 'GET', path: `${user}/billing/settings`, caller: 'user', summary: 'the billing settings' },
    configure: { method: 'PUT', path: `${user}/billing/settings`, caller: 'operator', summary: 'changes the billing settings' },
    prices: { method: 'GET', path: `${user}/billing/prices`, caller: 'user', summary: 'every version of every price list' },
    setPrices: { method: 'PUT', path: `${user}/billing/prices`, caller: 'operator', summary: 'sets the prices of a release and software type from a month on' },
    close: { method: 'POST', path: `${user}/billing/close`, caller: 'operator', summary: 'closes a month: one invoice per customer; closing again changes nothing' },
    invoices: { method: 'GET', path: `${user}/billing/invoices`, caller: 'user', summary: "the caller's invoices (an operator's: everyone's, or one account's)" },
    invoice: { method: 'GET', path: `${user}/billing/invoices/:id`, caller: 'user', summary: 'one invoice with its lines' },
    invoicePage: { method: 'GET', path: `${user}/billing/invoices/:id/html`, caller: 'user', answer: 'text/html', summary: 'the printable invoice' },
    credit: { method: 'POST', path: `${user}/billing/invoices/:id/credit`, caller: 'operator', summary: 'reverses an unpaid invoice whole with a credit note' },
    pay: { method: 'POST', path: `${user}/billing/payments`, caller: 'operator', summary: 'records a payment against an invoice, once per idempotency key' },
    reversePayment: { method: 'POST', path: `${user}/billing/payments/:id/reverse`, caller: 'operator', summary: 'reverses a payment recorded by mistake' },
    balance: { method: 'GET', path: `${user}/billing/balance`, caller: 'user', summary: 'what an account owes, what is overdue, and its hold for non-payment' },
    statement: { method: 'GET', path: `${user}/billing/statement`, caller: 'user', summary: "an account's receivable entries with the running balance" },
    dunning: { method: 'POST', path: `${user}/billing/dunning`, caller: 'operator', summary: 'holds, and later destroys, the instances of customers overdue' },
    export: { method: 'GET', path: `${user}/billing/export`, caller: 'operator', answer: 'stream', summary: "a month of the journal, streamed: csv, json, hledger or beancount" },
  },
  node: {
    desiredState: {
      method: 'GET',
      path: `${node}/desired-state`,
      caller: 'node',
      summary: "the node's supplied releases and partitions with their instances; 304 when the If-None-Match names its ETag",
    },
    partitions: { method: 'PUT', path: `${node}/partitions`, caller: 'node', summary: 'the partitions the node laid out' },
    requestChildren: { method: 'POST', path: `${node}/partitions/:reference/requests`, caller: 'node', summary: 'the sub-instances an instance deployed there requests' },
    events: { method: 'POST', path: `${node}/events`, caller: 'node', summary: 'a batch of events, each applied once by its id' },
    setAside: { method: 'PUT', path: `${node}/set-aside`, caller: 'node', summary: 'how many events the node set aside, and the latest' },
    software: { method: 'GET', path: `${node}/software/:hash`, caller: 'node', answer: 'application/gzip', summary: 'the archive of a release supplied to the node' },
    source: { method: 'GET', path: `${node}/sources/:sha256`, caller: 'node', answer: 'application/octet-stream', summary: 'a source archive from the cache' },
    hasSource: {
      method: 'HEAD',
      path: `${node}/sources/:sha256`,
      caller: 'node',
      answer: 'application/octet-stream',
      summary: 'whether the cache holds a source archive (fastify answers it for the GET route)',
    },
    fileSource: {
      method: 'PUT',
      path: `${node}/sources/:sha256`,
      caller: 'node',
      archive: 'application/octet-stream',
      summary: 'files a source archive named by a release supplied to the node',
    },
    binary: { method: 'GET', path: `${node}/binaries/:partHash`, caller: 'node', summary: 'the signed binary cache entry of a built part' },
    binaryArchive: { method: 'GET', path: `${node}/binaries/:partHash/archive`, caller: 'node', answer: 'application/gzip', summary: 'the archive of a binary cache entry' },
    fileBinary: {
      method: 'PUT',
      path: `${node}/binaries/:partHash`,
      caller: 'node',
      archive: 'application/gzip',
      summary: 'files a built part, from a node an operator allowed to',
    },
  },
} as const satisfies EndpointTable;

export type Endpoints = typeof ENDPOINTS;
