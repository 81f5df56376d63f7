/**
 * The master's tables as kysely sees them.
 *
 * Every table of the database, in one registry. `movements` is the ledger: append-only,
 * one row per thing that happened. Every other table but the content stores
 * (`software_archives`, the caches, the signing keys) and the nodes' own reports
 * (`node_heartbeats`, `node_set_aside`) and `master_leases` is a projection of the movements,
 * updated in the same transaction as the movement that changes it (master/ledger).
 * Timestamps are ISO-8601 text and JSON is text, so both engines store the same bytes.
 */
import type { Generated } from 'kysely';

export interface MovementsTable {
  /** Order of the ledger; rebuilding the projections replays it in this order. */
  seq: Generated<number>;
  /** Idempotency key: the same id is never recorded twice. */
  id: string;
  at: string;
  actor: string;
  kind: string;
  /** What the movement is about (an instance id, a node id...), for history queries. */
  subject: string;
  data: string;
}

export interface AccountsTable {
  id: string;
  name: string;
  role: 'admin' | 'user';
  created_at: string;
}

export interface TokensTable {
  /** sha256 of the token: the token itself is never stored. */
  hash: string;
  account_id: string;
  created_at: string;
}

export interface NodesTable {
  id: string;
  name: string;
  credential_hash: string;
  registered_at: string;
  /** Whose instances it takes: open (anyone's), owner (its owner's), closed (nothing new). */
  scope: NodeScope;
  owner_id: string | null;
  /** Its partitions that host no instance: kept with every allocation, format and release. */
  free_partitions: number;
  /** 1 when an operator lets it file built parts in the binary cache, else 0. */
  binary_cache_upload: number;
  /** Moves on with every movement that changes the node's desired state: the ETag of its polls. */
  desired_version: number;
}

export type NodeScope = 'open' | 'owner' | 'closed';

/** The labels an operator set on a node (region, network...), matched by instance SLAs. */
export interface NodeLabelsTable {
  node_id: string;
  key: string;
  value: string;
}

/**
 * The resources a node declares (`cpu`, `memory`...), and how much of each its allocated
 * instances take. A resource the operator no longer declares keeps its row with a null
 * capacity, so that what its instances still take is counted if it is declared again.
 */
export interface NodeResourcesTable {
  node_id: string;
  name: string;
  capacity: number | null;
  used: number;
}

/** When each node last called: operational telemetry, not part of the ledger. */
export interface NodeHeartbeatsTable {
  node_id: string;
  last_seen_at: string;
}

export interface PartitionsTable {
  id: string;
  node_id: string;
  reference: string;
  ip: string;
  port_first: number;
  port_last: number;
  instance_id: string | null;
}

export interface SoftwareTable {
  id: string;
  name: string;
  version: string;
  hash: string;
  description: string;
  definition: string;
  parameter_schemas: string;
  published_at: string;
}

/** The published archives, by content hash: content storage, not a projection. */
export interface SoftwareArchivesTable {
  hash: string;
  archive: Uint8Array;
}

export interface SuppliesTable {
  node_id: string;
  software_id: string;
  state: 'available' | 'destroyed';
  /** What the node last reported: pending, built, error, removed. */
  status: string;
  message: string | null;
}

export interface InstancesTable {
  id: string;
  owner_id: string;
  title: string;
  software_id: string;
  software_type: string;
  parameters: string;
  state: 'started' | 'stopped' | 'destroyed';
  serial: number;
  status: string;
  message: string | null;
  partition_id: string | null;
  /** JSON object: `node` names a node, every other key a label the node must carry. */
  sla: string;
  /** JSON object: the resources its request asks for, on top of its software type's needs. */
  resources: string;
  /** JSON object: what it takes on its node, fixed while it is allocated. */
  needs: string;
  /** The partition it was last allocated to, kept once freed. */
  last_partition_id: string | null;
  connection: string;
  created_at: string;
  updated_at: string;
  /** The root of its tree (itself for a root; null in rows older than trees: a root too). */
  root_id: string | null;
  /** The instance whose deployment requested it; null for what a user requested. */
  parent_id: string | null;
  /** 1 for a shared instance, which lives in `host_id`'s instance instead of a partition. */
  shared: number;
  host_id: string | null;
  /** A hosted shared instance's route on its host (JSON of its `unique` values), unique per host; null when it claims none. */
  shared_route: string | null;
}

/** The partitions a hosted shared instance's backends point into. */
export interface SharedBackendsTable {
  instance_id: string;
  partition_id: string;
}

export interface InstancePromisesTable {
  instance_id: string;
  name: string;
  status: string;
  message: string;
  since: string;
  reported_at: string;
}

/** One instance's consumption during one UTC hour. PostgreSQL returns bigints as strings. */
export interface UsageHoursTable {
  instance_id: string;
  hour: string;
  owner_id: string;
  software_id: string;
  software_type: string;
  node_id: string;
  cpu_ms: number | string;
  memory_byte_seconds: number | string;
  disk_byte_seconds: number | string;
  uptime_seconds: number;
  recorded_at: string;
  /** The period whose close billed the hour (migration 0003); null until then. */
  billed_period: Generated<string | null>;
}

/** Which master process does a piece of periodic work until when: not part of the ledger. */
export interface MasterLeasesTable {
  name: string;
  holder: string;
  expires_at: string;
}

// ---------------------------------------------------------------------------
// Billing (migration 0003 and after). Money and quantities are integers in minor units
// and base units; PostgreSQL returns its bigints as strings, so every read goes through
// `int()` in master/billing/money.ts.

type BigInteger = number | string | bigint;

export interface BillingSettingsTable {
  key: string;
  value: string;
}

export interface PricesTable {
  software_name: string;
  software_type: string;
  valid_from: string;
  currency: string;
  instance_month: BigInteger;
  instance_hour: BigInteger;
  cpu_hour: BigInteger;
  memory_gib_hour: BigInteger;
  disk_gib_month: BigInteger;
  set_at: string;
}

export interface BillingHoldsTable {
  account_id: string;
  invoice_id: string;
  reason: string;
  since: string;
  instances: string;
  destroyed: number;
}

export interface BillingPeriodsTable {
  period: string;
  closed_at: string;
  invoices: number;
}

export interface InvoicesTable {
  id: string;
  owner_id: string;
  period: string;
  currency: string;
  subtotal: BigInteger;
  tax: BigInteger;
  total: BigInteger;
  tax_rate_basis_points: number;
  issued_at: string;
  due_at: string;
}

export interface InvoiceLinesTable {
  invoice_id: string;
  line: number;
  instance_id: string;
  instance_title: string;
  software_id: string;
  software_type: string;
  usage_month: string;
  resource: string;
  quantity: BigInteger;
  unit: string;
  unit_price: BigInteger;
  amount: BigInteger;
}

export interface PaymentsTable {
  id: string;
  invoice_id: string;
  amount: BigInteger;
  currency: string;
  paid_at: string;
  reference: string;
}

/** One row per invoice a credit note reversed (migration 0012), append-only. */
export interface CreditNotesTable {
  invoice_id: string;
  amount: BigInteger;
  currency: string;
  reason: string;
  credited_at: string;
}

export interface JournalTransactionsTable {
  id: string;
  date: string;
  period: string;
  kind: string;
  reference: string;
  description: string;
  reverses: string | null;
}

export interface JournalPostingsTable {
  transaction_id: string;
  line: number;
  account: string;
  currency: string;
  amount: BigInteger;
}

// ---------------------------------------------------------------------------
// Content the master stores by hash (not projections: a rebuild keeps them), and its keys.

export interface SourceCacheTable {
  sha256: string;
  content: Buffer;
  size: number;
  uploaded_by: string;
  uploaded_at: string;
}

export interface BinaryCacheTable {
  part_hash: string;
  platform: string;
  prefix: string;
  sha256: string;
  size: number;
  content: Buffer;
  signature: string;
  uploaded_by: string;
  uploaded_at: string;
}

export interface SigningKeysTable {
  name: string;
  public_key: string;
  private_key: string;
  created_at: string;
}

/** What each node last said of the events it set aside: its own report, not a projection (migration 0014). */
export interface NodeSetAsideTable {
  node_id: string;
  count: number;
  last_event: string | null;
  last_type: string | null;
  last_reason: string | null;
  last_at: string | null;
  reported_at: string;
}

export interface Tables {
  movements: MovementsTable;
  accounts: AccountsTable;
  tokens: TokensTable;
  nodes: NodesTable;
  node_labels: NodeLabelsTable;
  node_resources: NodeResourcesTable;
  node_heartbeats: NodeHeartbeatsTable;
  partitions: PartitionsTable;
  software: SoftwareTable;
  software_archives: SoftwareArchivesTable;
  supplies: SuppliesTable;
  instances: InstancesTable;
  instance_promises: InstancePromisesTable;
  shared_backends: SharedBackendsTable;
  usage_hours: UsageHoursTable;
  master_leases: MasterLeasesTable;
  billing_settings: BillingSettingsTable;
  prices: PricesTable;
  billing_holds: BillingHoldsTable;
  billing_periods: BillingPeriodsTable;
  invoices: InvoicesTable;
  invoice_lines: InvoiceLinesTable;
  payments: PaymentsTable;
  credit_notes: CreditNotesTable;
  journal_transactions: JournalTransactionsTable;
  journal_postings: JournalPostingsTable;
  source_cache: SourceCacheTable;
  binary_cache: BinaryCacheTable;
  signing_keys: SigningKeysTable;
  node_set_aside: NodeSetAsideTable;
}
