/**
 * The master's caches.
 *
 * The source cache: source archives stored by their sha256. A node uploads what it
 * downloaded from upstream. The route takes an upload only when a release supplied to
 * that node names the hash as a part's source (see routes/cache-api.ts), and
 * `storeSource` checks the content against that hash before keeping it: so a node can
 * add only the bytes a release asked for, never replace them, and the cache holds at
 * most one archive (of at most MAX_SOFTWARE_ARCHIVE_BYTES, the body limit) per source
 * the published releases name. Any node fetches them when upstream is gone.
 *
 * The binary cache: archives of built parts, filed by part hash, platform and node
 * path (see protocol/binary-cache.ts). The master checks what it receives against the
 * checksum the node announced and signs the entry with its own key; the first archive
 * filed under a key stays, so a later upload never replaces what nodes already use.
 * Only nodes an operator allowed may file (see routes/cache-api.ts): the signature
 * vouches for an archive every node will run, so who may file is the master's call.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import type { Kysely } from 'kysely';
import {
  binaryEntryMessage,
  encodePublicKey,
  MAX_BINARY_ARCHIVE_BYTES,
  type BinaryEntry,
  type BinaryUploadQuery,
  type BinaryUploaded,
} from '../protocol/binary-cache.js';
import { PledgerError } from '../protocol/errors.js';
import { checkGzippedTar } from '../protocol/software-archive.js';
import type { BinaryCacheTable, Tables } from './db/tables.js';



export async function hasSource(db: Kysely<Tables>, sha256: string): Promise<boolean> {
  return (await db.selectFrom('source_cache').select('sha256').where('sha256', '=', sha256).executeTakeFirst()) !== undefined;
}

export async function readSource(db: Kysely<Tables>, sha256: string): Promise<Buffer> {
  const row = await db.selectFrom('source_cache').select('content').where('sha256', '=', sha256).executeTakeFirst();
  if (!row) throw new PledgerError('NOT_FOUND', `no source archive with sha256 ${sha256} in the cache`);
  return Buffer.from(row.content);
}

/** Stores `content` under `sha256` unless it is there already; returns whether it was new. */
export async function storeSource(db: Kysely<Tables>, nodeId: string, sha256: string, content: Buffer): Promise<boolean> {
  const actual = createHash('sha256').update(content).digest('hex');
  if (actual !== sha256) throw new PledgerError('BAD_REQUEST', `refused: the content has the sha256 ${actual}, not ${sha256}`);
  // A source may be compressed in any way tar reads; a gzipped one is read through, so
  // that a damaged one (its release named damaged bytes) is refused rather than served.
  if (content[0] === 0x1f && content[1] === 0x8b) await checkGzippedTar(content);
  if (await hasSource(db, sha256)) return false;
  const inserted = await db
    .insertInto('source_cache')
    .values({ sha256, content, size: content.length, uploaded_by: nodeId, uploaded_at: new Date().toISOString() })
    .onConflict((oc) => oc.column('sha256').doNothing())
    .executeTakeFirst();
  return Number(inserted.numInsertedOrUpdatedRows ?? 0) > 0;
}

const BINARY_CACHE_KEY_NAME = 'binary-cache';

interface SigningKey {
  /** As nodes are given it: `ed25519:...`. */
  publicKey: string;
  privateKey: KeyObject;
}

// One read per process and database: the key never changes once created.
const signingKeys = new WeakMap<object, Promise<SigningKey>>();

/**
 * The master's binary cache signing key, created the first time it is asked for (at
 * `pledger master init` or the first start). Several master processes starting at
 * once may each generate one: the first stored wins and every process reads it back.
 */
export function binaryCacheSigningKey(db: Kysely<Tables>): Promise<SigningKey> {
  let key = signingKeys.get(db);
  if (!key) {
    key = loadOrCreateSigningKey(db);
    // A failed read (database briefly away) must not stick for the life of the process.
    key.catch(() => signingKeys.delete(db));
    signingKeys.set(db, key);
  }
  return key;
}

async function loadOrCreateSigningKey(db: Kysely<Tables>): Promise<SigningKey> {
  const read = () => db.selectFrom('signing_keys').select(['public_key', 'private_key']).where('name', '=', BINARY_CACHE_KEY_NAME).executeTakeFirst();
  let row = await read();
  if (!row) {
    const pair = generateKeyPairSync('ed25519');
    await db
      .insertInto('signing_keys')
      .values({
        name: BINARY_CACHE_KEY_NAME,
        public_key: encodePublicKey(pair.publicKey),
        private_key: pair.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string,
        created_at: new Date().toISOString(),
      })
      .onConflict((oc) => oc.column('name').doNothing())
      .execute();
    row = await read();
    if (!row) throw new Error('the binary cache signing key could not be stored');
  }
  const privateKey = createPrivateKey(row.private_key);
  // The stored public key is what nodes were given: it must be the private key's own.
  if (encodePublicKey(createPublicKey(privateKey)) !== row.public_key) throw new Error('the stored binary cache keys do not match');
  return { publicKey: row.public_key, privateKey };
}

type BinaryRow = Omit<BinaryCacheTable, 'content' | 'uploaded_by'>;
const BINARY_COLUMNS = ['part_hash', 'platform', 'prefix', 'sha256', 'size', 'signature', 'uploaded_at'] as const;

const toEntry = (row: BinaryRow): BinaryEntry => ({
  partHash: row.part_hash,
  platform: row.platform,
  prefix: row.prefix,
  sha256: row.sha256,
  size: Number(row.size),
  signature: row.signature,
  uploadedAt: row.uploaded_at,
});

/**
 * The entry a node with this platform and root can use for a part: one built for its
 * very root first, else a relocatable one (filed under the empty prefix).
 */
export async function findBinary(db: Kysely<Tables>, partHash: string, platform: string, prefix: string): Promise<BinaryEntry> {
  const rows = await db
    .selectFrom('binary_cache')
    .select(BINARY_COLUMNS)
    .where('part_hash', '=', partHash)
    .where('platform', '=', platform)
    .where('prefix', 'in', [...new Set([prefix, ''])])
    .execute();
  const row = rows.find((r) => r.prefix === prefix) ?? rows.find((r) => r.prefix === '');
  if (!row) throw new PledgerError('NOT_FOUND', `no built part ${partHash} for ${platform} in the binary cache`);
  return toEntry(row);
}

/** The archive filed under exactly this key. */
export async function readBinary(db: Kysely<Tables>, partHash: string, platform: string, prefix: string): Promise<Buffer> {
  const row = await db
    .selectFrom('binary_cache')
    .select('content')
    .where('part_hash', '=', partHash)
    .where('platform', '=', platform)
    .where('prefix', '=', prefix)
    .executeTakeFirst();
  if (!row) throw new PledgerError('NOT_FOUND', `no built part ${partHash} for ${platform} in the binary cache`);
  return Buffer.from(row.content);
}

/**
 * Files a node's archive of a built part, signed. Refused unless its bytes have the
 * sha256 announced. When the key holds an entry already, that one stays and is
 * returned (`stored: false`), whatever was sent.
 */
export async function storeBinary(db: Kysely<Tables>, nodeId: string, partHash: string, upload: BinaryUploadQuery, content: Buffer): Promise<BinaryUploaded> {
  if (content.length > MAX_BINARY_ARCHIVE_BYTES) throw new PledgerError('PAYLOAD_TOO_LARGE', `a built part archive may hold at most ${MAX_BINARY_ARCHIVE_BYTES} bytes`);
  const actual = createHash('sha256').update(content).digest('hex');
  if (actual !== upload.sha256) throw new PledgerError('BAD_REQUEST', `refused: the content has the sha256 ${actual}, not ${upload.sha256}`);
  // Nodes check what they unpack; this spares storing and signing what no node could unpack.
  await checkGzippedTar(content);
  const existing = () =>
    db
      .selectFrom('binary_cache')
      .select(BINARY_COLUMNS)
      .where('part_hash', '=', partHash)
      .where('platform', '=', upload.platform)
      .where('prefix', '=', upload.prefix)
      .executeTakeFirst();
  const before = await existing();
  if (before) return { entry: toEntry(before), stored: false };
  const { privateKey } = await binaryCacheSigningKey(db);
  const key = { partHash, platform: upload.platform, prefix: upload.prefix, sha256: actual };
  const signature = sign(null, binaryEntryMessage(key), privateKey).toString('base64');
  const inserted = await db
    .insertInto('binary_cache')
    .values({
      part_hash: partHash,
      platform: upload.platform,
      prefix: upload.prefix,
      sha256: actual,
      size: content.length,
      content,
      signature,
      uploaded_by: nodeId,
      uploaded_at: new Date().toISOString(),
    })
    .onConflict((oc) => oc.columns(['part_hash', 'platform', 'prefix']).doNothing())
    .executeTakeFirst();
  const after = await existing();
  if (!after) throw new Error('the built part archive could not be stored');
  return { entry: toEntry(after), stored: Number(inserted.numInsertedOrUpdatedRows ?? 0) > 0 };
}
