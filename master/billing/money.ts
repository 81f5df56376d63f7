/**
 * Money and quantities: integers only. Amounts are minor units of the operator's
 * currency (cents for EUR), carried as bigint through every computation so that a
 * month of memory byte-seconds (well past 2^53) stays exact.
 */
import { sql, type RawBuilder } from 'kysely';
import { MAX_AMOUNT_UNITS } from '../../protocol/api.js';
import { PledgerError } from '../../protocol/errors.js';

/** A database integer (PostgreSQL answers bigints as strings) as a bigint. */
export function int(value: number | string | bigint | null | undefined): bigint {
  if (value === null || value === undefined) return 0n;
  return typeof value === 'bigint' ? value : BigInt(value);
}

/**
 * The sum of an integer column, or one integer column as it is, as exact decimal text:
 * better-sqlite3 answers integers as JavaScript numbers, which round past 2^53 (a
 * month of a 4 GiB instance's memory byte-seconds is past it). PostgreSQL's numeric
 * and bigint print exactly too. Read the result with `int()`.
 */
export function exactSum(column: string): RawBuilder<string | null> {
  return sql<string | null>`cast(sum(${sql.ref(column)}) as text)`;
}

export function exact(column: string): RawBuilder<string> {
  return sql<string>`cast(${sql.ref(column)} as text)`;
}

/** `numerator / denominator`, rounded half away from zero: the one rounding rule of billing. */
export function divRound(numerator: bigint, denominator: bigint): bigint {
  if (denominator <= 0n) throw new RangeError('divRound needs a positive denominator');
  const negative = numerator < 0n;
  const magnitude = negative ? -numerator : numerator;
  const rounded = (magnitude * 2n + denominator) / (denominator * 2n);
  return negative ? -rounded : rounded;
}

/** "12.34" in a currency with `decimals` minor digits, as minor units; refuses anything inexact. */
export function parseAmount(text: string, decimals: number): bigint {
  const match = /^(-)?(\d{1,15})(?:\.(\d+))?$/.exec(text.trim());
  if (!match) throw new PledgerError('BAD_REQUEST', `"${text}" is not an amount`, { hint: 'write it like 12.34, with a dot and no currency sign' });
  const fraction = match[3] ?? '';
  // The schemas bound what a request carries; this holds for every other way in (a
  // release's default prices): past it, a price in millionths is no longer an exact
  // integer for JavaScript, and overflows PostgreSQL's bigint well before 15 digits.
  if (BigInt(match[2]!) > BigInt(MAX_AMOUNT_UNITS)) {
    throw new PledgerError('BAD_REQUEST', `"${text}" is out of range: an amount is at most ${MAX_AMOUNT_UNITS}.999999`);
  }
  if (fraction.length > decimals) {
    throw new PledgerError('BAD_REQUEST', `"${text}" has more than ${decimals} decimal places`);
  }
  const minor = BigInt(match[2]!) * 10n ** BigInt(decimals) + BigInt(fraction.padEnd(decimals, '0') || '0');
  return match[1] ? -minor : minor;
}

/** Minor units as a plain decimal: 1234n, 2 → "12.34"; -5n → "-0.05". */
export function formatAmount(minor: bigint, decimals: number): string {
  const negative = minor < 0n;
  const digits = (negative ? -minor : minor).toString().padStart(decimals + 1, '0');
  const whole = decimals === 0 ? digits : digits.slice(0, -decimals);
  const fraction = decimals === 0 ? '' : `.${digits.slice(-decimals)}`;
  return `${negative ? '-' : ''}${whole}${fraction}`;
}

/**
 * Unit prices carry more digits than the currency: a GiB-hour of memory may cost a
 * fraction of a cent. They are integers in millionths of the currency's unit; only the
 * amount of an invoice line is rounded, once, to the currency's minor units.
 */
export const PRICE_DECIMALS = 6;

/** A unit price in millionths as a decimal with at least the currency's decimals: "0.005", "30.00". */
export function formatPrice(micro: bigint, decimals: number): string {
  const full = formatAmount(micro, PRICE_DECIMALS);
  const [whole, fraction = ''] = full.split('.');
  const kept = fraction.replace(/0+$/, '').padEnd(decimals, '0');
  return kept ? `${whole}.${kept}` : whole!;
}

/** An exact quotient as a decimal with up to `places` digits, for displaying quantities. */
export function formatQuotient(numerator: bigint, denominator: bigint, places: number): string {
  const text = formatAmount(divRound(numerator * 10n ** BigInt(places), denominator), places);
  return text.includes('.') ? text.replace(/0+$/, '').replace(/\.$/, '') : text;
}
