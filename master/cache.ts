/**
 * The master's source cache: source archives stored by their sha256. A node uploads
 * what it downloaded from upstream; the master checks the content against the hash it
 * is filed under before keeping it, so a node can only add the bytes a release asked
 * for, never replace them. Any node fetches them when upstream is gone.
 */
import { createHash } from 'node:crypto';
import type { Kysely } from 'kysely';
import { PledgerError } from '../protocol/errors.js';

interface SourceCacheTable {
  sha256: string;
  content: Buffer;
  size: number;
  uploaded_by: string;
  uploaded_at: string;
}

export interface CacheTables {
  source_cache: SourceCacheTable;
}

export async function hasSource(db: Kysely<CacheTables>, sha256: string): Promise<boolean> {
  return (await db.selectFrom('source_cache').select('sha256').where('sha256', '=', sha256).executeTakeFirst()) !== undefined;
}

export async function readSource(db: Kysely<CacheTables>, sha256: string): Promise<Buffer> {
  const row = await db.selectFrom('source_cache').select('content').where('sha256', '=', sha256).executeTakeFirst();
  if (!row) throw new PledgerError('NOT_FOUND', `no source archive with sha256 ${sha256} in the cache`);
  return Buffer.from(row.content);
}

/** Stores `content` under `sha256` unless it is there already; returns whether it was new. */
export async function storeSource(db: Kysely<CacheTables>, nodeId: string, sha256: string, content: Buffer): Promise<boolean> {
  const actual = createHash('sha256').update(content).digest('hex');
  if (actual !== sha256) throw new PledgerError('BAD_REQUEST', `refused: the content has the sha256 ${actual}, not ${sha256}`);
  if (await hasSource(db, sha256)) return false;
  const inserted = await db
    .insertInto('source_cache')
    .values({ sha256, content, size: content.length, uploaded_by: nodeId, uploaded_at: new Date().toISOString() })
    .onConflict((oc) => oc.column('sha256').doNothing())
    .executeTakeFirst();
  return Number(inserted.numInsertedOrUpdatedRows ?? 0) > 0;
}
