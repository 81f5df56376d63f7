/**
 * The wire format between the master, the node agents and the CLI.
 *
 * One TypeBox definition gives both the JSON Schema that the master validates every
 * request against and the TypeScript type that the clients use. The master and the
 * node agent share protocol/, this module among others, and nothing else.
 */
import { Type, type Static, type TSchema } from 'typebox';
import { MAX_JSON_DEPTH, UNSTORABLE_CLASS } from './storable.js';

export { API_PREFIX } from './api-prefix.js';

// ---------------------------------------------------------------------------
// Names

/** Account and node names: short, lower case, safe in paths and URLs. */
export const Name = Type.String({ pattern: '^[a-z0-9][a-z0-9._-]{0,62}$' });
/** The longest instance title, a sub-instance's `PARENT/NAME` included. */
export const MAX_TITLE_LENGTH = 200;
/**
 * Free text a user sends: anything the databases can hold as it is (no NUL, no lone
 * UTF-16 surrogate; see protocol/storable.ts). What a node reports is not refused but
 * escaped by the master (routes/node-api.ts).
 */
export const Text = (options: { minLength?: number; maxLength?: number } = {}) => Type.String({ ...options, pattern: `^[^${UNSTORABLE_CLASS}]*$` });
/**
 * What one-line text may not hold: control characters (C0, DEL, C1), the line and
 * paragraph separators, and the bidirectional overrides and isolates that make a name
 * display as another one.
 */
const NOT_ONE_LINE = `\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029\\u202a-\\u202e\\u2066-\\u2069${UNSTORABLE_CLASS}`;
/** Text on one line, without control characters: titles, labels, references, reasons. */
export const OneLineText = (maxLength: number) => Type.String({ minLength: 1, maxLength, pattern: `^[^${NOT_ONE_LINE}]+$` });
const oneLine = OneLineText;
/** What a refused pattern of the shared text schemas means, for error messages. */
/** What an HTTP header carries as a token (an idempotency key): printable ASCII without spaces. */
export const PRINTABLE_ASCII = '^[\\x21-\\x7e]+$';
export const PATTERN_MEANINGS: Record<string, string> = {
  [`^[^${UNSTORABLE_CLASS}]*$`]: 'must not hold a NUL character (U+0000) or a lone UTF-16 surrogate',
  [`^[^${NOT_ONE_LINE}]+$`]: 'must be one line of text, without control, line or paragraph separator, or bidirectional override characters',
  [PRINTABLE_ASCII]: 'must be printable ASCII characters, without spaces',
};
/** An instance title is free text chosen by its owner, on one line. */
export const Title = oneLine(MAX_TITLE_LENGTH);
/**
 * A title as the master sends it back: the rule for new titles may be stricter than the
 * one an older title was taken under, and a node must not refuse its whole desired state
 * for a title it only displays.
 */
const StoredTitle = Type.String({ minLength: 1, maxLength: MAX_TITLE_LENGTH });
export const SoftwareName = Type.String({ pattern: '^[a-z0-9][a-z0-9-]{0,62}$' });
export const SoftwareVersion = Type.String({ pattern: '^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$' });
/** `NAME` (the latest version published) or `NAME@VERSION`. */
/**
 * An object whose keys all match `key` and whose values all match `value`. TypeBox's
 * Record alone lets a key that misses the pattern through, unchecked: not here.
 */
export function StrictRecord<K extends TSchema, V extends TSchema>(key: K, value: V, options: object = {}) {
  return Type.Record(key, value, { ...options, additionalProperties: false, propertyNames: key });
}

export const SoftwareRef = Type.String({ pattern: '^[a-z0-9][a-z0-9-]{0,62}(@[0-9A-Za-z][0-9A-Za-z.+_-]{0,63})?$' });
export const SoftwareType = Type.String({ pattern: '^[a-z0-9][a-z0-9_-]{0,62}$' });
export const Sha256 = Type.String({ pattern: '^[0-9a-f]{64}$' });
export const PartitionReference = Type.String({ pattern: '^[a-z0-9][a-z0-9_-]{0,62}$' });
export const Ipv4Loopback = Type.String({ pattern: '^127\\.(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])){2}$' });
export const EventId = Type.String({ pattern: '^[A-Za-z0-9_-]{8,64}$' });
export const Timestamp = Type.String({ format: 'date-time' });

export const RequestedState = Type.Union([Type.Literal('started'), Type.Literal('stopped'), Type.Literal('destroyed')]);
export type RequestedState = Static<typeof RequestedState>;

/**
 * What the master knows of an instance:
 * - `unallocated`: no partition fits yet (the message says why);
 * - `allocated`: a partition is reserved (or, for a shared instance, a host chosen), the node has not reported yet;
 * - `waiting`: the node waits for sub-instances to publish what the instance needs (the message says which);
 * - `deployed`: the node rendered its files and started its services;
 * - `started`, `stopped`, `destroyed`: the node reached the requested state;
 * - `error`: the node could not reach it (the message says why).
 */
export const InstanceStatus = Type.Union([
  Type.Literal('unallocated'),
  Type.Literal('waiting'),
  Type.Literal('allocated'),
  Type.Literal('deployed'),
  Type.Literal('started'),
  Type.Literal('stopped'),
  Type.Literal('destroyed'),
  Type.Literal('error'),
]);
export type InstanceStatus = Static<typeof InstanceStatus>;

/**
 * The keyword that has the master check free-form JSON as a whole before its schema is
 * applied: nested at most `MAX_JSON_DEPTH` levels, every string and name storable (see
 * master/app.ts). Validators that do not know it (the node's) ignore it.
 */
export const STORABLE_JSON_KEYWORD = 'x-storable-json';
/** Instance parameters: a JSON object, checked against the software type's JSON Schema. */
export const Parameters = StrictRecord(Text({ minLength: 1, maxLength: 128 }), Type.Unknown(), { [STORABLE_JSON_KEYWORD]: MAX_JSON_DEPTH });
export type Parameters = Static<typeof Parameters>;
export const ConnectionParameters = StrictRecord(Type.String({ minLength: 1, maxLength: 128 }), Type.String({ maxLength: 8192 }));
export type ConnectionParameters = Static<typeof ConnectionParameters>;

export const SoftwareId = Type.Object({ name: SoftwareName, version: SoftwareVersion, hash: Sha256 });
export type SoftwareId = Static<typeof SoftwareId>;

// ---------------------------------------------------------------------------
// User API

export const AccountCreate = Type.Object(
  { name: Name, role: Type.Optional(Type.Union([Type.Literal('user'), Type.Literal('admin')])) },
  { additionalProperties: false },
);
export type AccountCreate = Static<typeof AccountCreate>;
export const Account = Type.Object({ name: Name, role: Type.String(), createdAt: Timestamp });
export type Account = Static<typeof Account>;
/** The token is shown once, when the account is created; the master keeps only its hash. */
export const AccountWithToken = Type.Object({ name: Name, role: Type.String(), token: Type.String() });
export type AccountWithToken = Static<typeof AccountWithToken>;

/** Labels an operator sets on a node (`region=eu`, `network=lan`), matched by instance SLAs. */
export const Labels = StrictRecord(
  Type.String({ pattern: '^[a-z0-9][a-z0-9._-]{0,62}$' }),
  oneLine(128),
  { maxProperties: 32 },
);
export type Labels = Static<typeof Labels>;
/**
 * Amounts of declared resources, in whole units: `cpu` in cores, `memory` in MiB, `disk`
 * in GiB, or any other name an operator counts in (`gpu`). A node declares what it
 * offers; a software type, or an instance request, what one instance needs.
 */
export const Resources = StrictRecord(Type.String({ pattern: '^[a-z][a-z0-9_-]{0,31}$' }), Type.Integer({ minimum: 0, maximum: 1_000_000_000 }), {
  maxProperties: 16,
});
export type Resources = Static<typeof Resources>;
/** Whose instances a node takes: anyone's, its owner's only, or nothing new. */
export const NodeScope = Type.Union([Type.Literal('open'), Type.Literal('owner'), Type.Literal('closed')]);
export type NodeScope = Static<typeof NodeScope>;

export const NodeRegister = Type.Object(
  { name: Name, labels: Type.Optional(Labels), scope: Type.Optional(NodeScope), owner: Type.Optional(Name), resources: Type.Optional(Resources) },
  { additionalProperties: false },
);
export type NodeRegister = Static<typeof NodeRegister>;
/** Changes a node's allocation settings; `labels` and `resources` replace the whole set. */
export const NodeUpdate = Type.Object(
  {
    labels: Type.Optional(Labels),
    scope: Type.Optional(NodeScope),
    owner: Type.Optional(Type.Union([Name, Type.Null()])),
    resources: Type.Optional(Resources),
    /** Whether the master files the built parts this node uploads to the binary cache. */
    binaryCacheUpload: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false, minProperties: 1 },
);
export type NodeUpdate = Static<typeof NodeUpdate>;
/**
 * What a node set aside: events the master refused for good (see slave/outbox.ts), kept
 * on the node. `last` is the latest of them, with the master's reason.
 */
export const SetAsideReport = Type.Object(
  {
    count: Type.Integer({ minimum: 0, maximum: 1_000_000_000 }),
    last: Type.Optional(
      Type.Object({ event: EventId, type: Type.String({ maxLength: 64 }), reason: Type.String({ maxLength: 2048 }), at: Timestamp }, { additionalProperties: false }),
    ),
  },
  { additionalProperties: false },
);
export type SetAsideReport = Static<typeof SetAsideReport>;
export const SetAsideView = Type.Object({
  count: Type.Integer(),
  lastEvent: Type.Union([Type.String(), Type.Null()]),
  lastType: Type.Union([Type.String(), Type.Null()]),
  lastReason: Type.Union([Type.String(), Type.Null()]),
  lastAt: Type.Union([Timestamp, Type.Null()]),
  /** When the node last told the master. */
  reportedAt: Timestamp,
});
export type SetAsideView = Static<typeof SetAsideView>;
export const NodeView = Type.Object({
  name: Name,
  labels: Labels,
  scope: NodeScope,
  /** The master files the built parts it uploads (`pledger node set --binary-cache-upload`). */
  binaryCacheUpload: Type.Boolean(),
  owner: Type.Union([Name, Type.Null()]),
  registeredAt: Timestamp,
  lastSeenAt: Type.Union([Timestamp, Type.Null()]),
  partitions: Type.Integer(),
  freePartitions: Type.Integer(),
  /** Each declared resource: how much the node offers, and how much its instances take. */
  resources: Type.Record(Type.String(), Type.Object({ capacity: Type.Integer(), used: Type.Integer() })),
  /** Events the node set aside because the master refused them for good; null when there are none. */
  setAside: Type.Optional(Type.Union([SetAsideView, Type.Null()])),
  /** Releases supplied to the node; `message` says why a build failed, with the end of its log. */
  software: Type.Array(
    Type.Object({
      name: SoftwareName,
      version: SoftwareVersion,
      hash: Sha256,
      state: Type.String(),
      status: Type.String(),
      message: Type.Union([Type.String(), Type.Null()]),
    }),
  ),
});
export type NodeView = Static<typeof NodeView>;
/** The credential is shown once, when the node is registered; the master keeps only its hash. */
export const NodeCredential = Type.Object({ name: Name, credential: Type.String() });
export type NodeCredential = Static<typeof NodeCredential>;

export const SoftwareView = Type.Object({
  name: SoftwareName,
  version: SoftwareVersion,
  hash: Sha256,
  description: Type.String(),
  publishedAt: Timestamp,
  softwareTypes: Type.Record(Type.String(), Type.Object({ parameters: Type.Unknown() })),
});
export type SoftwareView = Static<typeof SoftwareView>;

export const SupplyRequest = Type.Object(
  {
    software: SoftwareRef,
    node: Name,
    state: Type.Optional(Type.Union([Type.Literal('available'), Type.Literal('destroyed')])),
  },
  { additionalProperties: false },
);
export type SupplyRequest = Static<typeof SupplyRequest>;
export const SupplyView = Type.Object({ software: SoftwareId, node: Name, state: Type.String() });
export type SupplyView = Static<typeof SupplyView>;

/**
 * Where an instance may be allocated: `node` names a node, every other key is a label
 * the node must carry with that value.
 */
export const Sla = StrictRecord(Type.String({ pattern: '^[a-z0-9][a-z0-9._-]{0,62}$' }), oneLine(128), {
  maxProperties: 16,
});
export type Sla = Static<typeof Sla>;

export const InstanceRequest = Type.Object(
  {
    software: SoftwareRef,
    sla: Type.Optional(Sla),
    /** More of a resource than the software type needs (never less): part of the SLA. */
    resources: Type.Optional(Resources),
    softwareType: Type.Optional(SoftwareType),
    parameters: Type.Optional(Parameters),
    state: Type.Optional(RequestedState),
    /** A shared instance: hosted by a started instance of the release instead of a partition of its own. */
    shared: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);
export type InstanceRequest = Static<typeof InstanceRequest>;

export const PromiseStatus = Type.Union([Type.Literal('ok'), Type.Literal('warning'), Type.Literal('critical'), Type.Literal('unknown')]);
export type PromiseStatus = Static<typeof PromiseStatus>;
export const PromiseState = Type.Object(
  {
    name: Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]{0,62}$' }),
    status: PromiseStatus,
    message: Type.String({ maxLength: 2048 }),
    /** When the promise entered this status. */
    since: Timestamp,
  },
  { additionalProperties: false },
);
export type PromiseState = Static<typeof PromiseState>;

export const InstanceView = Type.Object({
  title: StoredTitle,
  software: SoftwareId,
  softwareType: SoftwareType,
  parameters: Parameters,
  sla: Sla,
  /** What the instance takes on its node: its software type's needs, raised by its request. */
  resources: Resources,
  state: RequestedState,
  status: InstanceStatus,
  /** Why the instance is unallocated or in error; null otherwise. */
  message: Type.Union([Type.String(), Type.Null()]),
  /** True when the node has deployed the latest request and published its connection parameters. */
  ready: Type.Boolean(),
  serial: Type.Integer(),
  node: Type.Union([Name, Type.Null()]),
  partition: Type.Union([PartitionReference, Type.Null()]),
  connection: ConnectionParameters,
  /** What the node last reported of each promise. */
  promises: Type.Array(PromiseState),
  /** The instance that requested this one (a sub-instance), and the root of its tree; null for a root. */
  parent: Type.Union([StoredTitle, Type.Null()]),
  root: Type.Union([StoredTitle, Type.Null()]),
  /** A shared instance lives inside a host instance, on the host's node, without a partition. */
  shared: Type.Boolean(),
  createdAt: Timestamp,
  updatedAt: Timestamp,
});
export type InstanceView = Static<typeof InstanceView>;

/** An instance and every instance it requested, recursively, depth first. */
export const InstanceTreeView = Type.Object({
  instances: Type.Array(Type.Object({ depth: Type.Integer({ minimum: 0 }), instance: InstanceView })),
});
export type InstanceTreeView = Static<typeof InstanceTreeView>;

export const MovementView = Type.Object({
  seq: Type.Integer(),
  at: Timestamp,
  kind: Type.String(),
  actor: Type.String(),
  data: Type.Unknown(),
});
export type MovementView = Static<typeof MovementView>;

// ---------------------------------------------------------------------------
// Node API: one snapshot of desired state, a list of partitions, a batch of events.

export const PartitionDefinition = Type.Object(
  {
    reference: PartitionReference,
    ip: Ipv4Loopback,
    ports: Type.Object(
      { first: Type.Integer({ minimum: 1024, maximum: 65535 }), last: Type.Integer({ minimum: 1024, maximum: 65535 }) },
      { additionalProperties: false },
    ),
  },
  { additionalProperties: false },
);
export type PartitionDefinition = Static<typeof PartitionDefinition>;
export const PartitionsReport = Type.Object(
  { partitions: Type.Array(PartitionDefinition, { minItems: 1, maxItems: 4096 }) },
  { additionalProperties: false },
);
export type PartitionsReport = Static<typeof PartitionsReport>;

/** A shared instance as its host sees it: an opaque reference, its parameters and serial, nothing of its owner. */
export const SharedReference = Type.String({ pattern: '^[0-9a-f-]{36}$' });
export const SharedInstance = Type.Object({ reference: SharedReference, parameters: Parameters, serial: Type.Integer() });
export type SharedInstance = Static<typeof SharedInstance>;

export const DesiredInstance = Type.Object({
  id: Type.String(),
  title: StoredTitle,
  software: SoftwareId,
  softwareType: SoftwareType,
  parameters: Parameters,
  state: RequestedState,
  /** Grows by one at every change the node must apply: the node's only change detector. */
  serial: Type.Integer(),
  /** For a host of shared instances: the started ones it hosts, by reference. */
  shared: Type.Optional(Type.Array(SharedInstance)),
});
export type DesiredInstance = Static<typeof DesiredInstance>;

export const DesiredState = Type.Object({
  node: Name,
  software: Type.Array(Type.Object({ name: SoftwareName, version: SoftwareVersion, hash: Sha256, state: Type.String() })),
  partitions: Type.Array(
    Type.Object({
      reference: PartitionReference,
      ip: Ipv4Loopback,
      ports: Type.Object({ first: Type.Integer(), last: Type.Integer() }),
      instance: Type.Union([DesiredInstance, Type.Null()]),
    }),
  ),
});
export type DesiredState = Static<typeof DesiredState>;

const eventBase = { id: EventId, at: Timestamp };

export const InstanceEvent = Type.Object(
  {
    ...eventBase,
    type: Type.Union([
      Type.Literal('instance.deployed'),
      Type.Literal('instance.started'),
      Type.Literal('instance.stopped'),
      Type.Literal('instance.destroyed'),
      Type.Literal('instance.error'),
      Type.Literal('instance.waiting'),
    ]),
    partition: PartitionReference,
    instance: Type.String({ minLength: 1, maxLength: 64 }),
    serial: Type.Integer({ minimum: 0 }),
    message: Type.Optional(Type.String({ maxLength: 16384 })),
    connection: Type.Optional(ConnectionParameters),
    /** A host's connection parameters for each shared instance it deployed, with the serial it deployed. */
    shared: Type.Optional(
      StrictRecord(SharedReference, Type.Object({ serial: Type.Integer({ minimum: 0 }), connection: ConnectionParameters }, { additionalProperties: false }), {
        maxProperties: 10000,
      }),
    ),
  },
  { additionalProperties: false },
);
export type InstanceEvent = Static<typeof InstanceEvent>;

export const SoftwareEvent = Type.Object(
  {
    ...eventBase,
    type: Type.Union([Type.Literal('software.built'), Type.Literal('software.error'), Type.Literal('software.removed')]),
    software: Sha256,
    message: Type.Optional(Type.String({ maxLength: 16384 })),
  },
  { additionalProperties: false },
);
export type SoftwareEvent = Static<typeof SoftwareEvent>;

/** The state of every promise of an instance: sent when one changes, and as a periodic summary. */
export const PromisesEvent = Type.Object(
  {
    ...eventBase,
    type: Type.Literal('instance.promises'),
    partition: PartitionReference,
    instance: Type.String({ minLength: 1, maxLength: 64 }),
    serial: Type.Integer({ minimum: 0 }),
    promises: Type.Array(PromiseState, { maxItems: 256 }),
  },
  { additionalProperties: false },
);
export type PromisesEvent = Static<typeof PromisesEvent>;

/** Something broke that the node cannot repair: the master redeploys the instance's tree. */
export const BangEvent = Type.Object(
  {
    ...eventBase,
    type: Type.Literal('instance.bang'),
    partition: PartitionReference,
    instance: Type.String({ minLength: 1, maxLength: 64 }),
    serial: Type.Integer({ minimum: 0 }),
    message: Type.String({ maxLength: 16384 }),
  },
  { additionalProperties: false },
);
export type BangEvent = Static<typeof BangEvent>;

/**
 * The most CPUs a node can have: Linux's own ceiling (NR_CPUS is at most 8192). The
 * master knows no node's CPU count, so this is the bound no true report can pass.
 */
export const MAX_NODE_CPUS = 8192;
/**
 * The most byte-seconds of memory or disk one partition reports for one hour: 1 TiB held
 * for the hour. A safe integer, and a month of hours at this bound (744 × 2^40 × 3600 ≈
 * 2.9 × 10^18) still sums within a signed 64-bit integer, so a node cannot make the
 * month's close overflow, nor store a value SQLite would keep as a float.
 */
export const MAX_BYTE_SECONDS_PER_HOUR = 3600 * 2 ** 40;

/**
 * How far a node's clock may run ahead of the master's: a usage hour is accepted once
 * it has ended by the master's clock give or take this.
 */
export const USAGE_CLOCK_SKEW_MS = 5 * 60_000;

/**
 * What one instance consumed during one whole hour (UTC), in integer units. The node
 * sends one per instance and completed hour; its id is derived from (instance, hour), so
 * a record sent again is recognised whatever happened to the node in between.
 */
export const UsageEvent = Type.Object(
  {
    ...eventBase,
    type: Type.Literal('instance.usage'),
    partition: PartitionReference,
    instance: Type.String({ minLength: 1, maxLength: 64 }),
    /** Start of the hour: 2026-11-22T04:00:00.000Z. */
    hour: Type.String({ pattern: '^\\d{4}-\\d{2}-\\d{2}T\\d{2}:00:00\\.000Z$' }),
    /** CPU time of the partition's process trees (user + system): at most an hour of every CPU a Linux kernel can run. */
    cpuMilliseconds: Type.Integer({ minimum: 0, maximum: 3600 * 1000 * MAX_NODE_CPUS }),
    /** Resident memory integrated over the hour: at most 1 TiB held for the hour. */
    memoryByteSeconds: Type.Integer({ minimum: 0, maximum: MAX_BYTE_SECONDS_PER_HOUR }),
    /** Disk use of the partition integrated over the hour: at most 1 TiB held for the hour. */
    diskByteSeconds: Type.Integer({ minimum: 0, maximum: MAX_BYTE_SECONDS_PER_HOUR }),
    /** Seconds of the hour the instance was started (0 to 3600). */
    uptimeSeconds: Type.Integer({ minimum: 0, maximum: 3600 }),
  },
  { additionalProperties: false },
);
export type UsageEvent = Static<typeof UsageEvent>;

export const NodeEvent = Type.Union([InstanceEvent, SoftwareEvent, PromisesEvent, BangEvent, UsageEvent]);
export type NodeEvent = Static<typeof NodeEvent>;

/**
 * The sub-instances an instance's deployment requests, rendered by its node. The master
 * creates or updates each child, destroys those no longer listed, and answers with what
 * each child published so far.
 */
export const ChildRequest = Type.Object(
  {
    name: Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]{0,62}$' }),
    software: SoftwareRef,
    softwareType: Type.Optional(SoftwareType),
    parameters: Parameters,
    sla: Type.Optional(Sla),
    shared: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);
export type ChildRequest = Static<typeof ChildRequest>;
export const ChildrenRequest = Type.Object(
  {
    instance: Type.String({ minLength: 1, maxLength: 64 }),
    serial: Type.Integer({ minimum: 0 }),
    requests: Type.Array(ChildRequest, { maxItems: 64 }),
  },
  { additionalProperties: false },
);
export type ChildrenRequest = Static<typeof ChildrenRequest>;
export const ChildState = Type.Object({
  title: StoredTitle,
  status: InstanceStatus,
  /** The child reached its requested state for its latest request and published its connection parameters. */
  ready: Type.Boolean(),
  message: Type.Union([Type.String(), Type.Null()]),
  connection: ConnectionParameters,
});
export type ChildState = Static<typeof ChildState>;
export const ChildrenState = Type.Object({ children: Type.Record(Type.String(), ChildState) });
export type ChildrenState = Static<typeof ChildrenState>;

export const EventsReport = Type.Object(
  { events: Type.Array(NodeEvent, { minItems: 1, maxItems: 500 }) },
  { additionalProperties: false },
);
export type EventsReport = Static<typeof EventsReport>;
/** Which events the master applied now and which it had applied before: both are delivered. */
export const EventsReceipt = Type.Object({ applied: Type.Array(EventId), duplicates: Type.Array(EventId) });
export type EventsReceipt = Static<typeof EventsReceipt>;

// ---------------------------------------------------------------------------
// Billing: price lists, invoices, payments, balances and exports. Money travels as
// decimal strings in the operator's currency ("12.34"), never as JSON numbers, so that
// no client turns it into a float.

/** A billing month: YYYY-MM. */
export const Period = Type.String({ pattern: '^\\d{4}-(0[1-9]|1[0-2])$' });
/** An amount of money as a decimal string: 12.34. */
export const Amount = Type.String({ pattern: '^-?\\d{1,15}(\\.\\d{1,6})?$' });
/**
 * The largest amount a request may carry, in whole units of the currency: prices are
 * kept in millionths of a unit (master/billing/money.ts), and 999,999,999.999999 of them
 * is under 2^53, so every engine stores it as an exact integer and any client reads it
 * exactly. An invoice line (a price times a quantity) is computed exactly whatever it is.
 */
export const MAX_AMOUNT_UNITS = 999_999_999;
/** An amount a request sets (a price, a payment): at most `MAX_AMOUNT_UNITS`, at most 6 decimal places. */
export const AmountInput = Type.String({ pattern: '^-?\\d{1,9}(\\.\\d{1,6})?$' });
PATTERN_MEANINGS['^-?\\d{1,9}(\\.\\d{1,6})?$'] = `must be a decimal with at most 9 digits before the point and 6 after it (${MAX_AMOUNT_UNITS}.999999 at most)`;
export const Currency = Type.String({ pattern: '^[A-Z]{3}$' });
export const InvoiceId = Type.String({ pattern: '^INV-\\d{4}-\\d{2}-\\d{5}$' });
export const BillingResource = Type.Union([
  Type.Literal('instance-month'),
  Type.Literal('instance-hour'),
  Type.Literal('cpu-hour'),
  Type.Literal('memory-gib-hour'),
  Type.Literal('disk-gib-month'),
]);
export type BillingResource = Static<typeof BillingResource>;

const billingSettingsFields = {
  currency: Currency,
  decimals: Type.Integer({ minimum: 0, maximum: 4 }),
  taxRateBasisPoints: Type.Integer({ minimum: 0, maximum: 10000 }),
  paymentTermsDays: Type.Integer({ minimum: 0, maximum: 365 }),
  graceDays: Type.Integer({ minimum: 0, maximum: 365 }),
  destroyAfterDays: Type.Union([Type.Integer({ minimum: 1, maximum: 3650 }), Type.Null()]),
};
export const BillingSettingsView = Type.Object(billingSettingsFields);
export type BillingSettingsView = Static<typeof BillingSettingsView>;
export const BillingSettingsUpdate = Type.Partial(Type.Object(billingSettingsFields), { additionalProperties: false, minProperties: 1 });
export type BillingSettingsUpdate = Static<typeof BillingSettingsUpdate>;

const priceFields = {
  'instance-month': Amount,
  'instance-hour': Amount,
  'cpu-hour': Amount,
  'memory-gib-hour': Amount,
  'disk-gib-month': Amount,
};
const priceInputFields = {
  'instance-month': AmountInput,
  'instance-hour': AmountInput,
  'cpu-hour': AmountInput,
  'memory-gib-hour': AmountInput,
  'disk-gib-month': AmountInput,
};
/** A price list version: what one instance of a release and software type costs, per unit. */
export const PriceListSet = Type.Object(
  {
    software: SoftwareName,
    softwareType: SoftwareType,
    validFrom: Period,
    prices: Type.Partial(Type.Object(priceInputFields), { additionalProperties: false, minProperties: 1 }),
  },
  { additionalProperties: false },
);
export type PriceListSet = Static<typeof PriceListSet>;
export const PriceList = Type.Object({
  software: SoftwareName,
  softwareType: SoftwareType,
  validFrom: Period,
  currency: Currency,
  prices: Type.Object(priceFields),
});
export type PriceList = Static<typeof PriceList>;

export const InvoiceLine = Type.Object({
  instance: Type.String(),
  software: Type.String(),
  softwareType: Type.String(),
  /** The month the usage happened in: earlier than the invoice's period for a late report. */
  usageMonth: Period,
  resource: BillingResource,
  /** In the resource's unit (months, hours, CPU hours, GiB-hours, GiB-months), rounded to 6 places. */
  quantity: Type.String(),
  unitPrice: Amount,
  amount: Amount,
});
export type InvoiceLine = Static<typeof InvoiceLine>;
const invoiceFields = {
  id: InvoiceId,
  account: Name,
  period: Period,
  currency: Currency,
  subtotal: Amount,
  taxRateBasisPoints: Type.Integer(),
  tax: Amount,
  total: Amount,
  paid: Amount,
  /** What a credit note took off it: its total, or nothing. */
  credited: Amount,
  outstanding: Amount,
  /** `credited`: a credit note reversed it; nothing is owed on it. */
  status: Type.Union([Type.Literal('paid'), Type.Literal('open'), Type.Literal('overdue'), Type.Literal('credited')]),
  issuedAt: Timestamp,
  dueAt: Timestamp,
};
export const InvoiceSummary = Type.Object(invoiceFields);
export type InvoiceSummary = Static<typeof InvoiceSummary>;
export const InvoiceView = Type.Object({ ...invoiceFields, lines: Type.Array(InvoiceLine) });
export type InvoiceView = Static<typeof InvoiceView>;

export const BillingClose = Type.Object({ period: Period }, { additionalProperties: false });
export const BillingCloseResult = Type.Object({
  period: Period,
  /** False when the period was already closed: nothing changed. */
  closed: Type.Boolean(),
  closedAt: Timestamp,
  invoices: Type.Array(InvoiceSummary),
});
export type BillingCloseResult = Static<typeof BillingCloseResult>;

export const PaymentCreate = Type.Object(
  { invoice: InvoiceId, amount: AmountInput, reference: Type.Optional(oneLine(200)) },
  { additionalProperties: false },
);
export type PaymentCreate = Static<typeof PaymentCreate>;
export const PaymentView = Type.Object({
  id: Type.String(),
  invoice: InvoiceId,
  amount: Amount,
  currency: Currency,
  paidAt: Timestamp,
  reference: Type.String(),
  outstanding: Amount,
  /** Instances started again because nothing is overdue any more. */
  restarted: Type.Array(Type.String()),
});
export type PaymentView = Static<typeof PaymentView>;

const Reason = oneLine(200);
export const CreditNoteCreate = Type.Object({ reason: Type.Optional(Reason) }, { additionalProperties: false });
export type CreditNoteCreate = Static<typeof CreditNoteCreate>;
export const CreditNoteView = Type.Object({
  invoice: InvoiceId,
  account: Name,
  /** The invoice's total, taken off the customer's receivable. */
  amount: Amount,
  currency: Currency,
  reason: Type.String(),
  creditedAt: Timestamp,
  /** False when the invoice was credited already: nothing changed. */
  credited: Type.Boolean(),
  /** Instances started again because nothing is overdue any more. */
  restarted: Type.Array(Type.String()),
});
export type CreditNoteView = Static<typeof CreditNoteView>;

export const BillingHold = Type.Object({ invoice: InvoiceId, reason: Type.String(), since: Timestamp, destroyed: Type.Boolean() });
export const BalanceView = Type.Object({
  account: Name,
  currency: Currency,
  /** What the account owes: invoiced minus paid. */
  balance: Amount,
  overdue: Amount,
  hold: Type.Union([BillingHold, Type.Null()]),
});
export type BalanceView = Static<typeof BalanceView>;
export const StatementEntry = Type.Object({
  date: Type.String(),
  transaction: Type.String(),
  kind: Type.String(),
  reference: Type.String(),
  description: Type.String(),
  amount: Amount,
  balance: Amount,
});
export const StatementView = Type.Object({ account: Name, currency: Currency, balance: Amount, entries: Type.Array(StatementEntry) });
export type StatementView = Static<typeof StatementView>;
export const BillingAccountQuery = Type.Object({ account: Type.Optional(Name) }, { additionalProperties: false });
export const InvoiceListQuery = Type.Object({ account: Type.Optional(Name), period: Type.Optional(Period) }, { additionalProperties: false });

export const DunningRun = Type.Object({ asOf: Type.Optional(Timestamp) }, { additionalProperties: false });
export const DunningResult = Type.Object({
  asOf: Timestamp,
  held: Type.Array(Name),
  destroyed: Type.Array(Name),
  /** Instances stopped (or destroyed) now, as ACCOUNT/TITLE. */
  instances: Type.Array(Type.String()),
});
export type DunningResult = Static<typeof DunningResult>;

export const ExportFormat = Type.Union([Type.Literal('csv'), Type.Literal('json'), Type.Literal('hledger'), Type.Literal('beancount')]);
export type ExportFormat = Static<typeof ExportFormat>;
export const ExportQuery = Type.Object({ period: Period, format: ExportFormat }, { additionalProperties: false });
