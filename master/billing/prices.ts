/**
 * Price lists: one per software release name and software type, versioned by the
 * first billing month a version applies to. Prices are integers in millionths of the
 * operator's currency, per unit of each resource (money.ts, PRICE_DECIMALS).
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Kysely, Transaction } from 'kysely';
import { parse as parseYaml } from 'yaml';
import type { PriceList, PriceListSet } from '../../protocol/api.js';
import { PledgerError } from '../../protocol/errors.js';
import type { Tables } from '../db/tables.js';
import { writeTransaction } from '../db/group-commit.js';
import { record } from '../ledger/movements.js';
import { loadSettings, RESOURCES, type PriceAmounts, type Resource } from './journal.js';
import { formatPrice, int, parseAmount, PRICE_DECIMALS } from './money.js';

export interface PriceVersion {
  softwareName: string;
  softwareType: string;
  validFrom: string;
  currency: string;
  prices: Record<Resource, bigint>;
}

const COLUMNS: Record<Resource, 'instance_month' | 'instance_hour' | 'cpu_hour' | 'memory_gib_hour' | 'disk_gib_month'> = {
  'instance-month': 'instance_month',
  'instance-hour': 'instance_hour',
  'cpu-hour': 'cpu_hour',
  'memory-gib-hour': 'memory_gib_hour',
  'disk-gib-month': 'disk_gib_month',
};

export async function setPrice(db: Kysely<Tables>, input: PriceListSet, actor: string): Promise<PriceList> {
  await writeTransaction(db, async (trx) => {
    const settings = await loadSettings(trx);
    const published = await trx.selectFrom('software').select('id').where('name', '=', input.software).executeTakeFirst();
    if (!published) throw new PledgerError('SOFTWARE_NOT_FOUND', `no software release ${input.software} is published`);
    const prices = {} as PriceAmounts;
    for (const resource of RESOURCES) {
      const micro = parseAmount(input.prices[resource] ?? '0', PRICE_DECIMALS);
      if (micro < 0n) throw new PledgerError('BAD_REQUEST', `the ${resource} price cannot be negative`);
      prices[resource] = micro.toString();
    }
    await record(
      trx,
      { kind: 'price.set', data: { softwareName: input.software, softwareType: input.softwareType, validFrom: input.validFrom, currency: settings.currency, prices } },
      { actor, subject: `price:${input.software}:${input.softwareType}` },
    );
  });
  const list = await listPrices(db);
  return list.find((p) => p.software === input.software && p.softwareType === input.softwareType && p.validFrom === input.validFrom)!;
}

export async function loadPriceVersions(db: Kysely<Tables>): Promise<PriceVersion[]> {
  const rows = await db.selectFrom('prices').selectAll().orderBy('software_name').orderBy('software_type').orderBy('valid_from').execute();
  return rows.map((r) => ({
    softwareName: r.software_name,
    softwareType: r.software_type,
    validFrom: r.valid_from,
    currency: r.currency,
    prices: Object.fromEntries(RESOURCES.map((res) => [res, int(r[COLUMNS[res]])])) as Record<Resource, bigint>,
  }));
}

export async function listPrices(db: Kysely<Tables>): Promise<PriceList[]> {
  const settings = await loadSettings(db);
  return (await loadPriceVersions(db)).map((v) => ({
    software: v.softwareName,
    softwareType: v.softwareType,
    validFrom: v.validFrom,
    currency: v.currency,
    prices: Object.fromEntries(RESOURCES.map((res) => [res, formatPrice(v.prices[res], settings.decimals)])) as PriceList['prices'],
  }));
}

/** Finds the version of a price list in force in a month, in constant time per lookup after indexing. */
export class PriceBook {
  private readonly versions = new Map<string, PriceVersion[]>();

  constructor(versions: PriceVersion[]) {
    for (const v of versions) {
      const key = `${v.softwareName}\u0000${v.softwareType}`;
      const list = this.versions.get(key) ?? [];
      list.push(v);
      this.versions.set(key, list);
    }
    for (const list of this.versions.values()) list.sort((a, b) => (a.validFrom < b.validFrom ? -1 : 1));
  }

  /** The latest version valid from `month` or before, or undefined when the release has no price. */
  find(softwareName: string, softwareType: string, month: string): PriceVersion | undefined {
    const list = this.versions.get(`${softwareName}\u0000${softwareType}`);
    let found: PriceVersion | undefined;
    for (const v of list ?? []) if (v.validFrom <= month) found = v;
    return found;
  }
}

/** The optional file of a software release folder with its default prices. */
export const DEFAULT_PRICES_FILE = 'prices.yaml';

export interface DefaultPrices {
  currency: string;
  bySoftwareType: Record<string, Partial<PriceAmounts>>;
}

/**
 * Reads and checks `prices.yaml` in a release folder, if it has one:
 *
 *   currency: EUR
 *   default:                    # a software type of the release
 *     instance-month: "30.00"   # amounts are quoted decimals, never YAML numbers
 *     cpu-hour: "0.05"
 */
export async function readDefaultPrices(dir: string, softwareTypes: string[]): Promise<DefaultPrices | null> {
  let text: string;
  try {
    text = await readFile(path.join(dir, DEFAULT_PRICES_FILE), 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
  const invalid = (message: string) => new PledgerError('SOFTWARE_INVALID', `${DEFAULT_PRICES_FILE}: ${message}`);
  let parsed: unknown;
  try {
    parsed = parseYaml(text);
  } catch (error) {
    throw invalid((error as Error).message);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw invalid('must be a map with `currency` and one entry per software type');
  const { currency, ...types } = parsed as Record<string, unknown>;
  if (typeof currency !== 'string' || !/^[A-Z]{3}$/.test(currency)) throw invalid('`currency` must be an ISO 4217 code such as EUR');
  const bySoftwareType: Record<string, Partial<PriceAmounts>> = {};
  for (const [type, prices] of Object.entries(types)) {
    if (!softwareTypes.includes(type)) throw invalid(`the release has no software type "${type}"`);
    if (typeof prices !== 'object' || prices === null || Array.isArray(prices)) throw invalid(`${type} must map resources to prices`);
    const amounts: Partial<PriceAmounts> = {};
    for (const [resource, amount] of Object.entries(prices as Record<string, unknown>)) {
      if (!(RESOURCES as readonly string[]).includes(resource)) throw invalid(`${type}.${resource} is not a resource (${RESOURCES.join(', ')})`);
      if (typeof amount !== 'string') throw invalid(`${type}.${resource} must be a quoted decimal such as "0.05", not a YAML number`);
      try {
        if (parseAmount(amount, PRICE_DECIMALS) < 0n) throw invalid(`${type}.${resource} cannot be negative`);
      } catch (error) {
        if (error instanceof PledgerError && error.code === 'BAD_REQUEST') throw invalid(`${type}.${resource}: ${error.message}`);
        throw error;
      }
      amounts[resource as Resource] = amount;
    }
    bySoftwareType[type] = amounts;
  }
  return { currency, bySoftwareType };
}

/**
 * Records a release's default prices as the first version of each price list that
 * has none yet, from the month of publication, when they are in the operator's
 * currency. Answers the software types priced; an operator's own list always wins.
 */
export async function recordDefaultPrices(trx: Transaction<Tables>, softwareName: string, defaults: DefaultPrices, actor: string, now = new Date()): Promise<string[]> {
  const settings = await loadSettings(trx);
  if (defaults.currency !== settings.currency) return [];
  const priced: string[] = [];
  for (const [softwareType, amounts] of Object.entries(defaults.bySoftwareType)) {
    const existing = await trx.selectFrom('prices').select('valid_from').where('software_name', '=', softwareName).where('software_type', '=', softwareType).executeTakeFirst();
    if (existing) continue;
    const prices = Object.fromEntries(RESOURCES.map((r) => [r, parseAmount(amounts[r] ?? '0', PRICE_DECIMALS).toString()])) as PriceAmounts;
    await record(
      trx,
      { kind: 'price.set', data: { softwareName, softwareType, validFrom: now.toISOString().slice(0, 7), currency: settings.currency, prices } },
      { actor, subject: `price:${softwareName}:${softwareType}` },
    );
    priced.push(softwareType);
  }
  return priced;
}
