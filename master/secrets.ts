/**
 * API tokens and node credentials: 256 random bits, shown once, stored as sha256.
 *
 * A fast hash is enough here, unlike for passwords: a token has 256 bits of entropy,
 * so nobody can guess one from its hash, and a lookup by hash costs one index probe.
 */
import { createHash, randomBytes } from 'node:crypto';

export function newSecret(prefix: 'plg_u' | 'plg_n'): string {
  return `${prefix}_${randomBytes(32).toString('base64url')}`;
}

export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret).digest('hex');
}
