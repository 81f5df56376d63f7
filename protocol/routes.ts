/**
 * The route table: every endpoint of protocol/endpoints.ts with the schemas of what it
 * carries (path parameters, query, headers, JSON body, and the JSON answer of each
 * status). The master registers its routes from it (master/routes/route.ts), so a
 * route cannot validate anything else than the table says; the client takes its types
 * from it, and only its types (protocol/api-client.ts).
 */
import { Type, type TSchema } from 'typebox';
import {
  Account,
  AccountCreate,
  AccountWithToken,
  BalanceView,
  BillingAccountQuery,
  BillingClose,
  BillingCloseResult,
  BillingSettingsUpdate,
  BillingSettingsView,
  ChildrenRequest,
  ChildrenState,
  CreditNoteCreate,
  CreditNoteView,
  DesiredState,
  DunningResult,
  DunningRun,
  EventsReceipt,
  EventsReport,
  ExportQuery,
  InstanceRequest,
  InstanceTreeView,
  InstanceView,
  InvoiceId,
  InvoiceListQuery,
  InvoiceSummary,
  InvoiceView,
  MovementView,
  Name,
  NodeCredential,
  NodeRegister,
  NodeUpdate,
  NodeView,
  OneLineText,
  PartitionReference,
  PartitionsReport,
  PaymentCreate,
  PaymentView,
  PriceList,
  PriceListSet,
  SetAsideReport,
  Sha256,
  SoftwareRef,
  SoftwareView,
  StatementView,
  SupplyRequest,
  SupplyView,
  Title,
  PRINTABLE_ASCII,
} from './api.js';
import { BinaryCacheKey, BinaryEntry, BinaryKeyQuery, BinaryUploaded, BinaryUploadQuery } from './binary-cache.js';
import { ENDPOINTS, type Endpoint, type Endpoints } from './endpoints.js';

/** What a route carries, as the master validates it. */
export interface RouteSchemas {
  params?: TSchema;
  querystring?: TSchema;
  headers?: TSchema;
  /** A JSON body; an archive body has none (see `Endpoint.archive`). */
  body?: TSchema;
  /** The JSON answer of each status; an answer that is not JSON has none (see `Endpoint.answer`). */
  reply?: Record<number, TSchema>;
}

export type Route = Endpoint & RouteSchemas;

/** The schemas of every endpoint, group by group: no endpoint without them, none without an endpoint. */
type SchemaTable = { [G in keyof Endpoints]: { [N in keyof Endpoints[G]]: RouteSchemas } };

type Joined<S extends SchemaTable> = { [G in keyof Endpoints]: { [N in keyof Endpoints[G]]: Endpoints[G][N] & S[G][N & keyof S[G]] } };

function join<const S extends SchemaTable>(schemas: S): Joined<S> {
  const groups = Object.entries(ENDPOINTS).map(([group, endpoints]) => [
    group,
    Object.fromEntries(Object.entries(endpoints).map(([name, endpoint]) => [name, { ...endpoint, ...(schemas as Record<string, Record<string, RouteSchemas>>)[group]![name] }])),
  ]);
  return Object.fromEntries(groups) as Joined<S>;
}

const TitleParams = Type.Object({ title: Title });
const InvoiceParams = Type.Object({ id: InvoiceId });
const PaymentParams = Type.Object({ id: Type.String({ pattern: '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' }) });
const PaymentReversal = Type.Object({ reason: OneLineText(200) }, { additionalProperties: false });
const PartHashParams = Type.Object({ partHash: Sha256 });
const SourceParams = Type.Object({ sha256: Sha256 });
const SourceFiled = Type.Object({ sha256: Sha256, size: Type.Integer(), stored: Type.Boolean() });
/**
 * A payment's idempotency key: the same key sent again answers the payment it recorded
 * first (printable ASCII, as HTTP headers carry it).
 */
const PaymentHeaders = Type.Object({ 'idempotency-key': Type.Optional(Type.String({ minLength: 1, maxLength: 200, pattern: PRINTABLE_ASCII })) });
/** The ETag of the desired state the node holds: the answer is 304 when it is still the current one. */
const ConditionalHeaders = Type.Object({ 'if-none-match': Type.Optional(Type.String()) });

export const ROUTES = join({
  accounts: {
    whoami: { reply: { 200: Account } },
    create: { body: AccountCreate, reply: { 201: AccountWithToken } },
    list: { reply: { 200: Type.Array(Account) } },
  },
  nodes: {
    register: { body: NodeRegister, reply: { 201: NodeCredential } },
    update: { params: Type.Object({ name: Name }), body: NodeUpdate, reply: { 200: NodeView } },
    list: { reply: { 200: Type.Array(NodeView) } },
  },
  software: {
    list: { reply: { 200: Type.Array(SoftwareView) } },
    show: { params: Type.Object({ ref: SoftwareRef }), reply: { 200: SoftwareView } },
    publish: { reply: { 200: SoftwareView, 201: SoftwareView } },
  },
  supplies: {
    set: { body: SupplyRequest, reply: { 200: SupplyView } },
  },
  instances: {
    list: { querystring: Type.Object({ all: Type.Optional(Type.Union([Type.Literal('true'), Type.Literal('false')])) }), reply: { 200: Type.Array(InstanceView) } },
    request: { params: TitleParams, body: InstanceRequest, reply: { 200: InstanceView } },
    get: { params: TitleParams, reply: { 200: InstanceView } },
    tree: { params: TitleParams, reply: { 200: InstanceTreeView } },
    history: { params: TitleParams, reply: { 200: Type.Array(MovementView) } },
    destroy: { params: TitleParams, reply: { 200: InstanceView } },
  },
  binaryCache: {
    key: { reply: { 200: BinaryCacheKey } },
  },
  billing: {
    settings: { reply: { 200: BillingSettingsView } },
    configure: { body: BillingSettingsUpdate, reply: { 200: BillingSettingsView } },
    prices: { reply: { 200: Type.Array(PriceList) } },
    setPrices: { body: PriceListSet, reply: { 200: PriceList } },
    close: { body: BillingClose, reply: { 200: BillingCloseResult } },
    invoices: { querystring: InvoiceListQuery, reply: { 200: Type.Array(InvoiceSummary) } },
    invoice: { params: InvoiceParams, reply: { 200: InvoiceView } },
    invoicePage: { params: InvoiceParams },
    credit: { params: InvoiceParams, body: CreditNoteCreate, reply: { 200: CreditNoteView, 201: CreditNoteView } },
    pay: { body: PaymentCreate, headers: PaymentHeaders, reply: { 201: PaymentView } },
    reversePayment: { params: PaymentParams, body: PaymentReversal, reply: { 201: PaymentView } },
    balance: { querystring: BillingAccountQuery, reply: { 200: BalanceView } },
    statement: { querystring: BillingAccountQuery, reply: { 200: StatementView } },
    dunning: { body: DunningRun, reply: { 200: DunningResult } },
    export: { querystring: ExportQuery },
  },
  node: {
    desiredState: { headers: ConditionalHeaders, reply: { 200: DesiredState } },
    partitions: { body: PartitionsReport, reply: { 200: Type.Object({ partitions: Type.Integer() }) } },
    requestChildren: { params: Type.Object({ reference: PartitionReference }), body: ChildrenRequest, reply: { 200: ChildrenState } },
    events: { body: EventsReport, reply: { 200: EventsReceipt } },
    setAside: { body: SetAsideReport, reply: { 200: Type.Object({ count: Type.Integer() }) } },
    software: { params: Type.Object({ hash: Sha256 }) },
    source: { params: SourceParams },
    hasSource: { params: SourceParams },
    fileSource: { params: SourceParams, reply: { 200: SourceFiled, 201: SourceFiled } },
    binary: { params: PartHashParams, querystring: BinaryKeyQuery, reply: { 200: BinaryEntry } },
    binaryArchive: { params: PartHashParams, querystring: BinaryKeyQuery },
    fileBinary: { params: PartHashParams, querystring: BinaryUploadQuery, reply: { 200: BinaryUploaded, 201: BinaryUploaded } },
  },
});

export type Routes = typeof ROUTES;

/** Every route of the table, with its group and name. */
export function allRoutes(): { group: string; name: string; route: Route }[] {
  return Object.entries(ROUTES as Record<string, Record<string, Route>>).flatMap(([group, routes]) => Object.entries(routes).map(([name, route]) => ({ group, name, route })));
}
