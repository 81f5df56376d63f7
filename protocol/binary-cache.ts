/**
 * The binary cache, as master and node agree on it: built parts kept by the master as
 * archives, each filed under a key (the part's hash, the platform it was built on, and
 * the node path it was built for) and signed by the master with Ed25519.
 *
 * A node trusts an entry only when the master's signature over its key and the
 * archive's sha256 checks against the public key the node was configured with; the
 * archive's bytes must then have that sha256. So neither a changed row nor changed
 * bytes in the master's storage, nor anything between them, can slip a binary in.
 */
import { createPublicKey, verify, type KeyObject } from 'node:crypto';
import { Type, type Static } from 'typebox';

/**
 * The largest archive of a built part the master accepts: the body limit of its
 * archive uploads (MAX_SOFTWARE_ARCHIVE_BYTES, not imported so that reading a node's
 * configuration does not load tar). A bigger part is simply built by every node.
 */
export const MAX_BINARY_ARCHIVE_BYTES = 64 * 1024 * 1024;

/** `<os id>-<os version>/<architecture>`, as /etc/os-release and Node name them: `debian-12/x64`. */
export const BinaryPlatform = Type.String({ pattern: '^[a-z0-9][a-z0-9._+-]{0,63}/[a-z0-9_]{1,16}$' });

/**
 * The node path a part was built for, or the empty string for a part that holds no
 * path of its node (relocatable): parts embed their own paths, so a part built under
 * `/srv/a` is only given to nodes whose root is `/srv/a` too.
 */
export const BinaryPrefix = Type.String({ maxLength: 1024, pattern: '^(/[^\\u0000-\\u001f\\u007f\\ud800-\\udfff]*)?$' });

const Sha256 = Type.String({ pattern: '^[0-9a-f]{64}$' });

export const BinaryKeyQuery = Type.Object({ platform: BinaryPlatform, prefix: BinaryPrefix }, { additionalProperties: false });
export type BinaryKeyQuery = Static<typeof BinaryKeyQuery>;

export const BinaryUploadQuery = Type.Object({ platform: BinaryPlatform, prefix: BinaryPrefix, sha256: Sha256 }, { additionalProperties: false });
export type BinaryUploadQuery = Static<typeof BinaryUploadQuery>;

/** One entry of the cache, as the master describes it before a node downloads the archive. */
export const BinaryEntry = Type.Object({
  partHash: Sha256,
  platform: BinaryPlatform,
  prefix: BinaryPrefix,
  sha256: Sha256,
  size: Type.Integer({ minimum: 0 }),
  /** Ed25519 over `binaryEntryMessage(...)`, base64. */
  signature: Type.String(),
  uploadedAt: Type.String(),
});
export type BinaryEntry = Static<typeof BinaryEntry>;

export const BinaryUploaded = Type.Object({ entry: BinaryEntry, stored: Type.Boolean() });
export type BinaryUploaded = Static<typeof BinaryUploaded>;

export const BinaryCacheKey = Type.Object({ publicKey: Type.String() });
export type BinaryCacheKey = Static<typeof BinaryCacheKey>;

/** Public keys travel as `ed25519:` and the 32 bytes of the key in base64url. */
export const PUBLIC_KEY_PATTERN = '^ed25519:[A-Za-z0-9_-]{43}$';

/**
 * What the master signs: every field that names the entry and the archive's checksum,
 * one per line, under a fixed label so that a signature made for something else can
 * never pass for this.
 */
export function binaryEntryMessage(entry: Pick<BinaryEntry, 'partHash' | 'platform' | 'prefix' | 'sha256'>): Buffer {
  return Buffer.from(['pledger binary cache entry v1', entry.partHash, entry.platform, entry.prefix, entry.sha256, ''].join('\n'), 'utf8');
}

export function encodePublicKey(key: KeyObject): string {
  const jwk = key.export({ format: 'jwk' });
  if (jwk.crv !== 'Ed25519' || typeof jwk.x !== 'string') throw new Error('not an Ed25519 public key');
  return `ed25519:${jwk.x}`;
}

/** Reads a key written by `encodePublicKey`; throws on anything else. */
export function decodePublicKey(text: string): KeyObject {
  if (!new RegExp(PUBLIC_KEY_PATTERN).test(text)) throw new Error(`${text} is not a binary cache key (ed25519:<43 base64url characters>)`);
  return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: text.slice('ed25519:'.length) }, format: 'jwk' });
}

/** Whether the master signed this entry, with the key the node was given. */
export function verifyBinaryEntry(entry: BinaryEntry, publicKey: KeyObject): boolean {
  const signature = Buffer.from(entry.signature, 'base64');
  if (signature.length !== 64) return false;
  try {
    return verify(null, binaryEntryMessage(entry), publicKey, signature);
  } catch {
    return false;
  }
}
