/**
 * The journal's chart of accounts. Names are valid as they are in hledger and in
 * Beancount, whose account components must start with a capital letter or a digit and
 * hold only letters, digits and dashes.
 */
import type { Resource } from './journal.js';

export const BANK_ACCOUNT = 'Assets:Bank';
export const TAX_ACCOUNT = 'Liabilities:Tax:Sales';
const RECEIVABLE_PREFIX = 'Assets:Receivable:';

const REVENUE: Record<Resource, string> = {
  'instance-month': 'Income:Instances',
  'instance-hour': 'Income:Instance-hours',
  'cpu-hour': 'Income:CPU',
  'memory-gib-hour': 'Income:Memory',
  'disk-gib-month': 'Income:Disk',
};

export function revenueAccount(resource: Resource): string {
  return REVENUE[resource];
}

/**
 * A customer's receivable account. Account names (a-z, 0-9, `.`, `_`, `-`) are escaped
 * one to one, so that two customers never share an account: `-` becomes `--`, `.`
 * becomes `-d` and `_` becomes `-u`.
 */
export function receivableAccount(accountName: string): string {
  const escaped = accountName.replace(/[-._]/g, (c) => (c === '-' ? '--' : c === '.' ? '-d' : '-u'));
  return `${RECEIVABLE_PREFIX}C-${escaped}`;
}
