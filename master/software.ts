/**
 * The software releases the master knows, and their supply to nodes.
 *
 * A release is published once per name and version: publishing the same content again
 * changes nothing, publishing other content under the same version is refused (a
 * version names one content forever). The archive is kept in the database so that any
 * master process can serve it to any node.
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { sql, type Kysely } from 'kysely';
import type { SoftwareView, SupplyRequest, SupplyView } from '../protocol/api.js';
import { PledgerError } from '../protocol/errors.js';
import { packSoftware, unpackSoftware } from '../protocol/software-archive.js';
import { loadSoftware, SOFTWARE_FILE } from '../protocol/software-release.js';
import { findUnstorable } from '../protocol/storable.js';
import type { SoftwareTable, Tables } from './db/tables.js';
import { writeTransaction } from './db/group-commit.js';
import { lock, locks } from './ledger/locks.js';
import { record } from './ledger/movements.js';
import { allocatePending } from './instances/allocation.js';
import { readDefaultPrices, recordDefaultPrices } from './billing/prices.js';
import { readJson } from './db/json-columns.js';

export type SoftwareRow = SoftwareTable;

export async function publishSoftware(
  db: Kysely<Tables>,
  archive: Buffer,
  actor: string,
): Promise<{ software: SoftwareView; created: boolean }> {
  const scratch = await mkdtemp(path.join(tmpdir(), 'pledger-publish-'));
  let loaded;
  let defaultPrices;
  try {
    await unpackSoftware(archive, scratch);
    loaded = await loadSoftware(scratch);
    defaultPrices = await readDefaultPrices(scratch, Object.keys(loaded.definition['software-types']));
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
  const { definition, hash, parameterSchemas } = loaded;
  // A release is text its publisher wrote: what no database can hold is refused, as in any request.
  const unstorable = findUnstorable({ definition, parameterSchemas });
  if (unstorable) throw new PledgerError('SOFTWARE_INVALID', `the release ${unstorable.path.split('/').slice(2).join('.') || 'definition'} ${unstorable.problem}`);
  const softwareId = `${definition.name}@${definition.version}`;
  const created = await writeTransaction(db, async (trx) => {
    const existing = await trx.selectFrom('software').select('hash').where('id', '=', softwareId).executeTakeFirst();
    if (existing && existing.hash !== hash) {
      throw new PledgerError('CONFLICT', `${softwareId} is already published with other content`, {
        hint: 'a version names one content forever: publish the change under a new version',
      });
    }
    if (existing) return false;
    if (defaultPrices) await recordDefaultPrices(trx, definition.name, defaultPrices, actor);
    await trx.insertInto('software_archives').values({ hash, archive }).onConflict((oc) => oc.column('hash').doNothing()).execute();
    return record(
      trx,
      {
        kind: 'software.published',
        data: { softwareId, name: definition.name, version: definition.version, hash, description: definition.description ?? '', definition, parameterSchemas },
      },
      // Keyed by release, so that master processes starting together publish it once.
      { id: `software.published:${softwareId}`, actor, subject: softwareId },
    );
  });
  return { software: softwareView(await resolveSoftware(db, softwareId)), created };
}

/**
 * Publishes every release folder found under `dir` (the bundled software-releases/).
 * A folder that fails is reported and skipped, so that one bad release does not keep
 * the master from starting.
 */
export async function publishBundled(
  db: Kysely<Tables>,
  dir: string,
): Promise<{ name: string; status: 'published' | 'unchanged' | 'failed'; message?: string }[]> {
  const results = [];
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  for (const entry of entries.filter((e) => e.isDirectory()).sort((a, b) => a.name.localeCompare(b.name))) {
    const folder = path.join(dir, entry.name);
    if (!(await readdir(folder)).includes(SOFTWARE_FILE)) continue;
    try {
      const { created } = await publishSoftware(db, await packSoftware(folder), 'master');
      results.push({ name: entry.name, status: created ? ('published' as const) : ('unchanged' as const) });
    } catch (error) {
      results.push({ name: entry.name, status: 'failed' as const, message: (error as Error).message });
    }
  }
  return results;
}

/** `NAME@VERSION`, or `NAME` for the version published last. */
/**
 * Releases by id, as they were published: a version names one content forever, so a
 * row once read never changes (a rebuild writes it back the same). Per database.
 */
const releases = new WeakMap<Kysely<Tables>, Map<string, SoftwareRow>>();
const RELEASES_KEPT = 1000;

export async function resolveSoftware(db: Kysely<Tables>, ref: string): Promise<SoftwareRow> {
  const [name, version] = ref.split('@') as [string, string | undefined];
  let known = releases.get(db);
  if (!known) releases.set(db, (known = new Map()));
  // A bare name asks for the latest version, which a new release changes: only NAME@VERSION is kept.
  const kept = version === undefined ? undefined : known.get(ref);
  if (kept) return kept;
  // Plain SQL: every request resolves its release.
  const { rows } = await sql<SoftwareRow>`
    select * from software where name = ${name} ${version === undefined ? sql`` : sql`and version = ${version}`}
    order by published_at desc, id desc limit 1`.execute(db);
  const row = rows[0];
  if (!row) throw new PledgerError('SOFTWARE_NOT_FOUND', `no software release ${ref} is published`);
  if (version !== undefined) {
    if (known.size >= RELEASES_KEPT) known.clear();
    known.set(ref, row);
  }
  return row;
}

export function softwareView(row: SoftwareRow): SoftwareView {
  const schemas = readJson('parameter_schemas', row.parameter_schemas);
  const definition = readJson('definition', row.definition);
  return {
    name: row.name,
    version: row.version,
    hash: row.hash,
    description: row.description,
    publishedAt: row.published_at,
    softwareTypes: Object.fromEntries(Object.keys(definition['software-types']).map((t) => [t, { parameters: schemas[t] ?? {} }])),
  };
}

export async function listSoftware(db: Kysely<Tables>): Promise<SoftwareView[]> {
  const rows = await db.selectFrom('software').selectAll().orderBy('name').orderBy('published_at').execute();
  return rows.map(softwareView);
}

/** The archive of a release, for a node it is supplied to. */
export async function archiveForNode(db: Kysely<Tables>, nodeId: string, hash: string): Promise<Buffer> {
  const row = await db
    .selectFrom('software_archives')
    .innerJoin('software', 'software.hash', 'software_archives.hash')
    .innerJoin('supplies', 'supplies.software_id', 'software.id')
    .select('software_archives.archive')
    .where('software_archives.hash', '=', hash)
    .where('supplies.node_id', '=', nodeId)
    .executeTakeFirst();
  if (!row) throw new PledgerError('SOFTWARE_NOT_FOUND', `no software release with hash ${hash} is supplied to this node`);
  return Buffer.from(row.archive);
}

/**
 * Whether a release supplied to this node (to build, not to remove) names `sha256` as
 * the source archive of one of its parts: the only sources that node may file in the
 * master's source cache.
 */
export async function sourceSuppliedTo(db: Kysely<Tables>, nodeId: string, sha256: string): Promise<boolean> {
  const rows = await db
    .selectFrom('supplies')
    .innerJoin('software', 'software.id', 'supplies.software_id')
    .select('software.definition')
    .where('supplies.node_id', '=', nodeId)
    .where('supplies.state', '=', 'available')
    .execute();
  return rows.some((row) => {
    const { parts } = readJson('definition', row.definition);
    return Object.values(parts ?? {}).some((part) => part.source?.sha256 === sha256);
  });
}

/** Asks a node to build (available) or remove (destroyed) a release. */
export async function supply(db: Kysely<Tables>, request: SupplyRequest, actor: string): Promise<SupplyView> {
  const software = await resolveSoftware(db, request.software);
  const node = await db.selectFrom('nodes').select(['id', 'name']).where('name', '=', request.node).executeTakeFirst();
  if (!node) throw new PledgerError('NODE_NOT_FOUND', `no node named "${request.node}"`);
  const state = request.state ?? 'available';
  await writeTransaction(db, async (trx) => {
    await lock(trx, locks.node(node.id));
    const current = await trx
      .selectFrom('supplies')
      .select('state')
      .where('node_id', '=', node.id)
      .where('software_id', '=', software.id)
      .executeTakeFirst();
    if (current?.state === state) return;
    await record(trx, { kind: 'supply.requested', data: { nodeId: node.id, softwareId: software.id, state } }, { actor, subject: node.id });
  });
  if (state === 'available') await allocatePending(db);
  return { software: { name: software.name, version: software.version, hash: software.hash }, node: node.name, state };
}
