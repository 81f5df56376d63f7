/**
 * Price lists: one per software release name and software type, versioned by the
 * first billing month a version applies to. Prices are integers in millionths of the
 * operator's currency, per unit of each resource (money.ts, PRICE_DECIMALS).
 */
import type { Kysely } from 'kysely';
import type { PriceList, PriceListSet } from '../../protocol/api.js';
import { PledgerError } from '../../protocol/errors.js';
import type { Tables } from '../db/tables.js';
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
  await db.transaction().execute(async (trx) => {
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
