/**
 * The billing tables as kysely sees them (migration 0003), merged into the master's
 * `Tables`. Money and quantities are integers in minor units and base units; PostgreSQL
 * returns its bigints as strings, so every read goes through `int()` in money.ts.
 */
import type { UsageHoursTable as NodeUsageHoursTable } from '../db/tables.js';

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

export interface BilledUsageHoursTable extends NodeUsageHoursTable {
  billed_period: string | null;
}

declare module '../db/tables.js' {
  interface Tables {
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
  }
}
